"""Results files of a run: one schema, exactly one row per case_id, a manifest that is always true.

Files in OUT (the column list is :data:`client.core.contract.RESULT_SCHEMA`, in that order
everywhere):

* ``results.jsonl``: one JSON object per line, the source of truth. Each row is
  written as one ``write`` + ``fsync``; a line cut by a kill is ignored and dropped
  at the next ``--resume``.
* ``results.csv``: the same rows and columns (``""`` for empty values).
* ``attempts.jsonl``: earlier attempts at a case_id (a failed scan tried again on
  ``--resume``, a scan whose file changed), so that results.csv/jsonl hold exactly
  one row per case_id, the latest, whatever the kills and resumes.
* ``run.json``: the manifest (:class:`RunManifest`), rewritten atomically as each
  row is written: counts, failures, status (running | finished | interrupted |
  failed), timings.

Exactly once: every case_id is screened at most once per run; on ``--resume`` the
rows of the scans about to be screened again move to ``attempts.jsonl`` and
results.csv/jsonl are rewritten (atomically) without them before any new row is
appended. A scan counts as done when its last row is ok or flagged and its
``source_fingerprint`` (path, sizes, modification times) still matches.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from client.core import contract
from client.core.atomic import atomic_path, file_mode
from client.core.errors import ConfigError
from client.reading.labels_sidecar import sidecar_paths

RESULTS_JSONL = "results.jsonl"
RESULTS_CSV = "results.csv"
ATTEMPTS_JSONL = "attempts.jsonl"
RUN_JSON = "run.json"
# The OUT layout, one home: per-scan files go in these folders; :func:`case_files`
# names every file of a case.
MASKS_DIR = "masks"
QC_DIR = "qc"
DICOM_DIR = "dicom"
STUDIES_CSV = "studies.csv"
STUDIES_JSONL = "studies.jsonl"
# Everything a run writes into OUT (--overwrite removes these and nothing else).
OUTPUT_NAMES = (
    RESULTS_JSONL,
    RESULTS_CSV,
    ATTEMPTS_JSONL,
    RUN_JSON,
    STUDIES_CSV,
    STUDIES_JSONL,
    "report.html",
    "server.log",
    "errors.log",
    MASKS_DIR,
    QC_DIR,
    DICOM_DIR,
)
DONE_STATUSES = (contract.STATUS_OK, contract.STATUS_FLAGGED)


@dataclass(frozen=True)
class CaseFiles:
    """Where one case's per-scan files live in OUT (:func:`case_files`)."""

    mask: Path  # masks/<case_id>.nii.gz, the label map
    slicer: Path  # masks/<case_id>.ctbl, its 3D Slicer colour table
    itksnap: Path  # masks/<case_id>.itksnap.txt, its ITK-SNAP label description
    qc: Path  # qc/<case_id>.png, the QC picture
    seg: Path  # dicom/<case_id>.seg.dcm, the DICOM SEG (DICOM inputs, --dicom-seg)
    sr: Path  # dicom/<case_id>.sr.dcm, the DICOM SR (DICOM inputs, --dicom-sr, the node)
    qc_dcm: Path  # dicom/<case_id>.qc.dcm, the QC picture as DICOM (the node's send_qc)

    def screen_outputs(self) -> tuple[Path, ...]:
        """The files a screen run writes (``merge`` links those of the winning rows)."""
        return (self.mask, self.slicer, self.itksnap, self.qc, self.seg, self.sr)


def case_files(out_dir: str | Path, case_id: str) -> CaseFiles:
    """The OUT layout: every per-scan file of ``case_id`` under ``out_dir`` (whether or
    not it exists). Writers (:func:`client.pipeline.screen.write_outputs`, the DICOM
    node), ``report.html`` and ``merge`` all take the paths from here."""
    out_dir = Path(out_dir)
    mask = out_dir / MASKS_DIR / f"{case_id}.nii.gz"
    sidecars = sidecar_paths(mask)
    dicom = out_dir / DICOM_DIR
    return CaseFiles(
        mask=mask,
        slicer=sidecars["slicer"],
        itksnap=sidecars["itksnap"],
        qc=out_dir / QC_DIR / f"{case_id}.png",
        seg=dicom / f"{case_id}.seg.dcm",
        sr=dicom / f"{case_id}.sr.dcm",
        qc_dcm=dicom / f"{case_id}.qc.dcm",
    )


class SchemaError(ValueError):
    """A row carries a key that is not in :data:`client.core.contract.RESULT_SCHEMA`."""


def tool_version() -> str:
    """HepaScreen's version (``client.__version__``, the single source of the version)."""
    from client import __version__

    return __version__


def new_run_id() -> str:
    """A sortable, unique run identifier: UTC time plus 6 random hex digits."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


def check_row(row: dict) -> None:
    """Raise :class:`SchemaError` when ``row`` has keys outside the result schema."""
    unknown = [k for k in row if k not in _COLUMN_SET]
    if unknown:
        raise SchemaError(
            f"result row for {row.get('case_id')!r} has columns that are not in the schema: "
            f"{', '.join(unknown)} (add them to client.core.contract.RESULT_SCHEMA)"
        )


_COLUMN_SET = frozenset(contract.RESULT_COLUMNS)


def _plain(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, (list, tuple)):
        return ";".join(str(x) for x in v)
    return v


def ordered_row(row: dict) -> dict:
    """``row`` with every schema column in schema order (missing ones None); unknown keys refused."""
    check_row(row)
    return {c: _plain(row.get(c)) for c in contract.RESULT_COLUMNS}


def _csv_line(row: dict) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(
        "" if row[c] is None else row[c] for c in contract.RESULT_COLUMNS
    )
    return buf.getvalue()


def _json_line(row: dict) -> str:
    return json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n"


def read_jsonl(path: Path) -> list[dict]:
    """All well-formed rows of a JSON-lines file in file order (damaged lines skipped)."""
    rows = []
    if not Path(path).exists():
        return rows
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "case_id" in row:
            rows.append(row)
    return rows


def read_rows(path: Path) -> list[dict]:
    """Rows of a results.jsonl (or an OUT folder), the last row per case_id, in file order."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_JSONL
    last: dict[str, dict] = {}
    for row in read_jsonl(path):
        last.pop(row["case_id"], None)
        last[row["case_id"]] = row
    return list(last.values())


def _append_durable(fh, text: str) -> None:
    fh.write(text)
    fh.flush()
    os.fsync(fh.fileno())


def _write_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())


def write_json_atomic(path: Path, obj) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    _write_atomic(Path(path), json.dumps(obj, indent=2, default=_plain, ensure_ascii=False))


@dataclass
class RunContext:
    """Provenance stamped on every row of a run (the run-level columns)."""

    run_id: str = field(default_factory=new_run_id)
    tool_version: str = field(default_factory=tool_version)
    segmenter: str = ""
    model_name: str | None = None
    model_version: str | None = None
    model_sha256: str | None = None

    def columns(self) -> dict:
        return {
            "run_id": self.run_id,
            "schema_version": contract.SCHEMA_VERSION,
            "tool_version": self.tool_version,
            "segmenter": self.segmenter,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "model_sha256": self.model_sha256,
        }


class ResultStore:
    """The results files of one OUT folder; appends each row whole (fsync'ed) as it comes.

    Parameters
    ----------
    out_dir : Path
        The OUT folder (created if needed).
    context : RunContext
        Provenance columns stamped on every row written.

    Notes
    -----
    Rows already in OUT are read at construction; :meth:`retire` moves the rows of
    scans about to be screened again into ``attempts.jsonl``. Thread-safe writes
    are the caller's business (the batch writes from one thread).
    """

    def __init__(self, out_dir: Path, context: RunContext):
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.context = context
        self.jsonl_path = self.out / RESULTS_JSONL
        self.csv_path = self.out / RESULTS_CSV
        self.attempts_path = self.out / ATTEMPTS_JSONL
        self.rows: dict[str, dict] = {r["case_id"]: r for r in read_rows(self.jsonl_path)}
        old = {r.get("schema_version") for r in self.rows.values()} - {contract.SCHEMA_VERSION}
        if old:
            raise ConfigError(
                f"{self.jsonl_path}: rows of result schema {sorted(map(str, old))}, this version "
                f"writes schema {contract.SCHEMA_VERSION}: use --overwrite or another OUT"
            )
        self._attempts: dict[str, int] = {}
        self._attempt_keys: set = set()
        for r in read_jsonl(self.attempts_path):
            self._count_attempt(r)
        self._jsonl = self._csv = None

    def _count_attempt(self, row: dict) -> bool:
        """Count ``row`` as an earlier attempt; False when it is already in attempts.jsonl
        (a run killed between moving a row and rewriting the results would move it twice)."""
        key = (row["case_id"], row.get("run_id"), row.get("attempt"), row.get("finished_at"))
        if key in self._attempt_keys:
            return False
        self._attempt_keys.add(key)
        self._attempts[row["case_id"]] = self._attempts.get(row["case_id"], 0) + 1
        return True

    # -- resume ---------------------------------------------------------------------
    def is_done(self, source) -> bool:
        """True when ``source``'s row is ok/flagged and was made from the same file version.

        ``source`` is a :class:`client.reading.discover.ScanSource` (its fingerprint, which stats
        every file of a series, is computed only when a row exists).
        """
        row = self.rows.get(source.case_id)
        return (
            row is not None
            and row.get("status") in DONE_STATUSES
            and row.get("source_fingerprint") == source.fingerprint()
        )

    def pins(self) -> dict[str, str]:
        """``source_id -> case_id`` of the rows in OUT (keeps case_ids stable on resume)."""
        return {r["source_id"]: r["case_id"] for r in self.rows.values() if r.get("source_id")}

    def retire(self, case_ids) -> int:
        """Move the current rows of ``case_ids`` to attempts.jsonl; rewrite the results files.

        Called before screening, with the case_ids about to be screened, so that each
        case_id ends with exactly one row (once per round of ``--series best``: the
        files are reopened when they were open). Returns the number of rows moved.
        """
        reopen = self._jsonl is not None
        if reopen:  # the rewrite replaces the files: append to the new ones after it
            self.close()
        try:
            return self._retire(case_ids)
        finally:
            if reopen:
                self.open()

    def _retire(self, case_ids) -> int:
        moving = [self.rows.pop(c) for c in case_ids if c in self.rows]
        new = [r for r in moving if self._count_attempt(r)]
        if new:
            with open(self.attempts_path, "a", encoding="utf-8") as fh:
                _append_durable(fh, "".join(_json_line(ordered_row(r)) for r in new))
        # Rewritten always: drops damaged lines and duplicates an older run left behind,
        # and brings results.csv in line with results.jsonl.
        kept = [ordered_row(r) for r in self.rows.values()]
        _write_atomic(self.jsonl_path, "".join(_json_line(r) for r in kept))
        _write_atomic(self.csv_path, _csv_header() + "".join(_csv_line(r) for r in kept))
        return len(moving)

    # -- writing --------------------------------------------------------------------
    def open(self) -> ResultStore:
        """Open the results files for appending (a header is written to a new CSV)."""
        mode = file_mode()
        new_csv = not self.csv_path.exists() or self.csv_path.stat().st_size == 0
        self._jsonl = open(self.jsonl_path, "a", encoding="utf-8")
        self._csv = open(self.csv_path, "a", encoding="utf-8", newline="")
        for p in (self.jsonl_path, self.csv_path):
            os.chmod(p, mode)
        if new_csv:
            _append_durable(self._csv, _csv_header())
        return self

    def write(self, row: dict) -> dict:
        """Stamp provenance on ``row`` and append it to results.jsonl then results.csv.

        Returns the row as written. Raises :class:`SchemaError` on an unknown key
        (before anything is written).
        """
        row = dict(row)
        row.update(self.context.columns())
        row["attempt"] = self._attempts.get(row["case_id"], 0) + 1
        row["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        full = ordered_row(row)
        _append_durable(self._jsonl, _json_line(full))
        _append_durable(self._csv, _csv_line(full))
        self.rows[full["case_id"]] = full
        return full

    def close(self) -> None:
        for fh in (self._jsonl, self._csv):
            if fh is not None:
                fh.close()
        self._jsonl = self._csv = None

    def __enter__(self) -> ResultStore:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()


def _csv_header() -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(contract.RESULT_COLUMNS)
    return buf.getvalue()


def check_same_config(run_json: Path, config: dict) -> None:
    """Refuse ``--resume`` with measurement settings other than the OUT's (mixed results).

    Raises
    ------
    ConfigError
        Naming the settings that differ.
    """
    try:
        old = json.loads(Path(run_json).read_text(encoding="utf-8")).get("config")
    except (OSError, ValueError):
        return
    if not old or old == config:
        return
    diff = [
        f"{k} {old.get(k)!r} -> {config.get(k)!r}" for k in config if old.get(k) != config.get(k)
    ]
    raise ConfigError(
        f"--resume: {run_json.parent} was screened with other measurement settings "
        f"({'; '.join(diff)}); use the same options, --overwrite, or another OUT"
    )


def clear_outputs(out_dir: Path) -> None:
    """Remove what a run writes into ``out_dir`` (``--overwrite``); other files stay."""
    import shutil

    for name in OUTPUT_NAMES:
        p = Path(out_dir) / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)


def environment() -> dict:
    """``versions`` (Python and key packages) and ``machine`` entries of the manifest."""
    import platform
    from importlib import metadata

    versions = {"python": platform.python_version(), "hepascreen": tool_version()}
    for pkg in ("numpy", "scipy", "SimpleITK", "pydicom", "onnxruntime", "tritonclient",
                "nvidia-pytriton", "highdicom"):  # fmt: skip
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    machine = {"platform": platform.platform(), "machine": platform.machine(),
               "cpu_count": os.cpu_count(), "processor": platform.processor()}  # fmt: skip
    return {"versions": versions, "machine": machine}


class RunManifest:
    """``run.json``, rewritten atomically whenever something changes, so it is true at every moment.

    ``status`` is ``running`` while the run goes on and becomes ``finished``,
    ``interrupted`` (Ctrl-C, SIGTERM) or ``failed`` (with ``error``). A run killed
    with SIGKILL leaves ``running`` with its ``pid``; the next ``--resume`` records it
    under ``previous_runs`` as ``killed``.
    """

    def __init__(self, path: Path, info: dict):
        self.path = Path(path)
        self.info = dict(info)
        self.info.setdefault("status", "running")
        self.info.setdefault("pid", os.getpid())
        self.info.update(
            n_processed=0, n_ok=0, n_flagged=0, n_failed=0, failures=[], previous_runs=[]
        )
        self.write()

    @staticmethod
    def previous(path: Path) -> dict | None:
        """Summary of an earlier run.json in the same OUT (None when there is none)."""
        try:
            old = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        status = old.get("status")
        if status == "running":
            status = "killed (its run.json still said running)"
        prev = list(old.get("previous_runs") or [])
        prev.append({"run_id": old.get("run_id"), "status": status, "started": old.get("started")})
        return {"previous_runs": prev}

    def write(self) -> None:
        write_json_atomic(self.path, self.info)

    def update(self, **kw) -> None:
        self.info.update(kw)
        self.write()

    def timings(self, rows: list[dict], wall_s: float, statistics: dict | None = None) -> None:
        """Record wall time, throughput, time per stage and this run's inference statistics."""
        totals = {k: sum(r.get(f"seconds_{k}") or 0.0 for r in rows) for k in contract.STAGES}
        busy = sum(totals.values()) or 1.0
        self.update(
            inference_statistics=statistics,
            timings={
                "wall_s": round(wall_s, 2),
                "scans_per_minute": round(60.0 * len(rows) / wall_s, 2) if rows else None,
                "stage_seconds": {k: round(v, 2) for k, v in totals.items()},
                "stage_fraction": {k: round(v / busy, 3) for k, v in totals.items()},
            },
        )

    def row_written(self, row: dict) -> None:
        """Count one written row (and list it among the failures when it is an error)."""
        i = self.info
        i["n_processed"] += 1
        key = {
            contract.STATUS_OK: "n_ok",
            contract.STATUS_FLAGGED: "n_flagged",
            contract.STATUS_ERROR: "n_failed",
        }[row["status"]]
        i[key] += 1
        if row["status"] == contract.STATUS_ERROR:
            i["failures"].append({"case_id": row["case_id"], "error": row["error"]})
        self.write()


# --- docs/results.md ---------------------------------------------------------------
def _flag_table() -> list[tuple[str, str]]:
    """(flag, meaning) pairs from ``postprocess.flags.FLAGS`` (a dict or (name, meaning) items)."""
    try:
        from postprocess.flags import FLAGS
    except ImportError:
        return []
    items = FLAGS.items() if isinstance(FLAGS, dict) else FLAGS
    out = []
    for item in items:
        if isinstance(item, tuple):
            name, meaning = item[0], item[1]
        else:
            name, meaning = item.name, getattr(item, "meaning", "")
        if not isinstance(meaning, str):
            meaning = getattr(meaning, "meaning", None) or getattr(meaning, "description", "")
        out.append((str(name), str(meaning)))
    return out


def results_markdown() -> str:
    """The text of ``docs/results.md``: every column with unit and meaning, every flag."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = [
        "# Result files",
        "",
        "Generated from `client/core/contract.py` (`RESULT_SCHEMA`) and `postprocess/flags.py`",
        "(`FLAGS`) by `python -m client.outputs.results docs/results.md`; a test keeps it in sync.",
        "",
        "`results.csv` and `results.jsonl` hold the same columns in this order, exactly one",
        "row per case_id (the latest attempt; earlier attempts are in `attempts.jsonl`).",
        "Both files are UTF-8, whatever the locale. Empty CSV cells and JSON `null` mean",
        '"not applicable / not known".',
        f"Result schema version: {contract.SCHEMA_VERSION}.",
        "",
        "## Columns",
        "",
        "| column | unit | meaning |",
        "|---|---|---|",
    ]
    lines += [
        f"| `{c.name}` | {cell(c.unit)} | {cell(c.meaning)} |" for c in contract.RESULT_SCHEMA
    ]
    flags = _flag_table()
    lines += ["", "## Flags", ""]
    if flags:
        lines += ["| flag | meaning |", "|---|---|"]
        lines += [f"| `{n}` | {cell(m)} |" for n, m in flags]
    else:
        lines += ["(postprocess/flags.py is not in this build: no flag table.)"]
    lines += [
        "",
        "## status and grade",
        "",
        "* `ok`: measured and graded, no flag.",
        "* `flagged`: measured; at least one flag is set. `grade` is `indeterminate` when a",
        "  flag means the number cannot be trusted (organ missing or mostly outside the scan,",
        "  contrast enhancement without `--allow-contrast`, implausible attenuation).",
        "* `error`: not measured; `error` names the file and what was wrong.",
        "",
        "## run.json",
        "",
        "Rewritten atomically as each row is written: `status` (running | finished |",
        "interrupted | failed), `run_id`, counts (`n_found`, `n_todo`, `n_processed`, `n_ok`,",
        "`n_flagged`, `n_failed`), `failures`, `skipped_series` and `ignored` (every path that",
        "is not a scan, with the reason), the model (name, version, SHA-256), the measurement",
        "config, timings per stage and this run's inference statistics. A run killed with",
        "SIGKILL leaves `running`; the next `--resume` lists it under `previous_runs`.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":  # python -m client.outputs.results docs/results.md
    import sys

    text = results_markdown()
    if len(sys.argv) > 1:
        Path(sys.argv[1]).write_text(text, encoding="utf-8")
    else:
        print(text, end="")
