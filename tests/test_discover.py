"""Batch input discovery: case_id rules (DESIGN.md section 7), DICOM series, clashes."""

from __future__ import annotations

import os
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from client.reading.dicom import write_series
from client.reading.discover import MAX_CASE_ID_BYTES, discover, shorten_case_id
from client.reading.scan import ScanVolume

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
    assert any(x["path"].endswith("notes.txt") for x in d.ignored)
    assert any(x["path"].endswith("DIRFILE") for x in d.ignored)


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


def test_clashes_get_deterministic_suffixes_and_duplicates_are_listed(tmp_path):
    a = _nii(tmp_path / "x" / "scan.nii.gz", 1)
    b = _nii(tmp_path / "y" / "scan.nii.gz", 2)
    _nii(tmp_path / "x" / "scan.nrrd", 3)
    d1 = discover([tmp_path / "x", a, b])  # a reached twice
    ids = [s.case_id for s in d1.sources]
    assert ids[0] == "scan" and len(set(ids)) == 3
    assert all(re.fullmatch(r"scan-[0-9a-f]{8}", i) for i in ids[1:])
    assert [str(s.path) for s in d1.sources] == [str(a), str(tmp_path / "x" / "scan.nrrd"), str(b)]
    assert [s.case_id for s in discover([tmp_path / "x", a, b]).sources] == ids  # same again
    assert any("reached twice" in x["reason"] for x in d1.ignored)


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


# --- every path accounted for (issue 9 item 5, issue 10 item 1) -------------------------
def _accounted(d) -> int:
    """Files covered by the discovery: scans' files, skipped series' files, ignored entries."""
    return (
        sum(s.n_files for s in d.sources)
        + sum(x["series_files"] for x in d.skipped)
        + len(d.ignored)
    )


def test_symlinks_are_followed_loops_listed_and_nothing_vanishes(tmp_path):
    store = tmp_path / "store"
    _nii(store / "ct1.nii.gz", 1)
    write_series(_tiny_scan(2), store / "dicom_series", shuffle_seed=4)
    root = tmp_path / "archive"
    root.mkdir()
    _nii(root / "local.nii.gz", 3)
    os.symlink(store / "dicom_series", root / "linked_series")  # folder link
    os.symlink(store / "ct1.nii.gz", root / "linked.nii.gz")  # file link
    os.symlink(root, root / "loop")  # folder loop back to the root
    os.symlink(root / "self.nii.gz", root / "self.nii.gz")  # a link to itself
    os.symlink(root / "selfdcm.dcm", root / "selfdcm.dcm")
    os.symlink(tmp_path / "gone", root / "dangling.nrrd")
    (root / ".hidden_dir").mkdir()
    _nii(root / ".hidden_dir" / "x.nii.gz", 4)
    (root / ".DS_Store").write_bytes(b"\0" * 10)
    (root / "README.txt").write_text("notes")
    d = discover([root])
    ids = sorted(s.case_id for s in d.sources)
    assert ids == ["linked", "linked_series", "local"]
    series = next(s for s in d.sources if s.case_id == "linked_series")
    assert series.kind == "dicom" and series.n_files == 10
    assert series.read(check_hu=False).shape == (10, 20, 20)
    reasons = {Path(x["path"]).name: x["reason"] for x in d.ignored}
    assert "already searched" in reasons["loop"]
    assert reasons["self.nii.gz"] == "symlink loop" and reasons["selfdcm.dcm"] == "symlink loop"
    assert "broken symlink" in reasons["dangling.nrrd"]
    assert reasons[".hidden_dir"].startswith("hidden") and reasons[".DS_Store"].startswith("hidden")
    assert "not a scan" in reasons["README.txt"]
    # Every entry of the root is accounted for once; the linked series by its 10 files.
    entries = list(root.iterdir())
    assert _accounted(d) == len(entries) - 1 + 10


def test_undecodable_names_are_listed_not_crashing(tmp_path):
    root = tmp_path / "a"
    _nii(root / "ok.nii.gz")
    bad = os.fsencode(str(root)) + b"/bad\xff\xfe.nii.gz"
    with open(bad, "wb") as fh:
        fh.write(b"x" * 400)
    os.mkdir(os.fsencode(str(root)) + b"/dir\xff")
    d = discover([root])
    assert [s.case_id for s in d.sources] == ["ok"]
    bad_entries = [x for x in d.ignored if "UTF-8" in x["reason"]]
    assert len(bad_entries) == 2
    for x in bad_entries:
        x["path"].encode("utf-8")  # listed as valid text
        assert "\\xff" in x["path"]


def test_over_long_case_ids_are_shortened_deterministically(tmp_path):
    deep = tmp_path / "r"
    parts = ["folder_" + "x" * 60 + f"_{i}" for i in range(5)]
    a = _nii(deep.joinpath(*parts) / "scan_a.nii.gz", 1)
    b = _nii(deep.joinpath(*parts) / "scan_b.nii.gz", 2)
    d = discover([deep])
    ids = [s.case_id for s in d.sources]
    full = "__".join(parts) + "__scan_a"
    assert len(full.encode()) > MAX_CASE_ID_BYTES
    assert all(len(i.encode()) <= MAX_CASE_ID_BYTES for i in ids)
    assert len(set(ids)) == 2 and all(re.search(r"~[0-9a-f]{12}$", i) for i in ids)
    assert ids[0] == shorten_case_id(full)
    assert [s.case_id for s in discover([deep]).sources] == ids
    assert {str(s.path) for s in d.sources} == {str(a), str(b)}
    # Unicode is cut on a character boundary.
    assert shorten_case_id("é" * 300).encode("utf-8").decode("utf-8")


def test_case_ids_stay_stable_when_files_are_added(tmp_path):
    x, y = tmp_path / "x", tmp_path / "y"
    _nii(x / "scan.nii.gz", 1)
    first = discover([x, y]) if y.exists() else discover([x])
    pins = {s.source_id: s.case_id for s in first.sources}
    # A new file that sorts BEFORE the old one and clashes with its case_id.
    _nii(x / "scan.nhdr".replace(".nhdr", ".mha"), 2)
    _nii(tmp_path / "a" / "scan.nii.gz", 3)
    later = discover([tmp_path / "a", x], pins=pins)
    by_path = {str(s.path): s.case_id for s in later.sources}
    assert by_path[str(x / "scan.nii.gz")] == "scan"  # the old scan keeps its id
    assert len(set(by_path.values())) == 3
    # Without the pins the first in sorted order would take it.
    assert discover([tmp_path / "a", x]).sources[0].case_id == "scan"


def test_fingerprint_changes_with_the_file_and_id_does_not(tmp_path):
    f = _nii(tmp_path / "s.nii.gz", 1)
    s1 = discover([tmp_path]).sources[0]
    fp, sid = s1.fingerprint(), s1.source_id
    os.utime(f, ns=(1, 1))
    s2 = discover([tmp_path]).sources[0]
    assert s2.source_id == sid and s2.fingerprint() != fp


def test_output_folder_inside_the_input_is_not_searched(tmp_path):
    _nii(tmp_path / "in" / "a.nii.gz")
    _nii(tmp_path / "in" / "out" / "masks" / "a.nii.gz")
    d = discover([tmp_path / "in"], exclude=[tmp_path / "in" / "out"])
    assert [s.case_id for s in d.sources] == ["a"]
    assert {
        "path": str(tmp_path / "in" / "out"),
        "reason": "the output folder of this run",
    } in d.ignored


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file and folder")
def test_unreadable_files_and_folders_are_listed(tmp_path):
    _nii(tmp_path / "ok.nii.gz")
    f = _nii(tmp_path / "locked.nii.gz")
    d = tmp_path / "locked_dir"
    _nii(d / "x.nii.gz")
    f.chmod(0)
    d.chmod(0)
    try:
        found = discover([tmp_path])
    finally:
        d.chmod(0o755)
    reasons = {Path(x["path"]).name: x["reason"] for x in found.ignored}
    assert [s.case_id for s in found.sources] == ["ok"]
    assert "permission denied" in reasons["locked.nii.gz"]
    assert "permission denied" in reasons["locked_dir"]


def test_unreadable_file_is_listed_as_a_non_root_user_would_see(tmp_path, monkeypatch):
    # Root reads everything, so os.access says what a normal user would get.
    import client.reading.discover as disc

    _nii(tmp_path / "ok.nii.gz")
    locked = _nii(tmp_path / "locked.nii.gz")
    monkeypatch.setattr(disc.os, "access", lambda p, mode: Path(p) != locked)
    found = discover([tmp_path])
    assert [s.case_id for s in found.sources] == ["ok"]
    assert found.ignored == [
        {"path": str(locked), "reason": "permission denied: file not readable"}
    ]


def test_single_dicom_files_in_a_folder_are_named_by_their_file(shared_data):
    folder = shared_data / "dicom_edge_cases" / "pydicom_files"
    d = discover([folder])
    by_id = {s.case_id: s for s in d.sources}
    assert by_id["CT_small"].path == folder / "CT_small.dcm"
    assert by_id["no_meta"].path == folder / "no_meta.dcm"
    skipped = {Path(x["path"]).name: x["reason"] for x in d.skipped}
    assert "segmentation" in skipped["liver_1frame.dcm"].lower()
    assert "rt structure" in skipped["rtstruct.dcm"].lower()
    n_files = sum(1 for p in folder.iterdir() if p.is_file())
    assert _accounted(d) == n_files  # nothing vanishes


def test_case_ids_of_earlier_runs_stay_reserved(tmp_path):
    a = _nii(tmp_path / "x" / "scan.nii.gz", 1)
    pins = {s.source_id: s.case_id for s in discover([a]).sources}
    b = _nii(tmp_path / "y" / "scan.nii.gz", 2)
    (src,) = discover([b], pins=pins).sources  # the first scan is not an INPUT this time
    assert re.fullmatch(r"scan-[0-9a-f]{8}", src.case_id)
    assert discover([b]).sources[0].case_id == "scan"  # a fresh OUT: no reservation
