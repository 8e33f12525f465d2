"""Contrast phase from the image and the criterion per phase (issue 20, docs/phase.md).

The phases are painted onto the shared REAL unenhanced CT from published attenuation
values (training/phase_paint.py, independent of the training synthesis); the
reference label map is TotalSegmentator's 61-structure map of that CT.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage as ndi

from client.core import contract
from client.reading.io import read_label_map, read_scan
from postprocess import assess
from postprocess.assess import pdff_from_hu, pv_assessment
from postprocess.config import PhaseConfig
from postprocess.phase import (
    classify_phase,
    combine,
    evidence_classes,
    image_phase,
    structure_attenuation,
    tag_phase,
)
from tests.conftest import SHARED_DATA

pp = pytest.importorskip("training.phase_paint")
CLASSES = dict(contract.STRUCTURE_LABELS)
REAL_CT_DIR = SHARED_DATA / "totalseg_example"


@pytest.fixture(scope="module")
def example():
    """(scan, TotalSegmentator map, names, the same map in HepaScreen's labelling)."""
    scan, labels, names = pp.load_example(REAL_CT_DIR)
    canon = read_label_map(REAL_CT_DIR / "labels_all.nii.gz", scan, "totalsegmentator")
    return scan, labels, names, canon


# --- the rules ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "hu, expect",
    [
        ({"aorta": 42, "portal_vein": 40, "ivc": 38, "kidney": 33}, "unenhanced"),
        (
            {
                "aorta": 340,
                "portal_vein": 135,
                "kidney": 180,
                "kidney_cortex": 240,
                "kidney_medulla": 115,
            },
            "arterial",
        ),  # fmt: skip
        ({"aorta": 165, "portal_vein": 170, "ivc": 130, "kidney": 190}, "portal_venous"),
        ({"aorta": 115, "portal_vein": 115, "ivc": 115, "kidney": 150}, "delayed"),
        ({"aorta": 300, "portal_vein": 60}, "arterial"),  # early arterial: portal still dark
        ({"kidney": 35}, "unenhanced"),  # kidneys alone
        ({}, "unknown"),
    ],
)
def test_image_phase_rules(hu, expect):
    assert image_phase(hu, 45.0, PhaseConfig())[0] == expect


def test_image_phase_flags_what_it_cannot_read():
    cfg = PhaseConfig()
    ph, flags, notes = image_phase({"aorta": 78, "portal_vein": 75}, 45.0, cfg)
    assert ph == "unknown" and flags == ["phase_uncertain"] and "aorta 78 HU" in notes[0]
    ph, flags, _ = image_phase({"aorta": 42, "portal_vein": 40}, 120.0, cfg)
    assert ph == "unknown" and flags == ["phase_conflict"]  # bright spleen, dark blood


@pytest.mark.parametrize(
    "img, basis, tag, expect",
    [
        ("portal_venous", "vessels", None, ("portal_venous", "image")),
        ("portal_venous", "vessels", "enhanced", ("portal_venous", "both")),
        ("portal_venous", "vessels", "portal_venous", ("portal_venous", "both")),
        ("portal_venous", "vessels", "arterial", ("unknown", "conflict")),
        ("unenhanced", "vessels", "enhanced", ("unknown", "conflict")),
        ("unenhanced", "vessels", "unenhanced", ("unenhanced", "both")),
        ("arterial", "vessels", "unenhanced", ("unknown", "conflict")),
        # weak evidence (liver and spleen only) cannot say "unenhanced": the tag decides
        ("unenhanced", "organs", "enhanced", ("unknown", "tag")),
        ("unenhanced", "organs", "delayed", ("delayed", "tag")),
        ("unenhanced", "organs", None, ("unenhanced", "image")),
        ("enhanced", "organs", None, ("unknown", "image")),
        ("enhanced", "organs", "portal_venous", ("portal_venous", "both")),
        ("enhanced", "organs", "unenhanced", ("unknown", "conflict")),
    ],
)
def test_combine_image_and_tag(img, basis, tag, expect):
    phase, source, flags, _ = combine(img, basis, tag)
    assert (phase, source) == expect
    assert ("phase_conflict" in flags) == (source == "conflict")


@pytest.mark.parametrize(
    "agent, desc, expect",
    [
        ("OMNIPAQUE 350", "ABD PV 70s 3.0", "portal_venous"),
        ("IOMERON", "Arterial 1.0", "arterial"),
        ("IOMERON", "Delayed 10 min", "delayed"),
        ("IOMERON", "AXIAL 3.0", "enhanced"),
        ("NONE", "AXIAL 3.0", None),
        ("", "Abdomen w/o contrast", "unenhanced"),
        ("", "NATIVE 5mm", "unenhanced"),
        ("", "two phase abdomen", None),  # 'wo' inside a word is not 'w/o'
        (None, None, None),
    ],
)
def test_tag_phase_from_the_header(agent, desc, expect):
    assert tag_phase(agent, desc) == expect


def test_pdff_and_portal_venous_cut_offs_as_published():
    assert pdff_from_hu(65.0) == pytest.approx(0.5, abs=0.1)  # Starekova 2021's anchors
    assert pdff_from_hu(23.0) == pytest.approx(24.9, abs=0.2)
    assert pdff_from_hu(-3.0) == pytest.approx(39.9, abs=0.2)
    assert pdff_from_hu(90.0) == 0.0
    assert pv_assessment(79.9) == "moderate_steatosis_likely"
    assert pv_assessment(80.0) == "moderate_steatosis_possible"  # < 80 is the cut
    assert pv_assessment(90.0) == "moderate_steatosis_unlikely"
    assert pv_assessment(float("nan")) == ""


def test_evidence_classes_go_through_names():
    got = evidence_classes({"liver": 1, "kidney_left": 4, "kidney_right": 3,
                            "kidney_cyst_left": 40, "aorta": 52, "portal_vein_and_splenic_vein": 64,
                            "inferior_vena_cava": 63, "stomach": 6})  # fmt: skip
    assert got == {"kidney": (3, 4), "aorta": (52,), "portal_vein": (64,), "ivc": (63,)}


# --- the measurement against a brute-force reference ----------------------------------
def test_structure_attenuation_against_a_whole_volume_reference(example):
    scan, _, _, canon = example
    cfg = PhaseConfig()
    got = structure_attenuation(scan.array, canon, CLASSES, scan.spacing, (1, 1, 1), cfg)
    k = [2 * max(1, round(cfg.trim_mm / s)) + 1 for s in scan.spacing]
    for name, values in (("aorta", [5]), ("portal_vein", [7]), ("ivc", [6]), ("kidney", [3, 4])):
        # erosion of each label by a box on the whole volume (scipy's binary_erosion)
        core = np.zeros(canon.shape, bool)
        for v in values:
            core |= ndi.binary_erosion(canon == v, structure=np.ones(k, bool), border_value=0)
        mask = np.isin(canon, values)
        ref = np.median(scan.array[core if core.sum() >= 10 else mask])
        assert got[name] == pytest.approx(ref), name
    # the coarse box search gives the same medians as the full-resolution one
    coarse = structure_attenuation(scan.array, canon, CLASSES, scan.spacing, (2, 2, 2), cfg)
    assert {k: coarse[k] for k in got} == got


# --- painted phases on the real CT (reference masks) -----------------------------------
@pytest.mark.parametrize("phase", ["unenhanced", "arterial", "portal_venous", "delayed"])
def test_painted_phases_are_recognised_and_judged_by_their_criterion(example, phase):
    scan, labels, names, canon = example
    hu = scan.array if phase == "unenhanced" else pp.paint_phase(scan.array, labels, names, phase)
    a = assess(hu, canon, scan.spacing, direction=scan.direction, classes=CLASSES)
    row = a.to_row()
    assert row["phase"] == phase and row["phase_source"] == "image"
    assert row["phase_basis"] == "vessels"
    if phase == "unenhanced":
        assert row["criterion"] == "liver_spleen_ratio" and row["grade"] == "normal"
        assert row["pdff_estimate_pct"] == pytest.approx(pdff_from_hu(a.liver_hu), abs=0.05)
    else:  # never graded by the ratio when the image says enhanced
        assert row["grade"] == "indeterminate" and "contrast_enhanced" in row["flags"]
        assert row["pdff_estimate_pct"] is None
    if phase == "portal_venous":
        assert row["criterion"] == "portal_venous_liver_hu"
        assert row["pv_assessment"] == pv_assessment(a.liver_hu)
        assert row["liver_hu_ci_low"] < row["liver_hu"] < row["liver_hu_ci_high"]
    elif phase != "unenhanced":
        assert row["criterion"] == "none" and row["pv_assessment"] == ""
        assert f"{phase} phase" in row["notes"]


def test_delayed_phase_without_tags_is_not_graded_with_liver_spleen_masks_and_tag(example):
    """Without vessel classes only the liver and spleen speak: the delayed liver (92 HU)
    is above what unenhanced tissue measures; with the tag too, both agree."""
    scan, labels, names, _ = example
    hu = pp.paint_phase(scan.array, labels, names, "delayed")
    ref = pp.reference_labels(labels, names)
    a = assess(hu, ref, scan.spacing, direction=scan.direction)
    assert (a.phase.phase, a.phase.source, a.phase.basis) == ("unknown", "image", "organs")
    assert a.grade == "indeterminate" and "contrast_suspected_by_attenuation" in a.flags
    a = assess(hu, ref, scan.spacing, direction=scan.direction, tag="enhanced")
    assert a.phase.phase == "unknown" and a.phase.source == "both" and a.grade == "indeterminate"
    # an unenhanced scan with a stray contrast tag: the weak evidence cannot contradict it
    a = assess(scan.array, ref, scan.spacing, direction=scan.direction, tag="enhanced")
    assert (a.phase.phase, a.phase.source, a.grade) == ("unknown", "tag", "indeterminate")


def test_header_and_image_in_conflict_trust_neither(example):
    scan, _, _, canon = example
    a = assess(scan.array, canon, scan.spacing, direction=scan.direction, classes=CLASSES,
               tag="portal_venous")  # fmt: skip
    assert a.phase.phase == "unknown" and a.phase.source == "conflict"
    assert "phase_conflict" in a.flags and a.grade == "indeterminate"
    assert "the DICOM header says portal_venous" in "; ".join(a.notes)


# --- no fatty liver taken for contrast ---------------------------------------------------
@pytest.mark.parametrize("liver_hu", [60, 38, 27, 15, 5, 0])
@pytest.mark.parametrize("masks", ["reference", "leaky", "vessels"])
def test_fatty_livers_are_graded_not_taken_for_contrast(example, liver_hu, masks):
    """Unenhanced CT, liver parenchyma at 60..0 HU, intrahepatic vessels at blood HU
    (brighter than a fatty liver), masks with and without a little neighbouring tissue,
    with and without the vessel classes: always graded, grade from the ratio."""
    scan, labels, names, canon = example
    hu = pp.paint_steatosis(scan.array, labels, names, liver_hu)
    if masks == "vessels":
        lab, classes = canon, CLASSES
    else:
        lab = (pp.leaky_liver_labels if masks == "leaky" else pp.reference_labels)(labels, names)
        classes = None
    a = assess(hu, lab, scan.spacing, direction=scan.direction, classes=classes)
    assert a.phase.phase == "unenhanced", (a.flags, a.notes)
    assert "contrast_enhanced" not in a.flags and a.grade != "indeterminate", a.notes
    from postprocess import grade_ratio

    assert a.grade == grade_ratio(a.ratio)
    # the painted truth: liver_hu / spleen 50 HU, vessels and neighbours pull it a little
    assert a.ratio == pytest.approx(max(liver_hu, 0.5) / 50.0, abs=0.12)


def test_fatty_livers_graded_with_the_shipped_models_masks(example):
    """The same steatosis cases segmented by the shipped model (ONNX Runtime, CPU)."""
    from benchmarks.bench_gate import model_segmenter

    seg = model_segmenter()
    if seg is None:
        pytest.fail("model_repository/cpu/hepascreen_vnet/1/model.onnx is missing")
    scan, labels, names, _ = example
    for liver_hu in (38, 15, 0):
        hu = pp.paint_steatosis(scan.array, labels, names, liver_hu)
        lab = seg(hu, scan.spacing, scan.direction)
        a = assess(hu, lab, scan.spacing, direction=scan.direction)
        assert "contrast_suspected_by_vessels" not in a.flags, (liver_hu, a.notes)
        assert "contrast_enhanced" not in a.flags, (liver_hu, a.flags)
        assert a.phase.phase == "unenhanced"


def test_phase_costs_a_small_part_of_the_measurement(example):
    """Not a timing assert: the work the phase adds is the structures' boxes only."""
    scan, _, _, canon = example
    got = structure_attenuation(scan.array, canon, CLASSES, scan.spacing, (1, 1, 1), PhaseConfig())
    assert {"aorta", "portal_vein", "ivc", "kidney"} <= set(got)
    assert all(math.isfinite(v) for v in got.values())


def test_classify_phase_falls_back_to_the_organ_evidence():
    cfg = PhaseConfig()
    r = classify_phase({}, 45.0, ["vessels"], None, cfg)
    assert (r.phase, r.source, r.basis) == ("unknown", "image", "organs")
    r = classify_phase({}, 45.0, [], None, cfg)
    assert (r.phase, r.source, r.basis) == ("unenhanced", "image", "organs")
    r = classify_phase({}, 45.0, [], None, PhaseConfig(enabled=False))
    assert r.basis == "none"


def test_real_ct_is_read_as_unenhanced(example):
    scan = read_scan(REAL_CT_DIR / "ct.nii.gz")
    _, _, _, canon = example
    a = assess(scan.array, canon, scan.spacing, direction=scan.direction, classes=CLASSES)
    assert a.phase.phase == "unenhanced" and a.phase.hu["aorta"] < 60


# --- the model declares its classes (issue 19 item 3, read by the client) ---------------
def test_model_classes_parameter():
    from client.serving.triton import check_model_config, model_classes

    assert model_classes({}) == {"liver": 1, "spleen": 2}
    cfg = {"parameters": {"hepascreen_classes": {"string_value": "1=liver,2=spleen,5=aorta,7=portal_vein_and_splenic_vein"}}}  # fmt: skip
    assert model_classes(cfg) == {"liver": 1, "spleen": 2, "aorta": 5,
                                  "portal_vein_and_splenic_vein": 7}  # fmt: skip
    for bad in (
        "1=spleen,2=liver",
        "1=liver,2=spleen,2=aorta",
        "1=liver,x",
        "1=liver,2=spleen,300=a",
    ):
        with pytest.raises(ValueError, match="hepascreen_classes"):
            model_classes({"parameters": {"hepascreen_classes": bad}})
    problems = check_model_config(
        {"input": [{"dims": [1, 8, 8, 8], "data_type": "TYPE_UINT8", "name": "VOLUME"}],
         "output": [{"dims": [8, 8, 8], "data_type": "TYPE_UINT8", "name": "LABELS"}],
         "max_batch_size": 2, "parameters": {"hepascreen_classes": "1=spleen"}}
    )  # fmt: skip
    assert any("hepascreen_classes" in p for p in problems)


def test_masks_written_name_every_class_the_model_declares(tmp_path, example):
    from types import SimpleNamespace

    from client.pipeline.screen import ScreenConfig, write_outputs
    from client.reading.discover import ScanSource

    scan, _, _, canon = example
    seg = SimpleNamespace(kind="triton", describe=lambda: {"model_name": "m"})
    src = ScanSource("case", REAL_CT_DIR / "ct.nii.gz", "image")
    files = write_outputs(src, scan, canon, {"grade": "normal"}, seg,
                          ScreenConfig(out_dir=tmp_path, write_qc=False), classes=CLASSES)  # fmt: skip
    back = read_label_map(files["mask"], scan, "hepascreen")
    assert np.array_equal(back, canon)  # every class kept in the mask
    ctbl = files["slicer"].read_text()
    for name, value in CLASSES.items():
        assert f"\n{value} {name} " in ctbl


def test_totalsegmentator_per_organ_folder_brings_the_vessels(example, tmp_path):
    """TotalSegmentator's default output (one binary mask per structure in DIR/<case>/)
    gives the phase its vessels too: a painted portal-venous scan is read from them."""
    import SimpleITK as sitk

    from client.pipeline.screen import ScreenConfig, screen_scan
    from client.pipeline.segmenters import MaskFolderSegmenter
    from client.reading.discover import ScanSource

    scan, labels, names, _ = example
    hu = pp.paint_phase(scan.array, labels, names, "portal_venous")
    img = tmp_path / "pv.nii.gz"
    sitk.WriteImage(scan.to_sitk(hu), str(img))
    organ_dir = tmp_path / "masks" / "pv"
    organ_dir.mkdir(parents=True)
    wanted = ("liver", "spleen", "aorta", "portal_vein_and_splenic_vein", "inferior_vena_cava",
              "kidney_left", "kidney_right")  # fmt: skip
    for name in wanted:
        m = pp.structure_mask(labels, names, name).astype(np.uint8)
        sitk.WriteImage(scan.to_sitk(m), str(organ_dir / f"{name}.nii.gz"))
    seg = MaskFolderSegmenter(tmp_path / "masks")
    row = screen_scan(ScanSource("pv", img, "image"), seg, ScreenConfig()).row
    assert (row["phase"], row["phase_basis"], row["criterion"]) == (
        "portal_venous",
        "vessels",
        "portal_venous_liver_hu",
    )
    assert row["aorta_hu"] == pytest.approx(165, abs=5)
    # without the vessel files: liver and spleen only, the phase is no longer named
    for name in wanted[2:]:
        (organ_dir / f"{name}.nii.gz").unlink()
    row = screen_scan(ScanSource("pv", img, "image"), seg, ScreenConfig()).row
    assert (row["phase"], row["phase_basis"]) == ("unknown", "organs")
