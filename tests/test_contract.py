"""The contract module stays light and self-consistent."""

from __future__ import annotations

import subprocess
import sys

from client.core import contract

DESIGN_COLUMNS = (
    "case_id source status grade ratio ratio_ci_low ratio_ci_high liver_hu spleen_hu "
    "liver_minus_spleen_hu liver_volume_ml spleen_volume_ml n_pairs flags error seconds"
).split()


def test_contract_imports_nothing_heavy():
    code = (
        "import sys, client.core.contract, client.core.errors, client.reading.scan;"
        "heavy = [m for m in ('SimpleITK', 'paddle', 'onnxruntime', 'tritonclient', 'scipy', 'cupy')"
        " if m in sys.modules]; print(','.join(heavy))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, encoding="utf-8", check=True
    )
    assert out.stdout.strip() == ""


def test_result_columns_cover_the_cli_contract():
    missing = [c for c in DESIGN_COLUMNS if c not in contract.RESULT_COLUMNS]
    assert missing == []
    assert len(set(contract.RESULT_COLUMNS)) == len(contract.RESULT_COLUMNS)


def test_thresholds_are_ordered_and_labels_distinct():
    t = contract.GRADE_THRESHOLDS
    assert t.normal_above > t.mild_above > t.moderate_above > 0
    labels = {contract.LABEL_BACKGROUND, contract.LABEL_LIVER, contract.LABEL_SPLEEN}
    assert len(labels) == contract.NUM_CLASSES
    for name, mapping in contract.LABEL_MAPS.items():
        assert mapping["liver"] != mapping["spleen"], name


def test_one_grading_rule_and_one_colour_per_grade():
    """Issue 21: the grade thresholds, words and colours have one home (client.core.contract)."""
    from client.core import contract
    from client.outputs import qc, report_html
    from postprocess import grade_ratio

    for r, g in ((1.0001, "normal"), (1.0, "mild"), (0.7, "moderate"), (0.5, "severe"),
                 (float("nan"), "indeterminate"), (None, "indeterminate")):  # fmt: skip
        assert contract.grade_of_ratio(r) == grade_ratio(r) == g
        if r is not None and r == r:
            assert report_html._grade(r) == g
    for g, rgb in contract.GRADE_RGB.items():
        assert qc.GRADE_COLOURS[g] == rgb
        assert report_html.GRADE_CSS[g] == "#{:02x}{:02x}{:02x}".format(*rgb)
