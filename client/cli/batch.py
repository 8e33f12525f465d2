"""Screen a scan archive: ``hepascreen screen INPUT... -o OUT`` / ``python -m client.batch``.

The CLI and the run around the scans only: options, OUT rules, the resume plan, run.json,
studies and report. The scans run in an executor (:mod:`client.scaleout.executor`:
threads, at most ``--concurrency`` scans in memory at once, or Ray actors with
``--ray``), each through :func:`client.pipeline.screen.screen_scan` (the library); every
row comes back to the one row handler here (:class:`_RowHandler`: results store,
run.json counts, progress).

Exit status: 0 every scan ok or flagged, 1 some failed (the rest done), 2 usage
error or nothing to do (OUT refused, no scans found), 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from client.core import contract
from client.core.errors import ConfigError, InferenceError, ScreeningError
from client.outputs import results
from client.pipeline import study

if TYPE_CHECKING:
    from client.scaleout.executor import Executor

WHERE = """where things run:
  --device cpu (default)  measurement with NumPy/SciPy; the bundled server runs the
                          model with ONNX Runtime on the CPU
  --device gpu            measurement with CuPy on the GPU (extra 'hepascreen[gpu]');
                          the bundled server runs ONNX Runtime's CUDA provider
                          (model config 'configs/gpu.pbtxt'; needs onnxruntime-gpu)
  --url HOST:PORT         the model runs wherever that Triton server runs (e.g. the
                          TensorRT FP16 engine of docker/); --device only moves the
                          measurement
  --masks DIR             no model, no server: your label maps are measured"""


def build_parser(prog: str = "python -m client.batch") -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog=prog,
        description="Grade fatty liver on CT scans by the liver/spleen attenuation ratio.",
        epilog=WHERE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = ap.add_argument
    add("inputs", nargs="+", metavar="INPUT", help="NIfTI/NRRD/MHA files, DICOM folders, folders")
    add("-o", "--out", required=True, metavar="OUT", help="output folder (empty or new)")
    from client.cli.scaleout_args import add_arguments as add_scaleout_arguments

    add_scaleout_arguments(ap)  # --url (repeatable), --url-file, --shard, --ray*
    add("--masks", metavar="DIR", help="measure DIR/<case_id>.nii.gz (or DIR/<case_id>/liver.nii.gz"
        " + spleen.nii.gz) instead of segmenting; no server")  # fmt: skip
    add("--label-map", default="default", choices=sorted(contract.LABEL_MAPS),
        help="label values in --masks files: default 1 liver, 2 spleen; 'totalsegmentator' "
        "(v2 'total' multilabel: liver, spleen and aorta, portal vein, IVC, kidneys for the "
        "contrast phase); 'hepascreen' (every class of client.core.contract.STRUCTURE_LABELS)")  # fmt: skip
    # Defaults from the one home of each setting (AssessConfig, the contract).
    from postprocess.config import AssessConfig

    dflt = AssessConfig()
    add("--cubes", type=int, default=dflt.n_cubes, help=f"cubes per organ (default {dflt.n_cubes})")
    add("--cube-mm", type=float, default=dflt.cube_mm,
        help=f"cube edge in mm (default {dflt.cube_mm:g})")  # fmt: skip
    add("--seed", type=int, default=dflt.seed)
    out_mode = ap.add_mutually_exclusive_group()
    out_mode.add_argument("--resume", action="store_true",
                          help="continue in OUT: skip scans already ok/flagged and unchanged")  # fmt: skip
    out_mode.add_argument("--overwrite", action="store_true",
                          help="replace the results in OUT (other files there are left alone)")  # fmt: skip
    add("--series", choices=("best", "all"), default="best",
        help="series of a study to screen: 'best' (default) in header order until one is "
        "graded by the ratio on unenhanced CT (usually the first: about one series per "
        "study); 'all' every volume series (studies.csv answers either way)")  # fmt: skip
    add("--concurrency", type=int, default=contract.DEFAULT_MAX_IN_FLIGHT,
        help=f"scans in flight at once (default {contract.DEFAULT_MAX_IN_FLIGHT})")  # fmt: skip
    add("--allow-contrast", action="store_true", help="grade contrast-enhanced scans anyway")
    add("--device", choices=("cpu", "gpu"), default="cpu", help="see 'where things run' below")
    add("--gpu", action="store_true", help=argparse.SUPPRESS)  # deprecated: --device gpu
    add("--link-uids", action="store_true",
        help="add Study/Series Instance UIDs to the rows (identifiers; off by default)")  # fmt: skip
    add("--dicom-seg", action="store_true",
        help="write dicom/<case_id>.seg.dcm for DICOM inputs (copies the patient/study "
        "identifiers of the source, so that PACS files it with the study)")  # fmt: skip
    add("--dicom-sr", action="store_true",
        help="write dicom/<case_id>.sr.dcm, the measurement report (same identifiers)")  # fmt: skip
    add("--no-qc", action="store_true", help="no QC pictures")
    add("--quiet", action="store_true", help="no progress bar")
    add("--model-repository", default=None, help="repository for the bundled server")
    add("--ssl", action="store_true", help="TLS to a remote --url server")
    add("--root-certificates", default=None)
    add("--private-key", default=None)
    add("--certificate-chain", default=None)
    return ap


def _check_args(args) -> None:
    if args.gpu:
        print("warning: --gpu is deprecated; use --device gpu", file=sys.stderr)
        args.device = "gpu"
    if args.concurrency < 1 or args.cubes < 1 or args.cube_mm <= 0:
        raise ConfigError("--concurrency and --cubes must be >= 1 and --cube-mm > 0")
    if args.device == "gpu":
        from postprocess._xp import gpu_problem

        problem = gpu_problem()  # compiles a tiny kernel: one clear stop, not an error per scan
        if problem:
            raise ConfigError(f"--device gpu: {problem}")
    if args.masks and not Path(args.masks).is_dir():
        raise ConfigError(f"--masks {args.masks}: not a folder")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"OUT {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (args.resume or args.overwrite):
        raise ConfigError(
            f"OUT {out} is not empty: --resume to continue it, --overwrite to replace its "
            "results, or choose another folder (nothing was changed)"
        )


def _screen_config(args):
    from client.pipeline.screen import ScreenConfig
    from postprocess.config import AssessConfig

    return ScreenConfig(
        assess=AssessConfig(
            n_cubes=args.cubes, cube_mm=args.cube_mm, seed=args.seed,
            allow_contrast=args.allow_contrast,
        ),
        device=args.device, out_dir=Path(args.out), write_qc=not args.no_qc,
        dicom_seg=args.dicom_seg, dicom_sr=args.dicom_sr, link_uids=args.link_uids,
    )  # fmt: skip


def run(args) -> int:
    """One archive run: plan (OUT rules, discovery, resume), screen every round with the
    run's executor, then studies, report and run.json; the exit code."""
    _check_args(args)
    out = Path(args.out)
    config = _screen_config(args)
    plan = _plan(args, out, config)
    if plan is None:
        return 2
    found, store, context, todo, n_done = plan
    manifest = _start_manifest(args, out, config, found, context, todo, n_done)
    status, error, t_wall = "interrupted", None, time.perf_counter()
    on_row = _RowHandler(store, manifest, quiet=args.quiet)
    written = on_row.written
    if args.device == "gpu" and not args.ray:  # GPU slots never exceed --concurrency
        from client.serving.gpu import configure

        try:
            configure(concurrency=args.concurrency)
        except RuntimeError as exc:  # a second run in one process keeps the first pool
            print(f"warning: {exc}", file=sys.stderr)
    stats = seg = None
    try:
        with ExitStack() as stack, store:
            if todo:  # --resume with nothing left to do starts no server
                seg = _open_model(stack, args, out, context, manifest)
            rounds = study.rounds(todo, found.sources, store.rows, args.series)

            def more() -> list:  # the next round, its old rows retired (one row per case)
                batch = next(rounds, [])
                store.retire([s.case_id for s in batch])
                on_row.expect(len(batch))
                return batch

            stack.callback(on_row.close)  # the progress bar, before the server stops
            # One executor (threads, or one Ray session and set of actors) for every round.
            _executor(args, seg, config, manifest).run(more(), on_row, more=more)
            stats = seg.statistics() if seg else None  # this run's
        status = "finished"
    except ScreeningError as exc:
        status, error = "failed", str(exc)
        raise
    finally:
        wall = time.perf_counter() - t_wall
        manifest.timings(written, wall, stats)
        if args.device == "gpu":  # slot count and the estimate behind it (client/serving/gpu.py)
            from client.serving.gpu import default_slots

            manifest.update(gpu_slots=default_slots(True).describe())
        status, error = _write_studies(out, found.sources, manifest, args.series, status, error)
        status, error = _write_report(out, manifest, status, error)
        manifest.update(status=status, error=error, finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    if status == "interrupted":  # a signal during the report: exit 130 as run.json says
        raise KeyboardInterrupt
    n_err = sum(r["status"] == contract.STATUS_ERROR for r in written)
    if not args.quiet:
        print(f"{len(written)} scans screened ({n_err} failed, {n_done} already done) in "
              f"{wall:.1f} s; results in {out}/results.csv, studies in {out}/studies.csv")  # fmt: skip
    return 1 if n_err else 0


def _plan(args, out: Path, config):
    """OUT rules, discovery (pins, --shard) and the first round: ``(found, store,
    context, todo, n_done)``, or None when there is nothing to screen (exit 2)."""
    from client.reading.discover import discover
    from client.scaleout.shard import apply_to_discovery

    if args.resume:  # one OUT, one set of measurement settings
        results.check_same_config(out / results.RUN_JSON, _measurement(config))
    if args.overwrite and out.is_dir():
        results.clear_outputs(out)
    context = results.RunContext()
    store = results.ResultStore(out, context) if out.is_dir() else None
    found = discover(args.inputs, pins=store.pins() if store else None, exclude=[out])
    n_archive = len(found.sources)
    apply_to_discovery(found, args.shard)  # --shard K/N
    for m in found.missing:
        print(f"warning: {m}: no such file or folder", file=sys.stderr)
    if args.shard and n_archive and not found.sources:
        # A job array's empty shard is not an error: it leaves an empty OUT that merges.
        print(f"shard {args.shard}: none of the {n_archive} scans falls in this shard",
              file=sys.stderr)  # fmt: skip
    elif not found.sources:
        print("nothing to do: no scans found in " + ", ".join(args.inputs), file=sys.stderr)
        return None
    store = store or results.ResultStore(out, context)
    if args.series == "all":
        todo = [s for s in found.sources if not store.is_done(s)]
    else:  # the first round: per study, its first series without a row (client.pipeline.study)
        todo = study.next_round(found.sources, store.rows, set())
    n_done = sum(store.is_done(s) for s in found.sources)
    return found, store, context, todo, n_done


def _measurement(config) -> dict:
    """The measurement settings as run.json keeps them (JSON types)."""
    return json.loads(json.dumps(asdict(config.assess)))


def _start_manifest(args, out: Path, config, found, context, todo, n_done):
    """run.json at the start of a run (temporaries of a killed run removed first)."""
    from client.core.atomic import remove_stale_temporaries

    remove_stale_temporaries(out)  # left by a killed run
    previous = results.RunManifest.previous(out / results.RUN_JSON) or {}
    manifest = results.RunManifest(out / results.RUN_JSON, {
        "tool": "hepascreen", "tool_version": context.tool_version, "run_id": context.run_id,
        "schema_version": contract.SCHEMA_VERSION,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": sys.argv[1:],
        **results.environment(), "device": args.device,
        "mode": "masks" if args.masks else ("remote" if args.url else "embedded"),
        "n_found": len(found.sources), "n_skipped_resume": n_done,
        "n_todo": len(todo), "skipped_series": found.skipped, "ignored": found.ignored,
        "missing_inputs": found.missing, "shard": getattr(found, "shard", None),
        "config": _measurement(config),
    })  # fmt: skip
    manifest.info.update(previous)
    return manifest


def _open_model(stack, args, out: Path, context, manifest):
    """The run's segmenter (stopped by ``stack``), described in the rows' context and run.json."""
    from client.pipeline.segmenters import open_segmenter

    seg = open_segmenter(
        stack, masks=args.masks, label_map=args.label_map, url=args.url,
        model_repository=args.model_repository, device=args.device,
        server_log=out / "server.log", max_in_flight=args.concurrency,
        ssl=args.ssl, root_certificates=args.root_certificates,
        private_key=args.private_key, certificate_chain=args.certificate_chain,
    )  # fmt: skip
    d = seg.describe()
    context.segmenter, context.model_name = seg.kind, d["model_name"]
    context.model_version, context.model_sha256 = d["model_version"], d["model_sha256"]
    repo = str(seg.repository) if seg.repository else None
    manifest.update(model={**d, "url": args.url or "embedded", "repository": repo})
    return seg


def _write_studies(out: Path, sources, manifest, series: str, status: str, error):
    """studies.csv / studies.jsonl from every row in OUT, and the series --series best
    left out (run.json ``not_needed_series``, with the reason)."""
    try:
        rows = results.read_rows(out)
        n_series: dict = {}
        for s in sources:
            n_series[s.study_id] = n_series.get(s.study_id, 0) + 1
        table = study.write_studies(out, rows, n_series)
        by_case = {r["case_id"]: r for r in rows}
        skipped = study.not_needed(sources, by_case) if series == "best" else []
        manifest.update(n_studies=len(table), series_mode=series, not_needed_series=skipped)
    except KeyboardInterrupt:
        return "interrupted", error
    except Exception as exc:  # noqa: BLE001 - the rows are safe; say what failed
        return "failed", f"studies.csv not written: {type(exc).__name__}: {exc}"
    return status, error


def _write_report(out: Path, manifest, status: str, error):
    from client.outputs.report import write_report

    try:
        write_report(results.read_rows(out), out, manifest.info)
    except KeyboardInterrupt:
        return "interrupted", error
    except Exception as exc:  # noqa: BLE001 - the rows are safe; say what failed
        return "failed", f"report.html not written: {type(exc).__name__}: {exc}"
    return status, error


class _RowHandler:
    """The one row handler of a run, whichever executor screens the scans: each row
    written to the results store and counted in run.json, the progress bar moved, an
    error row shown (above the bar). ``written`` lists this run's rows."""

    def __init__(self, store, manifest, *, quiet: bool):
        self.store, self.manifest, self.quiet = store, manifest, quiet
        self.written: list[dict] = []
        self.bar = None

    def expect(self, n: int) -> None:
        """``n`` more scans to come (a round of ``--series best``): the bar's total grows."""
        from tqdm import tqdm

        if n and self.bar is None:
            self.bar = tqdm(total=n, unit="scan", disable=self.quiet, dynamic_ncols=True)
        elif n:
            self.bar.total += n
            self.bar.refresh()

    def __call__(self, raw: dict) -> None:
        from tqdm import tqdm

        from client.serving.server import interrupts_deferred

        with interrupts_deferred():  # a signal never falls between the row and its count
            row = self.store.write(raw)
            self.manifest.row_written(row)
            self.written.append(row)
        if self.bar is not None:
            self.bar.update(1)
        if row["status"] == contract.STATUS_ERROR and not self.quiet:
            tqdm.write(f"error: {row['case_id']}: {row['error']}", file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _executor(args, seg, config, manifest) -> Executor:
    """The executor of this run (:mod:`client.scaleout.executor`): threads in this
    process, or Ray actors with ``--ray`` (their description goes to run.json ``ray``)."""
    from client.scaleout.executor import RayExecutor, RayOptions, ThreadExecutor

    if not args.ray:
        return ThreadExecutor(seg, config, concurrency=args.concurrency)
    if args.ray != "local" and seg is not None and seg.kind == "triton" and not args.url:
        print("warning: --ray without --url: workers use the bundled server on this machine "
              "(127.0.0.1), which other nodes cannot reach", file=sys.stderr)  # fmt: skip
    options = RayOptions(
        address=args.ray, workers=args.ray_workers, cpus_per_worker=args.ray_cpus,
        gpus_per_worker=args.ray_gpus, concurrency=args.concurrency,
        client_kwargs={k: getattr(args, k) for k in ("ssl", "root_certificates", "private_key",
                                                     "certificate_chain")},
    )  # fmt: skip
    return RayExecutor(seg, config, options, on_info=lambda info: manifest.update(ray=info))


def main(argv=None, prog: str = "python -m client.batch") -> int:
    from client.serving.server import install_interrupt_handlers

    args = build_parser(prog).parse_args(argv)
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
