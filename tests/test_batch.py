"""End to end: ``python -m client.batch`` with the real bundled Triton server and the shipped model."""

from __future__ import annotations

import csv
import json
import locale
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from client.batch import main as batch_main
from client.core import contract
from client.core.contract import RESULT_COLUMNS

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import make_sample  # noqa: E402

N_PHANTOMS = 4  # one per grade; even ones NIfTI, odd ones DICOM series


def writers_of(path: Path) -> set[int]:
    """Live processes with ``path`` open (the bundled server writes its log there).

    Other engineers' servers may start and stop meanwhile, so "our server is gone" is
    checked by what holds OUT/server.log open, not by counting tritonserver processes.
    """
    target, pids = str(path), set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if any(os.readlink(fd) == target for fd in (d / "fd").iterdir()):
                    pids.add(int(d.name))
            except OSError:
                continue
    return pids


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def dice(a, b):
    return 2.0 * (a & b).sum() / max(1, a.sum() + b.sum())


@pytest.fixture(scope="module")
def archive(tmp_path_factory, shared_data):
    base = tmp_path_factory.mktemp("archive")
    truth = make_sample.build(
        base / "scans",
        N_PHANTOMS,
        (90, 200, 200),
        broken=True,
        masks=True,
        real=shared_data / "totalseg_example" / "ct.nii.gz",
    )
    return base, truth


@pytest.fixture(scope="module")
def screened(archive):
    base, truth = archive
    out = base / "out"
    rc = batch_main([str(base / "scans"), "-o", str(out), "--quiet", "--concurrency", "3"])
    return out, rc, None, writers_of(out / "server.log")


@pytest.mark.server
def test_one_row_per_scan_error_rows_and_exit_code(screened, archive):
    out, rc, _, _ = screened
    rows = read_csv(out / "results.csv")
    assert rc == 1  # two broken files
    assert set(RESULT_COLUMNS) <= set(rows[0])
    ids = sorted(r["case_id"] for r in rows)
    assert len(ids) == len(set(ids)) == N_PHANTOMS + 3
    errors = {r["case_id"]: r for r in rows if r["status"] == "error"}
    assert set(errors) == {"broken__truncated", "broken__not_an_image"}
    assert "truncated" in errors["broken__truncated"]["error"]
    assert "not_an_image.nii.gz" in errors["broken__not_an_image"]["error"]
    jsonl = [
        json.loads(x) for x in (out / "results.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert [r["case_id"] for r in jsonl] == [r["case_id"] for r in rows]
    run = json.loads((out / "run.json").read_text(encoding="utf-8"))
    assert run["status"] == "finished" and run["n_failed"] == 2
    assert {f["case_id"] for f in run["failures"]} == set(errors)
    assert set(run["timings"]["stage_seconds"]) >= {"read", "infer", "measure"}
    report = (out / "report.html").read_text(encoding="utf-8")
    assert all(r["case_id"] in report for r in rows)
    assert (out / "server.log").stat().st_size > 0


@pytest.mark.server
def test_phantom_grades_and_masks(screened, archive):
    out, _, _, _ = screened
    base, truth = archive
    rows = {r["case_id"]: r for r in read_csv(out / "results.csv")}
    for case_id, t in truth.items():
        r = rows[case_id]
        assert r["grade"] == t["grade"], (case_id, r, t)
        assert abs(float(r["ratio"]) - t["ratio"]) < 0.05, (case_id, r["ratio"], t)
        mask = sitk.ReadImage(str(out / "masks" / f"{case_id}.nii.gz"))
        ref = sitk.ReadImage(str(base / "scans_truth_masks" / f"{case_id}.nii.gz"))
        # The mask overlays its scan: same grid, and it matches the truth voxel by voxel.
        assert mask.GetSize() == ref.GetSize()
        assert np.allclose(mask.GetOrigin(), ref.GetOrigin(), atol=1e-3)
        assert np.allclose(mask.GetDirection(), ref.GetDirection(), atol=1e-6)
        m, g = sitk.GetArrayFromImage(mask), sitk.GetArrayFromImage(ref)
        assert dice(m == 1, g == 1) > 0.85, case_id
        assert dice(m == 2, g == 2) > 0.7, case_id
        assert (out / "qc" / f"{case_id}.png").stat().st_size > 1000


@pytest.mark.server
def test_no_identifiers_in_outputs(screened):
    out, _, _, _ = screened
    text = (out / "results.csv").read_text(encoding="utf-8") + (out / "run.json").read_text(
        encoding="utf-8"
    )
    assert "ANONYMOUS" not in text and "PatientName" not in text and "ANON" not in text


@pytest.mark.server
def test_rows_carry_acquisition_covariates_and_provenance(screened):
    out, _, _, _ = screened
    rows = {r["case_id"]: r for r in read_csv(out / "results.csv")}
    run = json.loads((out / "run.json").read_text(encoding="utf-8"))
    dicom = [r for c, r in rows.items() if c.startswith("dicom__")]
    nifti = [r for c, r in rows.items() if c.startswith("phantoms__")]
    assert dicom and nifti
    for r in dicom:  # written by client.reading.dicom.write_series
        assert (r["kvp"], r["convolution_kernel"]) == ("120.0", "STANDARD")
        assert r["series_description"] == "HepaScreen test series"
        assert r["series_instance_uid"] == "" and r["study_instance_uid"] == ""
    assert all(r["kvp"] == "" for r in nifti)
    for r in rows.values():
        assert r["run_id"] == run["run_id"] and r["schema_version"] == contract.SCHEMA_VERSION
        assert r["segmenter"] == "triton" and r["model_name"] == contract.MODEL_NAME
        assert r["model_sha256"] == run["model"]["model_sha256"] and len(r["model_sha256"]) == 64
        assert r["model_version"] == "1"


@pytest.mark.server
def test_embedded_server_is_gone_after_the_run(screened):
    _, _, _, writers = screened
    assert writers == set()


@pytest.mark.server
def test_server_gone_after_a_startup_error(tmp_path, archive):
    base, _ = archive
    repo = tmp_path / "repo"
    shutil.copytree(
        ROOT / "model_repository" / "cpu", repo, ignore=shutil.ignore_patterns("*.onnx")
    )
    rc = batch_main(
        [
            str(base / "scans" / "real"),
            "-o",
            str(tmp_path / "o"),
            "--quiet",
            "--model-repository",
            str(repo),
        ]
    )
    assert rc == 1
    assert writers_of(tmp_path / "o" / "server.log") == set()
    run = json.loads((tmp_path / "o" / "run.json").read_text(encoding="utf-8"))
    assert run["n_processed"] == 0 and run["status"] == "failed" and "tritonserver" in run["error"]


@pytest.mark.server
def test_resume_keeps_exactly_one_row_per_case_and_starts_no_server(screened, tmp_path):
    out, _, _, _ = screened
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    with open(copy / "results.jsonl", "a") as fh:
        fh.write('{"case_id": "half-writ')  # a crash in the middle of a line
    rows_before = {r["case_id"]: r for r in read_csv(copy / "results.csv")}
    scans = out.parent / "scans"
    # Only the two failed scans are tried again; --masks so that they fail again fast.
    rc = batch_main([str(scans), "-o", str(copy), "--quiet", "--resume", "--masks", str(tmp_path)])
    assert rc == 1
    rows = read_csv(copy / "results.csv")
    jsonl = [
        json.loads(x) for x in (copy / "results.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert sorted(r["case_id"] for r in rows) == sorted(rows_before)  # one row per case_id
    assert [r["case_id"] for r in jsonl] == [r["case_id"] for r in rows]
    attempts = [
        json.loads(x) for x in (copy / "attempts.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert sorted(a["case_id"] for a in attempts) == ["broken__not_an_image", "broken__truncated"]
    new = {r["case_id"]: r for r in jsonl}
    assert all(new[a["case_id"]]["attempt"] == 2 for a in attempts)
    retried = {a["case_id"] for a in attempts}
    assert all(new[c]["run_id"] == rows_before[c]["run_id"] for c in new if c not in retried)
    # Nothing left to do now: no server is started, nothing is rewritten but the manifest.
    rc = batch_main([str(scans), "-o", str(copy), "--quiet", "--resume"])
    run = json.loads((copy / "run.json").read_text(encoding="utf-8"))
    assert rc == 1 and run["n_todo"] == 2  # the two broken files are still to do
    # The same scans through other INPUTs (without the broken ones): case_ids are pinned
    # by source, so every scan is recognised as done.
    parts = [str(scans / p) for p in ("real", "phantoms", "dicom")]
    log_size = (copy / "server.log").stat().st_size
    rc = batch_main([*parts, "-o", str(copy), "--quiet", "--resume"])
    run = json.loads((copy / "run.json").read_text(encoding="utf-8"))
    assert rc == 0 and run["n_todo"] == 0 and run["status"] == "finished" and "model" not in run
    assert (copy / "server.log").stat().st_size == log_size  # no server was started


def test_masks_mode_on_real_ct_needs_no_server(tmp_path, shared_data):
    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copyfile(shared_data / "totalseg_example" / "ct.nii.gz", scans / "ct.nii.gz")
    masks = tmp_path / "masks"
    masks.mkdir()
    shutil.copyfile(shared_data / "totalseg_example" / "labels.nii.gz", masks / "ct.nii.gz")
    rc = batch_main([str(scans), "-o", str(tmp_path / "out"), "--masks", str(masks), "--quiet"])
    assert rc == 0
    (row,) = read_csv(tmp_path / "out" / "results.csv")
    assert row["grade"] == "normal" and 1.25 < float(row["ratio"]) < 1.4
    assert not (tmp_path / "out" / "server.log").exists()  # no server
    assert (
        json.loads((tmp_path / "out" / "run.json").read_text(encoding="utf-8"))["mode"] == "masks"
    )


def test_totalsegmentator_label_map_option(tmp_path, shared_data):
    lab = sitk.ReadImage(str(shared_data / "totalseg_example" / "labels.nii.gz"))
    a = sitk.GetArrayFromImage(lab)
    ts = np.zeros_like(a)
    ts[a == 1], ts[a == 2] = 5, 1
    img = sitk.GetImageFromArray(ts)
    img.CopyInformation(lab)
    (tmp_path / "m").mkdir()
    sitk.WriteImage(img, str(tmp_path / "m" / "ct.nii.gz"))
    rc = batch_main(
        [
            str(shared_data / "totalseg_example" / "ct.nii.gz"),
            "-o",
            str(tmp_path / "o"),
            "--masks",
            str(tmp_path / "m"),
            "--label-map",
            "totalsegmentator",
            "--quiet",
        ]
    )
    (row,) = read_csv(tmp_path / "o" / "results.csv")
    assert rc == 0 and row["grade"] == "normal"


def test_usage_errors_exit_2(tmp_path):
    assert batch_main([str(tmp_path / "nothing_here"), "-o", str(tmp_path / "o"), "--quiet"]) == 2
    (tmp_path / "empty").mkdir()
    assert batch_main([str(tmp_path / "empty"), "-o", str(tmp_path / "o"), "--quiet"]) == 2
    with pytest.raises(SystemExit) as e:
        batch_main(["--cubes", "3"])
    assert e.value.code == 2


def test_gpu_flag_without_cupy_is_a_usage_error_naming_the_extra(tmp_path, shared_data, capsys):
    from postprocess import gpu_available

    if gpu_available():
        pytest.skip("a GPU is present")
    rc = batch_main(
        [str(shared_data / "totalseg_example" / "ct.nii.gz"), "-o", str(tmp_path / "o"), "--gpu"]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "hepascreen[gpu]" in err and "deprecated" in err
    rc = batch_main(
        [str(shared_data / "totalseg_example" / "ct.nii.gz"), "-o", str(tmp_path / "o"),
         "--device", "gpu"]
    )  # fmt: skip
    assert rc == 2 and "hepascreen[gpu]" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # refused before anything was written


@pytest.mark.server
def test_sigterm_mid_batch_stops_the_server_and_keeps_rows_whole(archive, tmp_path):
    import signal
    import subprocess
    import time

    base, _ = archive
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "client.batch",
            str(base / "scans"),
            "-o",
            str(out),
            "--quiet",
            "--concurrency",
            "1",
        ],
        cwd=ROOT,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (out / "results.jsonl").exists():
        time.sleep(0.2)
    while time.monotonic() < deadline and (out / "results.jsonl").stat().st_size == 0:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 130
    assert writers_of(out / "server.log") == set()
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text(encoding="utf-8").splitlines()]
    assert 1 <= len(rows) < N_PHANTOMS + 3
    run = json.loads((out / "run.json").read_text(encoding="utf-8"))
    assert run["status"] == "interrupted" and run["n_processed"] == len(rows)  # counts are true
    assert len(read_csv(out / "results.csv")) == len(rows)


# --- OUT rules, exactly once, file modes, console command (issue 9 items 2-4) ---------
@pytest.fixture()
def small_archive(tmp_path, shared_data):
    """Six copies of the real 30-slice CT crop with their label maps, and one broken file."""
    d = shared_data / "totalseg_example"
    scans, masks = tmp_path / "scans", tmp_path / "masks"
    scans.mkdir()
    masks.mkdir()
    for i in range(6):
        shutil.copyfile(d / "ct_small.nii.gz", scans / f"s{i}.nii.gz")
        shutil.copyfile(d / "labels_small.nii.gz", masks / f"s{i}.nii.gz")
    (scans / "a_broken.nii.gz").write_bytes(b"not an image\n")
    return scans, masks


def _tree(folder: Path) -> dict:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def test_non_empty_out_is_refused_untouched_and_overwrite_replaces_results(
    small_archive, tmp_path, capsys
):
    scans, masks = small_archive
    out = tmp_path / "out"
    args = [str(scans), "-o", str(out), "--masks", str(masks), "--quiet", "--no-qc"]
    assert batch_main(args) == 1  # the broken file
    (out / "my_notes.txt").write_text("keep me")
    before = _tree(out)
    assert batch_main(args) == 2
    assert "not empty" in capsys.readouterr().err and _tree(out) == before
    with pytest.raises(SystemExit):  # --resume and --overwrite exclude each other
        batch_main([*args, "--resume", "--overwrite"])
    assert batch_main([*args, "--overwrite"]) == 1
    rows = read_csv(out / "results.csv")
    assert len(rows) == 7 and len({r["run_id"] for r in rows}) == 1
    assert (out / "my_notes.txt").read_text(encoding="utf-8") == "keep me" and not (
        out / "attempts.jsonl"
    ).exists()


@pytest.mark.slow
def test_sigkill_three_times_then_resume_gives_exactly_one_row_per_scan(small_archive, tmp_path):
    import signal
    import subprocess
    import time

    scans, masks = small_archive
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "client.batch", str(scans), "-o", str(out), "--masks",
           str(masks), "--quiet", "--concurrency", "1"]  # fmt: skip
    for k in range(3):
        n0 = (
            len((out / "results.jsonl").read_text(encoding="utf-8").splitlines())
            if out.exists()
            else 0
        )
        proc = subprocess.Popen(cmd + (["--resume"] if k else []), cwd=ROOT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            p = out / "results.jsonl"
            if p.exists() and len(p.read_text(encoding="utf-8").splitlines()) > n0:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        run = json.loads((out / "run.json").read_text(encoding="utf-8"))
        assert run["status"] in ("running", "finished")  # a SIGKILL cannot be recorded...
    rc = subprocess.run(cmd + ["--resume"], cwd=ROOT, timeout=120).returncode
    assert rc == 1
    rows = read_csv(out / "results.csv")
    jsonl = [
        json.loads(x) for x in (out / "results.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    ids = sorted(r["case_id"] for r in rows)
    assert ids == sorted(r["case_id"] for r in jsonl) == ["a_broken", *(f"s{i}" for i in range(6))]
    attempts = [
        json.loads(x) for x in (out / "attempts.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert {a["case_id"] for a in attempts} == {"a_broken"}  # tried in every run
    broken = next(r for r in jsonl if r["case_id"] == "a_broken")
    assert len(attempts) == 3 and broken["attempt"] == 4  # first in every run's queue
    run = json.loads((out / "run.json").read_text(encoding="utf-8"))
    assert run["status"] == "finished" and run["n_failed"] == 1
    assert any(p["status"].startswith("killed") for p in run["previous_runs"])  # ...but is seen


def test_outputs_are_readable_by_others_under_umask_022(small_archive, tmp_path):
    import subprocess

    scans, masks = small_archive
    out = tmp_path / "out"
    code = (
        "import os, sys; os.umask(0o022); from client.batch import main;"
        "sys.exit(main(sys.argv[1:]))"
    )
    subprocess.run([sys.executable, "-c", code, str(scans / "s0.nii.gz"), "-o", str(out),
                    "--masks", str(masks), "--quiet"], cwd=ROOT, check=True)  # fmt: skip
    files = [p for p in out.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {
        "results.csv",
        "results.jsonl",
        "run.json",
        "report.html",
        "s0.png",
    }
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {oct(0o644)}


def test_console_command_and_module_entry_point(small_archive, tmp_path):
    import subprocess

    scans, masks = small_archive
    from client.cli.hepascreen import main as cli_main

    assert cli_main(["--version"]) == 0
    assert cli_main(["nonsense"]) == 2
    rc = cli_main(["screen", str(scans / "s1.nii.gz"), "-o", str(tmp_path / "o"), "--masks",
                   str(masks), "--quiet"])  # fmt: skip
    assert rc == 0 and read_csv(tmp_path / "o" / "results.csv")[0]["case_id"] == "s1"
    out = subprocess.run([sys.executable, "-m", "client", "screen", "--help"], cwd=ROOT,
                         capture_output=True, encoding="utf-8", check=True).stdout  # fmt: skip
    assert "--device {cpu,gpu}" in out and "where things run" in out and "CUDA provider" in out


def test_dicom_seg_and_sr_are_written_for_dicom_inputs(tmp_path):
    import pydicom

    from tests.test_pipeline import _dicom_phantom

    _dicom_phantom(tmp_path)
    rc = batch_main([str(tmp_path / "series"), "-o", str(tmp_path / "o"), "--masks",
                     str(tmp_path / "masks"), "--quiet", "--dicom-seg", "--dicom-sr"])  # fmt: skip
    assert rc == 0
    seg = pydicom.dcmread(tmp_path / "o" / "dicom" / "series.seg.dcm")
    sr = pydicom.dcmread(tmp_path / "o" / "dicom" / "series.sr.dcm")
    assert seg.Modality == "SEG" and sr.Modality == "SR"


def test_resume_rescreens_a_changed_file_and_keeps_case_ids_when_files_are_added(
    small_archive, tmp_path
):
    scans, masks = small_archive
    (scans / "a_broken.nii.gz").unlink()
    out = tmp_path / "out"
    args = [str(scans), "-o", str(out), "--masks", str(masks), "--quiet", "--no-qc"]
    assert batch_main(args) == 0
    first = {r["case_id"]: r for r in read_csv(out / "results.csv")}
    os.utime(scans / "s2.nii.gz")  # the file changed (new modification time)
    # A new file that sorts before s3.nii.gz and has the same case_id "s3".
    sitk.WriteImage(sitk.ReadImage(str(scans / "s3.nii.gz")), str(scans / "s3.mha"))
    assert batch_main([*args, "--resume"]) == 1  # the new scan has no mask: an error row
    rows = {r["case_id"]: r for r in read_csv(out / "results.csv")}
    run = json.loads((out / "run.json").read_text(encoding="utf-8"))
    assert run["n_todo"] == 2 and len(rows) == 7
    new_id = next(c for c in rows if c not in first)
    assert re.fullmatch(r"s3-[0-9a-f]{8}", new_id) and rows[new_id]["source"].endswith("s3.mha")
    assert rows["s3"]["run_id"] == first["s3"]["run_id"]  # untouched, same case_id
    assert rows["s2"]["attempt"] == "2" and rows["s2"]["run_id"] == run["run_id"]
    (old,) = [
        json.loads(x) for x in (out / "attempts.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert old["case_id"] == "s2" and old["source_fingerprint"] != rows["s2"]["source_fingerprint"]


def test_serve_command_help_says_where_the_model_runs(capsys):
    from client.cli.hepascreen import main as cli_main

    with pytest.raises(SystemExit) as e:
        cli_main(["serve", "--help"])
    assert e.value.code == 0 and "CUDA provider" in capsys.readouterr().out


def test_over_long_case_id_is_screened_and_reported(tmp_path, shared_data):
    from client.reading.discover import shorten_case_id

    d = shared_data / "totalseg_example"
    parts = ["patient_folder_" + "y" * 70 + f"_{i}" for i in range(4)]
    scan = tmp_path.joinpath("scans", *parts, "ct_small.nii.gz")
    scan.parent.mkdir(parents=True)
    shutil.copyfile(d / "ct_small.nii.gz", scan)
    case_id = shorten_case_id("__".join(parts) + "__ct_small")
    (tmp_path / "masks").mkdir()
    shutil.copyfile(d / "labels_small.nii.gz", tmp_path / "masks" / f"{case_id}.nii.gz")
    out = tmp_path / "out"
    rc = batch_main([str(tmp_path / "scans"), "-o", str(out), "--masks", str(tmp_path / "masks"),
                     "--quiet"])  # fmt: skip
    (row,) = read_csv(out / "results.csv")
    assert rc == 0 and row["case_id"] == case_id and row["status"] != "error"
    assert (out / "qc" / f"{case_id}.png").exists() and case_id in (out / "report.html").read_text(
        encoding="utf-8"
    )
    assert json.loads((out / "run.json").read_text(encoding="utf-8"))["status"] == "finished"


def test_resume_with_other_measurement_settings_is_refused(small_archive, tmp_path, capsys):
    scans, masks = small_archive
    out = tmp_path / "out"
    args = [str(scans / "s0.nii.gz"), "-o", str(out), "--masks", str(masks), "--quiet"]
    assert batch_main(args) == 0
    before = _tree(out)
    assert batch_main([*args, "--resume", "--cubes", "50"]) == 2
    assert "n_cubes 200 -> 50" in capsys.readouterr().err and _tree(out) == before
    assert batch_main([*args, "--resume", "--concurrency", "2"]) == 0  # not a measurement setting


def test_signal_during_the_report_exits_130_and_run_json_says_interrupted(
    small_archive, tmp_path, monkeypatch
):
    import client.outputs.report

    def interrupted(*a, **k):  # Ctrl-C arriving while report.html is written
        raise KeyboardInterrupt

    monkeypatch.setattr(client.outputs.report, "write_report", interrupted)
    scans, masks = small_archive
    out = tmp_path / "out"
    rc = batch_main([str(scans / "s0.nii.gz"), "-o", str(out), "--masks", str(masks), "--quiet"])
    run = json.loads((out / "run.json").read_text(encoding="utf-8"))
    assert rc == 130 and run["status"] == "interrupted" and run["n_processed"] == 1
    assert not list(out.rglob(".tmp-*"))


WEIRD_NAMES = [
    "new\nline",
    'quote"d',
    "semi;colon,comma",
    "<b>tag<b>&amp;",
    "spaces  in name",
    "ünïcödé_名前",
    "tab\there",
    "back\\slash",
    "-starts-with-dash",
    "#hash%percent",
    "x" * 243,  # 250 bytes with .nii.gz: the longest a file name can be
]


def test_weird_file_names_each_give_a_row_and_nothing_crashes(tmp_path, shared_data):
    from client.reading.discover import discover

    scans = tmp_path / "scans"
    (scans / "a").mkdir(parents=True)
    d = shared_data / "totalseg_example"
    for name in WEIRD_NAMES:
        shutil.copyfile(d / "ct_small.nii.gz", scans / f"{name}.nii.gz")
    shutil.copyfile(d / "ct_small.nii.gz", scans / "a__b.nii.gz")  # same case_id as a/b.nii.gz
    shutil.copyfile(d / "ct_small.nii.gz", scans / "a" / "b.nii.gz")
    (tmp_path / "masks").mkdir()
    for s in discover([scans]).sources:  # masks named by case_id, as a user would
        shutil.copyfile(d / "labels_small.nii.gz", tmp_path / "masks" / f"{s.case_id}.nii.gz")
    out = tmp_path / "out"
    # Some C libraries switch the process to the C locale (seen in this suite: open()
    # then defaults to ASCII); the results must not depend on it.
    saved = locale.setlocale(locale.LC_ALL)
    locale.setlocale(locale.LC_ALL, "C")
    try:
        rc = batch_main([str(scans), "-o", str(out), "--masks", str(tmp_path / "masks"), "--quiet"])
    finally:
        locale.setlocale(locale.LC_ALL, saved)
    rows = read_csv(out / "results.csv")
    assert rc == 0 and all(r["status"] != "error" for r in rows), [r["error"] for r in rows]
    assert len(rows) == len(WEIRD_NAMES) + 2 and len({r["case_id"] for r in rows}) == len(rows)
    assert {r["source"] for r in rows} == {str(p) for p in scans.rglob("*.nii.gz")}
    assert all((out / "qc" / f"{r['case_id']}.png").exists() for r in rows)
    text = (out / "results.jsonl").read_text(encoding="utf-8")
    assert [json.loads(x)["case_id"] for x in text.splitlines()] == [r["case_id"] for r in rows]
    run = json.loads((out / "run.json").read_text(encoding="utf-8"))
    assert run["status"] == "finished" and run["n_processed"] == len(rows)
    assert (out / "report.html").stat().st_size > 0


@pytest.mark.server
def test_url_mode_reports_this_runs_statistics_only(tmp_path, shared_data):
    from client.serving.server import EmbeddedServer

    ct = shared_data / "totalseg_example" / "ct_small.nii.gz"
    with EmbeddedServer(log_path=tmp_path / "server.log") as server:
        for k in range(2):  # the server's lifetime counters grow; each run reports its own
            out = tmp_path / f"out{k}"
            rc = batch_main([str(ct), "-o", str(out), "--url", server.grpc_url, "--quiet"])
            run = json.loads((out / "run.json").read_text(encoding="utf-8"))
            assert rc == 0 and run["mode"] == "remote" and run["model"]["url"] != "embedded"
            assert run["inference_statistics"]["inference_count"] == 1
            assert not (out / "server.log").exists()
            (row,) = read_csv(out / "results.csv")
            assert row["model_sha256"] == ""  # not known for a remote server


def test_a_signal_between_a_row_and_its_count_is_raised_after_both():
    """SIGTERM while a row is being written: the row is stored AND counted in run.json,
    then the run stops (the race test_sigterm_mid_batch could hit by timing)."""
    import os
    import signal

    from client.cli.batch import _RowHandler
    from client.serving.server import install_interrupt_handlers

    calls = []

    class Store:
        def write(self, raw):
            os.kill(os.getpid(), signal.SIGTERM)  # arrives while the row is being written
            for _ in range(10_000):  # bytecodes: Python runs the handler in here
                pass
            calls.append("stored")
            return dict(raw, status="ok")

    class Manifest:
        def row_written(self, row):
            calls.append("counted")

    saved = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    install_interrupt_handlers()
    try:
        handler = _RowHandler(Store(), Manifest(), quiet=True)
        with pytest.raises(KeyboardInterrupt):
            handler({"case_id": "a"})
        assert calls == ["stored", "counted"] and len(handler.written) == 1
        with pytest.raises(KeyboardInterrupt):  # outside a row the signal acts at once
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(10_000):
                pass
    finally:
        signal.signal(signal.SIGINT, saved[0])
        signal.signal(signal.SIGTERM, saved[1])
