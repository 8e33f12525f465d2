"""Good and deliberately broken segmentations for the segmentation-quality gate.

Used by benchmarks/bench_gate.py (the full tally in benchmarks/results/gate.json)
and tests/test_gate.py (a smaller set). Each case is ``(name, hu, labels,
spacing, direction)`` on the scan's own grid; labels 1 liver, 2 spleen.

Broken masks are made in the patient's frame (through the direction matrix), so
"shift 25 mm to the patient's left" or "mirror left/right" mean the same on the
real CT (stored RAS, direction diag(-1, -1, 1)) and on phantoms stored in any
orientation.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "totalseg_example"

# Physical LPS axes: 0 x (+ left), 1 y (+ posterior), 2 z (+ superior).
PHYS = {"L": (0, 1), "R": (0, -1), "P": (1, 1), "A": (1, -1), "S": (2, 1), "I": (2, -1)}


def array_axis(direction, phys: int) -> tuple[int, int]:
    """``(array axis, sign)``: the array axis nearest physical axis ``phys`` and its sense."""
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    col = int(np.argmax(np.abs(d[phys, :])))
    return 2 - col, int(np.sign(d[phys, col]))


def shift(mask_or_labels, direction, spacing, towards: str, mm: float):
    """Move a label array ``mm`` towards ``towards`` (L, R, A, P, S, I); zero fill."""
    phys, s = PHYS[towards]
    ax, sign = array_axis(direction, phys)
    n = int(round(mm / spacing[ax])) * s * sign
    out = np.zeros_like(mask_or_labels)
    src = [slice(None)] * 3
    dst = [slice(None)] * 3
    if n > 0:
        src[ax], dst[ax] = slice(0, -n), slice(n, None)
    elif n < 0:
        src[ax], dst[ax] = slice(-n, None), slice(0, n)
    out[tuple(dst)] = mask_or_labels[tuple(src)]
    return out


def mirror(labels, direction, phys_name: str):
    """Flip a label map along the array axis nearest a physical axis (LR, AP or SI)."""
    phys = {"LR": 0, "AP": 1, "SI": 2}[phys_name]
    ax, _ = array_axis(direction, phys)
    return np.ascontiguousarray(np.flip(labels, ax))


def _phys_coord(shape, spacing, direction, phys: int):
    """Physical coordinate (mm, relative) along ``phys`` of every voxel (broadcastable)."""
    ax, sign = array_axis(direction, phys)
    c = np.arange(shape[ax]) * spacing[ax] * sign
    sh = [1, 1, 1]
    sh[ax] = shape[ax]
    return c.reshape(sh)


def cut_organ(labels, value, direction, spacing, towards: str, keep: float):
    """Keep only the ``keep`` fraction of organ ``value`` lying towards ``towards`` (plane cut)."""
    phys, s = PHYS[towards]
    coord = np.broadcast_to(_phys_coord(labels.shape, spacing, direction, phys), labels.shape) * s
    m = labels == value
    thr = np.quantile(coord[m], 1.0 - keep)
    out = labels.copy()
    out[m & (coord < thr)] = 0
    return out


def split_organ(labels, value, direction, spacing, along: str = "S", gap_mm: float = 15.0):
    """Remove a slab of ``gap_mm`` through the organ's middle (two pieces)."""
    phys, _ = PHYS[along]
    coord = np.broadcast_to(_phys_coord(labels.shape, spacing, direction, phys), labels.shape)
    m = labels == value
    mid = float(np.median(coord[m]))
    out = labels.copy()
    out[m & (np.abs(coord - mid) < gap_mm / 2)] = 0
    return out


def dilate_organ(labels, value, spacing, mm: float):
    """Grow organ ``value`` by ``mm`` into its surroundings (over-segmentation)."""
    r = [max(1, int(round(mm / s))) for s in spacing]
    g = np.meshgrid(*[np.arange(-k, k + 1) * s for k, s in zip(r, spacing)], indexing="ij")
    ball = (g[0] ** 2 + g[1] ** 2 + g[2] ** 2) <= mm**2
    grown = ndi.binary_dilation(labels == value, structure=ball)
    out = labels.copy()
    out[grown & (labels == 0)] = value
    return out


def blob(shape, centre, radius_vox):
    """A ball of ``radius_vox`` voxels per axis at ``centre`` (array indices)."""
    g = np.ogrid[tuple(slice(0, n) for n in shape)]
    d = sum(((gi - c) / r) ** 2 for gi, c, r in zip(g, centre, radius_vox))
    return d <= 1.0


def load_real():
    """The shared real CT: hu, reference labels, 61-structure labels, names, spacing, direction."""
    import SimpleITK as sitk

    img = sitk.ReadImage(str(REAL / "ct.nii.gz"))
    hu = sitk.GetArrayFromImage(img)
    lab = sitk.GetArrayFromImage(sitk.ReadImage(str(REAL / "labels.nii.gz"))).astype(np.uint8)
    lab_all = sitk.GetArrayFromImage(sitk.ReadImage(str(REAL / "labels_all.nii.gz")))
    names = {
        v: int(k)
        for k, v in json.loads((REAL / "labels_all_names.json").read_text(encoding="utf-8")).items()
    }
    spacing = tuple(float(s) for s in img.GetSpacing()[::-1])
    direction = np.asarray(img.GetDirection()).reshape(3, 3)
    return hu, lab, lab_all, names, spacing, direction


def resample_real(hu, lab, spacing, direction, new_spacing):
    """The real CT on another grid (SimpleITK linear for HU, nearest for labels)."""
    import SimpleITK as sitk

    out = []
    for arr, interp, fill in (
        (hu.astype(np.float32), sitk.sitkLinear, -1024.0),
        (lab, sitk.sitkNearestNeighbor, 0),
    ):
        im = sitk.GetImageFromArray(arr)
        im.SetSpacing(tuple(float(s) for s in spacing[::-1]))
        im.SetDirection(tuple(np.asarray(direction, float).ravel()))
        size = [
            int(round(n * s / t)) for n, s, t in zip(im.GetSize(), spacing[::-1], new_spacing[::-1])
        ]
        r = sitk.Resample(
            im,
            size,
            sitk.Transform(),
            interp,
            im.GetOrigin(),
            tuple(new_spacing[::-1]),
            im.GetDirection(),
            fill,
            im.GetPixelID(),
        )
        out.append(sitk.GetArrayFromImage(r))
    return np.rint(out[0]).astype(np.int16), out[1].astype(np.uint8)


def broken_generic(labels, spacing, direction, rng):
    """Breakages that need only the liver/spleen map: ``{name: labels}``."""
    L, S = 1, 2
    cases = {}
    for t in ("L", "R", "A", "P", "S", "I"):
        cases[f"shift_both_{t}_30mm"] = shift(labels, direction, spacing, t, 30.0)
    for t in ("L", "A", "I"):
        moved = shift((labels == L).astype(np.uint8), direction, spacing, t, 35.0)
        lab = np.where(labels == L, 0, labels).astype(np.uint8)
        lab[(moved > 0) & (lab == 0)] = L
        cases[f"shift_liver_{t}_35mm"] = lab
    for t in ("R", "I", "A"):
        moved = shift((labels == S).astype(np.uint8), direction, spacing, t, 35.0)
        lab = np.where(labels == S, 0, labels).astype(np.uint8)
        lab[(moved > 0) & (lab == 0)] = S
        cases[f"shift_spleen_{t}_35mm"] = lab
    cases["swap_labels"] = np.select([labels == L, labels == S], [S, L], 0).astype(np.uint8)
    cases["mirror_LR"] = mirror(labels, direction, "LR")
    cases["mirror_AP"] = mirror(labels, direction, "AP")
    cases["mirror_SI"] = mirror(labels, direction, "SI")
    cases["spleen_empty"] = np.where(labels == S, 0, labels).astype(np.uint8)
    cases["liver_empty"] = np.where(labels == L, 0, labels).astype(np.uint8)
    cases["liver_truncated_keep_top_40pct"] = cut_organ(labels, L, direction, spacing, "S", 0.4)
    cases["liver_truncated_keep_bottom_40pct"] = cut_organ(labels, L, direction, spacing, "I", 0.4)
    cases["liver_cut_in_half_lateral"] = cut_organ(labels, L, direction, spacing, "R", 0.5)
    cases["liver_cut_in_half_medial"] = cut_organ(labels, L, direction, spacing, "L", 0.5)
    cases["spleen_cut_in_half_top"] = cut_organ(labels, S, direction, spacing, "S", 0.5)
    cases["liver_split_in_two"] = split_organ(labels, L, direction, spacing, "S", 20.0)
    cases["liver_split_in_two_lr"] = split_organ(labels, L, direction, spacing, "L", 20.0)
    cases["liver_dilated_15mm"] = dilate_organ(labels, L, spacing, 15.0)
    cases["spleen_dilated_12mm"] = dilate_organ(labels, S, spacing, 12.0)
    # Spleen label on a piece of the liver, real spleen lost.
    lab = np.where(labels == S, 0, labels).astype(np.uint8)
    lz = np.argwhere(labels == L)
    c = lz[rng.integers(len(lz))]
    piece = blob(labels.shape, c, [max(2, int(25 / s)) for s in spacing]) & (labels == L)
    lab[piece] = S
    cases["spleen_on_liver_piece"] = lab
    # Spleen mirrored to the liver's side (both organs on the right).
    sm = mirror((labels == S).astype(np.uint8), direction, "LR")
    lab = np.where(labels == S, 0, labels).astype(np.uint8)
    lab[(sm > 0) & (lab == 0)] = S
    cases["spleen_on_right_side"] = lab
    # Fragmented masks: only every other slab of 2 slices along z kept.
    lab = labels.copy()
    ax, _ = array_axis(direction, 2)
    idx = np.arange(labels.shape[ax])
    drop = (idx // 2) % 2 == 1
    sl = [slice(None)] * 3
    sl[ax] = drop
    lab[tuple(sl)] = 0
    cases["both_fragmented_slabs"] = lab
    return cases


def broken_real(hu, lab, lab_all, names, spacing, direction, rng):
    """Breakages of the real CT using its 61-structure map (other organs as spleen/liver)."""
    L, S = 1, 2
    cases = broken_generic(lab, spacing, direction, rng)
    base = np.where(lab == S, 0, lab).astype(np.uint8)
    for organ in ("stomach", "kidney_left", "kidney_right", "colon", "small_bowel"):
        x = base.copy()
        x[(lab_all == names[organ]) & (x == 0)] = S
        cases[f"{organ}_as_spleen"] = x
    for organ in ("stomach", "kidney_right", "small_bowel", "urinary_bladder"):
        x = np.where(lab == L, 0, lab).astype(np.uint8)
        x[(lab_all == names[organ]) & (x == 0)] = L
        cases[f"{organ}_as_liver"] = x
    x = lab.copy()
    x[(lab_all == names["stomach"]) & (x == 0)] = L
    cases["liver_spilled_into_stomach"] = x
    # Chest: a heart-sized blob between the lung bases (top of this CT) called liver.
    lungs = np.isin(lab_all, [names[n] for n in names if n.startswith("lung")])
    zs = np.nonzero(lungs.any(axis=(1, 2)))[0]
    x = np.where(lab == L, 0, lab).astype(np.uint8)
    cz = int(zs.max())
    yx = np.argwhere(lungs[cz])
    cy, cx = yx.mean(0).astype(int)
    heart = blob(
        lab.shape, (cz, cy, cx), (int(60 / spacing[0]), int(45 / spacing[1]), int(55 / spacing[2]))
    )
    x[heart & (x == 0)] = L
    cases["chest_blob_as_liver"] = x
    # Lung base labelled as spleen.
    x = base.copy()
    x[(lab_all == names["lung_lower_lobe_left"]) & (x == 0)] = S
    cases["lung_as_spleen"] = x
    # Vertebrae as spleen, psoas as spleen.
    x = base.copy()
    x[np.isin(lab_all, [names["vertebrae_L1"], names["vertebrae_L2"]]) & (x == 0)] = S
    cases["vertebrae_as_spleen"] = x
    x = base.copy()
    x[(lab_all == names["iliopsoas_left"]) & (x == 0)] = S
    cases["psoas_as_spleen"] = x
    return cases


def add_arms(hu, labels, spacing, direction, pad_mm: float = 120.0, radius_mm: float = 40.0):
    """The scan widened on both sides along physical x, with an arm beside the body on each.

    Arms (muscle 50 HU around a bone core of 700 HU, separated from the trunk by air)
    lie in the field of view in many trauma and emergency CTs; they must not move the
    body's midline or widen it.
    """
    ax, _ = array_axis(direction, 0)
    n = int(round(pad_mm / spacing[ax]))
    pad = [(0, 0)] * 3
    pad[ax] = (n, n)
    h = np.pad(hu, pad, constant_values=-1000)
    lab = np.pad(labels, pad, constant_values=0)
    body = np.argwhere(hu > -500)
    centre = body.mean(0)
    centre[ax] += n
    g = np.ogrid[tuple(slice(0, s) for s in h.shape)]
    ax_z, _ = array_axis(direction, 2)
    for side in (-1, 1):
        c = centre.copy()
        c[ax] = (n * 0.5) if side < 0 else (h.shape[ax] - n * 0.5)
        d2 = sum(((g[a] - c[a]) * spacing[a]) ** 2 for a in range(3) if a != ax_z)
        h = np.where(d2 <= radius_mm**2, 50, h)
        h = np.where(d2 <= (radius_mm / 3) ** 2, 700, h)
    return h.astype(hu.dtype), lab
