"""Every flag the measurement can raise, with its meaning, defined once.

``FLAGS`` maps flag name -> one-line meaning for readers of the results (the report
glossary and docs/results.md are built from it). ``BLOCKING`` names the flags that
make the grade ``indeterminate`` (``contrast_enhanced`` only when contrast is not
explicitly allowed). Imports nothing heavy.
"""

from __future__ import annotations

FLAGS: dict[str, str] = {
    # Organ found or not, and how much of it the scan shows.
    "liver_missing": "no liver (or under the minimum volume) in the segmentation; not graded",
    "spleen_missing": "no spleen (or under the minimum volume) in the segmentation; not graded",
    "liver_cut_by_edge": "the liver touches the border of the scan; its volume is a lower bound",
    "spleen_cut_by_edge": "the spleen touches the border of the scan; its volume is a lower bound",
    "liver_mostly_outside_scan": "the scan shows too little of the liver to measure it; not graded",
    "spleen_mostly_outside_scan": "the scan shows too little of the spleen to measure it; not graded",
    "liver_too_small": "no measuring cube fits inside the liver, even at the smallest size; not graded",
    "spleen_too_small": "no measuring cube fits inside the spleen, even at the smallest size; not graded",
    "liver_cube_size_reduced": "the liver was measured with cubes smaller than the configured size",
    "spleen_cube_size_reduced": "the spleen was measured with cubes smaller than the configured size",
    # Segmentation-quality gate (postprocess/gate.py, docs/gate.md).
    "liver_segmentation_doubtful": (
        "the liver mask failed a plausibility check (volume, position, shape, pieces or "
        "attenuation; see notes); not graded"
    ),
    "spleen_segmentation_doubtful": (
        "the spleen mask failed a plausibility check (volume, position, shape, pieces or "
        "attenuation; see notes); not graded"
    ),
    "organs_implausibly_placed": (
        "liver and spleen are not where they lie in a body (sides swapped, different "
        "levels, one inside the chest; see notes); not graded"
    ),
    "laterality_unchecked": (
        "no direction matrix was given, so left/right placement of the organs was not checked"
    ),
    # Attenuation plausibility (issue 10).
    "spleen_hu_nonpositive": "the spleen measured 0 HU or less, so no ratio exists; not graded",
    "liver_hu_implausible": "the liver attenuation lies outside any tissue range; not graded",
    "spleen_hu_implausible": "the spleen attenuation lies outside any tissue range; not graded",
    "ratio_implausible": "the liver/spleen ratio lies outside the physiological range; not graded",
    # Contrast (postprocess/contrast.py).
    "contrast_enhanced": (
        "the scan is or looks contrast-enhanced; the ratio criteria hold for unenhanced CT "
        "only, so it is not graded unless contrast is allowed"
    ),
    "contrast_suspected_by_attenuation": "spleen attenuation above the unenhanced range",
    "contrast_suspected_by_vessels": (
        "vessels inside the liver are brighter than its parenchyma and than unenhanced "
        "blood can be (enhanced blood; only used without aorta/portal vein/kidney masks)"
    ),
    # Contrast phase (postprocess/phase.py, docs/phase.md).
    "phase_conflict": (
        "the contrast phase cannot be trusted: the DICOM header and the image disagree, or "
        "the image contradicts itself (see notes); not graded"
    ),
    "phase_uncertain": (
        "vessels or kidneys measure between unenhanced and enhanced values, so the phase "
        "is unknown (see notes); not graded"
    ),
    "contrast_suspected_by_spleen_pattern": (
        "the spleen is mottled, as in the arterial phase (enhanced, heterogeneous)"
    ),
    # Outputs (client.pipeline.screen.write_outputs): the measurement stands.
    "output_not_written": (
        "an optional output (DICOM SEG or SR, QC picture, label files) was not written; "
        "the measurement stands; the reason is in notes"
    ),
}

# Flags that make the grade indeterminate whatever the ratio says.
BLOCKING: frozenset[str] = frozenset(
    {
        "liver_missing",
        "spleen_missing",
        "liver_too_small",
        "spleen_too_small",
        "liver_mostly_outside_scan",
        "spleen_mostly_outside_scan",
        "liver_segmentation_doubtful",
        "spleen_segmentation_doubtful",
        "organs_implausibly_placed",
        "spleen_hu_nonpositive",
        "liver_hu_implausible",
        "spleen_hu_implausible",
        "ratio_implausible",
    }
)


def describe(flag: str) -> str:
    """Meaning of ``flag`` (its name when it is not a known flag)."""
    return FLAGS.get(flag, flag)


__all__ = ["BLOCKING", "FLAGS", "describe"]
