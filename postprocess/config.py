"""Measurement settings in one object (defaults justified in the docstrings)."""

from __future__ import annotations

from dataclasses import dataclass, field

from client.contract import GRADE_THRESHOLDS, LABEL_LIVER, LABEL_SPLEEN, GradeThresholds


@dataclass(frozen=True)
class AssessConfig:
    """Settings of :func:`postprocess.assess`.

    Attributes
    ----------
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
        Spleen above this suggests contrast enhancement (unenhanced spleen is ~40-55 HU,
        portal-venous ~100-130 HU).
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
    contrast_spleen_hu: float = 80.0
    allow_contrast: bool = False
    cut_liver_min_ml: float = 500.0
    cut_spleen_min_ml: float = 50.0
    liver_label: int = LABEL_LIVER
    spleen_label: int = LABEL_SPLEEN
    thresholds: GradeThresholds = field(default_factory=lambda: GRADE_THRESHOLDS)
