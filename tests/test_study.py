"""Studies, not just series (issue 20 item 3): grouping, --series best|all, studies.csv,
the library's screen_study, shards and merge keep a study together.

End to end on the multi-phase sample study: the shared real CT as one DICOM study
with an unenhanced series and painted arterial, portal-venous and delayed series
(training/phase_paint.py), measured with TotalSegmentator's reference map (--masks).
"""

from __future__ import annotations

import csv
import json
import shutil

import pytest

from client.batch import main as batch_main
from client.core import contract
from client.pipeline.study import (
    answers_by_ratio,
    group,
    header_rank,
    next_round,
    screen_study,
    study_answer,
)
from client.reading.discover import ScanSource, discover
from tests.conftest import SHARED_DATA

pp = pytest.importorskip("training.phase_paint")
REAL_CT_DIR = SHARED_DATA / "totalseg_example"


def _row(case, phase, criterion, grade, **kw):
    return {"case_id": case, "status": "flagged" if grade == "indeterminate" else "ok",
            "phase": phase, "criterion": criterion, "grade": grade, **kw}  # fmt: skip


def test_study_answer_prefers_the_unenhanced_ratio_grade():
    rows = [
        _row(
            "a_pv",
            "portal_venous",
            "portal_venous_liver_hu",
            "indeterminate",
            pv_assessment="moderate_steatosis_unlikely",
            liver_hu=110.0,
        ),  # fmt: skip
        _row(
            "b_ne",
            "unenhanced",
            "liver_spleen_ratio",
            "mild",
            ratio=0.9,
            liver_hu=45.0,
            pdff_estimate_pct=12.1,
        ),  # fmt: skip
        _row("c_art", "arterial", "none", "indeterminate"),
    ]
    got = study_answer("s1", rows, 4)
    assert (got["grade"], got["criterion"], got["answer_case_id"]) == (
        "mild",
        "liver_spleen_ratio",
        "b_ne",
    )
    assert got["ratio"] == 0.9 and got["pdff_estimate_pct"] == 12.1
    assert (got["n_series"], got["n_screened"]) == (4, 3)
    assert "a_pv=portal_venous/portal_venous_liver_hu/indeterminate" in got["series"]


def test_study_answer_falls_back_to_portal_venous_then_to_reasons():
    pv = _row("a_pv", "portal_venous", "portal_venous_liver_hu", "indeterminate",
              pv_assessment="moderate_steatosis_likely", liver_hu=71.0)  # fmt: skip
    got = study_answer("s", [pv, _row("c", "delayed", "none", "indeterminate")])
    assert got["grade"] == "indeterminate" and got["criterion"] == "portal_venous_liver_hu"
    assert got["pv_assessment"] == "moderate_steatosis_likely" and got["answer_case_id"] == "a_pv"
    got = study_answer("s", [_row("c", "delayed", "none", "indeterminate", flags="contrast_enhanced"),
                             {"case_id": "d", "status": "error", "grade": "indeterminate"}])  # fmt: skip
    assert got["criterion"] == "none" and got["answer_case_id"] == ""
    assert "c: delayed phase (contrast_enhanced)" in got["notes"] and "d: error" in got["notes"]
    # an indeterminate unenhanced series (gate) does not answer by the ratio
    assert not answers_by_ratio(_row("e", "unenhanced", "liver_spleen_ratio", "indeterminate"))


def test_header_rank_puts_the_likely_unenhanced_series_first(tmp_path):
    def src(case, n, agent="", desc=""):
        return ScanSource(case, tmp_path / case, "dicom", study_uid="1.2.3", series_number=n,
                          contrast_agent=agent, series_description=desc)  # fmt: skip

    series = [src("pv", 2, "IOMERON", "PV 70s"), src("x", 5), src("ne", 9, "", "non-contrast")]
    assert [s.case_id for s in sorted(series, key=header_rank)] == ["ne", "x", "pv"]
    other = ScanSource("nifti", tmp_path / "a.nii.gz", "image")
    g = group(series + [other])
    assert len(g) == 2 and g[other.study_id] == [other]
    assert series[0].study_id == series[1].study_id != other.study_id


def test_next_round_walks_each_study_until_the_ratio_answers(tmp_path):
    files = []
    for name in ("a", "b", "c"):
        f = tmp_path / name
        f.write_bytes(b"x")
        files.append(f)
    srcs = [ScanSource(f.name, f, "dicom", study_uid="9.9", series_number=i)
            for i, f in enumerate(files)]  # fmt: skip
    rows: dict = {}
    assert [s.case_id for s in next_round(srcs, rows, set())] == ["a"]
    rows["a"] = _row("a", "portal_venous", "portal_venous_liver_hu", "indeterminate",
                     source_fingerprint=srcs[0].fingerprint())  # fmt: skip
    assert [s.case_id for s in next_round(srcs, rows, {"a"})] == ["b"]
    rows["b"] = {"case_id": "b", "status": "error", "source_fingerprint": srcs[1].fingerprint()}
    assert [s.case_id for s in next_round(srcs, rows, {"a"})] == ["b"]  # retried next run
    assert [s.case_id for s in next_round(srcs, rows, {"a", "b"})] == ["c"]  # not this run
    rows["c"] = _row("c", "unenhanced", "liver_spleen_ratio", "normal",
                     source_fingerprint=srcs[2].fingerprint())  # fmt: skip
    assert next_round(srcs, rows, {"a", "b", "c"}) == []


@pytest.fixture(scope="module")
def phase_study(tmp_path_factory):
    """The four-phase study without contrast tags, and TotalSegmentator masks per series."""
    base = tmp_path_factory.mktemp("phase_study")
    pp.write_phase_study(base / "in", tags=False, nifti=False, data_dir=REAL_CT_DIR)
    masks = base / "masks"
    masks.mkdir()
    found = discover([str(base / "in")])
    assert len(found.sources) == 4
    for s in found.sources:
        shutil.copy(REAL_CT_DIR / "labels_all.nii.gz", masks / f"{s.case_id}.nii.gz")
    return base, found


def _read_csv(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_every_series_screened_and_the_study_answered_by_the_unenhanced_one(phase_study, tmp_path):
    base, found = phase_study
    out = tmp_path / "all"
    rc = batch_main([str(base / "in"), "-o", str(out), "--quiet", "--no-qc", "--series", "all",
                     "--masks", str(base / "masks"), "--label-map", "totalsegmentator"])  # fmt: skip
    assert rc == 0
    rows = {r["case_id"]: r for r in _read_csv(out / "results.csv")}
    assert len(rows) == 4 and len({r["study_id"] for r in rows.values()}) == 1
    by_phase = {r["phase"]: r for r in rows.values()}
    assert set(by_phase) == {"unenhanced", "arterial", "portal_venous", "delayed"}
    for phase, r in by_phase.items():  # no series graded by the wrong criterion
        want = {"unenhanced": "liver_spleen_ratio", "portal_venous": "portal_venous_liver_hu"}
        assert r["criterion"] == want.get(phase, "none"), phase
        assert (r["grade"] != "indeterminate") == (phase == "unenhanced"), phase
    studies = _read_csv(out / "studies.csv")
    assert len(studies) == 1
    st = studies[0]
    ne = by_phase["unenhanced"]
    assert st["answer_case_id"] == ne["case_id"] and st["grade"] == ne["grade"] == "normal"
    assert st["criterion"] == "liver_spleen_ratio" and st["n_series"] == "4"
    assert [json.loads(x) for x in (out / "studies.jsonl").read_text().splitlines()][0][
        "grade"
    ] == "normal"
    # the seed's grade equals screening that series alone
    alone = tmp_path / "alone"
    ne_src = next(s for s in found.sources if s.case_id == ne["case_id"])
    # a series folder given directly is named by its folder: its mask under that name
    masks = tmp_path / "masks"
    masks.mkdir()
    shutil.copy(REAL_CT_DIR / "labels_all.nii.gz", masks / f"{ne_src.path.name}.nii.gz")
    rc = batch_main([str(ne_src.path), "-o", str(alone), "--quiet", "--no-qc", "--masks",
                     str(masks), "--label-map", "totalsegmentator"])  # fmt: skip
    assert rc == 0
    r_alone = _read_csv(alone / "results.csv")[0]
    assert (r_alone["grade"], r_alone["ratio"]) == (ne["grade"], ne["ratio"])


def test_series_best_screens_only_what_the_answer_needs(phase_study, tmp_path):
    base, _ = phase_study
    out = tmp_path / "best"
    rc = batch_main([str(base / "in"), "-o", str(out), "--quiet", "--no-qc",
                     "--masks", str(base / "masks"), "--label-map", "totalsegmentator"])  # fmt: skip
    assert rc == 0
    rows = _read_csv(out / "results.csv")
    assert len(rows) == 1 and rows[0]["phase"] == "unenhanced"  # first by series number
    run = json.loads((out / "run.json").read_text())
    assert run["series_mode"] == "best" and len(run["not_needed_series"]) == 3
    assert all("answered by" in e["reason"] for e in run["not_needed_series"])
    st = _read_csv(out / "studies.csv")[0]
    assert st["grade"] == "normal" and st["n_series"] == "4" and st["n_screened"] == "1"
    # --resume with nothing left to do: still one row, the study unchanged
    rc = batch_main([str(base / "in"), "-o", str(out), "--quiet", "--no-qc", "--resume",
                     "--masks", str(base / "masks"), "--label-map", "totalsegmentator"])  # fmt: skip
    assert rc == 0 and len(_read_csv(out / "results.csv")) == 1


def _pv_first_study(tmp_path):
    """A study whose first series (by number) is portal-venous, then the unenhanced one;
    TotalSegmentator masks for both."""
    import dataclasses

    import pydicom

    from client.reading.dicom import write_series

    scan, labels, names = pp.load_example(REAL_CT_DIR)
    pv = pp.paint_phase(scan.array, labels, names, "portal_venous")
    inp, masks = tmp_path / "in", tmp_path / "masks"
    uid = "1.2.826.0.1.3680043.8.498.424242"
    for folder, arr, number in (("s1_pv", pv, 1), ("s2_ne", scan.array, 2)):
        for f in write_series(dataclasses.replace(scan, array=arr), inp / folder):
            ds = pydicom.dcmread(f)
            ds.StudyInstanceUID, ds.SeriesNumber = uid, number
            ds.save_as(f)
    masks.mkdir()
    for s in discover([str(inp)]).sources:
        shutil.copy(REAL_CT_DIR / "labels_all.nii.gz", masks / f"{s.case_id}.nii.gz")
    return inp, masks


def _check_pv_first(out):
    rows = _read_csv(out / "results.csv")
    assert sorted(r["phase"] for r in rows) == ["portal_venous", "unenhanced"]
    st = _read_csv(out / "studies.csv")[0]
    assert st["criterion"] == "liver_spleen_ratio" and st["grade"] == "normal"
    run = json.loads((out / "run.json").read_text())
    assert run["not_needed_series"] == [] and run["n_studies"] == 1


def test_series_best_goes_on_when_the_first_series_is_enhanced(tmp_path):
    """Best screens on (a second round) until the unenhanced series answers."""
    inp, masks = _pv_first_study(tmp_path)
    out = tmp_path / "out"
    rc = batch_main([str(inp), "-o", str(out), "--quiet", "--no-qc", "--masks", str(masks),
                     "--label-map", "totalsegmentator"])  # fmt: skip
    assert rc == 0
    _check_pv_first(out)


def test_series_best_rounds_on_ray_in_one_session(tmp_path):
    """The rounds of --series best on a real local Ray: the same rows, actors started once."""
    pytest.importorskip("ray", reason="Ray is not installed: pip install 'hepascreen[ray]'")
    import subprocess
    import sys

    inp, masks = _pv_first_study(tmp_path)
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "client.batch", str(inp), "-o", str(out), "--quiet", "--no-qc",
         "--masks", str(masks), "--label-map", "totalsegmentator", "--ray", "local",
         "--ray-workers", "1"],
        timeout=600, capture_output=True, encoding="utf-8",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check_pv_first(out)
    run = json.loads((out / "run.json").read_text())
    assert run["ray"]["workers"] == 1 and run["ray"]["started_local"]


def test_screen_study_library(phase_study):
    from client.pipeline.segmenters import MaskFolderSegmenter

    base, _ = phase_study
    seg = MaskFolderSegmenter(base / "masks", "totalsegmentator")
    (res,) = screen_study(base / "in", seg, series="all")
    assert len(res.series) == 4 and res.grade == "normal" and not res.not_screened
    (res,) = screen_study(base / "in", seg)
    assert len(res.series) == 1 and len(res.not_screened) == 3
    assert res.row["criterion"] == contract.CRITERION_RATIO


def test_a_study_stays_in_one_shard(tmp_path):
    from client.scaleout.shard import select

    srcs = [
        ScanSource(f"s{i}", tmp_path / f"s{i}", "dicom", study_uid=f"1.2.{i % 3}")
        for i in range(30)
    ]
    for k in (1, 2, 3, 4):
        picked = select(srcs, k, 4)
        studies = {s.study_uid for s in picked}
        assert all(s in picked for s in srcs if s.study_uid in studies)


def test_overwrite_removes_the_study_table_too(phase_study, tmp_path):
    """studies.csv / studies.jsonl are outputs of a run: --overwrite clears them."""
    from client.outputs import results

    assert {results.STUDIES_CSV, results.STUDIES_JSONL} <= set(results.OUTPUT_NAMES)
    out = tmp_path / "o"
    out.mkdir()
    (out / "studies.csv").write_text("stale")
    (out / "mine.txt").write_text("keep")
    results.clear_outputs(out)
    assert not (out / "studies.csv").exists() and (out / "mine.txt").exists()
