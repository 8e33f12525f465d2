"""DICOM SEG and SR read back with highdicom/pydicom: segments on the source slices,
values equal the result row, no identifiers beyond those the source series carries."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from client.outputs.dicom_out import CODING_SCHEME, write_dicom_seg, write_dicom_sr
from client.reading.dicom import write_series
from client.reading.io import read_label_map, read_scan
from client.reading.scan import ScanVolume

hd = pytest.importorskip("highdicom")

# Source identifiers the outputs may copy (for PACS filing) and must not invent.
IDENTIFYING = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "OtherPatientIDs",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "InstitutionName",
    "InstitutionAddress",
    "OperatorsName",
    "PerformingPhysicianName",
    "StationName",
    "IssuerOfPatientID",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "EthnicGroup",
)
SOURCE_IDS = {
    "PatientName": "Doe^Jane",
    "PatientID": "PID-4711",
    "PatientBirthDate": "19600101",
    "PatientSex": "F",
    "AccessionNumber": "ACC-99",
    "StudyID": "S1",
    "StudyDate": "20240102",
    "StudyTime": "101500",
}


def _series(scan: ScanVolume, folder, seed=0):
    """Write ``scan`` as DICOM, then give it a frame of reference and patient/study identifiers."""
    files = write_series(scan, folder, shuffle_seed=seed)
    for_uid = pydicom.uid.generate_uid()
    for f in files:
        ds = pydicom.dcmread(f)
        ds.FrameOfReferenceUID = for_uid
        for k, v in SOURCE_IDS.items():
            setattr(ds, k, v)
        ds.save_as(f)
    return files


def _walk(ds):
    for el in ds:
        if el.VR == "SQ":
            for item in el.value:
                yield from _walk(item)
        else:
            yield el


def _assert_no_new_identifiers(out, src):
    for el in _walk(out):
        if el.keyword in IDENTIFYING and el.value not in (None, "", b""):
            assert el.keyword in src, f"{el.keyword} not in the source but written: {el.value!r}"
            assert str(el.value) == str(src[el.keyword].value), el.keyword
    for k in ("PatientName", "PatientID", "StudyInstanceUID", "AccessionNumber"):
        assert str(out[k].value) == str(src[k].value), f"{k} must be copied for PACS filing"


@pytest.fixture(scope="module")
def phantom_series(tmp_path_factory):
    from training.phantoms import make_phantom

    p = make_phantom(5, shape=(24, 64, 64), grade="mild")
    folder = tmp_path_factory.mktemp("phantom_dicom") / "series"
    files = _series(p.to_scan(), folder)
    scan = read_scan(folder)
    labels = np.asarray(p.labels).astype(np.uint8)
    assert labels.shape == scan.shape
    from postprocess import assess

    row = {
        "case_id": "phantom",
        "status": "flagged",
        **assess(scan.array, labels, scan.spacing).to_row(),
    }
    row["flags"] = "liver_cut_by_edge;contrast_suspected_by_vessels"
    return files, scan, labels, row


def _seg_label_map(seg_path, files):
    """The SEG as a label map on the source slices, keyed by SOPInstanceUID."""
    seg = hd.seg.segread(seg_path)
    src = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in files}
    out = {}
    for uid in src:
        out[uid] = None
    for uid in src:
        try:
            a = seg.get_pixels_by_source_instance(
                source_sop_instance_uids=[uid], combine_segments=True, ignore_spatial_locations=True
            )
            out[uid] = a[0]
        except (ValueError, KeyError):
            out[uid] = None  # no frame for this slice (empty: omitted)
    return seg, out


def _expected_on_source_slices(files, scan, labels):
    """Brute force: a source slice is scan slice k where its position along the normal falls."""
    normal = scan.direction[:, 2]
    expected = {}
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        d = (np.asarray(ds.ImagePositionPatient, float) - np.asarray(scan.origin)) @ normal
        k = int(round(d / scan.spacing[0]))
        expected[str(ds.SOPInstanceUID)] = labels[k]
    return expected


def test_seg_segments_lie_on_the_source_slices(tmp_path, phantom_series):
    files, scan, labels, row = phantom_series
    path = write_dicom_seg(files, labels, row, tmp_path / "x.seg.dcm", scan=scan)
    seg, got = _seg_label_map(path, files)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Liver", "Spleen"]
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"
    assert seg.SegmentSequence[1].SegmentedPropertyTypeCodeSequence[0].CodeValue == "78961009"
    assert (
        seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "SCT"
    )
    expected = _expected_on_source_slices(files, scan, labels)
    for uid, exp in expected.items():
        g = got[uid] if got[uid] is not None else np.zeros_like(exp)
        assert np.array_equal(g, exp), f"slice {uid} differs"
    assert sum(int((g > 0).sum()) for g in got.values() if g is not None) == int((labels > 0).sum())
    src = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert seg.FrameOfReferenceUID == src.FrameOfReferenceUID
    refs = {
        str(i.ReferencedSOPInstanceUID)
        for s in seg.ReferencedSeriesSequence
        for i in s.ReferencedInstanceSequence
    }
    assert refs == set(expected)
    _assert_no_new_identifiers(pydicom.dcmread(path), src)


def test_seg_without_scan_geometry_and_from_the_folder_is_the_same(tmp_path, phantom_series):
    files, scan, labels, row = phantom_series
    a = write_dicom_seg(files, labels, row, tmp_path / "a.dcm", scan=scan)
    b = write_dicom_seg(files[0].parent, labels, row, tmp_path / "b.dcm")
    assert np.array_equal(pydicom.dcmread(a).pixel_array, pydicom.dcmread(b).pixel_array)


def test_seg_refuses_a_label_map_of_another_grid(tmp_path, phantom_series):
    files, scan, labels, row = phantom_series
    with pytest.raises(ValueError, match="does not match the scan grid"):
        write_dicom_seg(files, labels[:-1], row, tmp_path / "x.dcm", scan=scan)


def _sr_values(ds):
    """(scheme, code) -> numeric value, and code -> list of coded values, from the whole tree."""
    nums, coded = {}, {}

    def walk(items):
        for it in items:
            name = it.ConceptNameCodeSequence[0] if "ConceptNameCodeSequence" in it else None
            if it.ValueType == "NUM" and name is not None:
                key = (name.CodingSchemeDesignator, name.CodeValue)
                nums.setdefault(key, []).append(float(it.MeasuredValueSequence[0].NumericValue))
            if it.ValueType == "CODE" and name is not None:
                coded.setdefault(name.CodeValue, []).append(it.ConceptCodeSequence[0].CodeMeaning)
            if "ContentSequence" in it:
                walk(it.ContentSequence)

    walk(ds.ContentSequence)
    return nums, coded


def test_sr_values_equal_the_row_and_reference_the_seg(tmp_path, phantom_series):
    files, scan, labels, row = phantom_series
    seg = write_dicom_seg(files, labels, row, tmp_path / "x.seg.dcm", scan=scan)
    path = write_dicom_sr(files, row, tmp_path / "x.sr.dcm", seg_path=seg)
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert ds.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    nums, coded = _sr_values(ds)
    for key, code in (
        ("ratio", "LSRATIO"),
        ("ratio_ci_low", "LSRATIO_CI_LOW"),
        ("ratio_ci_high", "LSRATIO_CI_HIGH"),
        ("ratio_mean_pairwise", "LSRATIO_PAIRWISE"),
        ("liver_minus_spleen_hu", "LMINUSS_HU"),
        ("n_pairs", "N_PAIRS"),
    ):
        assert nums[(CODING_SCHEME, code)] == [pytest.approx(row[key], abs=1e-9)], key
    assert sorted(nums[("DCM", "112031")]) == sorted([row["liver_hu"], row["spleen_hu"]])
    assert sorted(nums[("SCT", "118565006")]) == sorted(
        [row["liver_volume_ml"], row["spleen_volume_ml"]]
    )
    assert coded["GRADE"] == [row["grade"]]
    assert sorted(coded["FLAG"]) == sorted(row["flags"].split(";"))
    # Algorithm name and version on the measurements.
    text = str(ds)
    assert "HepaScreen" in text
    # Reference to the SEG's segments and to the source images.
    seg_uid = pydicom.dcmread(seg).SOPInstanceUID
    assert seg_uid in text
    evidence = {
        str(i.ReferencedSOPInstanceUID)
        for st in ds.CurrentRequestedProcedureEvidenceSequence
        for se in st.ReferencedSeriesSequence
        for i in se.ReferencedSOPSequence
    }
    assert seg_uid in evidence and len(evidence) == len(files) + 1
    _assert_no_new_identifiers(ds, pydicom.dcmread(files[0], stop_before_pixels=True))
    assert "phantom" not in text  # the case_id (path-derived) is never written
    # highdicom's own TID 1500 parser finds one volumetric group per organ, on the SEG.
    report = hd.sr.srread(path).content
    groups = report.get_volumetric_roi_measurement_groups()
    assert [g.finding_sites[0].value.CodeValue for g in groups] == ["10200004", "78961009"]
    for g, k in zip(groups, (1, 2)):
        assert g.referenced_segment.referenced_sop_instance_uid == seg_uid
        assert g.referenced_segment.referenced_segment_numbers == [k]
    liver = {m.name.meaning: (m.value, m.unit.value) for m in groups[0].get_measurements()}
    assert liver == {
        "Attenuation Coefficient": (row["liver_hu"], "[hnsf'U]"),
        "Volume": (row["liver_volume_ml"], "mL"),
    }


def test_outputs_refuse_an_error_row(tmp_path, phantom_series):
    files, scan, labels, _ = phantom_series
    row = {"case_id": "x", "status": "error", "error": "boom"}
    with pytest.raises(ValueError, match="failed"):
        write_dicom_sr(files, row, tmp_path / "x.dcm")
    with pytest.raises(ValueError, match="failed"):
        write_dicom_seg(files, labels, row, tmp_path / "x.dcm", scan=scan)


def test_a_failed_scan_can_get_an_sr_that_says_so(tmp_path, phantom_series):
    files, *_ = phantom_series
    row = {"case_id": "x", "status": "error", "grade": "indeterminate", "error": "/secret/path"}
    path = write_dicom_sr(files, row, tmp_path / "x.sr.dcm", allow_failed=True)
    ds = pydicom.dcmread(path)
    nums, coded = _sr_values(ds)
    assert coded["GRADE"] == ["indeterminate"] and coded["STATUS"] == [
        "screening failed; nothing was measured"
    ]
    assert not [k for k in nums if k[0] == CODING_SCHEME] and "/secret/path" not in str(ds)


def test_qc_picture_as_a_burned_in_secondary_capture(tmp_path, real_small):
    from PIL import Image

    from client.outputs.dicom_out import write_dicom_qc

    folder = _variant(real_small, tmp_path / "in" / "qc", lambda ds: None)
    png = tmp_path / "qc.png"
    Image.fromarray(np.full((120, 200, 3), 90, np.uint8)).save(png)
    a = write_dicom_qc(folder, png, tmp_path / "a.dcm", uid_settings="s")
    b = write_dicom_qc(folder, png, tmp_path / "b.dcm", uid_settings="s")
    ds = pydicom.dcmread(a)
    assert ds.BurnedInAnnotation == "YES" and ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert (ds.Rows, ds.Columns, ds.SamplesPerPixel) == (120, 200, 3)
    assert ds.SOPInstanceUID == pydicom.dcmread(b).SOPInstanceUID
    src = pydicom.dcmread(sorted(folder.iterdir())[0], stop_before_pixels=True)
    _assert_no_new_identifiers(ds, src)
    if DCIODVFY:
        assert dciodvfy_errors(a) == []


@pytest.mark.slow
def test_real_ct_as_dicom_seg_matches_the_label_map(tmp_path, shared_data):
    ct = read_scan(shared_data / "totalseg_example" / "ct.nii.gz")  # RAS-stored NIfTI
    labels = read_label_map(shared_data / "totalseg_example" / "labels.nii.gz", ct)
    files = _series(ct, tmp_path / "ct", seed=1)
    scan = read_scan(tmp_path / "ct")
    # The DICOM reader may store the grid in another order: bring the labels to it.
    lab_path = tmp_path / "labels.nii.gz"
    from client.reading.io import write_label_map

    write_label_map(labels, ct, lab_path)
    labels_dicom = read_label_map(lab_path, scan)
    assert int((labels_dicom == 1).sum()) == int((labels == 1).sum())
    row = {"case_id": "ct", "status": "ok", "grade": "normal", "ratio": 1.32, "flags": ""}
    seg = write_dicom_seg(files, labels_dicom, row, tmp_path / "ct.seg.dcm", scan=scan)
    _, got = _seg_label_map(seg, files)
    expected = _expected_on_source_slices(files, scan, labels_dicom)
    for uid, exp in expected.items():
        g = got[uid] if got[uid] is not None else np.zeros_like(exp)
        assert np.array_equal(g, exp)
    assert sum(int((g == 1).sum()) for g in got.values() if g is not None) == 41692
    assert sum(int((g == 2).sum()) for g in got.values() if g is not None) == 9668


@pytest.mark.slow
def test_seg_on_a_gantry_tilted_unevenly_spaced_series_matches_itk_resampling(
    tmp_path, shared_data
):
    """The reader shifts tilted slices onto an orthogonal grid and resamples uneven gaps;
    the SEG must still lie on the SOURCE slices: compare with SimpleITK resampling the
    label map onto each source slice's own geometry (independent reference)."""
    import SimpleITK as sitk

    from client.outputs.dicom_out import labels_on_source_slices, source_series

    folder = shared_data / "dicom_edge_cases" / "ge_head_ct_gantry_tilt"
    scan = read_scan(folder)
    assert any("gantry_tilt" in n for n in scan.metadata["notes"])
    zz, yy, xx = np.indices(scan.shape)
    c = np.array(scan.shape) / 2
    d2 = sum(((g - cc) * s) ** 2 for g, cc, s in zip((zz, yy, xx), c, scan.spacing))
    labels = (d2 < 60.0**2).astype(np.uint8)
    labels[(labels == 1) & (xx > c[2])] = 2
    hs = source_series(folder)
    got = labels_on_source_slices(hs, labels, scan)
    img = scan.to_sitk(labels)
    for k, h in enumerate(hs):
        ref = sitk.ReadImage(str(h.path))
        exp = sitk.Resample(img, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        assert np.array_equal(sitk.GetArrayFromImage(exp)[0], got[k]), h.path.name
    row = {"case_id": "tilt", "status": "ok", "grade": "normal", "ratio": 1.1, "flags": ""}
    seg = write_dicom_seg(folder, labels, row, tmp_path / "tilt.seg.dcm", scan=scan)
    assert int((hd.seg.segread(seg).pixel_array > 0).sum()) == int((got > 0).sum())
    # This anonymised source lacks PatientBirthDate: written empty, never invented.
    src = pydicom.dcmread(hs[0].path, stop_before_pixels=True)
    assert "PatientBirthDate" not in src
    sr = write_dicom_sr(folder, row, tmp_path / "tilt.sr.dcm", seg_path=seg)
    for path in (seg, sr):
        ds = pydicom.dcmread(path)
        assert ds.get("PatientBirthDate", "") == ""
        _assert_no_new_identifiers(ds, src)


# --- real-data fixes (issue 22 item 4) and the external validator ----------------------
DCIODVFY = shutil.which("dciodvfy")


def dciodvfy_errors(path) -> list[str]:
    """dicom3tools' IOD validator on ``path``: its "Error" lines (warnings are allowed:
    the private coding scheme, missing Study ID / Time on anonymised sources)."""
    r = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=120)
    return [ln for ln in (r.stdout + r.stderr).splitlines() if ln.startswith("Error")]


@pytest.fixture(autouse=True)
def _every_seg_and_sr_passes_dciodvfy(tmp_path):
    """After each test: every SEG/SR it wrote under tmp_path passes dciodvfy (no errors)."""
    yield
    if DCIODVFY is None:
        return  # test_dciodvfy_is_installed says why
    for p in sorted(tmp_path.rglob("*.dcm")):
        try:
            modality = pydicom.dcmread(p, stop_before_pixels=True).get("Modality")
        except Exception:  # noqa: BLE001 - not a DICOM file: not ours to check
            continue
        if modality in ("SEG", "SR"):
            assert dciodvfy_errors(p) == [], p.name


def test_dciodvfy_is_installed():
    if DCIODVFY is None:
        pytest.skip(
            "dciodvfy not installed (bash scripts/install_dicom_tools.sh): SEG/SR unvalidated"
        )


@pytest.fixture(scope="module")
def real_small(shared_data):
    """The real CT's 30-slice crop and its reference labels."""
    d = shared_data / "totalseg_example"
    return read_scan(d / "ct_small.nii.gz"), d / "labels_small.nii.gz"


def _variant(real_small, folder, change) -> Path:
    """The real CT written as DICOM, each data set changed by ``change(ds)`` (pydicom)."""
    scan, _ = real_small
    files = write_series(scan, folder, shuffle_seed=4)
    for_uid = pydicom.uid.generate_uid()
    for f in files:
        ds = pydicom.dcmread(f)
        ds.FrameOfReferenceUID = for_uid
        for k, v in SOURCE_IDS.items():
            setattr(ds, k, v)
        change(ds)
        ds.save_as(f)
    return folder


def _screen(real_small, tmp_path, name, change, **cfg):
    from client.pipeline.screen import ScreenConfig, screen_scan
    from client.pipeline.segmenters import MaskFolderSegmenter

    folder = _variant(real_small, tmp_path / "in" / name, change)
    masks = tmp_path / "masks"
    masks.mkdir(exist_ok=True)
    shutil.copyfile(real_small[1], masks / f"{name}.nii.gz")
    config = ScreenConfig(out_dir=tmp_path / "out", dicom_seg=True, dicom_sr=True, **cfg)
    return screen_scan(folder, MaskFolderSegmenter(masks), config)


def _empty_sop_uids(ds):
    """As a real anonymised Siemens series: SOP UIDs only in the file meta header."""
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    ds.SOPClassUID = ""
    ds.SOPInstanceUID = ""


def test_empty_sop_uids_in_the_data_sets_fall_back_to_the_file_meta(tmp_path, real_small):
    res = _screen(real_small, tmp_path, "emptysop", _empty_sop_uids, write_qc=False)
    assert res.status == "flagged" and res.error == "", res.row
    assert "output_not_written" not in res.row["flags"]
    seg = pydicom.dcmread(res.files["dicom_seg"])
    metas = {
        str(pydicom.dcmread(f, stop_before_pixels=True).file_meta.MediaStorageSOPInstanceUID)
        for f in (tmp_path / "in" / "emptysop").iterdir()
    }
    refs = {
        str(i.ReferencedSOPInstanceUID)
        for s in seg.ReferencedSeriesSequence
        for i in s.ReferencedInstanceSequence
    }
    assert refs and refs <= metas and "" not in refs
    sr = pydicom.dcmread(res.files["dicom_sr"])
    evidence = {
        str(i.ReferencedSOPInstanceUID)
        for st in sr.CurrentRequestedProcedureEvidenceSequence
        for se in st.ReferencedSeriesSequence
        for i in se.ReferencedSOPSequence
    }
    assert evidence == metas | {str(seg.SOPInstanceUID)}
    nums, _ = _sr_values(sr)
    assert nums[(CODING_SCHEME, "LSRATIO")] == [pytest.approx(res.row["ratio"])]


def test_no_frame_of_reference_gives_no_seg_but_keeps_the_row_and_the_sr(tmp_path, real_small):
    res = _screen(real_small, tmp_path, "nofor", lambda ds: delattr(ds, "FrameOfReferenceUID"))
    assert res.status == "flagged" and res.error == ""
    assert res.grade == "normal" and res.row["ratio"] > 1.0  # the measurement stands
    assert "output_not_written" in res.row["flags"].split(";")
    assert "DICOM SEG not written" in res.row["notes"]
    assert "FrameOfReferenceUID" in res.row["notes"]
    assert "dicom_seg" not in res.files and "qc" in res.files
    sr = pydicom.dcmread(res.files["dicom_sr"])  # TID 1501 groups (no SEG to reference)
    _, coded = _sr_values(sr)
    assert "OUTPUT_NOT_WRITTEN" in {c.upper() for c in coded["FLAG"]}
    assert not (tmp_path / "out" / "errors.log").exists()  # an expected refusal


@pytest.mark.parametrize("missing", ["StudyInstanceUID", "SeriesInstanceUID"])
def test_no_study_or_series_uid_gives_no_seg_nor_sr_with_the_reason(tmp_path, real_small, missing):
    res = _screen(real_small, tmp_path, "nouid", lambda ds: delattr(ds, missing), write_qc=False)
    assert res.status == "flagged" and res.error == "" and res.row["ratio"] > 1.0
    assert "output_not_written" in res.row["flags"].split(";")
    assert "DICOM SEG not written" in res.row["notes"]
    assert "DICOM SR not written" in res.row["notes"]
    assert missing in res.row["notes"]
    assert not {"dicom_seg", "dicom_sr"} & set(res.files)


def test_an_optional_output_failing_keeps_the_row_and_logs_its_traceback(
    tmp_path, real_small, monkeypatch
):
    """An unexpected exception in an optional output: the measured row stays (flagged),
    the traceback goes to OUT/errors.log, without the planted identifiers."""
    import client.outputs.dicom_out as dout
    import client.outputs.report as report

    def boom(*a, **k):
        raise KeyError(" ".join(SOURCE_IDS.values()))  # identifiers in the message

    monkeypatch.setattr(dout, "write_dicom_seg", boom)
    monkeypatch.setattr(report, "qc_png", boom)
    res = _screen(real_small, tmp_path, "boom", lambda ds: None)
    assert res.status == "flagged" and res.error == "" and res.row["ratio"] > 1.0
    assert res.row["flags"].split(";").count("output_not_written") == 1
    assert "QC picture not written: unexpected KeyError" in res.row["notes"]
    assert "DICOM SEG not written: unexpected KeyError" in res.row["notes"]
    assert "dicom_sr" in res.files  # the SR does not need the SEG
    log = (tmp_path / "out" / "errors.log").read_text()
    assert log.count(" KeyError (message") == 2  # the type and the frames, no message
    assert "in boom" in log and "write DICOM SEG" in log and res.row["source_id"] in log
    for planted in ("Doe^Jane", "PID-4711", "ACC-99", "Doe"):
        assert planted not in log
    assert "Doe" not in res.row["notes"]


def test_an_unexpected_error_row_leaves_its_traceback_in_out(tmp_path, real_small):
    from client.pipeline.screen import ScreenConfig, screen_scan

    class Broken:
        kind = "masks"

        def segment(self, scan, source, timer):
            raise RuntimeError(" ".join(SOURCE_IDS.values()))  # identifiers in the message

        def describe(self):
            return {"model_name": None}

    folder = _variant(real_small, tmp_path / "in" / "broken", lambda ds: None)
    res = screen_scan(folder, Broken(), ScreenConfig(out_dir=tmp_path / "out"))
    assert res.status == "error" and "unexpected RuntimeError" in res.error
    log = (tmp_path / "out" / "errors.log").read_text()
    assert "RuntimeError" in log and "in segment" in log and "Doe" not in log


def test_the_same_source_model_and_settings_give_the_same_uids(tmp_path, real_small):
    folder = _variant(real_small, tmp_path / "in" / "same", lambda ds: None)
    scan = read_scan(folder)
    labels = read_label_map(real_small[1], scan)
    row = {"case_id": "same", "status": "ok", "grade": "normal", "ratio": 1.3, "flags": ""}
    uids = []
    for k, settings in enumerate(("m|sha|cfg", "m|sha|cfg", "m|sha|other", None)):
        seg = write_dicom_seg(folder, labels, row, tmp_path / f"{k}.seg.dcm", uid_settings=settings)
        sr = write_dicom_sr(
            folder, row, tmp_path / f"{k}.sr.dcm", seg_path=seg, uid_settings=settings
        )
        a, b = pydicom.dcmread(seg), pydicom.dcmread(sr)
        uids.append((a.SOPInstanceUID, a.SeriesInstanceUID, b.SOPInstanceUID, b.SeriesInstanceUID))
    assert uids[0] == uids[1]
    assert len(set(uids[0]) & set(uids[2])) == 0 and len(set(uids[0]) & set(uids[3])) == 0
    assert all(u.startswith("2.25.") and len(u) <= 64 for u in uids[0])


def test_sr_says_which_criterion_produced_which_number(tmp_path, phantom_series):
    """Issue 20: the SR carries the phase, where it was read from, the criterion of that
    phase, the portal-venous assessment, and the PDFF estimate / liver-HU interval."""
    files, scan, labels, row = phantom_series
    pv = dict(row, phase="portal_venous", phase_source="image", criterion="portal_venous_liver_hu",
              pv_assessment="moderate_steatosis_likely", grade="indeterminate",
              liver_hu_ci_low=70.5, liver_hu_ci_high=75.25, pdff_estimate_pct=None)  # fmt: skip
    nums, coded = _sr_values(pydicom.dcmread(write_dicom_sr(files, pv, tmp_path / "pv.sr.dcm")))
    assert coded["PHASE"] == ["portal_venous"] and coded["PHASE_SOURCE"] == ["image"]
    assert coded["CRITERION"] == ["portal_venous_liver_hu"]
    assert coded["PV_ASSESSMENT"] == ["moderate_steatosis_likely"]
    assert nums[(CODING_SCHEME, "LIVER_HU_CI_LOW")] == [70.5]
    assert (CODING_SCHEME, "PDFF_EST") not in nums
    ne = dict(row, phase="unenhanced", phase_source="both", criterion="liver_spleen_ratio",
              pv_assessment="", pdff_estimate_pct=12.5)  # fmt: skip
    nums, coded = _sr_values(pydicom.dcmread(write_dicom_sr(files, ne, tmp_path / "ne.sr.dcm")))
    assert coded["CRITERION"] == ["liver_spleen_ratio"] and "PV_ASSESSMENT" not in coded
    assert nums[(CODING_SCHEME, "PDFF_EST")] == [12.5]  # both SRs pass dciodvfy (autouse)
