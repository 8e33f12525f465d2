"""Segmentation-quality gate: is this liver/spleen mask plausible enough to grade?

A grade is only as good as its masks. Before a ratio is graded, the gate collects
evidence that each mask is a liver or a spleen where a body has them, and turns
doubtful evidence into flags (``liver_segmentation_doubtful``,
``spleen_segmentation_doubtful``, ``organs_implausibly_placed``) with short
human-readable notes. Thresholds and the evidence behind them: docs/gate.md
(measured by benchmarks/bench_gate.py on deliberately broken masks of the real CT
and of phantoms).

Evidence is computed on a coarse copy of the scan (about 3 mm voxels, strided
views, no resampling): plausibility does not need full resolution, and gate plus
contrast evidence cost about 0.04 s on a 512 x 512 x 300 scan (docs/gate.md). Written once against ``xp``
(NumPy or CuPy); only a few scalars leave the device.

Frames. Physical positions use ITK's LPS frame (+x patient left, +y posterior,
+z superior) through the scan's direction matrix (columns = index axes i, j, k =
array axes 2, 1, 0), as ``client.reading.scan`` defines it. Without a direction matrix
the checks that need the frame (sides, levels) are skipped and the flag
``laterality_unchecked`` says so; guessing a frame would flag every scan stored
in another orientation.

The model's own confidence is judged here too (:func:`confidence_doubts`): a mean
confidence below the floor the model config declares makes that organ's mask
doubtful, with the same flag.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ._xp import get_xp, to_numpy
from .components import bounding_box
from .config import GateConfig


@dataclass
class OrganEvidence:
    """Plausibility evidence for one organ (lengths in mm, volumes in ml, HU).

    Attributes
    ----------
    present : bool
        The largest piece has voxels on the coarse grid.
    volume_ml : float
        Volume of the largest piece (full resolution).
    largest_fraction : float
        Share of the organ's label in its largest piece.
    touches_edge : bool
        The largest piece touches the scan's border.
    centroid_lps, centroid_index : tuple
        Centroid in LPS mm (relative to voxel 0) and in coarse array indices.
    si_range, x_range : (float, float)
        Extent along physical superior (z) and left (x), LPS mm relative to voxel 0.
    hu_median, band_hu, frac_in_band : float
        Median HU, the band used, and the share of voxels within the band of the median.
    frac_air, frac_fat : float
        Share of voxels below ``air_hu`` and between ``air_hu`` and ``fat_hu``.
    shell_air : float
        Share of air in a ``shell_mm`` neighbourhood outside the organ.
    end_face : float
        Largest end-slice area over the largest slice area (ends on the border excluded).
    lateral_position, lateral_extreme : float
        Centroid and most lateral point on the organ's own side, in trunk half-widths
        from the trunk's midline (liver: right is positive for ``lateral_extreme``).
    """

    name: str
    present: bool = False
    volume_ml: float = 0.0
    largest_fraction: float = float("nan")
    touches_edge: bool = False
    centroid_lps: tuple = (float("nan"),) * 3
    centroid_index: tuple = (float("nan"),) * 3
    si_range: tuple = (float("nan"), float("nan"))
    x_range: tuple = (float("nan"), float("nan"))
    hu_median: float = float("nan")
    band_hu: float = float("nan")
    frac_in_band: float = float("nan")
    frac_air: float = float("nan")
    frac_fat: float = float("nan")
    shell_air: float = float("nan")
    end_face: float = float("nan")
    lateral_position: float = float("nan")
    lateral_extreme: float = float("nan")

    def as_dict(self) -> dict:
        out = {}
        for k, v in self.__dict__.items():
            if isinstance(v, float):
                out[k] = None if not math.isfinite(v) else round(v, 3)
            elif isinstance(v, tuple):
                out[k] = [None if not math.isfinite(x) else round(float(x), 1) for x in v]
            else:
                out[k] = v
        return out


@dataclass
class GateResult:
    """Flags, notes and the evidence they rest on.

    ``notes`` keeps the first :data:`MAX_NOTES_PER_CHECK` reasons of each failed check
    (liver, spleen, placement) so that a row stays readable; ``reasons`` has them all.
    """

    flags: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    reasons: dict = field(default_factory=dict)
    liver: OrganEvidence | None = None
    spleen: OrganEvidence | None = None
    body_midline_x: float = float("nan")

    def evidence(self) -> dict:
        return {
            "liver": self.liver.as_dict() if self.liver else None,
            "spleen": self.spleen.as_dict() if self.spleen else None,
            "body_midline_x": None
            if not math.isfinite(self.body_midline_x)
            else round(self.body_midline_x, 1),
            "reasons": {k: list(v) for k, v in self.reasons.items() if v},
        }


MAX_NOTES_PER_CHECK = 2


def coarse_strides(spacing, target_mm: float) -> tuple[int, int, int]:
    """Stride per axis that brings voxels to about ``target_mm`` (at least 1)."""
    return tuple(max(1, int(round(target_mm / float(s)))) for s in spacing)


def _physical(idx_zyx, stride, spacing, direction):
    """Physical LPS offsets (mm, relative to voxel 0) of coarse indices ``[n, 3]`` (z, y, x)."""
    xp, _ = get_xp(idx_zyx)
    mm = idx_zyx.astype(xp.float64) * xp.asarray(
        [st * float(s) for st, s in zip(stride, spacing)], dtype=xp.float64
    )
    ijk = mm[:, ::-1]  # (i, j, k) = (x, y, z) index axes
    return ijk @ xp.asarray(direction, dtype=xp.float64).T


_MIN_SLICES = 3  # an organ thinner than this along an axis has no meaningful end faces there


def _end_face(sub, at_border) -> float:
    """Largest area of an end slice relative to the organ's largest slice (over axes).

    A natural organ tapers towards its ends; a mask cut by a plane (truncated,
    half removed) ends in a large flat face. ``at_border[ax] = (lo, hi)`` says which
    end lies on the scan's own border: a cut of the scan, not of the mask, skipped.
    """
    xp, _ = get_xp(sub)
    worst = 0.0
    for ax in range(3):
        others = tuple(a for a in range(3) if a != ax)
        prof = sub.sum(axis=others)
        nz = xp.flatnonzero(prof)
        if nz.size < _MIN_SLICES:
            continue
        peak = float(prof.max())
        for pos, border in ((int(nz[0]), at_border[ax][0]), (int(nz[-1]), at_border[ax][1])):
            if not border:
                worst = max(worst, float(prof[pos]) / peak)
    return worst


def organ_evidence(
    name, hu_c, comp_c, n_all_c, stride, spacing, direction, cfg: GateConfig, volume_ml, noise_sd
) -> OrganEvidence:
    """Evidence for one organ from coarse views (``comp_c``: largest piece on the coarse grid)."""
    xp, ndi = get_xp(comp_c)
    ev = OrganEvidence(name=name, volume_ml=float(volume_ml))
    n = int(xp.count_nonzero(comp_c))
    if n == 0:
        return ev
    ev.present = True
    ev.largest_fraction = n / max(int(n_all_c), n)
    # Listing the voxels inside the organ's box only: same voxels in the same (raster)
    # order as argwhere over the whole grid, without a pass over the rest of it.
    obox = bounding_box(comp_c)
    inside = comp_c[obox]
    idx = xp.argwhere(inside) + xp.asarray([b.start for b in obox], dtype=xp.int64)
    shape = comp_c.shape
    lo = idx.min(axis=0)
    hi = idx.max(axis=0)
    lo_h, hi_h = to_numpy(lo).tolist(), to_numpy(hi).tolist()
    ev.centroid_index = tuple(float(v) for v in to_numpy(idx.mean(axis=0)))
    ev.touches_edge = any(a == 0 for a in lo_h) or any(b == s - 1 for b, s in zip(hi_h, shape))
    if direction is not None:
        phys = _physical(idx, stride, spacing, direction)
        c = to_numpy(phys.mean(axis=0))
        ev.centroid_lps = tuple(float(v) for v in c)
        ev.si_range = (float(phys[:, 2].min()), float(phys[:, 2].max()))
        ev.x_range = (float(phys[:, 0].min()), float(phys[:, 0].max()))
    vals = hu_c[obox][inside].astype(xp.float32)
    med = float(xp.median(vals))
    ev.hu_median = med
    # Band: wide enough for the organ's own noise and texture (median SD of its
    # measuring cubes), narrow enough that fat, air, bone and neighbours leave it.
    band = cfg.band_hu
    if math.isfinite(noise_sd):
        band = max(cfg.band_min_hu, min(cfg.band_hu, cfg.band_sd_k * noise_sd))
    ev.band_hu = band
    ev.frac_in_band = float(xp.mean(xp.abs(vals - med) <= band))
    ev.frac_air = float(xp.mean(vals < cfg.air_hu))
    ev.frac_fat = float(xp.mean((vals >= cfg.air_hu) & (vals < cfg.fat_hu)))
    # Shell: coarse voxels within cfg.shell_mm outside the organ (inside the scan).
    r = max(1, int(round(cfg.shell_mm / min(st * float(s) for st, s in zip(stride, spacing)))))
    lo_p = [max(0, a - r) for a in lo_h]
    hi_p = [min(s, b + r + 1) for b, s in zip(hi_h, shape)]
    box = tuple(slice(a, b) for a, b in zip(lo_p, hi_p))
    sub = comp_c[box]
    # Box-shaped neighbourhood by three 1D maximum filters (separable; a ball-shaped
    # binary_dilation costs several times more and the shell's shape does not matter).
    grown = sub.astype(xp.uint8)
    for ax in range(3):
        grown = ndi.maximum_filter1d(grown, 2 * r + 1, axis=ax, mode="constant", cval=0)
    grown = grown.astype(bool)
    shell = grown & ~sub
    ns = int(xp.count_nonzero(shell))
    if ns:
        ev.shell_air = float(xp.count_nonzero(shell & (hu_c[box] < cfg.air_hu))) / ns
    at_border = [(a == 0, b == n - 1) for a, b, n in zip(lo_h, hi_h, shape)]
    ev.end_face = _end_face(sub, at_border)
    return ev


def _trunk_midline_x(hu_c, stride, spacing, direction, cfg: GateConfig, centre_idx):
    """Physical x (LPS, mm) of the trunk's centre and its half-width, at the organs' level.

    On the axial slice through ``centre_idx`` (coarse index between the organ
    centroids), the trunk is the connected region above ``cfg.body_hu`` that contains
    that point (the largest one when the point lies in bowel gas): arms lying beside
    the body, a separate table and other objects in the field of view do not count.
    Its centre and half-width are taken along the array axis nearest physical x.
    """
    xp, ndi = get_xp(hu_c)
    d = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    col_x = int(np.argmax(np.abs(d[0, :])))  # index axis (i, j, k) nearest physical x
    col_z = int(np.argmax(np.abs(d[2, :])))
    ax_x, ax_z = 2 - col_x, 2 - col_z
    if ax_x == ax_z:  # degenerate (oblique) frame: no clean axial slice
        return float("nan"), float("nan")
    c = np.asarray(centre_idx, dtype=np.float64)
    k = int(min(max(round(c[ax_z]), 0), hu_c.shape[ax_z] - 1))
    body = xp.take(hu_c, k, axis=ax_z) > cfg.body_hu
    lab, n = ndi.label(body)
    n = int(n)
    if n == 0:
        return float("nan"), float("nan")
    pix = tuple(int(min(max(round(c[a]), 0), hu_c.shape[a] - 1)) for a in range(3) if a != ax_z)
    v = int(lab[pix])
    if v == 0:
        counts = xp.bincount(lab.ravel(), minlength=n + 1)
        counts[0] = 0
        v = int(xp.argmax(counts))
    trunk = lab == v
    a2 = ax_x if ax_x < ax_z else ax_x - 1  # axis of physical x in the 2D slice
    trunk = _without_arms(trunk, stride, spacing, ax_z, cfg)
    prof = to_numpy(trunk.sum(axis=1 - a2))
    nz = np.flatnonzero(prof)
    lo, hi = int(nz[0]), int(nz[-1])
    step = stride[ax_x] * float(spacing[ax_x])
    half = 0.5 * (hi - lo + 1) * step * abs(d[0, col_x])
    centre = c.copy()
    centre[ax_x] = 0.5 * (lo + hi)
    mm = centre * np.array([st * float(sp) for st, sp in zip(stride, spacing)])
    x = float((mm[::-1] @ d.T)[0])
    return x, half


def _without_arms(trunk, stride, spacing, ax_z, cfg: GateConfig):
    """The trunk without arms lying against it: a morphological opening by a disc of
    radius ``cfg.arm_radius_mm`` (the union of all such discs inside the slice's body).

    An upper arm (about 80-100 mm across) fits no such disc and vanishes, however
    tightly it is pressed against the flank; the trunk (over 180 mm from front to back)
    keeps its lateral extent (the curvature radius at its flank is larger than the
    disc). The opening is kept only when it leaves the trunk most of its area (a child
    or a tiny phantom is used as it is).
    """
    from scipy import ndimage as sndi

    if cfg.arm_radius_mm <= 0:
        return trunk
    xp, _ = get_xp(trunk)
    t = to_numpy(trunk)
    sp2 = [float(s) * st for a, (s, st) in enumerate(zip(spacing, stride)) if a != ax_z]
    inner = sndi.distance_transform_edt(np.pad(t, 1), sampling=sp2)[1:-1, 1:-1] > cfg.arm_radius_mm
    if not inner.any():
        return trunk
    opened = sndi.distance_transform_edt(~inner, sampling=sp2) <= cfg.arm_radius_mm
    opened &= t
    lab, n = sndi.label(opened)
    if n > 1:  # the piece holding most of the trunk
        opened = lab == (1 + int(np.argmax(np.bincount(lab.ravel())[1:])))
    if opened.sum() < 0.6 * t.sum():
        return trunk
    return xp.asarray(opened)


def _strided(box, stride) -> tuple:
    """Full-resolution slices picking the coarse-grid voxels (multiples of ``stride``) in ``box``."""
    return tuple(slice(-(-b.start // st) * st, b.stop, st) for b, st in zip(box, stride))


def _coarse_copy(mask, box, stride, coarse_shape):
    """``ascontiguousarray(mask[::s0, ::s1, ::s2])`` for a mask that is False outside ``box``."""
    xp, _ = get_xp(mask)
    out = xp.zeros(coarse_shape, dtype=mask.dtype)
    dst = tuple(slice(-(-b.start // st), -(-b.stop // st)) for b, st in zip(box, stride))
    out[dst] = mask[_strided(box, stride)]
    return out


def check_segmentation(
    hu,
    liver_comp,
    spleen_comp,
    liver_all,
    spleen_all,
    spacing,
    direction,
    liver_volume_ml: float,
    spleen_volume_ml: float,
    cfg: GateConfig,
    noise_sd: tuple = (float("nan"), float("nan")),
    hu_coarse=None,
    touches_edge: tuple = (False, False),
    within=None,
) -> GateResult:
    """Plausibility of the liver and spleen masks; flags and notes when doubtful.

    Parameters
    ----------
    hu : ndarray [z, y, x]
        CT in HU (NumPy or CuPy).
    liver_comp, spleen_comp : bool ndarray [z, y, x]
        Largest connected piece of each organ (what is measured).
    liver_all, spleen_all : bool ndarray [z, y, x]
        Every voxel of each label (for the share of the largest piece).
    spacing : (z, y, x) mm
    direction : 3 x 3 array or None
        ITK direction matrix (LPS); None skips left/right and level checks.
    liver_volume_ml, spleen_volume_ml : float
        Volumes of the largest pieces at full resolution.
    cfg : GateConfig
    noise_sd : (float, float)
        Median HU standard deviation of the liver's and the spleen's kept cubes
        (noise plus texture inside the organ); sets the attenuation band.
    hu_coarse : ndarray, optional
        ``hu`` already taken at :func:`coarse_strides` (``cfg.coarse_mm``), contiguous;
        computed here when not given.
    touches_edge : (bool, bool)
        Whether the liver's and the spleen's largest piece touch the scan's border at
        full resolution (the coarse grid can miss the last slice).
    within : tuple of slices, optional
        A box (full resolution) holding every True voxel of the four masks, e.g. the
        bounding box of all labels: the masks are then read inside it only.

    Returns
    -------
    GateResult
        ``flags`` (names in :data:`postprocess.flags.FLAGS`), ``notes`` (short
        sentences giving the reason) and the evidence.
    """
    stride = coarse_strides(spacing, cfg.coarse_mm)
    xp, _ = get_xp(hu)
    hu_c = (
        xp.ascontiguousarray(hu[tuple(slice(None, None, s) for s in stride)])
        if hu_coarse is None
        else hu_coarse
    )
    res = GateResult()
    res.liver = _coarse_evidence(
        "liver", hu_c, liver_comp, liver_all, stride, spacing, direction, cfg,
        liver_volume_ml, noise_sd[0], touches_edge[0], within,
    )  # fmt: skip
    res.spleen = _coarse_evidence(
        "spleen", hu_c, spleen_comp, spleen_all, stride, spacing, direction, cfg,
        spleen_volume_ml, noise_sd[1], touches_edge[1], within,
    )  # fmt: skip
    if direction is None:
        res.flags.append("laterality_unchecked")
    else:
        _lateral_positions(res, hu_c, stride, spacing, direction, cfg)
    judge(res, cfg)
    return res


def _coarse_evidence(
    name, hu_c, comp, allm, stride, spacing, direction, cfg: GateConfig, vol, nsd, edge, within
) -> OrganEvidence:
    """:func:`organ_evidence` of one organ on the coarse grid (its largest piece ``comp``
    and every voxel of its label ``allm``, read inside ``within`` when given)."""
    xp, _ = get_xp(comp)
    if within is None:
        sl = tuple(slice(None, None, s) for s in stride)
        n_all_c = int(xp.count_nonzero(allm[sl]))
        comp_c = xp.ascontiguousarray(comp[sl])
    else:
        n_all_c = int(xp.count_nonzero(allm[_strided(within, stride)]))
        comp_c = _coarse_copy(comp, within, stride, hu_c.shape)
    e = organ_evidence(name, hu_c, comp_c, n_all_c, stride, spacing, direction, cfg, vol, nsd)
    e.touches_edge = e.touches_edge or bool(edge)
    return e


def _lateral_positions(res: GateResult, hu_c, stride, spacing, direction, cfg: GateConfig) -> None:
    """The body's midline and each organ's side and reach as a share of the half-width
    (in place; needs both organs and the direction)."""
    half = float("nan")
    if res.liver.present and res.spleen.present:
        centre = 0.5 * (
            np.asarray(res.liver.centroid_index) + np.asarray(res.spleen.centroid_index)
        )
        res.body_midline_x, half = _trunk_midline_x(hu_c, stride, spacing, direction, cfg, centre)
    for e in (res.liver, res.spleen):
        if e.present and math.isfinite(res.body_midline_x) and half > 0:
            e.lateral_position = (e.centroid_lps[0] - res.body_midline_x) / half
            # Most lateral point on the organ's own side (+ left for the spleen,
            # + right for the liver): both organs reach the body wall.
            if e.name == "spleen":
                e.lateral_extreme = (e.x_range[1] - res.body_midline_x) / half
            else:
                e.lateral_extreme = (res.body_midline_x - e.x_range[0]) / half


def judge(res: GateResult, cfg: GateConfig) -> None:
    """Turn evidence into flags and notes (in place). Thresholds: :class:`GateConfig`."""
    reasons = {"liver": [], "spleen": [], "placement": []}
    for e in (res.liver, res.spleen):
        if e is not None:
            reasons[e.name] += _organ_reasons(e, cfg)
    lv, sp = res.liver, res.spleen
    if lv and sp and lv.present and sp.present and math.isfinite(lv.centroid_lps[0]):
        reasons["placement"] += _placement_reasons(lv, sp, cfg)
    for name, flag in (
        ("liver", "liver_segmentation_doubtful"),
        ("spleen", "spleen_segmentation_doubtful"),
        ("placement", "organs_implausibly_placed"),
    ):
        r = reasons[name]
        if r:
            res.flags.append(flag)
            res.notes.extend(r[:MAX_NOTES_PER_CHECK])
            if len(r) > MAX_NOTES_PER_CHECK:
                what = "placement" if name == "placement" else name
                res.notes.append(f"+{len(r) - MAX_NOTES_PER_CHECK} more {what} findings")
    res.reasons = reasons


def _organ_reasons(e: OrganEvidence, cfg: GateConfig) -> list[str]:
    """Why one organ's mask is doubtful: volume, pieces, HU, uniformity, air, fat, cut face."""
    r = []
    lo, hi = {"liver": cfg.liver_ml, "spleen": cfg.spleen_ml}[e.name]
    if e.volume_ml > hi:
        r.append(f"{e.name} volume {e.volume_ml:.0f} ml above the adult range (<= {hi:.0f})")
    if e.volume_ml < lo and not e.touches_edge:
        r.append(f"{e.name} volume {e.volume_ml:.0f} ml below the adult range (>= {lo:.0f})")
    if not e.present:
        r.append(f"{e.name} mask too thin to check (no voxel on the {cfg.coarse_mm:g} mm grid)")
        return r
    if e.largest_fraction < cfg.min_largest_fraction:
        r.append(
            f"{e.name} mask in pieces: largest holds {100 * e.largest_fraction:.0f} % "
            f"(>= {100 * cfg.min_largest_fraction:.0f} % expected)"
        )
    hlo, hhi = {"liver": cfg.liver_median_hu, "spleen": cfg.spleen_median_hu}[e.name]
    if not (hlo <= e.hu_median <= hhi):
        r.append(f"{e.name} median {e.hu_median:.0f} HU outside tissue range {hlo:.0f}..{hhi:.0f}")
    if e.frac_in_band < cfg.min_frac_in_band:
        r.append(
            f"{e.name} attenuation not uniform: {100 * e.frac_in_band:.0f} % of voxels within "
            f"{e.band_hu:.0f} HU of its median (>= {100 * cfg.min_frac_in_band:.0f} %)"
        )
    if e.frac_air > cfg.max_frac_air:
        r.append(f"{e.name} mask contains air ({100 * e.frac_air:.0f} % of voxels)")
    if e.frac_fat > cfg.max_frac_fat:
        r.append(f"{e.name} mask contains fat ({100 * e.frac_fat:.0f} % of voxels)")
    if e.shell_air > cfg.max_shell_air:
        r.append(
            f"{e.name} surrounded by air ({100 * e.shell_air:.0f} % of its surroundings; "
            "lung, bowel gas or outside the body)"
        )
    if e.end_face > cfg.max_end_face:
        r.append(
            f"{e.name} mask ends in a flat cut face ({100 * e.end_face:.0f} % of its largest "
            "section): truncated or cut"
        )
    return r


def _placement_reasons(lv: OrganEvidence, sp: OrganEvidence, cfg: GateConfig) -> list[str]:
    """Why the two organs do not lie where a body has them: sides, reach, levels, sizes."""
    p = []
    dx = sp.centroid_lps[0] - lv.centroid_lps[0]  # + when the spleen is left of the liver
    if dx < cfg.min_spleen_left_of_liver_mm:
        p.append(f"spleen not on the patient's left of the liver (dx {dx:.0f} mm)")
    if math.isfinite(lv.lateral_position) and lv.lateral_position > cfg.max_liver_lateral:
        p.append("liver lies on the patient's left")
    if math.isfinite(sp.lateral_position) and sp.lateral_position < cfg.min_spleen_lateral:
        p.append("spleen lies on the patient's right or at the midline")
    if math.isfinite(sp.lateral_extreme) and sp.lateral_extreme < cfg.min_spleen_reach:
        p.append(
            f"spleen does not reach the left body wall (reaches {100 * sp.lateral_extreme:.0f} % "
            "of the half-width)"
        )
    for e in (lv, sp):
        if math.isfinite(e.lateral_extreme) and e.lateral_extreme > cfg.max_reach:
            p.append(f"{e.name} reaches beyond the body outline (over-segmented?)")
    if math.isfinite(lv.lateral_extreme) and lv.lateral_extreme < cfg.min_liver_reach:
        p.append(
            f"liver does not reach the right body wall (reaches {100 * lv.lateral_extreme:.0f} % "
            "of the half-width)"
        )
    l0, l1 = lv.si_range
    s0, s1 = sp.si_range
    overlap = min(l1, s1) - max(l0, s0)
    if overlap < cfg.min_si_overlap_mm:
        p.append(f"liver and spleen at different levels (overlap {overlap:.0f} mm)")
    if s1 - l1 > cfg.max_spleen_above_liver_mm:
        p.append(f"spleen top {s1 - l1:.0f} mm above the liver top (chest?)")
    if l0 - s0 > cfg.max_spleen_below_liver_mm:
        p.append(f"spleen reaches {l0 - s0:.0f} mm below the liver's lowest point")
    if lv.volume_ml < sp.volume_ml * cfg.min_liver_to_spleen_volume:
        p.append(
            f"liver ({lv.volume_ml:.0f} ml) not larger than the spleen ({sp.volume_ml:.0f} ml)"
        )
    return p


def confidence_doubts(confidence: dict, floors: dict | None) -> list[tuple[str, str]]:
    """The model's confidence verdict: ``(flag, note)`` for each organ whose mean
    confidence (a probability, NaN when unmeasured) lies below its floor.

    ``floors``: ``{"liver": f, "spleen": f}`` calibrated for the model that made the
    masks (``benchmarks/bench_confidence.py``; the model config's parameter
    :data:`client.core.contract.CONFIDENCE_FLOOR_PARAM`); an organ below its floor is
    ``<organ>_segmentation_doubtful``, the same flag the image evidence above raises.
    """
    out = []
    for name, floor in (floors or {}).items():
        v = confidence.get(name, float("nan"))
        if math.isfinite(v) and v < floor:
            out.append((
                f"{name}_segmentation_doubtful",
                f"{name}: the model's confidence {v:.3f} is below its floor {floor:.3f}",
            ))  # fmt: skip
    return out


__all__ = [
    "GateResult",
    "OrganEvidence",
    "check_segmentation",
    "coarse_strides",
    "confidence_doubts",
    "judge",
]
