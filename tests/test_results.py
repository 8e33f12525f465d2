"""Result schema, writers, exactly-once resume, manifest and file modes (client.outputs.results)."""

from __future__ import annotations

import csv
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from client.core import contract
from client.core.atomic import atomic_path, current_umask, remove_stale_temporaries
from client.outputs import results

ROOT = Path(__file__).resolve().parents[1]


def _row(case_id, status="ok", **kw):
    row = {"case_id": case_id, "source": f"/x/{case_id}.nii.gz", "status": status}
    row["grade"] = "normal" if status != "error" else "indeterminate"
    row["error"] = "boom" if status == "error" else ""
    row["source_fingerprint"] = kw.pop("fp", "f" + case_id)
    row["source_id"] = "i" + case_id
    row.update(kw)
    return row


def _store(out, **kw):
    return results.ResultStore(out, results.RunContext(segmenter="masks", **kw))


def test_schema_is_defined_once_and_matches_the_design():
    names = [c.name for c in contract.RESULT_SCHEMA]
    assert tuple(names) == contract.RESULT_COLUMNS and len(set(names)) == len(names)
    for c in contract.RESULT_SCHEMA:
        assert c.meaning, c.name
    assert {"manufacturer", "kvp", "convolution_kernel", "slice_thickness_mm", "contrast_agent",
            "series_description", "manufacturer_model", "notes", "contrast_evidence",
            "schema_version", "run_id", "tool_version", "model_name", "model_version",
            "model_sha256"} <= set(names)  # fmt: skip


def test_csv_and_jsonl_hold_every_column_in_schema_order(tmp_path):
    with _store(tmp_path, model_name="m", model_version="1", model_sha256="ab") as s:
        s.write(_row("a", ratio=1.25, flags="x;y", notes='quote " and, comma'))
        s.write(_row("b", status="error"))
    with open(tmp_path / "results.csv", newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        lines = list(reader)
    assert tuple(header) == contract.RESULT_COLUMNS
    jsonl = [
        json.loads(x) for x in (tmp_path / "results.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert [tuple(r) for r in jsonl] == [contract.RESULT_COLUMNS] * 2
    assert lines[0][header.index("notes")] == 'quote " and, comma'
    assert jsonl[0]["ratio"] == 1.25 and lines[0][header.index("ratio")] == "1.25"
    for r in jsonl:
        assert r["schema_version"] == contract.SCHEMA_VERSION and r["model_sha256"] == "ab"
        assert r["tool_version"] == results.tool_version() and r["run_id"]
    assert jsonl[1]["ratio"] is None and lines[1][header.index("ratio")] == ""


def test_a_writer_never_drops_an_unknown_key(tmp_path):
    with _store(tmp_path) as s:
        with pytest.raises(results.SchemaError, match="not_a_column"):
            s.write(_row("a", not_a_column=3))
    assert (tmp_path / "results.jsonl").read_text(encoding="utf-8") == ""


def test_resume_moves_earlier_attempts_and_keeps_one_row_per_case(tmp_path):
    with _store(tmp_path) as s:
        for c in ("a", "b", "c"):
            s.write(_row(c, status="error" if c == "b" else "ok"))
    # A killed earlier run left a duplicate row of b and half a line.
    with open(tmp_path / "results.jsonl", "a") as fh:
        dup = {**_row("b", status="error"), "attempt": 1, "schema_version": contract.SCHEMA_VERSION}
        fh.write(json.dumps(results.ordered_row(dup)) + "\n")
        fh.write('{"case_id": "c", "sta')
    s = _store(tmp_path)
    src = lambda c, fp: SimpleNamespace(case_id=c, fingerprint=lambda: fp)  # noqa: E731
    assert s.is_done(src("a", "fa")) and not s.is_done(src("b", "fb"))
    assert not s.is_done(src("a", "changed"))  # the file changed: screen again
    s.retire(["b"])
    with s:
        s.write(_row("b"))
    rows = results.read_jsonl(tmp_path / "results.jsonl")
    assert [r["case_id"] for r in rows] == ["a", "c", "b"]
    assert rows[-1]["attempt"] == 2
    with open(tmp_path / "results.csv", newline="", encoding="utf-8") as fh:
        assert [r["case_id"] for r in csv.DictReader(fh)] == ["a", "c", "b"]
    attempts = results.read_jsonl(tmp_path / "attempts.jsonl")
    assert [(a["case_id"], a["status"]) for a in attempts] == [("b", "error")]


def test_rows_of_an_older_schema_are_refused(tmp_path):
    (tmp_path / "results.jsonl").write_text(json.dumps({"case_id": "a", "status": "ok"}) + "\n")
    with pytest.raises(results.ConfigError, match="--overwrite"):
        _store(tmp_path)


def test_manifest_counts_follow_the_rows(tmp_path):
    m = results.RunManifest(tmp_path / "run.json", {"run_id": "r1"})
    on_disk = lambda: json.loads((tmp_path / "run.json").read_text(encoding="utf-8"))  # noqa: E731
    assert on_disk()["status"] == "running" and on_disk()["pid"] == os.getpid()
    m.row_written({"case_id": "a", "status": "ok"})
    m.row_written({"case_id": "b", "status": "error", "error": "bad"})
    d = on_disk()
    assert (d["n_processed"], d["n_ok"], d["n_failed"]) == (2, 1, 1)
    assert d["failures"] == [{"case_id": "b", "error": "bad"}]
    prev = results.RunManifest.previous(tmp_path / "run.json")
    assert prev["previous_runs"][-1]["status"].startswith("killed")


def test_files_honour_the_umask(tmp_path):
    code = (
        "import os, sys; os.umask(0o022); sys.path.insert(0, sys.argv[2]);"
        "from pathlib import Path; from client.core.atomic import atomic_path;"
        "p = Path(sys.argv[1]);"
        "ctx = atomic_path(p / 'a.txt');"
        "t = ctx.__enter__(); Path(t).write_text('x'); ctx.__exit__(None, None, None);"
        "os.umask(0o077); ctx = atomic_path(p / 'b.txt');"
        "t = ctx.__enter__(); Path(t).write_text('x'); ctx.__exit__(None, None, None)"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path), str(ROOT)], check=True)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b.txt").stat().st_mode) == 0o600
    old = os.umask(0o027)
    try:
        assert current_umask() == 0o027
    finally:
        os.umask(old)


def test_stale_temporaries_are_removed_and_others_kept(tmp_path):
    (tmp_path / "qc").mkdir()
    (tmp_path / "qc" / ".tmp-abc.png").write_bytes(b"x")
    (tmp_path / "keep.txt").write_text("x")
    with atomic_path(tmp_path / "report.html") as t:
        Path(t).write_text("<html>")
    assert remove_stale_temporaries(tmp_path) == [str(tmp_path / "qc" / ".tmp-abc.png")]
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["keep.txt", "report.html"]


def test_docs_results_md_is_in_sync_with_the_schema():
    doc = (ROOT / "docs" / "results.md").read_text(encoding="utf-8")
    assert doc == results.results_markdown(), (
        "run: python -m client.outputs.results docs/results.md"
    )
    for c in contract.RESULT_SCHEMA:
        assert f"| `{c.name}` |" in doc


def test_every_flag_is_documented():
    from postprocess.flags import FLAGS

    doc = (ROOT / "docs" / "results.md").read_text(encoding="utf-8")
    for name, meaning in FLAGS.items():
        assert f"| `{name}` | {meaning.replace('|', chr(92) + '|')} |" in doc


def test_a_row_moved_twice_by_a_killed_resume_is_one_attempt(tmp_path):
    with _store(tmp_path) as s:
        s.write(_row("a", status="error"))
    s = _store(tmp_path)
    # Killed after appending to attempts.jsonl but before rewriting results.jsonl:
    (tmp_path / "attempts.jsonl").write_text(
        (tmp_path / "results.jsonl").read_text(encoding="utf-8")
    )
    s = _store(tmp_path)
    s.retire(["a"])
    with s:
        assert s.write(_row("a"))["attempt"] == 2
    assert len(results.read_jsonl(tmp_path / "attempts.jsonl")) == 1


def test_files_are_utf8_whatever_the_locale(tmp_path):
    """A resume under LANG=C must read back non-ASCII case_ids exactly."""
    with _store(tmp_path) as s:
        s.write(_row("ünïcödé_名前"))
    code = (
        "import sys; sys.path.insert(0, sys.argv[2]); from client.outputs import results;"
        "rows = results.read_rows(sys.argv[1]); print(rows[0]['case_id'].encode('utf-8').hex())"
    )
    env = {**os.environ, "LANG": "C", "LC_ALL": "C", "PYTHONUTF8": "0"}
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path), str(ROOT)], env=env,
                         capture_output=True, encoding="utf-8", check=True).stdout.strip()  # fmt: skip
    assert bytes.fromhex(out).decode("utf-8") == "ünïcödé_名前"
