"""Batch input discovery: case_id rules (DESIGN.md section 7), DICOM series, clashes."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import SimpleITK as sitk

from client._dicom import write_series
from client.discover import discover
from client.scan import ScanVolume

warnings.filterwarnings("ignore", category=UserWarning, module="pydicom")


def _tiny_scan(seed=0):
    rng = np.random.default_rng(seed)
    return ScanVolume(rng.integers(-1000, 200, (10, 20, 20)).astype(np.int16), (2.0, 1.0, 1.0))


def _nii(path, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(_tiny_scan(seed).to_sitk(), str(path))
    return path


def test_case_ids_follow_the_relative_path(tmp_path):
    root = tmp_path / "archive"
    _nii(root / "a.nii.gz")
    _nii(root / "site1" / "p01" / "ct.nrrd")
    write_series(_tiny_scan(), root / "site2" / "p02" / "series", shuffle_seed=0)
    (root / "notes.txt").write_text("not a scan")
    (root / "site2" / "p02" / "series" / "DIRFILE").write_bytes(b"\x00" * 300)
    d = discover([root])
    ids = sorted(s.case_id for s in d.sources)
    assert ids == ["a", "site1__p01__ct", "site2__p02__series"]
    assert any(p.endswith("notes.txt") for p in d.ignored)
    assert any(p.endswith("DIRFILE") for p in d.ignored)


def test_an_input_that_is_a_file_or_a_series_folder_keeps_its_own_name(tmp_path):
    f = _nii(tmp_path / "deep" / "scan_7.nii.gz")
    write_series(_tiny_scan(), tmp_path / "S3", shuffle_seed=1)
    d = discover([f, tmp_path / "S3"])
    assert [s.case_id for s in d.sources] == ["scan_7", "S3"]
    assert d.sources[1].kind == "dicom" and d.sources[1].n_files == 10


def test_philips_study_gives_one_scan_and_lists_the_rest(shared_data):
    d = discover([shared_data / "dicom_edge_cases" / "philips_study_multiseries"])
    assert [s.case_id for s in d.sources] == ["S2010"]
    reasons = {x["reason"] for x in d.skipped}
    assert any("localizer" in r for r in reasons) and any("secondary capture" in r for r in reasons)
    assert d.sources[0].read().shape == (28, 512, 512)


def test_clashes_get_deterministic_suffixes_and_duplicates_are_dropped(tmp_path):
    a = _nii(tmp_path / "x" / "scan.nii.gz", 1)
    b = _nii(tmp_path / "y" / "scan.nii.gz", 2)
    _nii(tmp_path / "x" / "scan.nrrd", 3)
    d1 = discover([tmp_path / "x", a, b])  # a reached twice
    ids = [s.case_id for s in d1.sources]
    assert ids == ["scan", "scan-2", "scan-3"]
    assert [str(s.path) for s in d1.sources] == [str(a), str(tmp_path / "x" / "scan.nrrd"), str(b)]
    assert [s.case_id for s in discover([tmp_path / "x", a, b]).sources] == ids  # same again


def test_two_series_in_one_folder_are_two_scans(tmp_path):
    folder = tmp_path / "study"
    write_series(_tiny_scan(0), folder, shuffle_seed=2)
    other = tmp_path / "tmp2"
    write_series(_tiny_scan(1), other, shuffle_seed=3, extension=".dcm")
    for p in other.iterdir():
        shutil.move(str(p), folder / p.name)
    d = discover([folder])
    assert len(d.sources) == 2
    assert all(s.series_uid for s in d.sources)
    a, b = (s.read(check_hu=False) for s in d.sources)
    assert a.shape == b.shape == (10, 20, 20) and not np.array_equal(a.array, b.array)


def test_broken_dcm_file_is_a_scan_that_will_fail_and_missing_input_is_reported(tmp_path):
    (tmp_path / "broken.dcm").write_bytes(b"garbage" * 10)
    d = discover([tmp_path, tmp_path / "nope"])
    assert [s.case_id for s in d.sources] == ["broken"]
    assert d.missing == [str(tmp_path / "nope")]
