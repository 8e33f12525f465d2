"""Screen a scan archive: ``python -m client.batch INPUT [INPUT ...] -o OUT``.

Interface (DESIGN.md section 7)::

    python -m client.batch INPUT [INPUT ...] -o OUT [--url HOST:PORT] [--masks DIR]
           [--label-map default|totalsegmentator] [--cubes N] [--cube-mm MM] [--seed S]
           [--resume] [--concurrency N] [--allow-contrast] [--quiet]

Flow: discover scans -> for each scan, in a bounded pool of ``--concurrency``
workers: read (``client.io``) -> preprocess (``client.preprocess``) -> infer on
Triton (``client.triton``; the server's dynamic batcher merges the concurrent
requests) -> map back to the scan grid -> measure (``postprocess.assess``) ->
write mask, QC picture and the result row. At most ``--concurrency`` scans are
in memory at once, whatever the folder size; the stages of different scans
overlap (reading one while another is on the server).

Without ``--url`` the bundled Triton server is started on free loopback ports
with the project's model repository (log in ``OUT/server.log``) and always
stopped. With ``--masks DIR`` no server is used: label maps are read from
``DIR/<case_id>.nii.gz``.

Outputs in OUT: ``results.csv`` and ``results.jsonl`` (one row per scan, appended
and flushed as each finishes), ``masks/<case_id>.nii.gz`` (scan grid), ``qc/<case_id>.png``,
``report.html``, ``run.json`` and ``server.log``. ``--resume`` skips case_ids whose
last row is ok or flagged (failed ones are tried again; the report keeps each
case's last row).

Exit status: 0 every scan ok or flagged, 1 some failed (the rest done), 2 usage
error or nothing to do.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import threading
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict
from pathlib import Path

import numpy as np

from . import contract
from ._atomic import atomic_path
from .discover import ScanSource, discover
from .errors import ConfigError, InferenceError, ScreeningError

STAGES = ("read", "preprocess", "infer", "map_back", "measure", "write")
EXTRA_COLUMNS = (
    "n_cubes_liver",
    "n_cubes_spleen",
    "n_rejected_liver",
    "n_rejected_spleen",
    "cube_mm_liver",
    "cube_mm_spleen",
    "notes",
)
COLUMNS = (*contract.RESULT_COLUMNS, *EXTRA_COLUMNS)


# --- results files -------------------------------------------------------------------
class ResultWriter:
    """Appends rows to results.csv and results.jsonl, one complete line at a time.

    Each row is flushed and fsync'ed before the next scan's row, so a crash or
    Ctrl-C loses at most the scan in progress. A file left without its final
    newline by an earlier crash is repaired (newline added) before appending.
    """

    def __init__(self, out_dir: Path):
        self.csv_path = out_dir / "results.csv"
        self.jsonl_path = out_dir / "results.jsonl"
        self._lock = threading.Lock()
        for p in (self.csv_path, self.jsonl_path):
            if p.exists() and p.stat().st_size:
                with open(p, "rb") as fh:
                    fh.seek(-1, os.SEEK_END)
                    last = fh.read(1)
                if last != b"\n":
                    with open(p, "ab") as fh:
                        fh.write(b"\n")
        new_csv = not self.csv_path.exists() or self.csv_path.stat().st_size == 0
        self._csv = open(self.csv_path, "a", newline="")
        self._jsonl = open(self.jsonl_path, "a")
        self._writer = csv.DictWriter(self._csv, fieldnames=COLUMNS, extrasaction="ignore")
        if new_csv:
            self._writer.writeheader()
            self._csv.flush()

    def write(self, row: dict) -> None:
        with self._lock:
            self._writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in COLUMNS})
            self._csv.flush()
            os.fsync(self._csv.fileno())
            self._jsonl.write(json.dumps(row, default=_json_default) + "\n")
            self._jsonl.flush()
            os.fsync(self._jsonl.fileno())

    def close(self) -> None:
        self._csv.close()
        self._jsonl.close()


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o).__name__)


def read_rows(jsonl_path: Path) -> list[dict]:
    """Rows of a results.jsonl, last row per case_id, skipping damaged lines."""
    last: dict[str, dict] = {}
    if not jsonl_path.exists():
        return []
    for line in jsonl_path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "case_id" in row:
            last.pop(row["case_id"], None)
            last[row["case_id"]] = row
    return list(last.values())


def write_json_atomic(path: Path, obj) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(obj, indent=2, default=_json_default))


# --- one scan --------------------------------------------------------------------------
class Screener:
    """Runs one scan through every stage; shared by all worker threads."""

    def __init__(self, args, out_dir: Path, segmenter=None, model_shape=None):
        from postprocess.config import AssessConfig

        self.args = args
        self.out = out_dir
        self.segmenter = segmenter
        self.model_shape = model_shape
        self.config = AssessConfig(
            n_cubes=args.cubes,
            cube_mm=args.cube_mm,
            seed=args.seed,
            allow_contrast=args.allow_contrast,
        )
        self.stage_totals = dict.fromkeys(STAGES, 0.0)
        self._lock = threading.Lock()

    def run(self, src: ScanSource) -> dict:
        from postprocess import assess
        from postprocess._xp import to_device

        from .io import read_label_map, write_label_map
        from .preprocess import preprocess_scan, to_scan_grid
        from .report import qc_png

        t_start = time.perf_counter()
        times = dict.fromkeys(STAGES, 0.0)
        row = {"case_id": src.case_id, "source": str(src.path)}

        def lap(stage, t0):
            times[stage] += time.perf_counter() - t0
            return time.perf_counter()

        try:
            t = time.perf_counter()
            scan = src.read()
            t = lap("read", t)
            if self.args.masks:
                mask_file = Path(self.args.masks) / f"{src.case_id}.nii.gz"
                labels = read_label_map(mask_file, scan, self.args.label_map)
                t = lap("read", t)
            else:
                tensor, record = preprocess_scan(scan, self.model_shape)
                t = lap("preprocess", t)
                small = self.segmenter.submit(tensor).result()
                t = lap("infer", t)
                labels = to_scan_grid(small, record)
                t = lap("map_back", t)
            contrast_hint = True if scan.metadata.get("contrast_agent") else None
            a = assess(
                to_device(scan.array, self.args.gpu),
                to_device(labels, self.args.gpu),
                scan.spacing,
                self.config,
                contrast_hint=contrast_hint,
            )
            t = lap("measure", t)
            row.update(a.to_row())
            notes = list(scan.metadata.get("notes", []))
            row["notes"] = ";".join(notes)
            flags = [f for f in row["flags"].split(";") if f]
            row["status"] = "ok" if not flags and a.grade != "indeterminate" else "flagged"
            if not self.args.masks:
                write_label_map(labels, scan, self.out / "masks" / f"{src.case_id}.nii.gz")
            ratio = "n/a" if row["ratio"] is None else f"{row['ratio']:.3f}"
            title = f"{src.case_id}  L/S ratio {ratio}  {a.grade}  {row['flags']}"
            qc_png(
                scan.array,
                labels,
                scan.spacing,
                self.out / "qc" / f"{src.case_id}.png",
                title,
                scan.direction,
            )
            lap("write", t)
            row["error"] = ""
        except ScreeningError as exc:
            row.update(status="error", grade="indeterminate", error=str(exc))
        except MemoryError:
            row.update(status="error", grade="indeterminate", error=f"{src.path}: out of memory")
        except Exception as exc:  # noqa: BLE001 - a bad scan never stops the batch
            row.update(
                status="error",
                grade="indeterminate",
                error=f"{src.path}: unexpected {type(exc).__name__}: {exc}",
            )
        row["seconds"] = round(time.perf_counter() - t_start, 3)
        row["stage_seconds"] = {k: round(v, 4) for k, v in times.items()}
        with self._lock:
            for k, v in times.items():
                self.stage_totals[k] += v
        return row


# --- command line ----------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m client.batch",
        description="Grade fatty liver on CT scans by the liver/spleen attenuation ratio.",
    )
    ap.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="NIfTI/NRRD/MHA files, DICOM series folders or folders to search",
    )
    ap.add_argument("-o", "--out", required=True, metavar="OUT", help="output folder")
    ap.add_argument("--url", help="Triton gRPC HOST:PORT (default: start the bundled server)")
    ap.add_argument("--masks", metavar="DIR", help="use DIR/<case_id>.nii.gz label maps, no server")
    ap.add_argument(
        "--label-map",
        default="default",
        choices=sorted(contract.LABEL_MAPS),
        help="label values in --masks files (default: 1 liver, 2 spleen)",
    )
    ap.add_argument("--cubes", type=int, default=200, help="cubes per organ (default 200)")
    ap.add_argument("--cube-mm", type=float, default=10.0, help="cube edge in mm (default 10)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", action="store_true", help="skip case_ids already ok/flagged in OUT")
    ap.add_argument(
        "--concurrency",
        type=int,
        default=4,
        help="scans in flight at once (default 4; >= the model's preferred batch)",
    )
    ap.add_argument(
        "--allow-contrast",
        action="store_true",
        help="grade contrast-enhanced scans anyway (flag kept)",
    )
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    ap.add_argument(
        "--gpu",
        action="store_true",
        help="measure on the GPU with CuPy (needs the 'gpu' extra and a CUDA device)",
    )
    ap.add_argument(
        "--model-repository",
        default=None,
        help="repository for the bundled server (default model_repository/cpu)",
    )
    ap.add_argument("--ssl", action="store_true", help="TLS to a remote --url server")
    ap.add_argument("--root-certificates", default=None)
    ap.add_argument("--private-key", default=None)
    ap.add_argument("--certificate-chain", default=None)
    return ap


def _versions() -> dict:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in (
        "hepascreen",
        "numpy",
        "scipy",
        "SimpleITK",
        "pydicom",
        "onnxruntime",
        "tritonclient",
        "nvidia-pytriton",
    ):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def _machine() -> dict:
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "processor": platform.processor(),
    }


def run(args) -> int:
    out = Path(args.out)
    if args.concurrency < 1 or args.cubes < 1 or args.cube_mm <= 0:
        raise ConfigError("--concurrency and --cubes must be >= 1 and --cube-mm > 0")
    if args.gpu:
        from postprocess._xp import gpu_available

        if not gpu_available():
            raise ConfigError("--gpu needs CuPy and a CUDA device: pip install 'hepascreen[gpu]'")
    if args.masks and not Path(args.masks).is_dir():
        raise ConfigError(f"--masks {args.masks}: not a folder")
    found = discover(args.inputs)
    for m in found.missing:
        print(f"warning: {m}: no such file or folder", file=sys.stderr)
    if not found.sources:
        print("nothing to do: no scans found in " + ", ".join(args.inputs), file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    done: set[str] = set()
    if args.resume:
        done = {
            r["case_id"]
            for r in read_rows(out / "results.jsonl")
            if r.get("status") in ("ok", "flagged")
        }
    todo = [s for s in found.sources if s.case_id not in done]
    run_info = {
        "tool": "hepascreen",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "status": "running",
        "argv": sys.argv[1:],
        "versions": _versions(),
        "machine": _machine(),
        "mode": "masks" if args.masks else ("remote" if args.url else "embedded"),
        "n_found": len(found.sources),
        "n_skipped_resume": len(found.sources) - len(todo),
        "skipped_series": found.skipped,
        "ignored_files": found.ignored,
        "missing_inputs": found.missing,
    }
    write_json_atomic(out / "run.json", run_info)

    server = None
    segmenter = None
    screener = None
    t_wall = time.perf_counter()
    writer = ResultWriter(out)
    rows: list[dict] = []
    failure: str | None = "interrupted"
    try:
        if not args.masks:
            from .triton import SegmentationClient

            url = args.url
            if not url:
                from .server import EmbeddedServer

                server = EmbeddedServer(args.model_repository, log_path=out / "server.log").start()
                url = server.grpc_url
            segmenter = SegmentationClient(
                url,
                max_in_flight=args.concurrency,
                ssl=args.ssl,
                root_certificates=args.root_certificates,
                private_key=args.private_key,
                certificate_chain=args.certificate_chain,
            )
            run_info["model"] = {
                "name": segmenter.model_name,
                "url": url if args.url else "embedded",
                "model_shape": list(segmenter.model_shape),
                "max_batch_size": segmenter.max_batch_size,
                "repository": str(server.model_repository) if server else None,
            }
        screener = Screener(args, out, segmenter, segmenter.model_shape if segmenter else None)
        run_info["config"] = asdict(screener.config)
        rows = _run_pool(screener, todo, writer, args)
        failure = None
    except ScreeningError as exc:
        failure = str(exc)
        raise
    finally:
        writer.close()
        stats = None
        if segmenter is not None:
            try:
                stats = segmenter.statistics()
            except InferenceError:
                pass
            segmenter.close()
        if server is not None:
            server.stop()
        wall = time.perf_counter() - t_wall
        totals = screener.stage_totals if screener is not None else {}
        busy = sum(totals.values()) or 1.0
        run_info.update(
            status="finished"
            if failure is None
            else "failed"
            if failure != "interrupted"
            else "interrupted",
            error=failure if failure not in (None, "interrupted") else None,
            finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            n_processed=len(rows),
            n_failed=sum(r["status"] == "error" for r in rows),
            failures=[
                {"case_id": r["case_id"], "error": r["error"]}
                for r in rows
                if r["status"] == "error"
            ],
            inference_statistics=stats,
            timings={
                "wall_s": round(wall, 2),
                "scans_per_minute": round(60.0 * len(rows) / wall, 2)
                if wall > 0 and rows
                else None,
                "stage_seconds": {k: round(v, 2) for k, v in totals.items()},
                "stage_fraction": {k: round(v / busy, 3) for k, v in totals.items()},
            },
        )
        write_json_atomic(out / "run.json", run_info)
        from .report import write_report

        write_report(read_rows(out / "results.jsonl"), out, run_info)
    n_err = sum(r["status"] == "error" for r in rows)
    if not args.quiet:
        print(
            f"{len(rows)} scans screened ({n_err} failed) in {wall:.1f} s; results in {out}/results.csv, "
            f"report {out}/report.html"
        )
    return 1 if n_err else 0


def _run_pool(screener: Screener, todo: list[ScanSource], writer: ResultWriter, args) -> list[dict]:
    from tqdm import tqdm

    rows = []
    bar = tqdm(
        total=len(todo),
        unit="scan",
        disable=args.quiet,
        dynamic_ncols=True,
        bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]",
    )
    queue = deque(todo)
    pool = ThreadPoolExecutor(max_workers=args.concurrency, thread_name_prefix="scan")
    pending = set()
    try:
        while queue or pending:
            while queue and len(pending) < args.concurrency:
                pending.add(pool.submit(screener.run, queue.popleft()))
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in finished:
                row = f.result()
                writer.write(row)
                rows.append(row)
                bar.update(1)
                if row["status"] == "error" and not args.quiet:
                    tqdm.write(f"error: {row['case_id']}: {row['error']}", file=sys.stderr)
    except KeyboardInterrupt:
        for f in pending:
            f.cancel()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    return rows


def main(argv=None) -> int:
    from .server import install_interrupt_handlers

    parser = build_parser()
    args = parser.parse_args(argv)
    # Ctrl-C and SIGTERM end the batch cleanly: rows written stay complete and the
    # embedded server is stopped (finally blocks run on KeyboardInterrupt).
    install_interrupt_handlers()
    try:
        return run(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except InferenceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: rows written so far are complete; rerun with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
