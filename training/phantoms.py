"""Synthetic abdominal CT phantoms with known liver/spleen attenuation.

Imports only NumPy and SciPy (no training framework): used by tests, benchmarks
and training. Deterministic for a seed.

Anatomy and orientation
-----------------------
Phantoms are built in a canonical patient frame with ITK's LPS convention: array
axis 2 (x) runs to the patient's Left, axis 1 (y) to Posterior, axis 0 (z) to
Superior (direction = identity). The liver therefore sits at LOW x (patient right),
anterior-to-mid y, upper abdomen; the spleen at HIGH x (patient left), posterior.
With ``random_orientation=True`` (or a ``direction`` given) the array is flipped /
permuted after construction and ``direction`` records it, so a reader that
reorients by the direction cosines (``client.reading.preprocess.canonical_axes``) sees the
same anatomy.

Truth: ``liver_hu`` and ``spleen_hu`` are the parenchyma attenuations (before
vessels and noise); ``ratio = liver_hu / spleen_hu``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from client.core.contract import GRADE_THRESHOLDS, LABEL_LIVER, LABEL_SPLEEN

from .classes import CLASS_INDEX
from .tissues import N_TISSUES as N_TISSUES  # re-exported: the tissue vocabulary
from .tissues import TISSUES

# Grade -> ratio interval kept at least 0.05 away from every threshold.
_GRADE_RANGES = {
    "normal": (GRADE_THRESHOLDS.normal_above + 0.05, 1.45),
    "mild": (GRADE_THRESHOLDS.mild_above + 0.05, GRADE_THRESHOLDS.normal_above - 0.05),
    "moderate": (GRADE_THRESHOLDS.moderate_above + 0.05, GRADE_THRESHOLDS.mild_above - 0.05),
    "severe": (0.1, GRADE_THRESHOLDS.moderate_above - 0.05),
}


def grade_of_ratio(r: float) -> str:
    """Grade of a liver/spleen ratio by the contract thresholds (boundary -> worse grade);
    the rule itself lives in :func:`client.core.contract.grade_of_ratio`."""
    from client.core.contract import grade_of_ratio as rule

    return rule(r, GRADE_THRESHOLDS)


@dataclass
class Phantom:
    """A synthetic CT volume, its label map and the truths used to build it."""

    hu: np.ndarray
    labels: np.ndarray
    spacing: tuple
    origin: tuple = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    truth: dict[str, Any] = field(default_factory=dict)

    def to_scan(self):
        """The phantom as a :class:`client.reading.scan.ScanVolume` (metadata: modality CT)."""
        from client.reading.scan import ScanVolume

        meta = {"modality": "CT", "manufacturer": "HepaScreen phantom"}
        if self.truth.get("contrast"):
            meta["contrast_agent"] = "phantom contrast"
        return ScanVolume(
            array=self.hu,
            spacing=self.spacing,
            origin=self.origin,
            direction=self.direction,
            metadata=meta,
            source=f"phantom:{self.truth.get('seed')}",
        )


def _smooth_noise(rng, shape, sigma_vox, amplitude):
    """Low-frequency random field (zero mean) used to deform organ shapes."""
    small = tuple(max(4, int(np.ceil(n / max(s, 1.0) / 2.0))) for n, s in zip(shape, sigma_vox))
    field_small = rng.standard_normal(small).astype(np.float32)
    zoom = [n / m for n, m in zip(shape, small)]
    f = ndi.zoom(field_small, zoom, order=1)[: shape[0], : shape[1], : shape[2]]
    f = np.pad(f, [(0, n - m) for n, m in zip(shape, f.shape)], mode="edge")
    return amplitude * f


def _ellipsoid(coords, centre, radii, rot):
    """Normalised radius^2 of an oriented ellipsoid at every voxel (mm coordinates)."""
    zz, yy, xx = coords
    d = np.stack([zz - centre[0], yy - centre[1], xx - centre[2]])  # 3 x ...
    d = np.tensordot(rot, d, axes=1)
    return (d[0] / radii[0]) ** 2 + (d[1] / radii[1]) ** 2 + (d[2] / radii[2]) ** 2


def _rotation(rng, max_deg):
    a, b, c = np.deg2rad(rng.uniform(-max_deg, max_deg, size=3))
    rz = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rx = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _pick_attenuation(rng, liver_hu, spleen_hu, ratio, grade, contrast):
    if contrast:
        spleen = spleen_hu if spleen_hu is not None else rng.uniform(110, 130)
    else:
        spleen = spleen_hu if spleen_hu is not None else rng.uniform(40, 55)
    if liver_hu is not None:
        liver = float(liver_hu)
    else:
        if ratio is None:
            grade = grade or str(rng.choice(list(_GRADE_RANGES)))
            lo, hi = _GRADE_RANGES[grade]
            ratio = rng.uniform(lo, hi)
        liver = float(ratio) * spleen
    return float(liver), float(spleen)


def make_phantom(
    seed: int,
    *,
    shape=(96, 160, 160),
    spacing=None,
    liver_hu=None,
    spleen_hu=None,
    ratio=None,
    grade=None,
    contrast=False,
    noise_sd=None,
    direction=None,
    random_orientation=False,
    cut_liver=False,
    fov_mm=350.0,
    label_neighbours=False,
) -> Phantom:
    """Build one abdominal phantom.

    Parameters
    ----------
    seed : int
        Seed of everything random (shapes, positions, attenuation, noise).
    shape : tuple of 3 ints
        Array shape ``[z, y, x]``.
    spacing : tuple of 3 floats, optional
        Voxel size ``(z, y, x)`` mm. Default: in-plane so the field of view is about
        ``fov_mm``, slices so the volume covers about 1.1 x the in-plane FOV (at most 5 mm).
    liver_hu, spleen_hu : float, optional
        Parenchyma attenuation. Without them spleen is drawn in 40-55 HU (110-130 HU
        with contrast) and liver follows from ``ratio`` or ``grade``.
    ratio : float, optional
        True liver/spleen ratio.
    grade : {"normal", "mild", "moderate", "severe"}, optional
        Draw a ratio inside this grade, at least 0.05 from its thresholds.
    contrast : bool
        Portal-venous-like enhancement (bright aorta and vessels, enhanced organs).
    noise_sd : float, optional
        Gaussian noise SD in HU (default drawn in 8-18).
    direction : 3x3 array, optional
        Signed permutation direction matrix to store the array in; overrides
        ``random_orientation``.
    random_orientation : bool
        Store the array with a random signed axis permutation (recorded in ``direction``).
    cut_liver : bool
        Shift the liver so the top of the volume cuts through it.
    fov_mm : float
        In-plane field of view used when ``spacing`` is not given.
    label_neighbours : bool
        Also label the kidneys and the aorta with their values of the multi-class
        table (:mod:`training.classes`); default: liver and spleen only. The random
        draws, and so the image, are the same either way.

    Returns
    -------
    Phantom
    """
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in shape)
    spacing = _phantom_spacing(shape, spacing, fov_mm)
    ext = np.array(shape) * np.array(spacing)  # physical extent (z, y, x) mm

    liver_val, spleen_val = _pick_attenuation(rng, liver_hu, spleen_hu, ratio, grade, contrast)
    full = _phantom_tissues(rng, shape, spacing, ext, cut_liver)
    hu = _tissue_hu(rng, contrast, liver_val, spleen_val)[full]
    f_liver, f_spleen = full == 7, full == 8
    labels = np.zeros(shape, np.uint8)
    labels[f_liver] = LABEL_LIVER
    labels[f_spleen] = LABEL_SPLEEN
    if label_neighbours:  # the multi-class table's kidney and aorta
        labels[full == 4], labels[full == 6] = CLASS_INDEX["kidney"], CLASS_INDEX["aorta"]
    _paint_liver_vessels(rng, hu, f_liver, spacing, contrast)
    # Slight partial-volume blur, then noise.
    sigma = [0.6 * min(1.0, 1.5 / s) for s in spacing]
    hu = ndi.gaussian_filter(hu, sigma=sigma)
    sd = float(noise_sd) if noise_sd is not None else float(rng.uniform(8, 18))
    hu += rng.standard_normal(shape, dtype=np.float32) * sd
    hu = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)

    vox_ml = float(np.prod(spacing)) / 1000.0
    truth = {
        "seed": int(seed),
        "liver_hu": liver_val,
        "spleen_hu": spleen_val,
        "ratio": liver_val / spleen_val,
        "grade": grade_of_ratio(liver_val / spleen_val),
        "contrast": bool(contrast),
        "noise_sd": sd,
        "liver_volume_ml": float(f_liver.sum()) * vox_ml,
        "spleen_volume_ml": float(f_spleen.sum()) * vox_ml,
        "liver_cut_by_edge": bool(cut_liver),
    }
    origin = tuple(float(-e / 2) for e in ext[::-1])  # (x, y, z) of first voxel, roughly centred
    d = np.eye(3)
    if direction is None and random_orientation:
        direction = random_direction(rng)
    if direction is not None:
        hu, labels, spacing, d = _store_with_direction(hu, labels, spacing, direction)
    return Phantom(hu=hu, labels=labels, spacing=spacing, origin=origin, direction=d, truth=truth)


def _phantom_spacing(shape, spacing, fov_mm) -> tuple:
    """The given voxel size as floats or, without one, in-plane so the field of view is
    about ``fov_mm`` and slices covering about 1.1 x that (at most 5 mm)."""
    if spacing is None:
        sxy = fov_mm / max(shape[1], shape[2])
        sz = min(5.0, 1.1 * fov_mm / shape[0])
        spacing = (sz, sxy, sxy)
    return tuple(float(s) for s in spacing)


def _tissue_hu(rng, contrast, liver_val, spleen_val) -> np.ndarray:
    """HU of each tissue of :func:`_phantom_tissues` (float32 [9])."""
    return np.array(
        [
            -1000.0,
            rng.uniform(-110, -90),  # subcutaneous fat
            rng.uniform(45, 60),  # muscle wall
            rng.uniform(-60, 10),  # bowel / mesenteric fat mixture
            rng.uniform(150, 200) if contrast else rng.uniform(25, 35),  # kidneys
            rng.uniform(300, 500),  # vertebra
            rng.uniform(150, 200) if contrast else rng.uniform(35, 45),  # aorta
            liver_val,
            spleen_val,
        ],
        dtype=np.float32,
    )


def random_direction(rng) -> np.ndarray:
    """A random signed axis permutation (ITK direction matrix): the orientation a
    phantom or a synthetic scan is stored in."""
    perm = rng.permutation(3)
    signs = rng.choice([-1.0, 1.0], size=3)
    direction = np.zeros((3, 3))
    for c in range(3):
        direction[perm[c], c] = signs[c]
    return direction


def _phantom_tissues(rng, shape, spacing, ext, cut_liver) -> np.ndarray:
    """The plain phantom's tissue map on the full grid (0 air, 1 subcutaneous fat, 2 muscle
    wall, 3 abdominal cavity, 4 kidneys, 5 vertebra, 6 aorta, 7 liver, 8 spleen), shaped
    on a coarse grid (speed) and upsampled by nearest neighbour."""
    coarse_mm = max(2.0, min(spacing[1], spacing[2]))
    cshape = tuple(max(8, int(round(e / max(coarse_mm, s)))) for e, s in zip(ext, spacing))
    cshape = tuple(min(c, n) for c, n in zip(cshape, shape))
    cs = ext / np.array(cshape)
    coords = np.meshgrid(
        *[(np.arange(n) + 0.5) * s - e / 2 for n, s, e in zip(cshape, cs, ext)], indexing="ij"
    )
    zz, yy, xx = coords
    deform = _smooth_noise(rng, cshape, 40.0 / cs, 0.12)

    # Body: elliptic cylinder along z (trunk), ~ 300 x 220 mm.
    ax_x = rng.uniform(140, 165)
    ax_y = rng.uniform(100, 120)
    body_r = (xx / ax_x) ** 2 + (yy / ax_y) ** 2 + 0.5 * deform
    body = body_r < 1.0
    fat_t = rng.uniform(12, 30)
    inner = (xx / (ax_x - fat_t)) ** 2 + (yy / (ax_y - fat_t)) ** 2 + 0.5 * deform < 1.0
    muscle_t = 12.0
    visceral = (xx / (ax_x - fat_t - muscle_t)) ** 2 + (yy / (ax_y - fat_t - muscle_t)) ** 2 < 1.0

    # Liver: big blob at patient right (low x), anterior-mid, upper part of the volume.
    zc_l = rng.uniform(0.05, 0.2) * ext[0] * 0.5
    if cut_liver:
        zc_l = ext[0] / 2 - rng.uniform(20, 35)
    liver_c = (zc_l, rng.uniform(-25, 5), -rng.uniform(55, 75))
    liver_r = (rng.uniform(65, 85), rng.uniform(65, 80), rng.uniform(60, 75))
    liver_d = _ellipsoid(coords, liver_c, liver_r, _rotation(rng, 15)) + deform
    liver = (liver_d < 1.0) & visceral
    # Spleen: patient left (high x), posterior.
    spleen_c = (zc_l + rng.uniform(-10, 15), rng.uniform(25, 45), rng.uniform(75, 95))
    spleen_r = (rng.uniform(50, 65), rng.uniform(28, 38), rng.uniform(22, 30))
    spleen = (_ellipsoid(coords, spleen_c, spleen_r, _rotation(rng, 25)) + deform < 1.0) & visceral
    spleen &= ~liver
    # Kidneys, vertebra, aorta.
    kz = zc_l - rng.uniform(40, 70)
    kid = np.zeros(cshape, bool)
    for side in (-1, 1):
        kc = (kz + rng.uniform(-10, 10), rng.uniform(45, 60), side * rng.uniform(55, 70))
        kid |= _ellipsoid(coords, kc, (rng.uniform(45, 55), 25, 28), _rotation(rng, 15)) < 1.0
    kid &= ~(liver | spleen)
    vert = ((xx / 22) ** 2 + ((yy - 70) / 20) ** 2) < 1.0
    aorta = ((xx - 15) ** 2 + (yy - 35) ** 2) < rng.uniform(10, 13) ** 2
    aorta &= ~vert

    # One coarse tissue-class map, upsampled once to the full grid (nearest).
    classes = np.zeros(cshape, np.uint8)  # 0 air
    for k, m in enumerate((body, inner, visceral, kid, vert, aorta, liver, spleen), start=1):
        classes[m] = k
    idx = [np.minimum((np.arange(n) * c) // n, c - 1) for n, c in zip(shape, cshape)]
    return classes[np.ix_(*idx)]


def _paint_liver_vessels(rng, hu, f_liver, spacing, contrast) -> None:
    """Vessels inside the liver, in place on ``hu``: thin random tubes on the full grid
    (labelled liver)."""
    shape = hu.shape
    n_vessels = int(rng.integers(4, 8))
    vessel_hu = rng.uniform(150, 190) if contrast else rng.uniform(35, 45)
    bb = np.argwhere(f_liver)
    if len(bb):
        lo, hi = bb.min(0), bb.max(0)
        vmask = np.zeros(shape, bool)
        for _ in range(n_vessels):
            p0 = rng.uniform(lo, hi)
            p1 = rng.uniform(lo, hi)
            n = int(np.linalg.norm((p1 - p0) * spacing) / min(spacing)) + 2
            pts = np.linspace(p0, p1, n).round().astype(int)
            pts = np.clip(pts, 0, np.array(shape) - 1)
            vmask[pts[:, 0], pts[:, 1], pts[:, 2]] = True
        r_mm = rng.uniform(2.5, 4.0)
        ball = _ball(r_mm, spacing)
        pad = np.array(ball.shape) // 2 + 1
        lo = np.maximum(lo - pad, 0)
        hi = np.minimum(hi + pad + 1, np.array(shape))
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        vbox = ndi.binary_dilation(vmask[box], structure=ball) & f_liver[box]
        hu[box][vbox] = vessel_hu


def _ball(r_mm, spacing):
    rad = [max(1, int(np.ceil(r_mm / s))) for s in spacing]
    g = np.meshgrid(*[np.arange(-r, r + 1) * s for r, s in zip(rad, spacing)], indexing="ij")
    return (g[0] ** 2 + g[1] ** 2 + g[2] ** 2) <= r_mm**2


def _store_with_direction(hu, labels, spacing, direction):
    """Re-store canonical arrays so that their index axes follow ``direction``.

    ``direction`` must be a signed permutation matrix (columns = index axes i, j, k).
    """
    d = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    if not np.allclose(np.abs(d).sum(0), 1) or not np.allclose(np.abs(d).sum(1), 1):
        raise ValueError(f"expected a signed permutation direction matrix, got {d.tolist()}")
    # New array axis a (index axis c = 2 - a) runs along physical axis p = argmax |d[:, c]|,
    # which is canonical array axis 2 - p; reversed when the sign is negative.
    axes = []
    flips = []
    for a in range(3):
        c = 2 - a
        p = int(np.argmax(np.abs(d[:, c])))
        axes.append(2 - p)
        flips.append(d[p, c] < 0)
    out = []
    for arr in (hu, labels):
        t = np.transpose(arr, axes)
        fl = tuple(a for a in range(3) if flips[a])
        out.append(np.ascontiguousarray(np.flip(t, fl) if fl else t))
    sp = tuple(spacing[a] for a in axes)
    return out[0], out[1], sp, d


# --- multi-structure anatomy maps (label-map synthesis, training/synth.py) ----------
# Tissue vocabulary (training.tissues, re-exported here): TISSUES, N_TISSUES.


@dataclass
class _Canvas:
    """The grid of :func:`make_anatomy_map` (mm coordinates centred on the volume, sparse
    ``zz``/``yy``/``xx``), its label map ``lab`` and the generator every stage draws from."""

    rng: np.random.Generator
    spacing_mm: float
    ez: float
    ext: np.ndarray
    shape: tuple
    zz: np.ndarray
    yy: np.ndarray
    xx: np.ndarray
    coords: list
    lab: np.ndarray
    deform: np.ndarray

    def ell(self, c, r, max_rot=15.0):
        """Normalised radius^2 of a randomly rotated ellipsoid (centre, radii in mm)."""
        return _ellipsoid(self.coords, c, r, _rotation(self.rng, max_rot))

    def tube(self, points, radius):
        """Union of balls along a polyline (mm points (z, y, x))."""
        shape, ext, spacing_mm = self.shape, self.ext, self.spacing_mm
        zz, yy, xx = self.zz, self.yy, self.xx
        m = np.zeros(shape, bool)
        pts = np.asarray(points, float)
        for a, b in zip(pts[:-1], pts[1:]):
            n = int(np.linalg.norm(b - a) / (0.5 * radius)) + 1
            for t in np.linspace(0, 1, n):
                p = a + t * (b - a)
                lo = [max(0, int((p[k] + ext[k] / 2 - radius) / spacing_mm)) for k in range(3)]
                hi = [
                    min(shape[k], int((p[k] + ext[k] / 2 + radius) / spacing_mm) + 2)
                    for k in range(3)
                ]
                sl = tuple(slice(lo[k], hi[k]) for k in range(3))
                d2 = (
                    (zz[sl[0], :, :] - p[0]) ** 2
                    + (yy[:, sl[1], :] - p[1]) ** 2
                    + (xx[:, :, sl[2]] - p[2]) ** 2
                )
                m[sl] |= d2 <= radius**2
        return m


def _canvas(seed, spacing_mm, extent_z_mm) -> _Canvas:
    rng = np.random.default_rng(seed)
    ez = float(extent_z_mm) if extent_z_mm else float(rng.uniform(520, 600))
    ext = np.array([ez, 270.0, 380.0])
    shape = tuple(int(round(e / spacing_mm)) for e in ext)
    ax = [(np.arange(n) + 0.5) * spacing_mm - e / 2 for n, e in zip(shape, ext)]
    zz, yy, xx = np.meshgrid(*[a.astype(np.float32) for a in ax], indexing="ij", sparse=True)
    coords = np.broadcast_arrays(zz, yy, xx)
    lab = np.zeros(shape, np.uint8)
    deform = _smooth_noise(rng, shape, (40.0 / spacing_mm,) * 3, 0.1)
    return _Canvas(rng, spacing_mm, ez, ext, shape, zz, yy, xx, coords, lab, deform)


@dataclass
class _Trunk:
    """Body geometry shared by the stages: outline semi-axes (mm), diaphragm height
    ``z_d``, the body / muscle-wall / cavity masks and the diaphragm ``dome`` height."""

    ax_x: float
    ax_y: float
    z_d: float
    body: np.ndarray
    wall: np.ndarray
    cavity: np.ndarray
    dome: np.ndarray | None = None


def _body_and_chest(c: _Canvas) -> _Trunk:
    """Body outline (larger over the chest), fat layer, muscle wall, cavity; ribs; lungs,
    mediastinum and heart above the diaphragm (dome higher on the right: low x)."""
    T, lab, rng = TISSUES, c.lab, c.rng
    zz, yy, xx = c.zz, c.yy, c.xx
    ax_x = rng.uniform(135, 170)
    ax_y = rng.uniform(95, 125)
    z_d = rng.uniform(0.05, 0.2) * c.ez  # diaphragm dome height (z = 0 mid-volume)
    widen = 1.0 + 0.08 * np.clip((zz - z_d + 60) / 100, 0, 1)
    body_r = (xx / (ax_x * widen)) ** 2 + (yy / (ax_y * widen)) ** 2 + 0.4 * c.deform
    lab[body_r < 1.0] = T["fat"]
    fat_t = rng.uniform(10, 35)
    wall = ((xx / (ax_x * widen - fat_t)) ** 2 + (yy / (ax_y * widen - fat_t)) ** 2) < 1.0
    lab[wall & (body_r < 1.0)] = T["muscle"]
    mt = rng.uniform(8, 16)
    cavity = ((xx / (ax_x * widen - fat_t - mt)) ** 2 + (yy / (ax_y * widen - fat_t - mt)) ** 2) < 1
    cavity = cavity & (body_r < 1.0)
    lab[cavity] = T["fat"]  # mesenteric / retroperitoneal fat
    tr = _Trunk(ax_x, ax_y, z_d, body_r < 1.0, wall, cavity)

    # Ribs: bands inside the wall over the upper abdomen and chest.
    rib_phase = rng.uniform(0, 25)
    ribs = (
        wall
        & ~cavity
        & (np.sin((zz + rib_phase) * 2 * np.pi / 25.0) > 0.55)
        & (zz > z_d - 140)
        & (yy > -ax_y * 0.6)
    )
    lab[ribs] = T["bone"]
    dome = z_d - 40 + 35 * ((xx / ax_x) ** 2 + 0.5 * (yy / ax_y) ** 2) + 8 * (xx < 0) * 1.0
    tr.dome = dome
    thorax = cavity & (zz > dome)
    lab[thorax] = T["lung"]
    mediast = thorax & (np.abs(xx - 5) < rng.uniform(25, 35)) & (yy < 60)
    lab[mediast] = T["soft"]
    heart = (
        c.ell(
            (z_d + rng.uniform(45, 70), -rng.uniform(10, 35), rng.uniform(10, 35)),
            (rng.uniform(55, 70), rng.uniform(45, 55), rng.uniform(55, 70)),
            20,
        )
        < 1.0
    )
    lab[heart & cavity & (zz > z_d - 10)] = T["heart"]
    return tr


def _upper_organs(c: _Canvas, tr: _Trunk) -> dict:
    """Liver (right, under the right dome, with a left lobe across the midline) and the
    gallbladder below it; spleen (left posterior) and stomach (left upper quadrant,
    antero-medial to it). Returns their centres, radii and masks."""
    T, lab, rng, zz, deform = TISSUES, c.lab, c.rng, c.zz, c.deform
    cavity, dome = tr.cavity, tr.dome
    liver_c = (tr.z_d - rng.uniform(50, 80), rng.uniform(-20, 5), -rng.uniform(50, 75))
    liver_r = (rng.uniform(65, 90), rng.uniform(65, 85), rng.uniform(65, 85))
    liver = (c.ell(liver_c, liver_r) + deform < 1.0) & cavity & (zz <= dome)
    # left lobe reaching across the midline, anterior
    ll = (
        c.ell(
            (liver_c[0] + 20, liver_c[1] - 25, rng.uniform(-10, 25)),
            (rng.uniform(30, 45), rng.uniform(20, 30), rng.uniform(40, 60)),
            20,
        )
        + deform
        < 1.0
    )
    liver |= ll & cavity & (zz <= dome)
    lab[liver] = T["liver"]
    gb = (
        c.ell(
            (
                liver_c[0] - liver_r[0] * rng.uniform(0.3, 0.6),
                liver_c[1] - liver_r[1] * 0.5,
                liver_c[2] + rng.uniform(0, 25),
            ),
            (rng.uniform(25, 45), rng.uniform(12, 20), rng.uniform(12, 20)),
            30,
        )
        < 1.0
    )
    if rng.random() < 0.85:
        lab[gb & cavity] = T["gallbladder"]

    spleen_c = (liver_c[0] + rng.uniform(-5, 25), rng.uniform(20, 45), rng.uniform(70, 95))
    spleen_r = (rng.uniform(50, 75), rng.uniform(28, 45), rng.uniform(24, 36))
    spleen = (c.ell(spleen_c, spleen_r, 25) + deform < 1.0) & cavity & (zz <= dome) & ~liver
    stom_c = (spleen_c[0] - rng.uniform(5, 30), rng.uniform(-35, -5), rng.uniform(35, 65))
    stom_r = (rng.uniform(45, 75), rng.uniform(25, 45), rng.uniform(35, 55))
    stomach = (c.ell(stom_c, stom_r, 30) + deform < 1.0) & cavity & (zz <= dome) & ~liver
    lab[stomach & ~spleen] = T["stomach"]
    lab[spleen] = T["spleen"]
    return {
        "liver_c": liver_c,
        "liver_r": liver_r,
        "liver": liver,
        "spleen_c": spleen_c,
        "spleen_r": spleen_r,
        "spleen": spleen,
        "stomach": stomach,
    }


def _spine_and_muscles(c: _Canvas, tr: _Trunk) -> None:
    """Vertebral column, cord, laminae, back muscles and psoas."""
    T, lab, zz, yy, xx = TISSUES, c.lab, c.zz, c.yy, c.xx
    vert = ((xx / 22) ** 2 + ((yy - 70) / 20) ** 2 < 1.0) & tr.body
    vert = vert & np.ones_like(zz, bool)
    lab[vert] = T["bone"]
    lab[((xx / 8) ** 2 + ((yy - 98) / 8) ** 2 < 1.0) & np.ones_like(zz, bool)] = T["cord"]
    lamina = ((np.abs(xx) < 28) & (np.abs(yy - 98) < 14)) & ~(
        (xx / 8) ** 2 + ((yy - 98) / 8) ** 2 < 1.0
    )
    lab[lamina & np.ones_like(zz, bool)] = T["bone"]
    for side in (-1, 1):
        back = ((xx - side * 45) / 28) ** 2 + ((yy - 105) / 22) ** 2 < 1.0
        lab[back & tr.body & ~(lab == T["bone"])] = T["muscle"]
        psoas_r = np.clip((tr.z_d - 150 - zz) / 120, 0, 1) * 18 + 4
        psoas = (((xx - side * 40) ** 2 + (yy - 60) ** 2) < psoas_r**2) & (zz < tr.z_d - 150)
        lab[psoas & tr.cavity] = T["muscle"]


def _retroperitoneum(c: _Canvas, tr: _Trunk, o: dict) -> tuple[float, float, np.ndarray]:
    """Kidneys with cortex and medulla; the pancreas from the splenic hilum to a head
    right of the midline; aorta and IVC along z, iliac arteries below the bifurcation,
    portal vein (confluence -> liver hilum) and splenic vein (confluence -> spleen).
    Returns the kidneys' height ``kz``, the aortic bifurcation's ``z_bif`` and the
    iliac-artery mask."""
    T, lab, rng, tube = TISSUES, c.lab, c.rng, c.tube
    cavity, body, liver, spleen = tr.cavity, tr.body, o["liver"], o["spleen"]
    liver_c, spleen_c, spleen_r = o["liver_c"], o["spleen_c"], o["spleen_r"]
    kz = liver_c[0] - rng.uniform(40, 80)
    for side in (-1, 1):
        kc = (
            kz + (12 if side > 0 else -5) + rng.uniform(-10, 10),
            rng.uniform(45, 60),
            side * rng.uniform(55, 70),
        )
        d = c.ell(kc, (rng.uniform(45, 58), rng.uniform(22, 28), rng.uniform(25, 30)))
        free = cavity & ~liver & ~spleen
        lab[(d < 1.0) & free] = T["kidney_cortex"]
        lab[(d < rng.uniform(0.3, 0.5)) & free] = T["kidney_medulla"]

    pz = kz + rng.uniform(10, 35)
    p_pts = [
        (pz + rng.uniform(-5, 10), rng.uniform(15, 30), spleen_c[2] - spleen_r[2] * 0.8),
        (pz, rng.uniform(5, 20), rng.uniform(10, 30)),
        (pz - rng.uniform(10, 30), rng.uniform(0, 15), -rng.uniform(15, 35)),
    ]
    panc = tube(p_pts, rng.uniform(9, 14)) & cavity & ~liver & ~spleen & ~o["stomach"]
    lab[panc] = T["pancreas"]

    z_bif = kz - rng.uniform(90, 130)
    ar = rng.uniform(10, 13)
    top = c.ext[0] / 2
    bot = -c.ext[0] / 2
    lab[tube([(top, 30, 15), (z_bif, 35, 5)], ar) & body] = T["artery"]
    iliac = np.zeros(c.shape, bool)
    for side in (-1, 1):
        m_il = tube([(z_bif, 35, 5), (bot, 20, side * 90)], ar * 0.6) & body
        lab[m_il] = T["artery"]
        iliac |= m_il
    lab[tube([(tr.z_d + 20, 30, -25), (z_bif - 10, 38, -20)], rng.uniform(9, 13)) & body] = T[
        "vein"
    ]
    conf = (pz, rng.uniform(10, 20), rng.uniform(-5, 10))
    lab[
        tube([conf, (liver_c[0] - 10, liver_c[1] + 10, liver_c[2] + 25)], rng.uniform(6, 9))
        & cavity
        & ~spleen
    ] = T["portal_vein"]
    lab[
        tube([conf, p_pts[0][:1] + (p_pts[0][1] + 8, p_pts[0][2])], rng.uniform(4, 6))
        & cavity
        & ~liver
        & ~spleen
    ] = T["portal_vein"]
    return kz, z_bif, iliac


def _bowel_and_pelvis(c: _Canvas, tr: _Trunk, o: dict, kz: float, z_bif: float) -> None:
    """Colon: ascending (right) -> hepatic flexure -> transverse -> splenic flexure
    (touching the spleen's lower pole) -> descending (left) -> sigmoid; small-bowel
    loops (random tubes in the lower abdomen); bladder, hip bones, femoral heads."""
    T, lab, rng, tube, zz = TISSUES, c.lab, c.rng, c.tube, c.zz
    cavity, spleen_c, spleen_r = tr.cavity, o["spleen_c"], o["spleen_r"]
    cr = rng.uniform(16, 24)
    flex_l = (
        spleen_c[0] - spleen_r[0] * rng.uniform(0.5, 1.0),
        rng.uniform(-10, 20),
        rng.uniform(75, 95),
    )
    c_pts = [
        (kz - rng.uniform(120, 160), rng.uniform(-10, 20), -rng.uniform(80, 100)),
        (kz - rng.uniform(10, 40), rng.uniform(-10, 20), -rng.uniform(80, 100)),
        (kz + rng.uniform(-10, 20), -rng.uniform(40, 60), rng.uniform(-30, 10)),
        flex_l,
        (kz - rng.uniform(60, 100), rng.uniform(0, 30), rng.uniform(85, 105)),
        (kz - rng.uniform(160, 200), -rng.uniform(10, 40), rng.uniform(20, 60)),
    ]
    colon = tube(c_pts, cr) & cavity & (zz <= tr.dome)
    free = np.isin(lab, (T["fat"],))
    lab[colon & free] = T["colon"]
    sb = np.zeros(c.shape, bool)
    for _ in range(int(rng.integers(10, 25))):
        ctr = (kz - rng.uniform(20, 170), rng.uniform(-60, 40), rng.uniform(-70, 70))
        sb |= tube([ctr, np.asarray(ctr) + rng.uniform(-40, 40, 3)], rng.uniform(10, 17))
    free = lab == T["fat"]
    lab[sb & cavity & free & (zz < kz + 20)] = T["small_bowel"]

    pelvis_z = z_bif - rng.uniform(60, 90)
    bl = c.ell((pelvis_z - 60, -rng.uniform(30, 60), 0), (rng.uniform(30, 50), 35, 45), 10) < 1
    lab[bl & cavity] = T["bladder"]
    for side in (-1, 1):
        ring = c.ell((pelvis_z, 30, side * 95), (70, 50, 25), 20)
        lab[(ring < 1.0) & (ring > 0.6) & tr.body] = T["bone"]
        fem = c.ell((pelvis_z - 110, 0, side * 95), (25, 25, 25), 0) < 1.0
        lab[fem & tr.body] = T["bone"]


def make_anatomy_map(
    seed: int, spacing_mm: float = 3.0, extent_z_mm: float | None = None, parts: dict | None = None
):
    """A multi-structure trunk label map (chest to pelvis) in the canonical LPS frame.

    Unlike :func:`make_phantom` (liver and spleen in a plain body), the map holds the
    organs that surround the spleen and liver on real CT: stomach (left upper
    quadrant, next to the spleen), colon with its splenic and hepatic flexures,
    small-bowel loops, kidneys with cortex and medulla, pancreas from the splenic
    hilum to the midline, gallbladder under the liver, aorta, inferior vena cava,
    portal and splenic veins, vertebrae, ribs, back and psoas muscles, lungs and
    heart above the diaphragm and bladder and hip bones in the pelvis. It carries no
    attenuation: ``training.synth`` paints it.

    Parameters
    ----------
    seed : int
        Seed of every random shape and position (deterministic).
    spacing_mm : float
        Isotropic grid spacing in mm.
    extent_z_mm : float, optional
        Cranio-caudal extent (default drawn in 520-600 mm: chest to pelvis).
    parts : dict, optional
        Filled with masks of sub-structures that share a tissue class but not a
        training class: ``"iliac_artery"`` (artery tissue that is not aorta).

    Returns
    -------
    labels : uint8 ndarray [z, y, x]
        Tissue classes of :data:`TISSUES` (array axes: z superior, y posterior,
        x patient left, as :func:`make_phantom`).
    spacing : tuple of 3 floats
    """
    c = _canvas(seed, spacing_mm, extent_z_mm)
    trunk = _body_and_chest(c)
    organs = _upper_organs(c, trunk)
    _spine_and_muscles(c, trunk)
    kz, z_bif, iliac = _retroperitoneum(c, trunk, organs)
    _bowel_and_pelvis(c, trunk, organs, kz, z_bif)
    if parts is not None:
        parts["iliac_artery"] = iliac & (c.lab == TISSUES["artery"])
    return c.lab, (spacing_mm,) * 3
