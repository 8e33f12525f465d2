"""QC picture content: cubes drawn where they cut the slice, kept vs rejected colours,
slices through each organ's largest cross-section, caption text, the packaged font;
label sidecars for 3D Slicer and ITK-SNAP."""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image, ImageFont

from client.outputs import qc
from client.outputs.qc import COLOURS, CUBE_KEPT, CUBE_REJECTED, PANEL_HEIGHT, caption_lines, qc_png
from client.reading.labels_sidecar import LABEL_COLOURS, write_label_sidecars


def _box_phantom():
    """Liver block on the image's left (patient's right), spleen block on its right."""
    hu = np.full((20, 40, 60), -100, np.int16)
    lab = np.zeros(hu.shape, np.uint8)
    lab[2:18, 8:32, 4:26] = 1
    lab[6:14, 10:30, 40:56] = 2
    lab[12, 8:32, 4:26] = 1  # liver's largest slice stays ambiguous-free below
    lab[10, 5:35, 4:28] = 1  # liver's largest cross-section: z = 10
    lab[8, 6:34, 38:58] = 2  # spleen's largest cross-section: z = 8
    hu[lab == 1] = 60
    hu[lab == 2] = 50
    return hu, lab


def _organ(corners, size, kept=None):
    o = SimpleNamespace(corners=np.asarray(corners, np.int64), cube_voxels=tuple(size))
    if kept is not None:
        o.kept = np.asarray(kept, bool)
    return o


def _panel_pixel(z_or_row, col, shape_rc, panel_x0=0, panel_w=None):
    """Display pixel of slice index (row, col) in a panel of height PANEL_HEIGHT."""
    rows, cols = shape_rc
    w = panel_w if panel_w is not None else int(round(PANEL_HEIGHT * cols / rows))
    return panel_x0 + col * w / cols, 22 + z_or_row * PANEL_HEIGHT / rows


def test_kept_and_rejected_cubes_are_drawn_where_they_cut_the_slice(tmp_path):
    hu, lab = _box_phantom()
    # Liver cubes: one kept cutting z = 10, one rejected cutting z = 10, one kept off-slice.
    liver = _organ([[8, 12, 6], [9, 20, 14], [2, 26, 6]], (4, 4, 4), kept=[True, False, True])
    spleen = _organ([[7, 12, 42]], (3, 5, 5))  # no kept array: all kept
    a = SimpleNamespace(liver=liver, spleen=spleen)
    png = qc_png(hu, lab, (1.0, 1.0, 1.0), tmp_path / "q.png", assessment=a, direction=np.eye(3))
    img = np.asarray(Image.open(png).convert("RGB"))
    panel_w = int(round(PANEL_HEIGHT * 60 / 40))
    # Axial panel 1 is z = 10 (liver's largest). Top-left corners of the rectangles:
    x, y = _panel_pixel(12, 6, (40, 60))
    assert tuple(img[int(y), int(x)]) == CUBE_KEPT
    x, y = _panel_pixel(20, 14, (40, 60))
    assert tuple(img[int(y), int(x)]) == CUBE_REJECTED
    # The off-slice cube (z 2..5) is not drawn in panel 1, the spleen cube (z 7..9) neither.
    x, y = _panel_pixel(26, 6, (40, 60))
    assert tuple(img[int(y), int(x)]) != CUBE_KEPT
    x, y = _panel_pixel(12, 42, (40, 60))
    assert tuple(img[int(y), int(x)]) != CUBE_KEPT
    # Panel 2 is z = 8 (spleen's largest): the spleen cube (z 7..9) and the first liver
    # cube (z 8..11) cut it, the rejected one (z 9..12) does not.
    x2 = panel_w + 6
    x, y = _panel_pixel(12, 42, (40, 60), panel_x0=x2, panel_w=panel_w)
    assert tuple(img[int(y), int(x)]) == CUBE_KEPT
    x, y = _panel_pixel(12, 6, (40, 60), panel_x0=x2, panel_w=panel_w)
    assert tuple(img[int(y), int(x)]) == CUBE_KEPT
    x, y = _panel_pixel(20, 14, (40, 60), panel_x0=x2, panel_w=panel_w)
    assert tuple(img[int(y), int(x)]) != CUBE_REJECTED


def test_axial_panels_cut_each_organs_largest_cross_section(tmp_path):
    hu, lab = _box_phantom()
    png = qc_png(hu, lab, (1.0, 1.0, 1.0), tmp_path / "q.png", direction=np.eye(3))
    img = np.asarray(Image.open(png).convert("RGB"))
    panel_w = int(round(PANEL_HEIGHT * 60 / 40))
    # Liver outline at z = 10 spans rows 5..34 (wider than the other slices' 8..31).
    x, y = _panel_pixel(5, 10, (40, 60))
    assert tuple(img[int(y), int(x) + 4]) == COLOURS[1]
    # Spleen outline at z = 8 spans columns 38..57.
    x, y = _panel_pixel(20, 38, (40, 60), panel_x0=panel_w + 6, panel_w=panel_w)
    assert tuple(img[int(y) + 4, int(x)]) == COLOURS[2]


def test_caption_has_hu_ratio_interval_grade_flags_and_notes():
    row = {
        "case_id": "c1",
        "grade": "mild",
        "ratio": 0.8512,
        "ratio_ci_low": 0.8123,
        "ratio_ci_high": 0.8934,
        "liver_hu": 40.4,
        "spleen_hu": 47.6,
        "liver_minus_spleen_hu": -7.2,
        "liver_volume_ml": 1500.2,
        "spleen_volume_ml": 200.0,
        "flags": "liver_cut_by_edge;contrast_suspected_by_vessels",
        "notes": "gantry_tilt_corrected (12.0 deg)",
    }
    text = "\n".join(t for t, _ in caption_lines(row))
    for part in (
        "c1",
        "0.85",
        "95% CI 0.81-0.89",
        "MILD",
        "liver 40 HU",
        "spleen 48 HU",
        "L-S -7 HU",
        "liver_cut_by_edge, contrast_suspected_by_vessels",
        "gantry_tilt_corrected",
    ):
        assert part in text, part
    assert "n/a" in "\n".join(t for t, _ in caption_lines({"case_id": "e", "ratio": None}))


def test_caption_font_is_the_packaged_truetype_font():
    f = qc._font(17)
    assert isinstance(f, ImageFont.FreeTypeFont)
    assert "Roboto" in f.getname()[0]


def test_picture_with_row_and_no_organs_still_renders(tmp_path):
    hu = np.zeros((8, 16, 16), np.int16)
    row = {"case_id": "empty", "status": "error", "error": "no liver", "grade": "indeterminate"}
    png = qc_png(hu, np.zeros_like(hu, np.uint8), (2, 1, 1), tmp_path / "e.png", row=row)
    assert Image.open(png).size[1] > PANEL_HEIGHT


def test_label_sidecars_name_every_label(tmp_path):
    paths = write_label_sidecars(tmp_path / "masks" / "case#1.nii.gz")
    assert paths["slicer"].name == "case#1.ctbl"
    assert paths["itksnap"].name == "case#1.itksnap.txt"
    ctbl = [
        line.split()
        for line in paths["slicer"].read_text(encoding="utf-8").splitlines()
        if not line.startswith("#")
    ]
    assert [(int(v), n) for v, n, *_ in ctbl] == [(0, "background"), (1, "liver"), (2, "spleen")]
    assert tuple(int(c) for c in ctbl[1][2:5]) == LABEL_COLOURS[1]
    snap = [
        line
        for line in paths["itksnap"].read_text(encoding="utf-8").splitlines()
        if not line.startswith("#")
    ]
    pat = re.compile(r'^\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+([\d.]+)\s+([01])\s+([01])\s+"([^"]*)"$')
    parsed = [pat.match(line).groups() for line in snap]
    assert [(int(p[0]), p[7]) for p in parsed] == [(0, "Clear Label"), (1, "liver"), (2, "spleen")]
    assert tuple(int(c) for c in parsed[2][1:4]) == LABEL_COLOURS[2]


@pytest.mark.parametrize("name", ["a.nii", "a.nrrd", "a.mha"])
def test_label_sidecar_names_drop_the_image_extension(tmp_path, name):
    assert write_label_sidecars(tmp_path / name)["slicer"].name == "a.ctbl"


def test_caption_names_the_criterion_that_produced_the_number():
    """Issue 20: the caption shows which criterion gave which number."""
    from client.outputs.qc import caption_lines

    def text(row):
        return " | ".join(t for t, _ in caption_lines(row))

    ne = {"case_id": "a", "grade": "mild", "ratio": 0.9, "ratio_ci_low": 0.88,
          "ratio_ci_high": 0.92, "phase": "unenhanced", "phase_source": "image",
          "criterion": "liver_spleen_ratio", "pdff_estimate_pct": 12.0}  # fmt: skip
    assert "L/S ratio 0.90 (95% CI 0.88-0.92)   grade: MILD   PDFF~12%" in text(ne)
    assert "phase: unenhanced (image)" in text(ne)
    pv = {"case_id": "b", "grade": "indeterminate", "ratio": 0.86, "liver_hu": 76.4,
          "liver_hu_ci_low": 74.0, "liver_hu_ci_high": 79.0, "phase": "portal_venous",
          "phase_source": "both", "criterion": "portal_venous_liver_hu",
          "pv_assessment": "moderate_steatosis_likely"}  # fmt: skip
    t = text(pv)
    assert "portal-venous: liver 76 HU (95% CI 74-79) -> moderate_steatosis_likely" in t
    assert "L/S ratio" not in t  # the ratio is not the criterion here
    art = {"case_id": "c", "grade": "indeterminate", "ratio": 0.46, "phase": "arterial",
           "phase_source": "image", "criterion": "none"}  # fmt: skip
    assert "arterial phase: no steatosis criterion" in text(art) and "0.46" not in text(art)
