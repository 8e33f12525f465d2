"""QC pictures follow the radiological convention whatever the storage order; the report lists every row."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from client.io import read_label_map, read_scan
from client.report import COLOURS, qc_png, write_report
from client.scan import ScanVolume


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
    axial_width = Image.open(png).size[0] // 2  # axial panel first, roughly half the width
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


def test_report_has_a_row_per_case_and_escapes_text(tmp_path):
    rows = [
        {"case_id": "a", "status": "ok", "grade": "normal", "ratio": 1.2},
        {"case_id": "b<script>", "status": "error", "grade": "indeterminate", "error": "x <b>"},
    ]
    html = write_report(rows, tmp_path).read_text()
    assert html.count("<tr") == 3 and "<script>" not in html and "b&lt;script&gt;" in html
