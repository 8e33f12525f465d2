"""QC pictures follow the radiological convention whatever the storage order; the report lists every row."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from client.outputs.report import COLOURS, flag_glossary, qc_png, thresholds_text, write_report
from client.outputs.report_html import GRADE_CSS
from client.reading.io import read_label_map, read_scan
from client.reading.scan import ScanVolume
from postprocess.assess import grade_ratio

GRADE_CSS_INV = {v: k for k, v in GRADE_CSS.items()}


@pytest.fixture(scope="module")
def real_ct(shared_data):
    ct = read_scan(shared_data / "totalseg_example" / "ct.nii.gz")
    return ct, read_label_map(shared_data / "totalseg_example" / "labels.nii.gz", ct)


def _colour_columns(png, colour):
    a = np.asarray(Image.open(png).convert("RGB"))
    ys, xs = np.nonzero(np.all(a == np.array(colour, np.uint8), axis=2))
    return xs, a.shape[1]


def test_liver_is_on_the_picture_left_spleen_on_the_right(tmp_path, real_ct):
    ct, labels = real_ct  # stored RAS (direction diag(-1, -1, 1))
    png = qc_png(ct.array, labels, ct.spacing, tmp_path / "qc.png", "t", ct.direction)
    liver_x, width = _colour_columns(png, COLOURS[1])
    spleen_x, _ = _colour_columns(png, COLOURS[2])
    # First panel: the axial slice through the liver's largest cross-section.
    axial_width = int(round(360 * ct.shape[2] * ct.spacing[2] / (ct.shape[1] * ct.spacing[1])))
    lx = liver_x[liver_x < axial_width]
    sx = spleen_x[spleen_x < axial_width]
    assert lx.size and sx.size
    assert np.median(lx) < np.median(sx)  # patient's right (liver) on the picture's left


def test_storage_order_does_not_change_the_picture(tmp_path, real_ct):
    ct, labels = real_ct
    a = qc_png(ct.array, labels, ct.spacing, tmp_path / "a.png", "t", ct.direction)
    d = ct.direction.copy()
    d[:, 0] *= -1  # store x reversed
    origin = np.asarray(ct.origin) + ct.direction[:, 0] * ct.spacing[2] * (ct.shape[2] - 1)
    flipped = ScanVolume(ct.array[:, :, ::-1].copy(), ct.spacing, tuple(origin), d)
    b = qc_png(
        flipped.array,
        labels[:, :, ::-1].copy(),
        ct.spacing,
        tmp_path / "b.png",
        "t",
        flipped.direction,
    )
    assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))


def _data(html_text):
    m = re.search(r'<script type="application/json" id="hs-data">(.*?)</script>', html_text, re.S)
    return json.loads(m.group(1))


def test_report_embeds_every_row_and_column_and_escapes_text(tmp_path):
    rows = [
        {"case_id": "a", "status": "ok", "grade": "normal", "ratio": 1.2},
        {
            "case_id": "b</script><script>",
            "status": "error",
            "grade": "indeterminate",
            "error": "x <b>",
        },
        {"case_id": "a", "status": "ok", "grade": "mild", "ratio": 0.9, "new_column": "kept"},
    ]
    text = write_report(rows, tmp_path).read_text(encoding="utf-8")
    assert (
        "<script>alert" not in text and "</script><script>" not in text.split("hs-data")[1][:2000]
    )
    data = _data(text)
    assert [r[data["columns"].index("case_id")] for r in data["rows"]] == [
        "a",
        "b</script><script>",
    ]
    assert "new_column" in data["columns"]  # an unknown column is shown, never dropped
    a = data["rows"][0]
    assert a[data["columns"].index("grade")] == "mild"  # last row per case_id wins
    assert "b&lt;/script&gt;&lt;script&gt;" in text  # the needs-review list escapes it


def test_thresholds_text_matches_the_grading_code():
    text = thresholds_text()
    assert "severe <= 0.5" in text and "normal > 1.0" in text
    assert "moderate 0.5 < r <= 0.7" in text and "mild 0.7 < r <= 1.0" in text
    assert (
        grade_ratio(0.5) == "severe"
        and grade_ratio(0.7) == "moderate"
        and grade_ratio(1.0) == "mild"
    )


def test_histogram_puts_a_ratio_on_a_threshold_in_the_worse_grade(tmp_path):
    rows = [
        {"case_id": str(i), "status": "ok", "grade": grade_ratio(r), "ratio": r}
        for i, r in enumerate([0.5, 0.5, 0.7, 1.0, 1.2])
    ]
    text = write_report(rows, tmp_path).read_text(encoding="utf-8")
    bars = re.findall(
        r'<rect [^>]*fill="(#[0-9a-f]+)"><title>([0-9.]+)-([0-9.]+): (\d+)</title>', text
    )
    got = {(lo, hi): (GRADE_CSS_INV[c], int(n)) for c, lo, hi, n in bars}
    assert got[("0.45", "0.50")] == ("severe", 2)
    assert got[("0.65", "0.70")] == ("moderate", 1)
    assert got[("0.95", "1.00")] == ("mild", 1)
    assert got[("1.15", "1.20")] == ("normal", 1)


def test_counts_in_clinical_order_and_needs_review_first(tmp_path):
    rows = [
        {"case_id": "n", "status": "ok", "grade": "normal", "ratio": 1.2},
        {"case_id": "s", "status": "ok", "grade": "severe", "ratio": 0.4},
        {
            "case_id": "f",
            "status": "flagged",
            "grade": "mild",
            "ratio": 0.8,
            "flags": "liver_cut_by_edge",
        },
        {"case_id": "e", "status": "error", "grade": "indeterminate", "error": "unreadable"},
    ]
    text = write_report(rows, tmp_path).read_text(encoding="utf-8")
    order = [
        text.index(f'href="#grade={g}"') for g in ("normal", "mild", "severe", "indeterminate")
    ]
    assert order == sorted(order)
    assert "Needs review (2)" in text
    review = text[text.index("Needs review") : text.index("All scans")]
    assert review.index(">e<") < review.index(">f<")
    assert _data(text)["rank"] == [3, 3, 2, 0]


def test_flag_glossary_comes_from_postprocess_flags(tmp_path):
    glossary, source = flag_glossary()
    try:
        from postprocess.flags import FLAGS
    except ImportError:
        assert source.endswith("fallback")
    else:
        assert source == "postprocess.flags" and glossary == FLAGS
    rows = [
        {"case_id": "x", "status": "flagged", "grade": "mild", "flags": "liver_cut_by_edge;zz_new"}
    ]
    text = write_report(rows, tmp_path).read_text(encoding="utf-8")
    assert "<dt>liver_cut_by_edge</dt>" in text and "<dt>zz_new</dt>" in text


def test_numpy_scalars_nan_and_nested_values_are_embedded(tmp_path):
    rows = [
        {
            "case_id": "a",
            "status": "ok",
            "grade": "normal",
            "ratio": np.float32(1.25),
            "n_pairs": np.int64(4),
            "liver_hu": float("nan"),
            "stage_seconds": {"read": 0.1},
        }
    ]
    data = _data(write_report(rows, tmp_path).read_text(encoding="utf-8"))
    row = dict(zip(data["columns"], data["rows"][0]))
    assert row["ratio"] == 1.25 and row["n_pairs"] == 4 and row["liver_hu"] is None
    assert row["stage_seconds"] == '{"read":0.1}'


def test_report_keeps_the_criteria_apart_and_names_the_model(tmp_path):
    """An enhanced scan's ratio (a chest CTA at 0.46) is no grade: the histogram draws
    only ratios that graded a scan; phases and portal-venous assessments are counted;
    the header names the model from run.json (issue 20)."""
    rows = [
        {"case_id": "ne", "status": "ok", "grade": "normal", "ratio": 1.2, "phase": "unenhanced",
         "criterion": "liver_spleen_ratio"},
        {"case_id": "cta", "status": "flagged", "grade": "indeterminate", "ratio": 0.46,
         "phase": "arterial", "criterion": "none", "flags": "contrast_enhanced"},
        {"case_id": "pv", "status": "flagged", "grade": "indeterminate", "ratio": 0.9,
         "phase": "portal_venous", "criterion": "portal_venous_liver_hu",
         "pv_assessment": "moderate_steatosis_likely", "flags": "contrast_enhanced"},
    ]  # fmt: skip
    info = {"mode": "embedded", "model": {"model_name": "hepascreen_vnet", "model_version": "1",
                                          "model_sha256": "ab" * 32}}  # fmt: skip
    doc = write_report(rows, tmp_path, info).read_text()
    assert "scans with a ratio: 1;" in doc  # the graded one only
    assert "Model: hepascreen_vnet v1 (sha256 abababababab)" in doc
    assert "(embedded)" in doc and "Model:  (embedded)" not in doc
    assert "moderate_steatosis_likely" in doc and ">portal_venous<" in doc
    doc = write_report(rows, tmp_path, {"mode": "masks", "model": None}).read_text()
    assert "Model: none: --masks label maps" in doc
