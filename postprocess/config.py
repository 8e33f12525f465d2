"""Measurement settings in one object (defaults justified in the docstrings)."""

from __future__ import annotations

from dataclasses import dataclass, field

from client.core.contract import GRADE_THRESHOLDS, LABEL_LIVER, LABEL_SPLEEN, GradeThresholds


@dataclass(frozen=True)
class GateConfig:
    """Thresholds of the segmentation-quality gate (:mod:`postprocess.gate`).

    Values and the measurements behind them: docs/gate.md (benchmarks/bench_gate.py).
    ``arm_radius_mm``: the trunk's width (body-wall reach of the organs) is measured
    after an opening by a disc of this radius, so that arms lying against the flanks
    (upper arm 80-100 mm across) do not count as body (``postprocess.gate``).

    Volumes refer to the largest piece of each organ; a lower volume limit is not
    applied when the organ touches the scan's border (the volume is then a lower bound).
    """

    enabled: bool = True
    coarse_mm: float = 3.0
    liver_ml: tuple = (600.0, 4000.0)
    spleen_ml: tuple = (25.0, 2000.0)
    min_largest_fraction: float = 0.8
    liver_median_hu: tuple = (-60.0, 200.0)
    spleen_median_hu: tuple = (20.0, 220.0)
    band_hu: float = 50.0
    band_min_hu: float = 20.0
    band_sd_k: float = 3.5
    min_frac_in_band: float = 0.85
    air_hu: float = -400.0
    fat_hu: float = -60.0
    body_hu: float = -500.0
    max_frac_air: float = 0.02
    max_frac_fat: float = 0.1
    shell_mm: float = 6.0
    max_shell_air: float = 0.3
    max_end_face: float = 0.6
    min_spleen_left_of_liver_mm: float = 40.0
    max_liver_lateral: float = 0.0
    min_spleen_lateral: float = 0.1
    min_si_overlap_mm: float = 20.0
    max_spleen_above_liver_mm: float = 20.0
    max_spleen_below_liver_mm: float = 40.0
    min_spleen_reach: float = 0.5
    min_liver_reach: float = 0.55
    max_reach: float = 1.05
    arm_radius_mm: float = 50.0
    min_liver_to_spleen_volume: float = 1.0


@dataclass(frozen=True)
class ContrastConfig:
    """Thresholds of the image-based contrast evidence (:mod:`postprocess.contrast`).

    The spleen limit is ``AssessConfig.contrast_spleen_hu``; ``liver_hu`` is the liver's.

    Values and the measurements behind them: docs/gate.md (tests/test_contrast.py).
    """

    enabled: bool = True
    liver_hu: float = 80.0
    vessel_excess_hu: float = 30.0
    vessel_noise_k: float = 2.5
    vessel_min_fraction: float = 0.01
    spleen_spread_hu: float = 12.0
    blood_max_hu: float = 70.0


@dataclass(frozen=True)
class PhaseConfig:
    """Thresholds of the contrast-phase rules (:mod:`postprocess.phase`, docs/phase.md).

    Attenuations are medians inside each structure after trimming its partial-volume
    rim. The rules and the published measurements behind each number: docs/phase.md.

    Attributes
    ----------
    blood_max_hu : float
        Unenhanced blood (aorta, IVC, portal vein) measures 35-60 HU (hematocrit-
        dependent); at or below this every vessel counts as unenhanced.
    enhanced_min_hu : float
        A vessel above this carries contrast. Between ``blood_max_hu`` and this the
        phase is ``unknown`` (flag ``phase_uncertain``).
    kidney_unenhanced_max_hu, kidney_enhanced_min_hu : float
        Unenhanced renal parenchyma measures 30-40 HU; any enhancement phase lifts
        it far above 80 HU.
    arterial_aorta_hu : float
        Arterial phase: the aorta at or above this ...
    arterial_gap_hu : float
        ... and the aorta at least this much above the portal vein (the portal system
        fills only after the splanchnic circulation: 100-150 HU in the late arterial
        phase against 250-350 HU in the aorta).
    corticomedullary_hu : float
        Renal cortex minus medulla above this is the corticomedullary (arterial)
        phase; it is nearly 0 in the nephrographic (portal) and excretory phases.
    portal_min_hu : float
        Enhanced, not arterial: the brightest of aorta and portal vein at or above this
        is the portal-venous phase (~60-80 s: 150-200 HU), below it the delayed /
        equilibrium phase (3-10 min: 90-140 HU).
    spleen_unenhanced_max_hu : float
        An unenhanced spleen measures 40-60 HU; a spleen above this while every vessel
        is unenhanced is a contradiction (phase ``unknown``, flag ``phase_conflict``).
    min_structure_ml : float
        Structures smaller than this in the scan are not measured.
    trim_mm : float
        Partial-volume rim trimmed from each structure before taking its median.
    measure_mm : float
        The structures are measured on every k-th voxel, k = floor(measure_mm / spacing)
        per axis (at least 1): a median over thousands of voxels needs no finer grid.
    cortex_mm, medulla_mm : float
        Kidney voxels at most ``cortex_mm`` from the kidney surface (past the trimmed
        rim) are cortex, those deeper than ``medulla_mm`` medulla.
    """

    enabled: bool = True
    blood_max_hu: float = 70.0
    enhanced_min_hu: float = 85.0
    kidney_unenhanced_max_hu: float = 60.0
    kidney_enhanced_min_hu: float = 80.0
    arterial_aorta_hu: float = 200.0
    arterial_gap_hu: float = 60.0
    corticomedullary_hu: float = 50.0
    portal_min_hu: float = 145.0
    spleen_unenhanced_max_hu: float = 70.0
    min_structure_ml: float = 1.0
    trim_mm: float = 2.0
    measure_mm: float = 1.5
    cortex_mm: float = 5.0
    medulla_mm: float = 9.0


@dataclass(frozen=True)
class AssessConfig:
    """Settings of :func:`postprocess.assess`.

    Attributes
    ----------
    gate : GateConfig
        Segmentation-quality gate thresholds (``gate.enabled=False`` skips it).
    contrast : ContrastConfig
        Image-based contrast evidence thresholds.
    cube_margin_mm : float
        Cubes keep this margin from the organ surface, and at least one voxel along
        every axis (:func:`postprocess.cubes.cube_margin_voxels`): the surface voxels
        are partial-volume mixes with the neighbours, worst with thick slices (the
        real CT at 0.8 x 0.8 x 5 mm measured 1.379 against 1.321 native without a
        margin).
    liver_hu_range, spleen_hu_range : (float, float)
        Cube-mean attenuation outside these ranges is not tissue of that organ
        (mirrored masks, masks over air or bone): flag, no grade.
    ratio_range : (float, float)
        A liver/spleen ratio outside this range is physiologically implausible
        (a wrong mask or a failed measurement): flag, no grade.
    n_cubes : int
        Cubes drawn per organ. 200 keeps the bootstrap 95 % interval of the ratio
        around +-0.01 on real CT (far below the 0.2-0.3 width of a grade).
    cube_mm : float
        Cube edge in mm (radiologists' ROIs are ~1 cm^2); converted per axis to
        voxels (at least 1).
    min_cube_mm : float
        Floor of the fallback when an organ is too small for ``cube_mm`` cubes.
    cube_mm_step : float
        Factor by which the edge shrinks at each fallback step.
    seed : int
        Seed of cube sampling and bootstrap (results reproducible).
    max_cube_sd : float
        Cubes whose HU standard deviation exceeds ``max(max_cube_sd, sd_factor * median SD)``
        are rejected (vessels, calcifications, streak artefacts, organ borders).
    sd_factor : float
        See ``max_cube_sd``.
    mad_k : float
        Cubes whose mean is more than ``mad_k`` robust SDs (1.4826 * MAD of cube
        means) from the median cube mean are rejected (bright vessels on contrast,
        focal lesions). At least 2 HU of tolerance is always kept.
    n_bootstrap : int
        Bootstrap resamples (over cubes) for the 95 % interval.
    min_organ_ml : float
        An organ smaller than this after keeping its largest piece counts as missing.
    contrast_spleen_hu : float
        Spleen above this suggests contrast enhancement (unenhanced spleen is ~40-60 HU,
        arterial 75-150 HU mottled or homogeneous late, portal-venous ~80-130 HU). 70 HU
        catches a homogeneous late-arterial spleen of 75 HU and keeps > 10 HU above the
        unenhanced range (the shared real CT: 34 HU; phantoms 40-55 HU).
    allow_contrast : bool
        Grade contrast-enhanced scans anyway (flag kept).
    cut_liver_min_ml, cut_spleen_min_ml : float
        An organ touching the border of the volume is flagged ``<organ>_cut_by_edge``
        (its volume is then a lower bound). The attenuation from cubes inside the
        visible part stays valid, so the grade becomes ``indeterminate`` only when the
        visible part is smaller than these volumes (scan range mostly misses the organ;
        adult liver is ~1200-1800 ml, spleen ~150-250 ml). A real CT whose range ends at
        the liver dome (../shared/data/totalseg_example) keeps its grade.
    """

    n_cubes: int = 200
    cube_mm: float = 10.0
    min_cube_mm: float = 4.0
    cube_mm_step: float = 0.75
    seed: int = 0
    max_cube_sd: float = 30.0
    sd_factor: float = 2.0
    mad_k: float = 3.5
    n_bootstrap: int = 2000
    min_organ_ml: float = 5.0
    contrast_spleen_hu: float = 70.0
    allow_contrast: bool = False
    cut_liver_min_ml: float = 500.0
    cut_spleen_min_ml: float = 50.0
    cube_margin_mm: float = 1.0
    liver_hu_range: tuple = (-80.0, 200.0)
    spleen_hu_range: tuple = (15.0, 250.0)
    ratio_range: tuple = (0.05, 3.0)
    gate: GateConfig = field(default_factory=GateConfig)
    contrast: ContrastConfig = field(default_factory=ContrastConfig)
    phase: PhaseConfig = field(default_factory=PhaseConfig)
    liver_label: int = LABEL_LIVER
    spleen_label: int = LABEL_SPLEEN
    thresholds: GradeThresholds = field(default_factory=lambda: GRADE_THRESHOLDS)
