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
reorients by the direction cosines (``client.preprocess.canonical_axes``) sees the
same anatomy.

Truth: ``liver_hu`` and ``spleen_hu`` are the parenchyma attenuations (before
vessels and noise); ``ratio = liver_hu / spleen_hu``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from client.contract import GRADE_THRESHOLDS, LABEL_LIVER, LABEL_SPLEEN

# Grade -> ratio interval kept at least 0.05 away from every threshold.
_GRADE_RANGES = {
    "normal": (GRADE_THRESHOLDS.normal_above + 0.05, 1.45),
    "mild": (GRADE_THRESHOLDS.mild_above + 0.05, GRADE_THRESHOLDS.normal_above - 0.05),
    "moderate": (GRADE_THRESHOLDS.moderate_above + 0.05, GRADE_THRESHOLDS.mild_above - 0.05),
    "severe": (0.1, GRADE_THRESHOLDS.moderate_above - 0.05),
}


def grade_of_ratio(r: float) -> str:
    """Grade of a liver/spleen ratio by the contract thresholds (boundary -> worse grade)."""
    t = GRADE_THRESHOLDS
    if r > t.normal_above:
        return "normal"
    if r > t.mild_above:
        return "mild"
    if r > t.moderate_above:
        return "moderate"
    return "severe"


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
        """The phantom as a :class:`client.scan.ScanVolume` (metadata: modality CT)."""
        from client.scan import ScanVolume

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

    Returns
    -------
    Phantom
    """
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in shape)
    if spacing is None:
        sxy = fov_mm / max(shape[1], shape[2])
        sz = min(5.0, 1.1 * fov_mm / shape[0])
        spacing = (sz, sxy, sxy)
    spacing = tuple(float(s) for s in spacing)
    ext = np.array(shape) * np.array(spacing)  # physical extent (z, y, x) mm

    liver_val, spleen_val = _pick_attenuation(rng, liver_hu, spleen_hu, ratio, grade, contrast)

    # Work on a coarse grid for shapes (speed), then upsample label masks by nearest.
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
    full = classes[np.ix_(*idx)]
    table = np.array(
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
    hu = table[full]
    f_liver, f_spleen = full == 7, full == 8
    labels = np.zeros(shape, np.uint8)
    labels[f_liver] = LABEL_LIVER
    labels[f_spleen] = LABEL_SPLEEN

    # Vessels inside the liver: thin random tubes on the full grid (labelled liver).
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
        perm = rng.permutation(3)
        signs = rng.choice([-1.0, 1.0], size=3)
        direction = np.zeros((3, 3))
        for c in range(3):
            direction[perm[c], c] = signs[c]
    if direction is not None:
        hu, labels, spacing, d = _store_with_direction(hu, labels, spacing, direction)
    return Phantom(hu=hu, labels=labels, spacing=spacing, origin=origin, direction=d, truth=truth)


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
