"""Anatomy sources from real label maps without an image: the body built around them.

The TotalSegmentator label maps in ``../shared/data/labelmaps`` (issue 19) hold 117
named structures but no body outline, skin, fat or intermuscular tissue: outside
the named structures everything is 0, inside and outside the body alike. To paint a
CT from them (:func:`training.synth.synth_scan`) the body is built here:

1. the map is brought to the canonical orientation (axes z superior, y posterior,
   x patient left, :func:`client.reading.preprocess.canonical_axes`) and to a 3 mm grid
   (every second voxel of the 1.5 mm map: nearest neighbour, as the synthesis samples
   it anyway), padded in-plane by :data:`PAD_MM` so that fat layers fit outside it;
2. structure names -> tissue classes (:data:`TOTALSEG_TISSUE`, by prefix) and
   -> training classes (:func:`training.classes.totalseg_lut`): values are never used;
3. the **envelope**: per axial slice, the convex hull of every labelled structure
   (humeri excluded: arms are not trunk) over +-6 mm of neighbouring slices, so the
   outline changes smoothly along z, rounded by its moment ellipse
   (:func:`rounded_hull`). Inside it, unlabelled voxels are visceral fat
   (mesenteric, retroperitoneal, mediastinal); lung fissures are closed to lung;
4. ``outside_mm``: the in-plane distance (mm, uint8, 255 = far) of every voxel
   outside the envelope to it. The synthesis draws, per sample, an abdominal-wall
   muscle layer, a subcutaneous fat layer of drawn, smoothly varying thickness and a
   skin layer and paints them by thresholds on this distance (after the geometric
   warp), so one cached map gives thin and obese bodies alike.

Why a convex hull: the trunk's cross-section is close to convex, and the labelled
structures reach its inside surface almost everywhere (ribs, colon, iliopsoas,
autochthon muscles, hips); its known failure is the anterior abdominal wall below the
ribs, where the hull bridges over unlabelled bowel and mesentery (filled with fat,
plausibly). The painted result is checked by eye (tests and ``--png`` of
``python -m training.labelmap_body``).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from .classes import totalseg_lut
from .tissues import TISSUES

_ROOT = Path(__file__).resolve().parents[1]
LABELMAP_DIR = _ROOT.parent / "shared" / "data" / "labelmaps"
LABELMAP_SUBJECTS = ("totalseg_s0011", "totalseg_s0327", "totalseg_s0328")
GRID_MM = 3.0
PAD_MM = 72.0
HULL_Z_MM = 6.0

# TotalSegmentator structure name -> tissue class (by prefix, first match wins).
TOTALSEG_TISSUE = (
    ("spleen", "spleen"),
    ("kidney_cyst", "gallbladder"),  # fluid (its HU range); class: background
    ("kidney", "kidney"),
    ("gallbladder", "gallbladder"),
    ("liver", "liver"),
    ("stomach", "stomach"),
    ("pancreas", "pancreas"),
    ("adrenal", "soft"),
    ("lung", "lung"),
    ("small_bowel", "small_bowel"),
    ("duodenum", "small_bowel"),
    ("colon", "colon"),
    ("urinary_bladder", "bladder"),
    ("prostate", "soft"),
    ("sacrum", "bone"),
    ("vertebrae", "bone"),
    ("femur", "bone"),
    ("hip", "bone"),
    ("rib", "bone"),
    ("sternum", "bone"),
    ("clavicula", "bone"),
    ("scapula", "bone"),
    ("humerus", "bone"),
    ("skull", "bone"),
    ("aorta", "artery"),
    ("iliac_artery", "artery"),
    ("brachiocephalic_trunk", "artery"),
    ("common_carotid", "artery"),
    ("subclavian_artery", "artery"),
    ("inferior_vena_cava", "vein"),
    ("superior_vena_cava", "vein"),
    ("brachiocephalic_vein", "vein"),
    ("pulmonary_vein", "vein"),
    ("iliac_vena", "vein"),
    ("portal_vein", "portal_vein"),
    ("heart", "heart"),
    ("atrial_appendage", "heart"),
    ("spinal_cord", "cord"),
    ("brain", "soft"),
    ("thyroid", "soft"),
    ("esophagus", "soft"),
    ("trachea", "gas"),
    ("gluteus", "muscle"),
    ("autochthon", "muscle"),
    ("iliopsoas", "muscle"),
    ("costal_cartilages", "cartilage"),
)
_NOT_TRUNK = ("humerus",)


def tissue_of_name(name: str) -> str | None:
    """Tissue class of a TotalSegmentator structure name (None: not painted specially)."""
    return next((t for prefix, t in TOTALSEG_TISSUE if name.startswith(prefix)), None)


def names_to_tissue(labels: np.ndarray, names: dict) -> np.ndarray:
    """Tissue-class map (:data:`training.phantoms.TISSUES`) of a TotalSegmentator map.

    Kidneys are split into cortex and medulla by a 2-voxel erosion; unknown names and
    unlabelled voxels stay 0 (air: the caller fills the body).
    """
    out = np.zeros(labels.shape, np.uint8)
    kidney = np.zeros(labels.shape, bool)
    lut = np.zeros(256, np.uint8)
    kid_values = []
    for value, name in names.items():
        tissue = tissue_of_name(str(name))
        if tissue == "kidney":
            kid_values.append(int(value))
        elif tissue is not None:
            lut[int(value)] = TISSUES[tissue]
    out = lut[labels]
    if kid_values:
        kidney = np.isin(labels, kid_values)
        out[kidney] = TISSUES["kidney_cortex"]
        out[ndi.binary_erosion(kidney, iterations=2)] = TISSUES["kidney_medulla"]
    return out


def convex_hull_mask(mask2d: np.ndarray) -> np.ndarray:
    """Filled convex hull of the True pixels of a 2D mask (pixel centres; edges included)."""
    from scipy.spatial import ConvexHull, QhullError

    pts = np.argwhere(mask2d)
    out = np.zeros(mask2d.shape, bool)
    if len(pts) < 3:
        out[tuple(pts.T)] = True
        return out
    try:
        hull = ConvexHull(pts)
    except QhullError:  # collinear points
        out[tuple(pts.T)] = True
        return out
    lo, hi = pts.min(0), pts.max(0) + 1
    yy, xx = np.mgrid[lo[0] : hi[0], lo[1] : hi[1]]
    inside = np.ones(yy.shape, bool)
    for a, b, c in hull.equations:  # a*y + b*x + c <= 0 inside (unit normals)
        inside &= a * yy + b * xx + c <= 0.5
    out[lo[0] : hi[0], lo[1] : hi[1]] = inside
    return out


def rounded_hull(mask2d: np.ndarray, spacing, soften_mm: float = 10.0) -> np.ndarray:
    """Convex hull united with its moment ellipse, corners softened.

    A trunk's cross-section is rounder than the polygon spanned by its labelled
    structures (flat sides over the unlabelled abdominal wall): the union with the
    ellipse of the hull's second moments (radii 2 SD, exact for a filled ellipse)
    rounds it, and a Gaussian blur (``soften_mm``) thresholded at 0.5 removes corners;
    the structures themselves (``mask2d``) always stay inside.
    """
    h = convex_hull_mask(mask2d)
    pts = np.argwhere(h).astype(np.float64) * np.asarray(spacing, np.float64)
    if len(pts) < 10:
        return h
    c = pts.mean(0)
    cov = np.cov((pts - c).T)
    w, v = np.linalg.eigh(cov)
    if np.any(w <= 0):
        return h
    yy, xx = np.mgrid[0 : h.shape[0], 0 : h.shape[1]].astype(np.float64)
    d = np.stack([yy * spacing[0] - c[0], xx * spacing[1] - c[1]], -1) @ v
    ell = (d[..., 0] ** 2 / (4 * w[0]) + d[..., 1] ** 2 / (4 * w[1])) <= 1.0
    u = (h | ell).astype(np.float32)
    u = ndi.gaussian_filter(u, [soften_mm / s for s in spacing])
    return (u >= 0.5) | mask2d


@dataclass(frozen=True)
class LabelmapAnatomy:
    """One image-less real anatomy, canonical orientation, on a :data:`GRID_MM` grid."""

    name: str
    tissue: np.ndarray  # uint8 TISSUES (unlabelled inside the envelope: fat; outside: air)
    classes: np.ndarray  # uint8 training classes (training.classes)
    outside_mm: np.ndarray  # uint8 in-plane distance (mm) outside the envelope; 0 inside
    spacing: tuple


def read_canonical(folder: Path):
    """``labels_all`` of a label-map folder in canonical orientation, its names and spacing."""
    import SimpleITK as sitk

    from client.reading.preprocess import canonical_axes

    folder = Path(folder)
    for f in ("labels_all.nii.gz", "labels_all_names.json"):
        if not (folder / f).exists():
            raise FileNotFoundError(f"{folder / f}: needed for the label-map synthesis source")
    img = sitk.ReadImage(str(folder / "labels_all.nii.gz"))
    lab = sitk.GetArrayFromImage(img)
    names = json.loads((folder / "labels_all_names.json").read_text(encoding="utf-8"))
    axes, flips = canonical_axes(np.asarray(img.GetDirection()).reshape(3, 3))
    sp = tuple(img.GetSpacing())[::-1]
    lab = np.transpose(lab, axes)
    fl = tuple(a for a in range(3) if flips[a])
    if fl:
        lab = np.flip(lab, fl)
    return np.ascontiguousarray(lab), names, tuple(float(sp[a]) for a in axes)


def build_anatomy(lab: np.ndarray, names: dict, spacing, name: str = "") -> LabelmapAnatomy:
    """Body, tissue and class maps of a canonical label map (see the module docstring)."""
    step = [max(1, int(round(GRID_MM / s))) for s in spacing]
    lab = lab[:: step[0], :: step[1], :: step[2]]
    sp = tuple(float(s * k) for s, k in zip(spacing, step))
    pad = [0, int(round(PAD_MM / sp[1])), int(round(PAD_MM / sp[2]))]
    lab = np.pad(lab, [(0, 0), (pad[1], pad[1]), (pad[2], pad[2])])
    tissue = names_to_tissue(lab, names)
    classes = totalseg_lut(names)[lab]
    not_trunk = [int(v) for v, n in names.items() if str(n).startswith(_NOT_TRUNK)]
    trunk = (lab > 0) & ~np.isin(lab, not_trunk)
    kz = max(1, int(round(HULL_Z_MM / sp[0])))
    trunk = ndi.maximum_filter1d(trunk.view(np.uint8), 2 * kz + 1, axis=0).astype(bool)
    outside = np.full(lab.shape, 255, np.uint8)
    env = np.zeros(lab.shape, bool)
    for z in range(lab.shape[0]):
        if not trunk[z].any():
            continue
        h = rounded_hull(trunk[z], sp[1:])
        env[z] = h
        d = ndi.distance_transform_edt(~h, sampling=sp[1:])
        outside[z] = np.clip(np.rint(d), 0, 255).astype(np.uint8)
    # Lung fissures and small gaps between lobes: lung.
    lung = tissue == TISSUES["lung"]
    if lung.any():
        closed = ndi.binary_closing(lung, structure=np.ones((1, 3, 3), bool), iterations=2)
        tissue[closed & (tissue == 0)] = TISSUES["lung"]
    tissue[env & (tissue == 0)] = TISSUES["fat"]
    return LabelmapAnatomy(name, tissue, classes, outside, sp)


@functools.lru_cache(maxsize=4)
def labelmap_anatomy(name: str, root: str = str(LABELMAP_DIR)) -> LabelmapAnatomy:
    """Cached :func:`build_anatomy` of ``root/name`` (e.g. ``totalseg_s0011``)."""
    lab, names, sp = read_canonical(Path(root) / name)
    return build_anatomy(lab, names, sp, name)


def paint_envelope(tissue, outside_mm, rng, field=None) -> dict:
    """Fill the body outside the envelope in place: wall muscle, subcutaneous fat, skin.

    ``tissue`` and ``outside_mm`` are on the same (scan) grid, ``field`` an optional
    smooth zero-mean unit-SD field on it (varies the fat thickness by up to +-35 %).
    Voxels already labelled (e.g. arms) are kept. Returns the drawn thicknesses.
    """
    muscle_mm = float(rng.uniform(4, 14))
    fat_mm = float(rng.uniform(5, 45) if rng.random() < 0.8 else rng.uniform(45, 80))
    skin_mm = float(rng.uniform(1.5, 3.0))
    d = outside_mm.astype(np.float32)
    fat_local = fat_mm * (1.0 + 0.35 * np.clip(field, -1.5, 1.5)) if field is not None else fat_mm
    free = tissue == TISSUES["air"]
    out_wall = d <= muscle_mm
    out_fat = d <= muscle_mm + fat_local
    out_skin = d <= muscle_mm + fat_local + skin_mm
    body = (d > 0) & free
    tissue[body & out_skin & ~out_fat] = TISSUES["soft"]
    tissue[body & out_fat & ~out_wall] = TISSUES["fat"]
    tissue[body & out_wall] = TISSUES["muscle"]
    return {"wall_muscle_mm": muscle_mm, "subcutaneous_fat_mm": fat_mm, "skin_mm": skin_mm}
