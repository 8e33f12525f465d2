"""Label-map-driven synthesis of training CT (the SynthSeg idea, Billot et al.).

A training image is painted from an anatomical label map, never copied from a real
image: the 61-structure map of the shared real CT (``labels_all.nii.gz``, its
anatomy, not its intensities) or a phantom anatomy map
(:func:`training.phantoms.make_anatomy_map`). Per sample, deterministic for a seed:

1. geometry: random affine (scale 0.8-1.25 with a little anisotropy, rotation up
   to +-15 degrees about the body axis and +-6 degrees about the others,
   translation) and a smooth elastic displacement, applied by sampling the label
   map (nearest neighbour) at the scan's voxel positions;
2. field of view: a whole abdomen, a scan whose edge cuts the liver or spleen, a
   thin slab of 20-60 mm of abdomen (which the whole-volume resize stretches
   strongly), a chest-only or pelvis-only range (labels then empty or nearly), a
   tight in-plane field of view, arms beside the body or not;
3. attenuation: every tissue drawn from CT-plausible ranges of one contrast phase
   (unenhanced, arterial, portal-venous, delayed; :data:`HU_RANGES`), liver
   steatosis (liver/spleen ratio 0.2-1.5 unenhanced), smooth texture, vessels inside
   the liver, heterogeneous arterial spleen, air/fluid/food in stomach and bowel,
   oral contrast, occasional liver lesions;
4. acquisition: slice interval 0.6-5 mm with a slice profile (Gaussian, FWHM =
   slice thickness) blurred along z on a finer grid and then sampled, noise that
   grows as slices get thinner, streaks; the image is then stored as int16 HU in a
   random orientation (30 %);
5. the serving code's :func:`client.reading.preprocess.preprocess_grid` and
   :func:`client.reading.preprocess.labels_to_grid` bring image and labels to the model's
   input grid (``resize``: the whole volume at model size; ``spacing``: the fixed-
   spacing grid, of which :func:`training_window` takes one model-size window;
   :mod:`training.windows`, re-exported here).

The acquisition is simulated at a moderate grid (96-128 pixels in-plane, at least
about 1.25 mm between simulated slices) rather than 512 x 512: the model sees 64^3
anyway, and a sample then costs about a second.

Issue 19 (multi-class, ``--mixture neighbours_heldout`` / ``neighbours_all``): the
anatomy sources add three image-less TotalSegmentator label maps (their body built
by :mod:`training.labelmap_body`), the targets are the class table of
:mod:`training.classes` (``synth_scan(multiclass=True)``: ``classes`` beside the
liver/spleen ``labels``), the variety grows (:func:`vary_anatomy`: wider affine and
elastic ranges, organ sizes, fluid) and every multi-class mixture declares its
source-level split (:data:`SPLITS`: real anatomies for training, real anatomies held
out), checked (:func:`split_of`) and written to ``pool.json``.

``python -m training.synth --out_dir runs/pool_synth --start 0 --count 2000`` writes
deterministic shards (``synth_<start>.npz``) that ``training.demo_train --pool_dir``
picks up while it trains.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from client.core.contract import LABEL_LIVER, LABEL_SPLEEN
from client.reading.preprocess import PreprocessSpec, as_spec, canonical_axes

from .classes import NUM_CLASSES, labels_dict, tissue_lut, totalseg_lut
from .labelmap_body import LABELMAP_SUBJECTS, TOTALSEG_TISSUE, labelmap_anatomy, paint_envelope
from .phantoms import _store_with_direction, make_anatomy_map, random_direction
from .samples import phantom_sample
from .tissues import N_TISSUES, TISSUES
from .windows import training_window

PHASES = ("unenhanced", "arterial", "portal", "delayed")
PHASE_P = (0.3, 0.2, 0.35, 0.15)
SCENARIOS = ("full", "cut", "slab", "chest", "pelvis")
SCENARIO_P = (0.55, 0.15, 0.14, 0.08, 0.08)

_ROOT = Path(__file__).resolve().parents[1]
TOTALSEG_DIR = _ROOT.parent / "shared" / "data" / "totalseg_example"

T = TISSUES
# Mean attenuation ranges (HU) per tissue and phase: (unenhanced, arterial, portal, delayed).
# Liver is drawn from the spleen and a liver/spleen ratio (steatosis), see _draw_means.
HU_RANGES: dict[str, tuple] = {
    "air": ((-1010, -990),) * 4,
    "gas": ((-1000, -900),) * 4,
    "fat": ((-125, -80),) * 4,
    "muscle": ((35, 60), (40, 70), (45, 75), (45, 70)),
    "bone": ((200, 600),) * 4,
    "spleen": ((35, 55), (90, 150), (100, 150), (80, 115)),
    "kidney_cortex": ((25, 40), (150, 260), (150, 220), (110, 160)),
    "kidney_medulla": ((25, 40), (50, 100), (130, 200), (120, 180)),
    "stomach": ((0, 40),) * 4,
    "small_bowel": ((0, 40),) * 4,
    "colon": ((-80, 40),) * 4,
    "pancreas": ((25, 50), (90, 140), (80, 120), (60, 90)),
    "gallbladder": ((0, 25),) * 4,
    "artery": ((35, 50), (200, 350), (130, 220), (90, 140)),
    "vein": ((35, 50), (60, 130), (120, 190), (90, 140)),
    "portal_vein": ((35, 50), (90, 160), (140, 210), (90, 140)),
    "lung": ((-900, -780),) * 4,
    "bladder": ((0, 20), (0, 20), (0, 25), (0, 300)),
    "soft": ((20, 50), (40, 90), (50, 100), (50, 90)),
    "heart": ((35, 50), (200, 380), (130, 210), (90, 140)),
    "cord": ((15, 40),) * 4,
    "cartilage": ((60, 150),) * 4,
}
# Texture SD (HU) of each tissue: low-frequency and fine components.
_TEX = {
    "fat": 8,
    "muscle": 6,
    "bone": 120,
    "liver": 6,
    "spleen": 6,
    "kidney_cortex": 10,
    "kidney_medulla": 10,
    "stomach": 10,
    "small_bowel": 10,
    "colon": 60,
    "pancreas": 10,
    "lung": 30,
    "soft": 10,
}

# TotalSegmentator structure name -> tissue class (by prefix, first match wins); one
# table for the shared CT's map and the image-less label maps (training.labelmap_body).
_TOTALSEG_TISSUE = TOTALSEG_TISSUE


# --- anatomy sources -----------------------------------------------------------------
def totalseg_tissue_map(labels_all: np.ndarray, names: dict, hu: np.ndarray) -> np.ndarray:
    """Tissue-class map of a TotalSegmentator multi-structure segmentation.

    Voxels of named structures get their tissue class (kidneys split into cortex and
    medulla by a 6 mm erosion); unlabelled voxels get a coarse class from a
    threshold of the scan (outside air, gas inside the body, fat, soft tissue,
    bone): the anatomy of that scan, not its intensities, is kept.

    Parameters
    ----------
    labels_all : int ndarray [z, y, x]
    names : dict
        Label value (str or int) -> structure name.
    hu : ndarray
        The scan on the same grid (for the unlabelled voxels only).
    """
    if labels_all.shape != hu.shape:
        raise ValueError(f"label map {labels_all.shape} and scan {hu.shape} differ in shape")
    out = np.zeros(labels_all.shape, np.uint8)
    inside = hu > -500
    body = np.zeros_like(inside)
    lab, n = ndi.label(inside)
    if n:
        sizes = ndi.sum(inside, lab, range(1, n + 1))
        body = lab == (1 + int(np.argmax(sizes)))
    body = np.stack([ndi.binary_fill_holes(s) for s in body])
    out[body & (hu <= -500)] = T["gas"]
    out[body & (hu > -500) & (hu <= -20)] = T["fat"]
    out[body & (hu > -20) & (hu <= 180)] = T["muscle"]
    out[body & (hu > 180)] = T["bone"]
    kidney = np.zeros(labels_all.shape, bool)
    for value, name in names.items():
        tissue = next((t for prefix, t in _TOTALSEG_TISSUE if name.startswith(prefix)), None)
        if tissue is None:
            continue
        m = labels_all == int(value)
        if tissue == "kidney":
            kidney |= m
        else:
            out[m] = T[tissue]
    if kidney.any():
        out[kidney] = T["kidney_cortex"]
        out[ndi.binary_erosion(kidney, iterations=2)] = T["kidney_medulla"]
    return out


@functools.lru_cache(maxsize=2)
def real_anatomy(data_dir: str = str(TOTALSEG_DIR)):
    """Tissue map of the shared real CT's 61-structure segmentation, canonical orientation.

    Returns
    -------
    tissue : uint8 [z, y, x] (axes z superior, y posterior, x patient left), spacing (z, y, x)
    """
    import SimpleITK as sitk

    d = Path(data_dir)
    for f in ("ct.nii.gz", "labels_all.nii.gz", "labels_all_names.json"):
        if not (d / f).exists():
            raise FileNotFoundError(f"{d / f}: needed for the real-anatomy synthesis source")
    img = sitk.ReadImage(str(d / "ct.nii.gz"))
    hu = sitk.GetArrayFromImage(img)
    lab = sitk.GetArrayFromImage(sitk.ReadImage(str(d / "labels_all.nii.gz")))
    names = json.loads((d / "labels_all_names.json").read_text(encoding="utf-8"))
    tissue = totalseg_tissue_map(lab, names, hu)
    direction = np.asarray(img.GetDirection()).reshape(3, 3)
    spacing = tuple(img.GetSpacing())[::-1]
    axes, flips = canonical_axes(direction)
    tissue = np.transpose(tissue, axes)
    fl = tuple(a for a in range(3) if flips[a])
    if fl:
        tissue = np.flip(tissue, fl)
    return np.ascontiguousarray(tissue), tuple(float(spacing[a]) for a in axes)


@functools.lru_cache(maxsize=1)
def real_image(data_dir: str = str(TOTALSEG_DIR)):
    """The shared real CT itself in canonical orientation, and its median HU per tissue.

    Used only by the ``real_image`` source (augmented real CT for a shippable run);
    the synthetic-only sources never read these intensities.

    Returns
    -------
    hu : float32 [z, y, x], medians : float32 [N_TISSUES] (NaN where a tissue is absent)
    """
    import SimpleITK as sitk

    img = sitk.ReadImage(str(Path(data_dir) / "ct.nii.gz"))
    hu = sitk.GetArrayFromImage(img).astype(np.float32)
    axes, flips = canonical_axes(np.asarray(img.GetDirection()).reshape(3, 3))
    hu = np.transpose(hu, axes)
    fl = tuple(a for a in range(3) if flips[a])
    if fl:
        hu = np.flip(hu, fl)
    hu = np.ascontiguousarray(hu)
    tissue, _ = real_anatomy(data_dir)
    med = np.full(N_TISSUES, np.nan, np.float32)
    for t in range(N_TISSUES):
        m = tissue == t
        if m.any():
            med[t] = float(np.median(hu[m]))
    return hu, med


# Tissues whose mean the ``real_image`` source moves to the drawn phase (contrast and
# steatosis); the others keep the real scan's values.
_ENHANCING = (
    "liver",
    "spleen",
    "kidney_cortex",
    "kidney_medulla",
    "pancreas",
    "artery",
    "vein",
    "portal_vein",
    "heart",
    "muscle",
)


@functools.lru_cache(maxsize=1)
def real_classes(data_dir: str = str(TOTALSEG_DIR)) -> np.ndarray:
    """Training-class map (:mod:`training.classes`) of the shared CT's 61-structure map,
    in the canonical orientation of :func:`real_anatomy` (by structure name)."""
    import SimpleITK as sitk

    d = Path(data_dir)
    img = sitk.ReadImage(str(d / "labels_all.nii.gz"))
    names = json.loads((d / "labels_all_names.json").read_text(encoding="utf-8"))
    cls = totalseg_lut(names)[sitk.GetArrayFromImage(img)]
    axes, flips = canonical_axes(np.asarray(img.GetDirection()).reshape(3, 3))
    cls = np.transpose(cls, axes)
    fl = tuple(a for a in range(3) if flips[a])
    if fl:
        cls = np.flip(cls, fl)
    return np.ascontiguousarray(cls)


@functools.lru_cache(maxsize=48)
def _phantom_source(anatomy_seed: int):
    parts: dict = {}
    lab, sp = make_anatomy_map(int(anatomy_seed), parts=parts)
    return lab, sp, np.flatnonzero(parts["iliac_artery"]).astype(np.int64)


def phantom_anatomy(anatomy_seed: int):
    """Cached :func:`training.phantoms.make_anatomy_map` (3 mm grid)."""
    lab, sp, _ = _phantom_source(int(anatomy_seed))
    return lab, sp


def phantom_classes(anatomy_seed: int) -> np.ndarray:
    """Training-class map of a phantom anatomy (iliac arteries: background)."""
    lab, _, iliac = _phantom_source(int(anatomy_seed))
    cls = tissue_lut()[lab]
    cls.ravel()[iliac] = 0
    return cls


# --- random fields -----------------------------------------------------------------
def _smooth_field(rng, axes_mm, corr_mm):
    """Smooth zero-mean, unit-SD random field on the separable grid ``axes_mm``.

    Random coefficients on a coarse grid (spacing ``corr_mm``) spread by Gaussian
    weights along each axis (separable contractions: cheap on large grids).
    """
    ws = []
    for a in axes_mm:
        lo, hi = float(a.min()) - corr_mm, float(a.max()) + corr_mm
        g = np.arange(lo, hi + corr_mm, corr_mm, dtype=np.float32)
        w = np.exp(-0.5 * ((a[:, None] - g[None, :]) / (0.6 * corr_mm)) ** 2).astype(np.float32)
        ws.append(w)
    c = rng.standard_normal(tuple(w.shape[1] for w in ws)).astype(np.float32)
    f = np.tensordot(c, ws[2], axes=([2], [1]))  # gz, gy, nx
    f = np.tensordot(f, ws[1], axes=([1], [1]))  # gz, nx, ny
    f = np.tensordot(ws[0], f, axes=([1], [0]))  # nz, nx, ny
    f = np.ascontiguousarray(np.swapaxes(f, 1, 2))
    f -= f.mean()
    sd = float(f.std())
    return f / sd if sd > 0 else f


def _rot(rng, deg_z, deg_other):
    """Rotation matrix in (z, y, x) coordinates: about z (axial plane) and y/x tilts."""
    a = np.deg2rad(rng.uniform(-deg_z, deg_z))
    b, c = np.deg2rad(rng.uniform(-deg_other, deg_other, 2))
    rz = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rx = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


# --- attenuation ---------------------------------------------------------------------
def draw_means(rng, phase: str) -> tuple[np.ndarray, dict]:
    """Mean HU of every tissue for one phase; liver from the spleen and a steatosis ratio."""
    k = PHASES.index(phase)
    mean = np.zeros(N_TISSUES, np.float32)
    for name, ranges in HU_RANGES.items():
        mean[T[name]] = rng.uniform(*ranges[k])
    spleen = float(mean[T["spleen"]])
    if phase == "unenhanced":
        ratio = float(rng.uniform(0.2, 1.5))
        liver = ratio * spleen
        if rng.random() < 0.08:  # severe steatosis: liver below 10 HU
            liver = float(rng.uniform(-30, 10))
    elif phase == "arterial":
        liver = float(rng.uniform(55, 95) - rng.uniform(0, 45) * (rng.random() < 0.4))
    else:
        ratio = float(rng.uniform(0.45, 1.3))
        liver = ratio * spleen
    mean[T["liver"]] = liver
    return mean, {"phase": phase, "liver_hu": liver, "spleen_hu": spleen}


# --- one synthetic scan ----------------------------------------------------------------
def _z_range(rng, scen, src_lo, src_hi, org_lo, org_hi, organs, sz):
    """Scan range [a, b] in source mm along z for a field-of-view scenario."""
    h = org_hi - org_lo
    if scen == "cut":
        lo, hi = organs[int(rng.integers(len(organs)))]
        oh = hi - lo
        frac, length = rng.uniform(0.15, 0.6), rng.uniform(150, 350) / sz
        a = lo + frac * oh  # the bottom of the scan cuts the organ
        b = a + length
        if rng.random() < 0.5 or src_hi - a < 100 / sz:  # the top cuts it instead
            b = hi - frac * oh
            a = b - length
    elif scen == "slab":
        t = rng.uniform(20, 60) / sz
        c = rng.uniform(org_lo + 0.2 * h, org_hi - 0.1 * h)
        a, b = c - t / 2, c + t / 2
    elif scen == "chest":
        a = org_hi + rng.uniform(5, 40)
        b = a + rng.uniform(120, 250) / sz
    elif scen == "pelvis":
        b = org_lo - rng.uniform(5, 40)
        a = b - rng.uniform(120, 250) / sz
    else:
        a = org_lo - rng.uniform(20, 200) / sz
        b = org_hi + rng.uniform(10, 150) / sz
    return max(a, src_lo), min(b, src_hi)


def warp_map(src: np.ndarray, spacing, p) -> np.ndarray:
    """Sample a label map at physical points (nearest neighbour).

    Parameters
    ----------
    src : ndarray [z, y, x]
        Label map; its voxel centres sit at ``(i + 0.5) * spacing - extent / 2`` mm
        (coordinates centred on the map).
    spacing : 3 floats
    p : three arrays (broadcastable to one shape)
        z, y, x source coordinates in mm of every output voxel.

    Returns
    -------
    ndarray of ``src.dtype``: points beyond the map in-plane are air (0); beyond its
    ends along z they take the nearest slice (the scan range is chosen inside the map).
    """
    return warp_maps([src], spacing, p)[0]


def warp_maps(srcs, spacing, p, fill=None) -> list:
    """:func:`warp_map` of several maps of one shape at the same points (indices once).

    ``fill``: value per map for points beyond the maps in-plane (default 0 each).
    """
    src = srcs[0]
    s = np.asarray(spacing, np.float64)
    ext = np.array(src.shape) * s
    idx = [
        np.clip(np.rint((p[i] + ext[i] / 2) / s[i] - 0.5), 0, src.shape[i] - 1).astype(np.intp)
        for i in range(3)
    ]
    idx = np.broadcast_arrays(*idx)
    flat = np.ravel_multi_index(idx, src.shape)
    del idx
    outside = np.zeros(flat.shape, bool)
    for i in (1, 2):
        outside |= (p[i] < -ext[i] / 2) | (p[i] > ext[i] / 2)
    outs = []
    for k, m in enumerate(srcs):
        if m.shape != src.shape:
            raise ValueError(f"maps to warp differ in shape: {m.shape} vs {src.shape}")
        o = m.ravel()[flat]
        o[outside] = 0 if fill is None else fill[k]
        outs.append(o)
    return outs


_IN_PLANE = np.zeros((1, 3, 3), bool)
_IN_PLANE[0, 1, :] = _IN_PLANE[0, :, 1] = True
_ALONG_Z = np.ones((3, 1, 1), bool)


def _box(mask, pad):
    """Bounding box of ``mask`` grown by ``pad`` voxels per axis (slices), or None."""
    nz = [np.flatnonzero(mask.any(axis=tuple(b for b in range(3) if b != a))) for a in range(3)]
    if any(len(n) == 0 for n in nz):
        return None
    return tuple(
        slice(max(0, int(n[0]) - p_), min(mask.shape[a], int(n[-1]) + p_ + 1))
        for a, (n, p_) in enumerate(zip(nz, pad))
    )


def grow_mask(mask, into, r_mm, spacing):
    """``mask`` dilated by about ``r_mm`` (in-plane, then along z) into the voxels ``into``."""
    kxy = max(1, int(round(r_mm / spacing[1])))
    kz = int(round(r_mm / spacing[0]))
    box = _box(mask, (kz, kxy, kxy))
    if box is None:
        return mask
    m = mask[box]
    allowed = into[box] | m
    m = ndi.binary_dilation(m, _IN_PLANE, iterations=kxy, mask=allowed)
    if kz:
        m = ndi.binary_dilation(m, _ALONG_Z, iterations=kz, mask=allowed)
    out = mask.copy()
    out[box] = m
    return out


def shrink_mask(mask, r_mm, spacing):
    """``mask`` eroded by about ``r_mm`` (in-plane and along z)."""
    kxy = max(1, int(round(r_mm / spacing[1])))
    kz = int(round(r_mm / spacing[0]))
    box = _box(mask, (1, 1, 1))
    if box is None:
        return mask
    m = ndi.binary_erosion(mask[box], _IN_PLANE, iterations=kxy, border_value=1)
    if kz:
        m = ndi.binary_erosion(m, _ALONG_Z, iterations=kz, border_value=1)
    out = np.zeros_like(mask)
    out[box] = m
    return out


def _balls(rng, where, n, r_lo, r_hi, spacing):
    """Union of ``n`` balls (radius drawn in mm) centred on random voxels of ``where``."""
    out = np.zeros(where.shape, bool)
    idx = np.flatnonzero(where.ravel())
    if not idx.size:
        return out
    for _ in range(n):
        c = np.unravel_index(int(idx[rng.integers(idx.size)]), where.shape)
        r = rng.uniform(r_lo, r_hi)
        k = [int(np.ceil(r / sp)) + 1 for sp in spacing]
        sl = tuple(
            slice(max(0, c[a] - k[a]), min(where.shape[a], c[a] + k[a] + 1)) for a in range(3)
        )
        g = np.ogrid[sl]
        d2 = sum(((g[a] - c[a]) * spacing[a]) ** 2 for a in range(3))
        out[sl] |= d2 <= r * r
    return out


def vary_anatomy(rng, tissue, cls, spacing) -> tuple[np.ndarray, dict]:
    """Issue 19's anatomical variety, in place on scan-grid tissue and class maps.

    Organ-size changes (hepatomegaly or a small liver, large or small spleen) grow
    organs into fat and bowel only (never into bone, muscle or other organs);
    a distended gallbladder; fluid: liver cysts (inside the liver: labelled liver;
    their exophytic part: background), kidney cysts (background: the kidney class is
    parenchyma), perihepatic free fluid (background) and, via ``info``, a water-filled
    stomach. Labels follow every change.

    Returns
    -------
    fluid : bool mask painted with water attenuation afterwards; info : what was done.
    """
    T = TISSUES
    from .classes import CLASS_INDEX

    info: dict = {"fluid_hu": float(rng.uniform(-5, 20))}
    fluid = np.zeros(tissue.shape, bool)
    soft = np.isin(tissue, (T["fat"], T["small_bowel"], T["colon"]))

    def assign(m, tname, cname):
        tissue[m] = T[tname]
        if cls is not None:
            cls[m] = CLASS_INDEX[cname]

    for organ, p_grow, grow_mm, p_shrink, shrink_mm in (
        ("liver", 0.25, (5, 25), 0.12, (4, 12)),
        ("spleen", 0.25, (5, 30), 0.10, (3, 8)),
    ):
        u = rng.random()
        m = tissue == T[organ]
        if not m.any():
            continue
        if u < p_grow:
            r = float(rng.uniform(*grow_mm))
            new = grow_mask(m, soft, r, spacing) & ~m
            assign(new, organ, organ)
            soft &= ~new
            info[f"{organ}_grown_mm"] = round(r, 1)
        elif u < p_grow + p_shrink:
            r = float(rng.uniform(*shrink_mm))
            gone = m & ~shrink_mask(m, r, spacing)
            assign(gone, "fat", "background")
            if rng.random() < 0.5:  # ascites where the organ shrank
                fluid |= gone
            soft |= gone
            info[f"{organ}_shrunk_mm"] = round(r, 1)
    gb = tissue == T["gallbladder"]
    if gb.any() and rng.random() < 0.3:
        r = float(rng.uniform(5, 20))
        new = grow_mask(gb, soft | (tissue == T["liver"]), r, spacing) & ~gb
        assign(new, "gallbladder", "gallbladder")
        soft &= ~new
        info["gallbladder_distended_mm"] = round(r, 1)
    liver = tissue == T["liver"]
    if liver.any() and rng.random() < 0.2:
        balls = _balls(rng, liver, int(rng.integers(1, 4)), 5, 30, spacing)
        fluid |= balls & liver
        exo = balls & soft
        assign(exo, "fat", "background")
        fluid |= exo
        info["liver_cysts"] = True
    kid = np.isin(tissue, (T["kidney_cortex"], T["kidney_medulla"]))
    if kid.any() and rng.random() < 0.15:
        balls = _balls(rng, kid, int(rng.integers(1, 3)), 5, 25, spacing) & (kid | soft)
        assign(balls, "fat", "background")
        fluid |= balls
        info["kidney_cysts"] = True
    if liver.any() and rng.random() < 0.1:
        shell = grow_mask(liver, soft & (tissue == T["fat"]), rng.uniform(4, 15), spacing) & ~liver
        assign(shell, "fat", "background")
        fluid |= shell
        info["perihepatic_fluid"] = True
    info["stomach_fluid"] = bool(rng.random() < 0.25)
    return fluid, info


def _anatomy_source(rng, source, anatomy_seed, multiclass):
    """Stage 1: the anatomy to paint: tissue map, its spacing (float32), its class map
    (``multiclass``) and, for image-less label maps, the distance outside the body."""
    cls_src = out_src = None
    if source in ("real", "real_image"):
        src, s_src = real_anatomy()
        cls_src = real_classes() if multiclass else None
    elif source == "phantom":
        aseed = int(anatomy_seed) if anatomy_seed is not None else int(rng.integers(0, 48))
        src, s_src = phantom_anatomy(aseed)
        cls_src = phantom_classes(aseed) if multiclass else None
    elif source in LABELMAP_SUBJECTS:
        lm = labelmap_anatomy(source)
        src, s_src, out_src = lm.tissue, lm.spacing, lm.outside_mm
        cls_src = lm.classes if multiclass else None
    else:
        raise ValueError(
            f"unknown anatomy source {source!r} (expected 'real', 'phantom', 'real_image' "
            f"or one of {LABELMAP_SUBJECTS})"
        )
    return src, np.asarray(s_src, np.float32), cls_src, out_src


def _phase_and_scenario(rng, phase, scenario):
    """Stage 2: contrast phase and field-of-view scenario (drawn even when forced)."""
    phase_drawn = str(rng.choice(PHASES, p=PHASE_P))
    scen_drawn = str(rng.choice(SCENARIOS, p=SCENARIO_P))
    for value, allowed in ((phase, PHASES), (scenario, SCENARIOS)):
        if value is not None and value not in allowed:
            raise ValueError(f"unknown phase or scenario {value!r} (expected one of {allowed})")
    return phase or phase_drawn, scenario or scen_drawn


def _scan_range(rng, rng2, src, s_src, scen, variety):
    """Stage 3: scale and the scan's z range ``[a, b]`` in source mm (the scenario falls
    back to ``full`` when the source leaves too little room)."""
    ext_src = np.array(src.shape) * s_src

    def zext(mask_t):  # organ extent along z in source mm (centred coordinates)
        zs = np.nonzero((src == mask_t).any((1, 2)))[0]
        return (
            (zs.min() + 0.5) * s_src[0] - ext_src[0] / 2,
            (zs.max() + 0.5) * s_src[0] - ext_src[0] / 2,
        )

    organs = [zext(T["liver"]), zext(T["spleen"])]
    org_lo, org_hi = min(o[0] for o in organs), max(o[1] for o in organs)
    src_lo, src_hi = -ext_src[0] / 2 + 3, ext_src[0] / 2 - 3

    scale = rng.uniform(0.8, 1.25) * rng.uniform(0.93, 1.07, 3)
    if variety:  # about 0.74-1.35 overall, up to +-12 % anisotropy
        scale = scale * rng2.uniform(0.92, 1.08) * rng2.uniform(0.95, 1.05, 3)
    a, b = _z_range(rng, scen, src_lo, src_hi, org_lo, org_hi, organs, scale[0])
    if b - a < 15 / scale[0]:  # too little room (e.g. no chest above the organs): whole abdomen
        scen = "full"
        a, b = _z_range(rng, scen, src_lo, src_hi, org_lo, org_hi, organs, scale[0])
    return scale, a, b, scen


@dataclass
class _Acquisition:
    """The simulated acquisition grid: slices of ``dz_out`` mm, simulated ``k`` times
    finer (``dzf``, ``nzf`` slices) for the slice profile, ``n_xy`` pixels of ``dxy`` mm
    in-plane; ``qz``, ``qy``, ``qx``: output voxel centres in mm (centred)."""

    dz: float
    thick: float
    dz_out: float
    k: int
    dzf: float
    nzf: int
    n_xy: int
    fov: float
    dxy: float
    qz: np.ndarray
    qy: np.ndarray
    qx: np.ndarray

    @property
    def axes_mm(self):
        return (self.qz, self.qy, self.qx)


def _acquisition_grid(rng, scen, ext_z) -> _Acquisition:
    """Stage 4: slice interval/thickness, in-plane grid and field of view."""
    r = rng.random()
    dz = (
        rng.uniform(0.6, 1.5)
        if r < 0.3
        else rng.uniform(1.5, 3.0)
        if r < 0.6
        else rng.uniform(3, 5)
    )
    if scen == "slab":
        dz = rng.uniform(1.5, 5.0)
    thick = min(max(dz * rng.uniform(1.0, 1.5), dz), 5.5)
    dz_out = max(dz, 1.25, ext_z / 240)
    k = max(1, int(round(dz_out / 1.6)))
    dzf = dz_out / k
    nz = max(2, int(round(ext_z / dz_out)))
    nzf = nz * k
    n_xy = int(rng.integers(96, 129))
    fov = rng.uniform(330, 480) if rng.random() > 0.12 else rng.uniform(250, 330)
    dxy = fov / n_xy
    qz = ((np.arange(nzf) + 0.5) * dzf - nz * dz_out / 2).astype(np.float32)
    qy = ((np.arange(n_xy) + 0.5) * dxy - fov / 2 + rng.uniform(-25, 25)).astype(np.float32)
    qx = ((np.arange(n_xy) + 0.5) * dxy - fov / 2 + rng.uniform(-25, 25)).astype(np.float32)
    return _Acquisition(dz, thick, dz_out, k, dzf, nzf, n_xy, fov, dxy, qz, qy, qx)


def _source_points(rng, rng2, src, s_src, scale, z_mid, acq, variety):
    """Stage 5: output -> source points ``p = M q + c + elastic(q)`` (z, y, x mm)."""
    ext_src = np.array(src.shape) * s_src
    rot = _rot(rng, 15, 6)
    if variety:
        rot = _rot(rng2, 10, 4) @ rot
    m = (rot.T / scale[None, :]).astype(np.float32)  # q scaled down, then rotated back
    body_yx = np.argwhere(src[src.shape[0] // 2] > 0)
    cy, cx = (body_yx.mean(0) + 0.5) * s_src[1:] - ext_src[1:] / 2 if len(body_yx) else (0, 0)
    centre = np.array([z_mid, cy, cx], np.float32)
    amp = rng.uniform(2, 8)
    corr = rng.uniform(40, 80)
    qz, qy, qx = acq.axes_mm
    p = [
        m[i, 0] * qz[:, None, None]
        + m[i, 1] * qy[None, :, None]
        + m[i, 2] * qx[None, None, :]
        + centre[i]
        + amp * _smooth_field(rng, acq.axes_mm, corr)
        for i in range(3)
    ]
    if variety:  # a second, shorter-range elastic displacement
        amp2, corr2 = rng2.uniform(0, 8), rng2.uniform(25, 50)
        for i in range(3):
            p[i] = p[i] + amp2 * _smooth_field(rng2, acq.axes_mm, corr2)
    return p


def _warp_anatomy(rng2, src, s_src, cls_src, out_src, p, acq):
    """Stage 6: tissue (and class) maps on the scan grid; an image-less label map gets
    its wall muscle, subcutaneous fat and skin (:func:`paint_envelope`)."""
    maps, fills = [src], [0]
    if cls_src is not None:
        maps.append(cls_src)
        fills.append(0)
    if out_src is not None:
        maps.append(out_src)
        fills.append(255)
    warped = warp_maps(maps, s_src, p, fills)
    tissue = warped[0]
    cls = warped[1] if cls_src is not None else None
    body_info = {}
    if out_src is not None:
        field = _smooth_field(rng2, acq.axes_mm, rng2.uniform(50, 90))
        body_info = paint_envelope(tissue, warped[-1], rng2, field)
    return tissue, cls, body_info


def _real_hu_at(p, s_src):
    """The ``real_image`` source: the shared real CT sampled at the source points
    (linear), and its median HU per tissue."""
    rimg, rmed = real_image()
    ext_r = np.array(rimg.shape) * s_src
    coords = [(p[i] + ext_r[i] / 2) / s_src[i] - 0.5 for i in range(3)]
    real_hu = ndi.map_coordinates(
        rimg, np.stack(np.broadcast_arrays(*coords)), order=1, mode="constant", cval=-1000.0
    ).astype(np.float32)
    return real_hu, rmed


def _add_arms(rng, tissue, acq):
    """Stage 7: arms beside the body (outside the source label map), in place on
    ``tissue``. Returns (arms drawn, mask of the arm voxels or None)."""
    arm_mask = None
    arms = bool(rng.random() < 0.35)
    if arms:
        mid = tissue[acq.nzf // 2] > 0
        cols = np.nonzero(mid.any(0))[0]
        if len(cols):
            yy, xx = np.meshgrid(acq.qy, acq.qx, indexing="ij")
            for side, col in ((-1, cols.min()), (1, cols.max())):
                rad = rng.uniform(35, 55)
                cxa = acq.qx[col] + side * (rad + rng.uniform(5, 40))
                cya = rng.uniform(-30, 40)
                d2 = (yy - cya) ** 2 + (xx - cxa) ** 2
                arm2d = np.where(
                    d2 < 14**2, T["bone"], np.where(d2 < (rad - 8) ** 2, T["muscle"], T["fat"])
                )
                arm2d = np.where(d2 < rad**2, arm2d, 0).astype(np.uint8)
                put = (arm2d > 0)[None] & (tissue == T["air"])
                tissue[put] = np.broadcast_to(arm2d[None], tissue.shape)[put]
                arm_mask = put if arm_mask is None else arm_mask | put
    return arms, arm_mask


def _paint_tissues(rng, tissue, phase, axes_mm):
    """Stage 8: mean + texture per tissue, vessels in the liver, focal liver lesions,
    the arterial spleen. Returns hu (float32), the tissue means, ``info`` (phase, liver
    and spleen HU), the mid-frequency field and the vessel and spleen masks."""
    mean, info = draw_means(rng, phase)
    tex_lo = np.zeros(N_TISSUES, np.float32)
    for name, sd in _TEX.items():
        tex_lo[T[name]] = sd * rng.uniform(0.3, 1.2)
    f_lo = _smooth_field(rng, axes_mm, rng.uniform(15, 30))
    f_mid = _smooth_field(rng, axes_mm, rng.uniform(5, 9))
    hu = mean[tissue] + tex_lo[tissue] * (0.6 * f_lo + 0.8 * f_mid)
    liver = tissue == T["liver"]
    spleen = tissue == T["spleen"]
    # Vessels in the liver: intersections of two smooth level sets (tubes).
    g1 = _smooth_field(rng, axes_mm, rng.uniform(12, 20))
    g2 = _smooth_field(rng, axes_mm, rng.uniform(12, 20))
    t = rng.uniform(0.15, 0.35)
    vessels = liver & (np.abs(g1) < t) & (np.abs(g2) < t)
    vessel_hu = mean[T["portal_vein"]] if rng.random() < 0.5 else mean[T["vein"]]
    hu[vessels] = vessel_hu + 5 * f_mid[vessels]
    del g1, g2
    if rng.random() < 0.15:  # focal liver lesions (cysts or hypodense masses)
        les = liver & (f_lo > rng.uniform(1.8, 2.4))
        hu[les] = rng.uniform(0, 60) + 5 * f_mid[les]
    if phase == "arterial":  # heterogeneous ("zebra") spleen
        hu[spleen] += rng.uniform(15, 45) * np.sign(f_mid[spleen]) * np.abs(f_mid[spleen]) ** 0.5
    return hu, mean, info, f_mid, vessels, spleen


def _paint_hollow(rng, hu, tissue, mean, f_mid, n_xy, vary_info):
    """Stage 9, in place on ``hu``: hollow organs' walls, gas (rises anteriorly: low y),
    fluid, food and oral contrast."""
    hollow = np.isin(tissue, (T["stomach"], T["small_bowel"], T["colon"]))
    inner = hollow.copy()
    for ax_, sh in ((1, 1), (1, -1), (2, 1), (2, -1)):
        inner &= np.roll(hollow, sh, axis=ax_)
    wall = hollow & ~inner
    hu[wall] = mean[T["soft"]] + 5 * f_mid[wall]
    stomach_in = inner & (tissue == T["stomach"])
    if stomach_in.any():
        kind = rng.random()
        if kind < 0.15:
            hu[stomach_in] = rng.uniform(150, 400)
        elif kind < 0.5:
            hu[stomach_in] = rng.uniform(20, 60) + 25 * f_mid[stomach_in]
        if rng.random() < 0.6:
            ys = np.nonzero(stomach_in.any((0, 2)))[0]
            level = rng.uniform(0.0, 0.6)
            yl = ys.min() + level * (ys.max() - ys.min())
            air = stomach_in & (np.arange(n_xy)[None, :, None] < yl)
            hu[air] = mean[T["gas"]]
        if vary_info.get("stomach_fluid"):  # water-filled stomach (gas kept above it)
            sel = stomach_in & (hu > -500)
            hu[sel] = vary_info["fluid_hu"] + 4 * f_mid[sel]
    bowel_in = inner & (tissue != T["stomach"])
    if bowel_in.any():
        if rng.random() < 0.15:
            sel = bowel_in & (tissue == T["small_bowel"])
            hu[sel] = rng.uniform(150, 350) + 20 * f_mid[sel]
        gas = bowel_in & (f_mid > rng.uniform(0.3, 1.5)) | (tissue == T["gas"])
        hu[gas] = mean[T["gas"]]


def _with_real_texture(hu, real_hu, rmed, tissue, mean, phase, spleen, vessels, arm_mask):
    """The ``real_image`` source: the real scan's texture, its organs moved to the drawn
    phase/steatosis; arms and (enhanced) intrahepatic vessels and the arterial spleen
    pattern from the painting ``hu``."""
    w = np.zeros(N_TISSUES, np.float32)
    for name in _ENHANCING:
        w[T[name]] = 1.0
    shift = np.nan_to_num(w * (mean - rmed))
    out = real_hu + shift[tissue]
    if phase == "arterial":
        out[spleen] += hu[spleen] - mean[T["spleen"]]
    keep = vessels if phase != "unenhanced" else np.zeros_like(vessels)
    if arm_mask is not None:
        keep = keep | arm_mask
    out[keep] = hu[keep]
    return out


def _acquire(rng, hu, tissue, cls, acq):
    """Stage 10: slice profile along z (and a little in-plane blur), the slices sampled,
    liver/spleen labels, noise that grows as slices get thinner, streaks.

    Returns hu (float32), tissue, classes (or None), labels and the noise SD.
    """
    sig_z = acq.thick / 2.3548 / acq.dzf
    sig_xy = rng.uniform(0.2, 0.6)
    hu = ndi.gaussian_filter(hu, (sig_z, sig_xy, sig_xy), truncate=2.5)
    sl = slice(acq.k // 2, acq.nzf, acq.k)
    hu = np.ascontiguousarray(hu[sl])
    tissue = tissue[sl]
    if cls is not None:
        cls = np.ascontiguousarray(cls[sl])
    labels = np.zeros(tissue.shape, np.uint8)
    labels[tissue == T["liver"]] = LABEL_LIVER
    labels[tissue == T["spleen"]] = LABEL_SPLEEN
    sd = float(min(rng.uniform(5, 22) * np.sqrt(3.0 / acq.thick), 60.0))
    noise = rng.standard_normal(hu.shape, dtype=np.float32)
    noise = ndi.gaussian_filter(noise, (0, 0.5, 0.5))
    hu += noise * (sd / max(float(noise.std()), 1e-6))
    if rng.random() < 0.2:  # streaks through a bright point, over a few slices
        n_xy = acq.n_xy
        yy, xx = np.meshgrid(np.arange(n_xy), np.arange(n_xy), indexing="ij")
        img = np.zeros((n_xy, n_xy), np.float32)
        py, px = rng.uniform(0.3, 0.7, 2) * n_xy
        for _ in range(int(rng.integers(3, 9))):
            th = rng.uniform(0, np.pi)
            dist = np.abs((yy - py) * np.cos(th) - (xx - px) * np.sin(th))
            img += rng.choice([-1, 1]) * rng.uniform(50, 250) * np.exp(-0.5 * (dist / 0.8) ** 2)
        z0 = int(rng.integers(0, hu.shape[0]))
        z1 = min(hu.shape[0], z0 + int(rng.integers(1, 8)))
        hu[z0:z1] += img[None]
    return hu, tissue, cls, labels, sd


def _store(rng, hu, labels, cls, acq):
    """Stage 11: int16 HU, stored in a random orientation 30 % of the time (the
    direction records it). Returns hu, labels, classes (or None), spacing, direction."""
    hu = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    spacing = (float(acq.dz_out), float(acq.dxy), float(acq.dxy))
    direction = np.eye(3)
    if rng.random() < 0.3:
        d = random_direction(rng)
        if cls is not None:
            cls = _store_with_direction(cls, cls, spacing, d)[0]
        hu, labels, spacing, direction = _store_with_direction(hu, labels, spacing, d)
    return hu, labels, cls, spacing, direction


def synth_scan(
    seed: int,
    source: str = "real",
    anatomy_seed: int | None = None,
    phase: str | None = None,
    scenario: str | None = None,
    multiclass: bool = False,
    variety: bool = False,
) -> dict:
    """Synthesise one CT scan with its liver/spleen labels on the scan grid.

    Parameters
    ----------
    seed : int
        Seed of everything random in this sample (deterministic).
    source : {"real", "phantom", "real_image"} or a name of :data:`LABELMAP_SUBJECTS`
        Anatomy: the shared real CT's 61-structure map or a phantom anatomy map, each
        painted; or ``real_image``: the shared real CT's own image (not a synthetic
        one) through the same geometry and acquisition, its organs moved to the
        drawn phase's enhancement and liver/spleen ratio (texture kept); or an
        image-less real label map (``totalseg_s0011`` ...), its body built around the
        labelled structures (:mod:`training.labelmap_body`).
    anatomy_seed : int, optional
        Phantom anatomy seed (default drawn from ``seed``, 48 distinct anatomies).
    phase, scenario : str, optional
        Force the contrast phase (:data:`PHASES`) or the field-of-view scenario
        (:data:`SCENARIOS`); the random draws are made anyway, so the rest of the
        sample stays the one of ``seed``.
    multiclass : bool
        Also return ``classes``: the multi-class targets (:mod:`training.classes`).
    variety : bool
        Issue 19's wider variety: larger affine and elastic ranges, organ-size changes
        (hepatomegaly, small or large spleen), distended gallbladder, fluid-filled
        stomach, liver and kidney cysts, perihepatic fluid (:func:`vary_anatomy`).
        Its draws come from a second generator, so ``variety=False`` gives exactly the
        samples of the liver/spleen pools.

    Returns
    -------
    dict with ``hu`` (int16 [z, y, x]), ``labels`` (uint8, 1 liver, 2 spleen, same
    grid), ``classes`` (with ``multiclass``: uint8 class table values, same grid),
    ``spacing`` (z, y, x mm), ``direction`` (3 x 3) and ``info`` (phase, scenario,
    slice thickness, ...).
    """
    rng = np.random.default_rng(seed)
    rng2 = np.random.default_rng([int(seed), 19])  # issue 19 draws only (see ``variety``)
    src, s_src, cls_src, out_src = _anatomy_source(rng, source, anatomy_seed, multiclass)
    phase, scen = _phase_and_scenario(rng, phase, scenario)
    scale, a, b, scen = _scan_range(rng, rng2, src, s_src, scen, variety)
    acq = _acquisition_grid(rng, scen, (b - a) * scale[0])
    p = _source_points(rng, rng2, src, s_src, scale, (a + b) / 2, acq, variety)
    tissue, cls, body_info = _warp_anatomy(rng2, src, s_src, cls_src, out_src, p, acq)
    real = _real_hu_at(p, s_src) if source == "real_image" else None
    del p
    arms, arm_mask = _add_arms(rng, tissue, acq)
    fluid, vary_info = None, {}
    if variety and source != "real_image":
        fluid, vary_info = vary_anatomy(rng2, tissue, cls, (acq.dzf, acq.dxy, acq.dxy))
    hu, mean, info, f_mid, vessels, spleen = _paint_tissues(rng, tissue, phase, acq.axes_mm)
    _paint_hollow(rng, hu, tissue, mean, f_mid, acq.n_xy, vary_info)
    if fluid is not None and fluid.any():  # cysts, distended gallbladder, free fluid
        hu[fluid] = vary_info["fluid_hu"] + 4 * f_mid[fluid]
    if real is not None:
        hu = _with_real_texture(hu, *real, tissue, mean, phase, spleen, vessels, arm_mask)
        del real
    info.update(
        scenario=scen,
        slice_interval_mm=float(acq.dz),
        slice_thickness_mm=float(acq.thick),
        fov_mm=float(acq.fov),
        scale=[float(s) for s in scale],
        arms=arms,
        source=source,
        **body_info,
        **{k: v for k, v in vary_info.items() if k != "stomach_fluid"},
    )
    if vary_info.get("stomach_fluid"):
        info["stomach_fluid"] = True
    hu, tissue, cls, labels, sd = _acquire(rng, hu, tissue, cls, acq)
    info.update(noise_sd=sd, n_slices=int(hu.shape[0]))
    hu, labels, cls, spacing, direction = _store(rng, hu, labels, cls, acq)
    out = {"hu": hu, "labels": labels, "spacing": spacing, "direction": direction, "info": info}
    if cls is not None:
        out["classes"] = cls
    return out


def synth_sample(seed: int, spec, source: str = "real", multiclass: bool = False):
    """One synthetic sample at model size through the serving preprocessing.

    ``spec``: a :class:`client.reading.preprocess.PreprocessSpec` or a model shape (``resize``).
    ``multiclass``: the labels are the class table's (:mod:`training.classes`) and the
    sample gets issue 19's wider variety (``synth_scan(variety=True)``).

    Returns
    -------
    image : uint8 [1, z, y, x], labels : uint8 [z, y, x], info : dict
    """
    s = synth_scan(seed, source, multiclass=multiclass, variety=multiclass)
    lab = s["classes"] if multiclass else s["labels"]
    rng = np.random.default_rng([int(seed), 11])
    image, labels = training_window(s["hu"], lab, s["spacing"], s["direction"], spec, rng)
    return image, labels, s["info"]


# Mixtures of a pool: fraction of samples per kind, by seed (deterministic).
# "synthetic": no real image (the generalisation run); "shippable": adds the real CT's
# own image through the same geometry/acquisition/phase augmentation.
MIXTURES = {
    "synthetic": (("real", 0.45), ("phantom", 0.40), ("plain", 0.15)),
    "shippable": (("real", 0.35), ("phantom", 0.30), ("real_image", 0.25), ("plain", 0.10)),
}
# Multi-class mixtures (issue 19): kinds are anatomy sources. Each names its
# source-level split: ``train`` (real anatomies painted into the pool) and
# ``held_out`` (real anatomies that the pool never uses: evaluation only).
MIXTURES["neighbours_heldout"] = (
    ("totalseg_s0011", 0.25),
    ("totalseg_s0327", 0.25),
    ("phantom", 0.40),
    ("plain", 0.10),
)
MIXTURES["neighbours_all"] = (
    ("real", 0.15),
    ("totalseg_s0011", 0.15),
    ("totalseg_s0327", 0.15),
    ("totalseg_s0328", 0.15),
    ("phantom", 0.30),
    ("plain", 0.10),
)
REAL_ANATOMIES = ("real", *LABELMAP_SUBJECTS)  # "real": the shared CT's label map
SPLITS = {
    "neighbours_heldout": {
        "train": ("totalseg_s0011", "totalseg_s0327"),
        "held_out": ("real", "totalseg_s0328"),
    },
    "neighbours_all": {"train": REAL_ANATOMIES, "held_out": ()},
}
MULTICLASS_MIXTURES = tuple(SPLITS)
MIXTURE = MIXTURES["synthetic"]


def split_of(mixture_name: str) -> dict:
    """The source-level split of a multi-class mixture, checked against its kinds.

    Raises ValueError when a held-out anatomy is a kind of the mixture, or a real
    anatomy of the mixture is not declared as training.
    """
    split = SPLITS[mixture_name]
    kinds = {k for k, _ in MIXTURES[mixture_name]}
    leak = kinds & set(split["held_out"])
    if leak:
        raise ValueError(f"mixture {mixture_name}: held-out anatomies {sorted(leak)} in the pool")
    undeclared = (kinds & set(REAL_ANATOMIES)) - set(split["train"])
    if undeclared:
        raise ValueError(f"mixture {mixture_name}: {sorted(undeclared)} not in its train split")
    return {"train": list(split["train"]), "held_out": list(split["held_out"])}


def kind_of_seed(seed: int, mixture=MIXTURE) -> str:
    """The kind of pool sample a seed gives (``real``/``phantom``/``real_image`` or ``plain``)."""
    u = np.random.default_rng([int(seed), 7]).random()
    acc = 0.0
    for kind, frac in mixture:
        acc += frac
        if u < acc:
            return kind
    return mixture[-1][0]


def pool_sample(seed: int, spec, mixture=MIXTURE, multiclass: bool = False):
    """The pool sample of a seed: synthetic from real or phantom anatomy, or a plain phantom.

    ``multiclass``: labels of the class table (:mod:`training.classes`) and issue 19's
    variety; plain phantoms then label kidneys and aorta too.
    """
    kind = kind_of_seed(seed, mixture)
    if kind == "plain":
        image, labels = phantom_sample(int(seed), spec, label_neighbours=multiclass)
        return image, labels, {"source": "plain_phantom"}
    return synth_sample(seed, spec, kind, multiclass=multiclass)


def write_shards(
    out_dir, start: int, count: int, shard: int = 100, model_shape=(64, 64, 64), mixture=MIXTURE,
    spec=None, mixture_name: str | None = None,
):  # fmt: skip
    """Write pool shards ``synth_<first seed>.npz`` for seeds ``start .. start+count-1``.

    ``spec`` (a :class:`client.reading.preprocess.PreprocessSpec`) overrides ``model_shape``
    (``resize``); its parameters are stored in every shard and in ``pool.json``.
    ``mixture_name`` of a multi-class mixture (:data:`MULTICLASS_MIXTURES`) selects it
    (and ``mixture`` is ignored): the labels are the class table's, and ``pool.json``
    records the mixture, its source-level split (:func:`split_of`) and the class table.

    Existing complete shards are skipped, so an interrupted run resumes; every shard
    is written to a temporary name and renamed (a reader never sees half a shard).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec = as_spec(spec if spec is not None else model_shape)
    model_shape = spec.model_shape
    meta = {"model_shape": list(model_shape), **spec.parameters()}
    multiclass = mixture_name in MULTICLASS_MIXTURES
    if multiclass:
        mixture = MIXTURES[mixture_name]
        meta.update(pool_meta(mixture_name))
    meta = json.loads(json.dumps(meta))  # as stored (lists, string keys)
    pool_json = out / "pool.json"
    if pool_json.exists():
        old = json.loads(pool_json.read_text(encoding="utf-8"))
        if old != meta:
            raise SystemExit(f"{out} holds a pool made with {old}, not {meta}")
    else:
        pool_json.write_text(json.dumps(meta), encoding="utf-8")
    for s0 in range(start, start + count, shard):
        path = out / f"synth_{s0:07d}.npz"
        if path.exists():
            continue
        n = min(shard, start + count - s0)
        images = np.zeros((n, 1, *model_shape), np.uint8)
        labels = np.zeros((n, *model_shape), np.uint8)
        infos = []
        for j in range(n):
            images[j], labels[j], info = pool_sample(s0 + j, spec, mixture, multiclass)
            infos.append(info)
        tmp = out / f".tmp_synth_{s0:07d}.npz"
        with open(tmp, "wb") as fh:
            np.savez_compressed(
                fh, images=images, labels=labels, seeds=np.arange(s0, s0 + n),
                preprocess=json.dumps(meta),
            )  # fmt: skip
        tmp.rename(path)
        (out / f"synth_{s0:07d}.json").write_text(json.dumps(infos, default=float))
        print(f"wrote {path} ({n} samples)", flush=True)


def pool_meta(mixture_name: str) -> dict:
    """``pool.json`` entries of a multi-class mixture: mixture, split, class table."""
    return {
        "mixture": mixture_name,
        "mixture_fractions": {k: f for k, f in MIXTURES[mixture_name]},
        "split": split_of(mixture_name),
        "classes": labels_dict(),
        "num_classes": NUM_CLASSES,
        "variety": "issue19-v1",
    }


def next_shard_start(out_dir) -> int:
    """First seed after the pool's last shard (0 for an empty pool)."""
    paths = sorted(Path(out_dir).glob("synth_*.npz"))
    if not paths:
        return 0
    last = paths[-1]
    with np.load(last) as z:
        return int(z["seeds"][-1]) + 1


def main(argv=None) -> int:
    """``python -m training.synth --out_dir runs/pool_synth --start 0 --count 2000``."""
    import argparse

    ap = argparse.ArgumentParser(description="Write deterministic synthetic training pool shards")
    ap.add_argument("--out_dir", required=True)
    ap.add_argument("--start", type=int, default=0, help="first seed")
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--shard", type=int, default=100)
    ap.add_argument("--model_shape", type=int, nargs=3, default=(64, 64, 64))
    ap.add_argument(
        "--spacing_mm",
        type=float,
        nargs=3,
        default=None,
        help="fixed-spacing preprocessing (z y x mm); default: MedicalSeg's whole-volume resize",
    )
    ap.add_argument(
        "--mixture",
        choices=sorted(MIXTURES),
        default="synthetic",
        help="synthetic: no real image (default); shippable: adds the augmented real CT; "
        "neighbours_heldout / neighbours_all: multi-class (issue 19), see SPLITS",
    )
    args = ap.parse_args(argv)
    spec = (
        PreprocessSpec("spacing", tuple(args.model_shape), tuple(args.spacing_mm))
        if args.spacing_mm
        else PreprocessSpec("resize", tuple(args.model_shape))
    )
    write_shards(
        args.out_dir, args.start, args.count, args.shard, args.model_shape, MIXTURES[args.mixture],
        spec=spec, mixture_name=args.mixture,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
