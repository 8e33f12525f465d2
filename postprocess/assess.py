"""The measurement: organs -> cubes -> pairs -> ratio, interval, grade and flags.

Ratio estimator. The original project averaged the liver/spleen ratio over all
pairs of cubes: mean_ij(L_i / S_j) = mean(L) * mean(1 / S). Because 1/S is convex,
E[1/S] > 1/E[S] (Jensen): the pairwise mean is biased upward by about
var(S) / E[S]^2 * E[L]/E[S] and the bias does not shrink with more cubes (with
spleen near 33 HU and 10 mm cubes it is about +0.03). We report the ratio of the
mean cube attenuations, mean(L) / mean(S), over the same pairs: it estimates
(liver attenuation) / (spleen attenuation) consistently, its remaining bias is of
order 1/n (negligible at 200 cubes), and it is what radiologists compute from
ROI means. The original figure is kept as ``ratio_mean_pairwise``. The 95 %
interval is a percentile bootstrap over cubes (liver and spleen resampled
independently), vectorised.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from client.core import contract
from client.core.contract import GRADE_THRESHOLDS, GradeThresholds
from client.core.errors import MeasurementError

from ._xp import get_xp, to_numpy
from .components import bounding_box, largest_component_and_box, organ_volume_ml
from .config import AssessConfig
from .contrast import contrast_evidence
from .cubes import (
    cube_margin_voxels,
    cube_size_voxels,
    cube_stats,
    sample_valid_cubes,
)
from .flags import BLOCKING
from .gate import check_segmentation, coarse_strides, confidence_doubts
from .phase import ENHANCED_PHASES, PhaseResult, classify_phase, structure_attenuation

PHASE_HU_COLUMNS = ("aorta", "portal_vein", "ivc", "kidney_cortex", "kidney_medulla")


def pdff_from_hu(liver_hu: float) -> float:
    """MRI proton-density fat fraction (%) equivalent of an UNENHANCED liver attenuation.

    Starekova, Hernando, Pickhardt, Reeder, Radiology 2021: PDFF ~ -0.58 x HU + 38.2
    (about 65 HU -> 0.5 %, 23 HU -> 25 %, -3 HU -> 40 %); clipped at 0 %.
    """
    if liver_hu is None or not math.isfinite(liver_hu):
        return float("nan")
    return max(0.0, contract.PDFF_SLOPE_PER_HU * liver_hu + contract.PDFF_INTERCEPT_PCT)


def pv_assessment(liver_hu: float) -> str:
    """Moderate steatosis on PORTAL-VENOUS CT from liver attenuation alone (Pickhardt,
    Blake, Moeller, Garrett, Summers 2024): < 80 HU likely (sensitivity 85.6 %,
    specificity 89.6 %), 80-90 HU possible (< 90 HU: sensitivity 94.9 %), else unlikely."""
    if liver_hu is None or not math.isfinite(liver_hu):
        return ""
    if liver_hu < contract.PV_LIVER_HU_LIKELY_BELOW:
        return contract.PV_ASSESSMENTS[0]
    if liver_hu < contract.PV_LIVER_HU_POSSIBLE_BELOW:
        return contract.PV_ASSESSMENTS[1]
    return contract.PV_ASSESSMENTS[2]


_NO_CRITERION = {
    "arterial": (
        "arterial phase: no steatosis criterion holds (the liver is still enhancing and "
        "the liver/spleen relation inverts; liver-HU cut-offs are validated on the "
        "portal-venous phase only)"
    ),
    "delayed": (
        "delayed phase: no steatosis criterion is applied (the ratio holds on unenhanced "
        "CT, the liver-HU cut-offs on the portal-venous phase)"
    ),
    "unknown": "phase unknown: no steatosis criterion can be chosen",
}


def grade_ratio(ratio: float, thresholds: GradeThresholds = GRADE_THRESHOLDS) -> str:
    """Grade of a liver/spleen ratio; a ratio on a threshold falls in the worse grade
    (the rule lives in :func:`client.core.contract.grade_of_ratio`)."""
    return contract.grade_of_ratio(ratio, thresholds)


@dataclass
class OrganMeasurement:
    """Cubes measured in one organ.

    ``corners``, ``means`` and ``sds`` cover EVERY sampled cube (corner = lowest
    [z, y, x] index, edge ``cube_voxels``); ``kept`` says which passed the rejection
    rules and enter the ratio (``kept_means``). QC pictures draw both.
    """

    name: str
    volume_ml: float = 0.0
    volume_all_ml: float = 0.0
    n_valid_positions: int = 0
    n_sampled: int = 0
    n_rejected: int = 0
    cube_mm: float = float("nan")
    cube_voxels: tuple = (0, 0, 0)
    margin_voxels: tuple = (0, 0, 0)
    corners: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.int64))
    kept: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    means: np.ndarray = field(default_factory=lambda: np.zeros(0))
    sds: np.ndarray = field(default_factory=lambda: np.zeros(0))
    touches_edge: bool = False

    @property
    def kept_means(self) -> np.ndarray:
        """Means (HU) of the kept cubes."""
        return self.means[self.kept] if self.means.size else self.means

    @property
    def hu(self) -> float:
        """Organ attenuation: mean of the kept cubes' means (nan when none)."""
        km = self.kept_means
        return float(np.mean(km)) if km.size else float("nan")


@dataclass
class Assessment:
    """Result of :func:`assess` for one scan (``to_row`` gives the table columns)."""

    ratio: float
    ratio_ci: tuple
    ratio_mean_pairwise: float
    grade: str
    liver_hu: float
    spleen_hu: float
    liver_minus_spleen_hu: float
    liver_volume_ml: float
    spleen_volume_ml: float
    n_pairs: int
    flags: tuple
    liver: OrganMeasurement
    spleen: OrganMeasurement
    notes: tuple = ()
    contrast_evidence: tuple = ()
    evidence: dict = field(default_factory=dict)
    liver_confidence: float = float("nan")
    spleen_confidence: float = float("nan")
    phase: PhaseResult = field(default_factory=PhaseResult)
    criterion: str = contract.CRITERION_NONE
    pdff_pct: float = float("nan")
    pv_assessment: str = ""
    liver_hu_ci: tuple = (float("nan"), float("nan"))

    @property
    def cube_mm_used(self) -> dict:
        return {"liver": self.liver.cube_mm, "spleen": self.spleen.cube_mm}

    def to_row(self) -> dict:
        """Flat dict with the result-table columns this stage owns."""

        def r(x, nd=4):
            return None if x is None or not math.isfinite(x) else round(float(x), nd)

        return {
            "grade": self.grade,
            "ratio": r(self.ratio),
            "ratio_ci_low": r(self.ratio_ci[0]),
            "ratio_ci_high": r(self.ratio_ci[1]),
            "ratio_mean_pairwise": r(self.ratio_mean_pairwise),
            "liver_hu": r(self.liver_hu, 2),
            "spleen_hu": r(self.spleen_hu, 2),
            "liver_minus_spleen_hu": r(self.liver_minus_spleen_hu, 2),
            "liver_volume_ml": r(self.liver_volume_ml, 1),
            "spleen_volume_ml": r(self.spleen_volume_ml, 1),
            "liver_confidence": r(self.liver_confidence, 3),
            "spleen_confidence": r(self.spleen_confidence, 3),
            "n_pairs": int(self.n_pairs),
            "n_cubes_liver": int(self.liver.kept_means.size),
            "n_cubes_spleen": int(self.spleen.kept_means.size),
            "n_rejected_liver": int(self.liver.n_rejected),
            "n_rejected_spleen": int(self.spleen.n_rejected),
            "cube_mm_liver": r(self.liver.cube_mm, 2),
            "cube_mm_spleen": r(self.spleen.cube_mm, 2),
            "flags": ";".join(self.flags),
            "contrast_evidence": ";".join(self.contrast_evidence),
            "notes": "; ".join(self.notes),
            "phase": self.phase.phase,
            "phase_source": self.phase.source,
            "phase_basis": self.phase.basis,
            "criterion": self.criterion,
            **{f"{k}_hu": r(self.phase.hu.get(k, float("nan")), 1) for k in PHASE_HU_COLUMNS},
            "pdff_estimate_pct": r(self.pdff_pct, 1),
            "pdff_method": contract.PDFF_METHOD if math.isfinite(self.pdff_pct) else "",
            "pv_assessment": self.pv_assessment,
            "liver_hu_ci_low": r(self.liver_hu_ci[0], 2),
            "liver_hu_ci_high": r(self.liver_hu_ci[1], 2),
        }

    def summary(self) -> dict:
        d = self.to_row()
        d.pop("flags")
        d["flags"] = list(self.flags)
        d["notes"] = list(self.notes)
        d["evidence"] = self.evidence
        return d


def _validate(hu, labels, spacing):
    if getattr(hu, "ndim", None) != 3 or getattr(labels, "ndim", None) != 3:
        raise MeasurementError(
            f"expected 3D hu and labels [z, y, x], got {getattr(hu, 'shape', None)} and "
            f"{getattr(labels, 'shape', None)}"
        )
    if tuple(hu.shape) != tuple(labels.shape):
        raise MeasurementError(
            f"hu and labels must have the same shape, got {tuple(hu.shape)} and {tuple(labels.shape)}"
        )
    try:
        sp = tuple(float(s) for s in spacing)
    except (TypeError, ValueError) as exc:
        raise MeasurementError(f"expected spacing (z, y, x) in mm, got {spacing!r}") from exc
    if len(sp) != 3 or not all(math.isfinite(s) and s > 0 for s in sp):
        raise MeasurementError(f"expected three positive finite spacings (z, y, x) mm, got {sp}")
    xp, _ = get_xp(hu)
    # min() propagates NaN: one reduction pass, no volume-sized boolean temporary
    # (0.023 s instead of 0.037 s on 79 M float32 voxels).
    if xp.issubdtype(hu.dtype, xp.floating) and hu.size and bool(xp.isnan(hu.min())):
        raise MeasurementError("hu contains NaN values")
    if labels.dtype.kind not in "iub":
        raise MeasurementError(f"expected an integer label map, got dtype {labels.dtype}")
    return sp


def _reject(means, sds, cfg: AssessConfig):
    """Boolean keep-mask: SD and robust-centre rules (see AssessConfig)."""
    xp, _ = get_xp(means)
    if means.size == 0:
        return xp.zeros(0, dtype=bool)
    sd_limit = max(cfg.max_cube_sd, cfg.sd_factor * float(xp.median(sds)))
    keep = sds <= sd_limit
    if int(keep.sum()) >= 3:
        centre = float(xp.median(means[keep]))
        mad = float(xp.median(xp.abs(means[keep] - centre))) * 1.4826
        keep &= xp.abs(means - centre) <= max(cfg.mad_k * mad, 2.0)
    return keep


def _measure_organ(hu, mask, spacing, name: str, cfg: AssessConfig, rng, within=None):
    """:func:`measure_organ` plus the largest piece and its box (for the gate).

    ``within``: slices known to contain the whole mask (searched instead of the volume).
    """
    flags: list[str] = []
    m = OrganMeasurement(name=name)
    comp, box = largest_component_and_box(mask, within)
    m.volume_ml = organ_volume_ml(comp[box], spacing) if box is not None else 0.0
    if m.volume_ml < cfg.min_organ_ml:
        flags.append(f"{name}_missing")
        return m, flags, comp, box
    # The box is tight, so the piece touches a face of the volume exactly when its box
    # does (same answer as touches_edge(comp) without reading six faces of the scan).
    m.touches_edge = any(b.start == 0 or b.stop == n for b, n in zip(box, comp.shape))
    if m.touches_edge:
        flags.append(f"{name}_cut_by_edge")
    margin = cube_margin_voxels(cfg.cube_margin_mm, spacing)
    cube_mm = cfg.cube_mm
    while True:
        size = cube_size_voxels(cube_mm, spacing)
        # Counts the valid corners and draws cfg.n_cubes of them (rng used only when
        # there are more than that, i.e. never for a size that has none).
        n_valid, corners = sample_valid_cubes(comp, size, cfg.n_cubes, rng, box, margin=margin)
        if n_valid > 0 or cube_mm <= cfg.min_cube_mm + 1e-9:
            break
        cube_mm = max(cfg.min_cube_mm, cube_mm * cfg.cube_mm_step)
    if n_valid == 0:
        flags.append(f"{name}_too_small")
        return m, flags, comp, box
    if cube_mm < cfg.cube_mm:
        flags.append(f"{name}_cube_size_reduced")
    m.cube_mm = cube_mm
    m.cube_voxels = size
    m.margin_voxels = margin
    m.n_valid_positions = int(n_valid)
    means, sds = cube_stats(hu, corners, size)
    keep = _reject(means, sds, cfg)
    m.n_sampled = int(means.size)
    m.n_rejected = int(means.size - int(keep.sum()))
    m.corners = to_numpy(corners).astype(np.int64)
    m.kept = to_numpy(keep).astype(bool)
    m.means = to_numpy(means)
    m.sds = to_numpy(sds)
    if not m.kept.any():
        flags.append(f"{name}_too_small")
    return m, flags, comp, box


def measure_organ(
    hu, mask, spacing, name: str, cfg: AssessConfig, rng
) -> tuple[OrganMeasurement, list]:
    """Largest component, cube fallback, sampling, stats and rejection for one organ.

    Cubes keep ``cube_margin_voxels(cfg.cube_margin_mm, spacing)`` voxels from the
    organ surface. Returns the measurement and its flags.
    """
    m, flags, _, _ = _measure_organ(hu, mask, spacing, name, cfg, rng)
    return m, flags


def _bootstrap_ci(lm: np.ndarray, sm: np.ndarray, n_boot: int, rng) -> tuple[float, float]:
    if lm.size < 2 or sm.size < 2 or n_boot < 10:
        return (float("nan"), float("nan"))
    li = rng.integers(0, lm.size, size=(n_boot, lm.size))
    si = rng.integers(0, sm.size, size=(n_boot, sm.size))
    sden = sm[si].mean(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = lm[li].mean(axis=1) / sden
    ratios = ratios[np.isfinite(ratios)]
    if ratios.size < 10:
        return (float("nan"), float("nan"))
    lo, hi = np.percentile(ratios, [2.5, 97.5])
    return (float(lo), float(hi))


def _bootstrap_mean_ci(values: np.ndarray, n_boot: int, rng) -> tuple[float, float]:
    """95 % percentile-bootstrap interval of the mean of cube means (cubes resampled)."""
    if values.size < 2 or n_boot < 10:
        return (float("nan"), float("nan"))
    idx = rng.integers(0, values.size, size=(n_boot, values.size))
    lo, hi = np.percentile(values[idx].mean(axis=1), [2.5, 97.5])
    return (float(lo), float(hi))


def _median_sd(m: OrganMeasurement) -> float:
    sd = m.sds[m.kept] if m.sds.size else m.sds
    return float(np.median(sd)) if sd.size else float("nan")


def mean_confidence(confidence, mask, within=None) -> float:
    """Mean of a uint8 confidence map (``round(255 * p)``) inside ``mask``, as a
    probability in [0, 1]; NaN for an empty mask. ``within``: a box holding the mask."""
    if within is not None:
        confidence, mask = confidence[within], mask[within]
    xp, _ = get_xp(mask)
    n = int(xp.count_nonzero(mask))
    if n == 0:
        return float("nan")
    total = float(confidence[mask].sum(dtype=xp.float64))
    return total / n / 255.0


def _validate_direction(direction):
    if direction is None:
        return None
    try:
        d = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    except (TypeError, ValueError) as exc:
        raise MeasurementError(
            f"expected a 3 x 3 direction matrix, got {np.shape(direction)}"
        ) from exc
    if not np.all(np.isfinite(d)) or abs(abs(np.linalg.det(d)) - 1.0) > 1e-3:
        raise MeasurementError(
            f"expected an orthonormal 3 x 3 direction matrix, got {np.round(d, 4).tolist()}"
        )
    return d


def assess(
    hu,
    labels,
    spacing,
    config: AssessConfig | None = None,
    contrast_hint: bool | None = None,
    direction=None,
    confidence=None,
    confidence_floor: dict | None = None,
    classes: dict | None = None,
    tag: str | None = None,
) -> Assessment:
    """Measure liver and spleen attenuation in cubes, check the masks and grade the liver.

    Parameters
    ----------
    hu : ndarray [z, y, x]
        CT in HU on the scan's own grid (NumPy or CuPy).
    labels : ndarray [z, y, x], integer
        Label map on the same grid (``config.liver_label``, ``config.spleen_label``).
    spacing : (z, y, x) mm
    config : AssessConfig, optional
    contrast_hint : bool, optional
        True when the scan's metadata says contrast was given (forces the
        ``contrast_enhanced`` flag, evidence ``tag``); None when unknown.
    direction : 3 x 3 array, optional
        The scan's ITK direction matrix (LPS; columns = index axes i, j, k = array
        axes 2, 1, 0, as ``client.reading.scan.ScanVolume.direction``). The segmentation
        gate needs it to check that the spleen lies on the patient's left and the
        liver on the right; without it that check is skipped (flag
        ``laterality_unchecked``).
    confidence : ndarray [z, y, x] uint8, optional
        The model's confidence map on the same grid (``round(255 * p)``,
        :data:`client.core.contract.CONFIDENCE_NAME`): its mean inside each measured piece
        is reported (``liver_confidence``, ``spleen_confidence``).
    confidence_floor : dict, optional
        ``{"liver": f, "spleen": f}``, calibrated for the model that made the masks
        (``benchmarks/bench_confidence.py``): a mean below its floor makes the organ's
        segmentation doubtful (``*_segmentation_doubtful``, the reason in ``notes``;
        the verdict is the gate's, :func:`postprocess.gate.confidence_doubts`).
    classes : dict, optional
        ``{name: label value}`` of every structure ``labels`` carries besides liver and
        spleen (aorta, portal vein, IVC, kidneys: the contrast-phase evidence of
        :mod:`postprocess.phase`). Without them the phase rests on the liver and
        spleen evidence.
    tag : str, optional
        What the header says of contrast (:func:`postprocess.phase.tag_phase`);
        ``contrast_hint=True`` counts as ``"enhanced"``.

    Returns
    -------
    Assessment
        Grade ``indeterminate`` whenever a blocking flag (:data:`postprocess.flags.BLOCKING`)
        fired; ``notes`` say why in words, ``contrast_evidence`` which image evidence
        of contrast fired.

    Raises
    ------
    MeasurementError
        Mismatched shapes, non-3D input, NaN in HU, non-positive spacing, non-integer
        labels, a direction that is not an orthonormal 3 x 3 matrix.
    """
    cfg = config or AssessConfig()
    w = _prepare(hu, labels, spacing, direction, cfg)  # checks, organ masks in one box
    liver, spleen = _measure_organs(w)  # largest pieces, cubes (rng: liver, then spleen)
    ratio = _ratio(w, liver, spleen)  # ratio of means, pairwise mean, bootstrap interval
    _plausibility(w, liver, spleen, ratio[0])  # values no liver or spleen tissue has
    cres = _organ_contrast_evidence(w, liver, spleen)  # liver/spleen evidence of contrast
    gate_doubt = _gate(w, liver, spleen)  # cut by the scan's edge, segmentation gate
    conf = _confidence(w, confidence, confidence_floor)  # the model's own confidence
    if tag is None and contrast_hint:
        tag = "enhanced"
    ph, contrast_ev = _phase(w, cres, gate_doubt, classes, tag, spleen.hu)
    verdict = _criterion(w, ph, ratio[0], liver)  # grade and the criterion of the phase
    return _result(w, liver, spleen, ratio, conf, ph, contrast_ev, verdict)


# --- the stages of assess, top to bottom -----------------------------------------------
@dataclass
class _Work:
    """What the stages of :func:`assess` share: inputs, checked, and what they found."""

    hu: object
    labels: object
    sp: tuple
    direction: object
    cfg: AssessConfig
    rng: object
    lbox: tuple | None
    liver_all: object
    spleen_all: object
    stride: tuple
    flags: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    evidence: dict = field(default_factory=dict)
    liver_comp: object = None
    spleen_comp: object = None
    hu_c: object = None


def _prepare(hu, labels, spacing, direction, cfg: AssessConfig) -> _Work:
    sp = _validate(hu, labels, spacing)
    direction = _validate_direction(direction)
    # One pass over the label map for the box of every label; the organ masks are then
    # compared inside that box only (zeros outside: np.zeros pages stay untouched).
    xp, _ = get_xp(hu)
    if cfg.liver_label != 0 and cfg.spleen_label != 0:
        lbox = bounding_box(labels)  # None: no label at all
    else:  # a label value 0 (background) is everywhere: the whole volume
        lbox = tuple(slice(0, n) for n in labels.shape)
    liver_all = xp.zeros(labels.shape, dtype=bool)
    spleen_all = xp.zeros(labels.shape, dtype=bool)
    if lbox is not None:
        sub = labels[lbox]
        liver_all[lbox] = sub == cfg.liver_label
        spleen_all[lbox] = sub == cfg.spleen_label
    return _Work(
        hu, labels, sp, direction, cfg, np.random.default_rng(cfg.seed), lbox,
        liver_all, spleen_all, coarse_strides(sp, cfg.gate.coarse_mm),
    )  # fmt: skip


def _measure_organs(w: _Work):
    liver, f_l, w.liver_comp, _ = _measure_organ(
        w.hu, w.liver_all, w.sp, "liver", w.cfg, w.rng, w.lbox
    )
    spleen, f_s, w.spleen_comp, _ = _measure_organ(
        w.hu, w.spleen_all, w.sp, "spleen", w.cfg, w.rng, w.lbox
    )
    w.flags += f_l + f_s
    return liver, spleen


def _ratio(w: _Work, liver: OrganMeasurement, spleen: OrganMeasurement):
    """(ratio of means, the original pairwise mean, 95 % bootstrap interval)."""
    lm, sm = liver.kept_means, spleen.kept_means
    ratio = pairwise = float("nan")
    ci = (float("nan"), float("nan"))
    if lm.size and sm.size:
        shu = spleen.hu
        if shu <= 0:
            w.flags.append("spleen_hu_nonpositive")
            w.notes.append(f"spleen {shu:.0f} HU: no ratio")
        else:
            ratio = float(lm.mean() / sm.mean())
            with np.errstate(divide="ignore"):
                inv = 1.0 / sm
            pairwise = float(lm.mean() * inv.mean()) if np.all(sm > 0) else float("nan")
            ci = _bootstrap_ci(lm, sm, w.cfg.n_bootstrap, w.rng)
    return ratio, pairwise, ci


def _plausibility(w: _Work, liver, spleen, ratio: float) -> None:
    """Attenuation plausibility (issue 10): values no liver or spleen tissue has."""
    cfg = w.cfg
    for name, v, (lo, hi) in (
        ("liver", liver.hu, cfg.liver_hu_range),
        ("spleen", spleen.hu, cfg.spleen_hu_range),
    ):
        if math.isfinite(v) and not (lo <= v <= hi) and not (name == "spleen" and v <= 0):
            w.flags.append(f"{name}_hu_implausible")
            w.notes.append(f"{name} {v:.0f} HU outside tissue range {lo:.0f}..{hi:.0f}")
    if math.isfinite(ratio) and not (cfg.ratio_range[0] < ratio <= cfg.ratio_range[1]):
        w.flags.append("ratio_implausible")
        w.notes.append(
            f"ratio {ratio:.2f} outside the physiological range "
            f"{cfg.ratio_range[0]:g}..{cfg.ratio_range[1]:g}"
        )


def _organ_contrast_evidence(w: _Work, liver, spleen):
    cfg = w.cfg
    coarse = tuple(slice(None, None, s) for s in w.stride)
    xp, _ = get_xp(w.hu)
    if cfg.gate.enabled or cfg.contrast.enabled:  # one coarse copy for both
        w.hu_c = xp.ascontiguousarray(w.hu[coarse])
    cres = contrast_evidence(
        w.hu_c,
        w.liver_comp[coarse] if liver.volume_ml >= cfg.min_organ_ml else None,
        liver.hu,
        spleen.hu,
        spleen.means,
        spleen.sds,
        spleen.cube_voxels,
        cfg.contrast,
        cfg.contrast_spleen_hu,
    )
    w.evidence["contrast"] = cres.details()
    return cres


def _gate(w: _Work, liver, spleen) -> bool:
    """Edge cuts and the segmentation-quality gate; True when the organs lie where no body
    has them (image evidence read from such masks says nothing about contrast)."""
    cfg = w.cfg
    if liver.touches_edge and liver.volume_ml < cfg.cut_liver_min_ml:
        w.flags.append("liver_mostly_outside_scan")
    if spleen.touches_edge and spleen.volume_ml < cfg.cut_spleen_min_ml:
        w.flags.append("spleen_mostly_outside_scan")
    # Only when both organs were found (a missing organ already makes the scan
    # indeterminate and says why).
    if not (
        cfg.gate.enabled
        and liver.volume_ml >= cfg.min_organ_ml
        and spleen.volume_ml >= cfg.min_organ_ml
    ):
        return False
    g = check_segmentation(
        w.hu,
        w.liver_comp,
        w.spleen_comp,
        w.liver_all,
        w.spleen_all,
        w.sp,
        w.direction,
        liver.volume_ml,
        spleen.volume_ml,
        cfg.gate,
        noise_sd=(_median_sd(liver), _median_sd(spleen)),
        hu_coarse=w.hu_c,
        touches_edge=(liver.touches_edge, spleen.touches_edge),
        within=w.lbox,
    )
    w.flags += g.flags
    w.notes += g.notes
    w.evidence["gate"] = g.evidence()
    if g.liver is not None:
        liver.volume_all_ml = liver.volume_ml / max(g.liver.largest_fraction, 1e-9)
    if g.spleen is not None:
        spleen.volume_all_ml = spleen.volume_ml / max(g.spleen.largest_fraction, 1e-9)
    return "organs_implausibly_placed" in g.flags


def _confidence(w: _Work, confidence, confidence_floor) -> dict:
    conf = {"liver": float("nan"), "spleen": float("nan")}
    if confidence is None:
        return conf
    if tuple(confidence.shape) != tuple(w.labels.shape):
        raise MeasurementError(
            f"confidence map {tuple(confidence.shape)} does not match labels {tuple(w.labels.shape)}"
        )
    for name, comp in (("liver", w.liver_comp), ("spleen", w.spleen_comp)):
        conf[name] = mean_confidence(confidence, comp, w.lbox)
    w.evidence["confidence"] = {
        k: (None if not math.isfinite(v) else round(v, 4)) for k, v in conf.items()
    }
    for flag, note in confidence_doubts(conf, confidence_floor):  # the gate's verdict
        if flag not in w.flags:
            w.flags.append(flag)
        w.notes.append(note)
    return conf


def _phase(w: _Work, cres, gate_doubt: bool, classes, tag, spleen_hu: float):
    """Contrast phase: vessels and kidneys where the label map has them (steatosis cannot
    move them), else the liver/spleen evidence; then weighed against the tag.

    Image evidence read from masks that lie on the wrong structures (sides or levels
    implausible) says nothing about contrast (a mirrored "spleen" over bowel looks
    mottled), so it is dropped then; the grade is indeterminate anyway and the notes
    say why. Masks doubted for their attenuation keep it: a mottled arterial spleen is
    evidence of contrast. Returns the :class:`PhaseResult` and the contrast evidence.
    """
    cfg = w.cfg
    image_ev = list(cres.evidence)
    if gate_doubt:
        image_ev = []
        w.evidence["contrast"]["ignored_because_organs_misplaced"] = True
    hu_s = (
        structure_attenuation(w.hu, w.labels, classes, w.sp, w.stride, cfg.phase)
        if classes and cfg.phase.enabled and not gate_doubt
        else {}
    )
    ph = classify_phase(hu_s, spleen_hu, image_ev, tag, cfg.phase)
    w.evidence["phase"] = ph.details()
    w.flags += [f for f in ph.flags if f not in w.flags]
    w.notes += ph.notes
    if ph.basis == "vessels":
        t = cfg.phase
        limits = {"aorta": t.enhanced_min_hu, "portal_vein": t.enhanced_min_hu,
                  "ivc": t.enhanced_min_hu, "kidney": t.kidney_enhanced_min_hu}  # fmt: skip
        image_ev = [k for k, lim in limits.items() if hu_s.get(k, -1e9) > lim]
    contrast_ev = (["tag"] if tag is not None and tag != "unenhanced" else []) + image_ev
    if ph.phase in ENHANCED_PHASES or (ph.phase == "unknown" and contrast_ev):
        w.flags.append("contrast_enhanced")
        if ph.basis == "organs":
            for e, flag in (
                ("attenuation", "contrast_suspected_by_attenuation"),
                ("vessels", "contrast_suspected_by_vessels"),
                ("spleen_pattern", "contrast_suspected_by_spleen_pattern"),
            ):
                if e in image_ev:
                    w.flags.append(flag)
    return ph, contrast_ev


_PHASE_FLAGS = frozenset({"contrast_enhanced", "phase_conflict", "phase_uncertain"})


def _criterion(w: _Work, ph: PhaseResult, ratio: float, liver: OrganMeasurement) -> dict:
    """The grade, and the criterion that holds for the phase, never mixed (docs/phase.md)."""
    cfg = w.cfg
    blocking = set(BLOCKING) | (set() if cfg.allow_contrast else set(_PHASE_FLAGS))
    blocked = blocking & set(w.flags)
    grade = "indeterminate" if blocked else grade_ratio(ratio, cfg.thresholds)
    out = {
        "grade": grade,
        "criterion": contract.CRITERION_NONE,
        "pdff": float("nan"),
        "pv": "",
        "liver_ci": (float("nan"), float("nan")),
    }
    lm = liver.kept_means
    if ph.phase == "unenhanced" or cfg.allow_contrast:
        out["criterion"] = contract.CRITERION_RATIO
        if ph.phase == "unenhanced" and grade != "indeterminate":
            out["pdff"] = pdff_from_hu(liver.hu)
    elif ph.phase == "portal_venous":
        out["criterion"] = contract.CRITERION_PV_LIVER_HU
        w.notes.append(
            "portal-venous phase: graded by liver attenuation alone (pv_assessment); "
            "the liver/spleen ratio does not hold"
        )
    else:
        w.notes.append(_NO_CRITERION.get(ph.phase, _NO_CRITERION["unknown"]))
    if ph.phase == "portal_venous" and not (blocked - _PHASE_FLAGS) and lm.size:
        out["pv"] = pv_assessment(liver.hu)
        out["liver_ci"] = _bootstrap_mean_ci(lm, cfg.n_bootstrap, w.rng)
    elif out["criterion"] == contract.CRITERION_RATIO and lm.size and grade != "indeterminate":
        out["liver_ci"] = _bootstrap_mean_ci(lm, cfg.n_bootstrap, w.rng)
    return out


def _result(w: _Work, liver, spleen, ratio: tuple, conf: dict, ph, contrast_ev, verdict: dict):
    """The :class:`Assessment` of what the stages found."""
    return Assessment(
        ratio=ratio[0],
        ratio_ci=ratio[2],
        ratio_mean_pairwise=ratio[1],
        grade=verdict["grade"],
        liver_hu=liver.hu,
        spleen_hu=spleen.hu,
        liver_minus_spleen_hu=liver.hu - spleen.hu,
        liver_volume_ml=liver.volume_ml,
        spleen_volume_ml=spleen.volume_ml,
        n_pairs=int(liver.kept_means.size * spleen.kept_means.size),
        flags=tuple(w.flags),
        liver=liver,
        spleen=spleen,
        notes=tuple(w.notes),
        liver_confidence=conf["liver"],
        spleen_confidence=conf["spleen"],
        contrast_evidence=tuple(contrast_ev),
        evidence=w.evidence,
        phase=ph,
        criterion=verdict["criterion"],
        pdff_pct=verdict["pdff"],
        pv_assessment=verdict["pv"],
        liver_hu_ci=verdict["liver_ci"],
    )


__all__ = [
    "Assessment",
    "OrganMeasurement",
    "assess",
    "grade_ratio",
    "measure_organ",
    "pdff_from_hu",
    "pv_assessment",
]
