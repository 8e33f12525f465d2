"""The node: receiver, readiness, screening and sending as one long-running service.

Threads (all driven by the job database, so a restart after ``kill -9`` resumes where
the database says):

* the receiver (pynetdicom's server threads, :mod:`client.node.scp`): spool + record;
* readiness (:meth:`JobStore.advance_ready` every ``poll_seconds``);
* screening: one ready job at a time, each of its series through
  :func:`client.pipeline.screen.screen_scan` (the same pipeline, results store, QC and DICOM
  SEG/SR as ``hepascreen screen``; SEG/SR UIDs fixed by source, model and settings);
* sending: due sends grouped by destination, outcomes recorded one by one.

The node's log (``OUT/node/node.log``) carries job and association numbers, AE titles,
counts and states only: no UIDs, names, accession numbers or descriptions. Library
loggers (pynetdicom) and warnings (pydicom, highdicom), which quote tag values, are
silenced.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from contextlib import ExitStack
from pathlib import Path
from types import SimpleNamespace

from . import jobs as J
from .config import NodeConfig
from .jobs import JobStore
from .spool import Spool

log = logging.getLogger("hepascreen.node")
NODE_DIR = "node"


def node_paths(out_dir: Path) -> dict:
    """Where the node keeps its state under OUT."""
    base = Path(out_dir) / NODE_DIR
    return {
        "base": base,
        "spool": base / "spool",
        "jobs": base / "jobs",  # per job: hard links of the instances it screened
        "db": base / "jobs.sqlite",
        "log": base / "node.log",
        "info": base / "node.json",
    }


def quiet_libraries() -> None:
    """Silence what could quote DICOM values: pynetdicom's loggers, pydicom/highdicom warnings."""
    for name in ("pynetdicom", "pydicom", "highdicom"):
        lg = logging.getLogger(name)
        lg.setLevel(logging.CRITICAL + 10)
        lg.propagate = False
    for mod in ("pydicom", "highdicom", "pynetdicom"):
        warnings.filterwarnings("ignore", module=mod)
        warnings.filterwarnings("ignore", module=mod + r"\..*")


def setup_logging(path: Path, stderr: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    log.setLevel(logging.INFO)
    log.propagate = False
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    handlers = [logging.FileHandler(path, encoding="utf-8")]
    if stderr:
        handlers.append(logging.StreamHandler())
    for h in handlers:
        h.setFormatter(fmt)
        log.addHandler(h)


class Node:
    """A running DICOM node (:meth:`start`, :meth:`stop`, or :meth:`serve_forever`).

    Parameters
    ----------
    config : NodeConfig
    segmenter : Segmenter, optional
        Used instead of the one ``config.screen`` asks for (library use, tests).
    """

    def __init__(self, config: NodeConfig, segmenter=None):
        self.config = config
        self.paths = node_paths(config.out_dir)
        self._segmenter = segmenter
        self._stack = ExitStack()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._server = None
        self.port: int | None = None

    # -- life cycle ------------------------------------------------------------------
    def start(self) -> Node:
        from client.outputs.results import ResultStore, RunContext, write_json_atomic
        from client.pipeline.screen import ScreenConfig
        from client.pipeline.segmenters import open_segmenter

        from .scp import make_receiver

        quiet_libraries()
        cfg = self.config
        self.spool = Spool(self.paths["spool"])
        self.jobs = JobStore(self.paths["db"])
        self._stack.callback(self.jobs.close)
        n_tmp = self.spool.remove_temporaries()
        rec = self.jobs.recover()
        if n_tmp or any(rec.values()):
            log.info(
                "restart: %d unacknowledged temporaries removed, %d open associations "
                "counted as aborted, %d jobs to screen again",
                n_tmp, rec["associations_aborted"], rec["jobs_rescreened"],
            )  # fmt: skip
        s = cfg.screen
        seg = self._segmenter or open_segmenter(
            self._stack, masks=s.get("masks"), label_map=s.get("label_map", "default"),
            url=s.get("url"), model_repository=s.get("model_repository"),
            device=s.get("device", "cpu"), server_log=cfg.out_dir / "server.log",
        )  # fmt: skip
        self.segmenter = seg
        d = seg.describe()
        ctx = RunContext(segmenter=seg.kind, model_name=d.get("model_name"))
        ctx.model_version, ctx.model_sha256 = d.get("model_version"), d.get("model_sha256")
        self.store = ResultStore(cfg.out_dir, ctx)
        self._store_lock = threading.Lock()
        self.series = s.get("series", "best")
        from postprocess.config import AssessConfig

        dflt = AssessConfig()
        self.screen_config = ScreenConfig(
            assess=AssessConfig(
                n_cubes=int(s.get("cubes", dflt.n_cubes)),
                cube_mm=float(s.get("cube_mm", dflt.cube_mm)),
                seed=int(s.get("seed", dflt.seed)),
                allow_contrast=bool(s.get("allow_contrast", False)),
            ),
            device=s.get("device", "cpu"), out_dir=cfg.out_dir, write_qc=bool(s.get("qc", True)),
            dicom_seg=True, dicom_sr=True,
        )  # fmt: skip
        ae, handlers = make_receiver(cfg, self.spool, self.jobs)
        self._server = ae.start_server(
            (cfg.host, cfg.port), block=False, evt_handlers=handlers,
            ssl_context=cfg.server_ssl_context(),
        )  # fmt: skip
        self.port = int(self._server.server_address[1])
        write_json_atomic(self.paths["info"], {
            "ae_title": cfg.ae_title, "host": cfg.host, "port": self.port,
            "accept": [str(p) for p in cfg.accept], "send_to": [str(d) for d in cfg.send_to],
            "idle_seconds": cfg.idle_seconds, "max_hold_seconds": cfg.max_hold_seconds,
            "retry_seconds": list(cfg.retry_seconds), "retention_hours": cfg.retention_hours,
            "segmenter": seg.kind, "model": d,
            "tls": bool(cfg.tls),
            "run_id": ctx.run_id, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        })  # fmt: skip
        loops = [("ready", self._ready_loop), ("send", self._send_loop),
                 ("retention", self._retention_loop)]  # fmt: skip
        loops += [(f"screen-{i}", self._screen_loop) for i in range(int(cfg.screen_workers))]
        for name, fn in loops:
            t = threading.Thread(target=self._guard, args=(fn,), name=f"node-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        log.info(
            "listening as %s on %s:%d; %d accepted peers, %d destinations",
            cfg.ae_title, cfg.host, self.port, len(cfg.accept), len(cfg.send_to),
        )  # fmt: skip
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        for t in self._threads:
            t.join(timeout=60)
        self._threads = []
        self._stack.close()
        log.info("stopped")

    def serve_forever(self) -> None:
        """Run until SIGINT/SIGTERM (then stop cleanly)."""
        import signal

        def handler(signum, frame):
            self._stop.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
        try:
            while not self._stop.wait(0.5):
                pass
        finally:
            self.stop()

    def __enter__(self) -> Node:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _guard(self, fn) -> None:
        """Run a loop; an unexpected error is logged (type only) and the loop goes on."""
        while not self._stop.is_set():
            try:
                if not fn():
                    self._stop.wait(self.config.poll_seconds)
            except Exception as exc:  # noqa: BLE001 - keep serving; traceback to errors.log
                from client.pipeline.screen import log_traceback

                log.error("%s: unexpected %s", threading.current_thread().name, type(exc).__name__)
                log_traceback(self.config.out_dir, SimpleNamespace(source_id="node"), "node", exc)
                self._stop.wait(self.config.poll_seconds)

    # -- readiness -------------------------------------------------------------------
    def _ready_loop(self) -> bool:
        for job, old, new in self.jobs.advance_ready(
            self.config.idle_seconds, self.config.max_hold_seconds
        ):
            log.info("job %d: %s -> %s", job, old, new)
        return False

    # -- retention -------------------------------------------------------------------
    def _retention_loop(self) -> bool:
        """Delete the received instances (spool and job snapshots) of studies whose jobs
        all finished more than ``retention_hours`` ago; results in OUT stay. Checked at
        most once a minute."""
        if self.config.retention_hours <= 0:
            self._stop.wait(60.0)
            return True
        cutoff = time.time() - 3600.0 * self.config.retention_hours
        removed = self.purge_finished(cutoff)
        if removed:
            log.info("retention: received instances of %d finished jobs deleted", removed)
        self._stop.wait(60.0)
        return True

    def purge_finished(self, cutoff: float) -> int:
        """Delete the spool folder and job snapshots of every study whose jobs are all done
        or failed since before ``cutoff`` (epoch seconds). Returns the jobs purged."""
        import shutil

        rows = self.jobs.query("SELECT id, study_key, state, state_since FROM jobs")
        by_study: dict = {}
        for r in rows:
            by_study.setdefault(r["study_key"], []).append(r)
        n = 0
        for skey, js in by_study.items():
            if any(j["state"] not in (J.DONE, J.FAILED) or j["state_since"] > cutoff for j in js):
                continue  # a job of the study is open, or finished too recently
            for j in js:
                snap = self.paths["jobs"] / str(j["id"])
                if snap.exists():
                    shutil.rmtree(snap, ignore_errors=True)
                    n += 1
            study = self.spool.study_dir(skey)
            if study.exists():
                shutil.rmtree(study, ignore_errors=True)
        return n

    # -- screening -------------------------------------------------------------------
    def _screen_loop(self) -> bool:
        job = self.jobs.next_ready()
        if job is None:
            return False
        try:
            self.screen_job(job)
        except Exception as exc:  # noqa: BLE001 - a job that cannot be screened fails, alone
            from client.pipeline.screen import log_traceback

            log.error("job %d: screening failed (unexpected %s)", job["id"], type(exc).__name__)
            log_traceback(self.config.out_dir, SimpleNamespace(source_id=f"job-{job['id']}"),
                          "node screening", exc)  # fmt: skip
            self.jobs.set_state(
                job["id"], J.FAILED, note=f"unexpected {type(exc).__name__} (errors.log)"
            )
        return True

    def screen_job(self, job: dict) -> None:
        """Screen every study in the job's spool folder (one, normally) with
        :func:`client.pipeline.study.screen_study` (series choice, ``screen_scan``, the study's
        answer), write the rows and the studies table, and queue the SEG/SR sends."""
        from client.outputs.results import read_rows
        from client.pipeline.study import screen_study, write_studies
        from client.reading.discover import discover

        jid = job["id"]
        t0 = time.perf_counter()
        folder = self.paths["jobs"] / str(jid)  # the instances as they are now (snapshot)
        n = self.spool.snapshot(job["study_key"], folder)
        case_ids = [s.case_id for s in discover([folder]).sources]
        with self._store_lock:
            self.store.close()
            self.store.retire(case_ids)  # one row per series, the latest
            self.store.open()
        log.info("job %d: screening (%d instances)", jid, n)
        results = screen_study(folder, self.segmenter, self.screen_config, self.series)
        sends, rows, n_err = [], 0, 0
        for study in results:
            for res in study.series:
                with self._store_lock:
                    self.store.write(res.row)
                rows += 1
                n_err += res.status == "error"
                self._study_sr(jid, res, study.row)
                if self.config.screen.get("send_qc") and "qc" in res.files:
                    self._qc_sc(jid, res)
                for kind, key in (("seg", "dicom_seg"), ("sr", "dicom_sr"), ("qc", "dicom_qc")):
                    if key in res.files:
                        sends += [(d.name, kind, res.files[key]) for d in self.config.send_to]
        with self._store_lock:
            write_studies(self.config.out_dir, read_rows(self.config.out_dir))
        note = "" if rows else "no CT volume series in the study"
        if n_err:
            note = f"{n_err} of {rows} series failed (results.csv says why)"
        state = self.jobs.screened(jid, sends, rows, note)
        log.info(
            "job %d: %d series screened (%d failed) in %.1f s, %d sends -> %s",
            jid, rows, n_err, time.perf_counter() - t0, len(sends), state,
        )  # fmt: skip
        self._write_report()

    def _study_sr(self, jid: int, res, study_row: dict) -> None:
        """The series' SR, written again with its study's answer (a study of several
        series answers once, :func:`client.pipeline.study.study_answer`); a failed series gets an
        SR that says so (no SEG: there is no mask). UIDs fixed by the source, model,
        settings and the study answer."""
        from client.outputs.dicom_out import write_dicom_sr
        from client.outputs.results import case_files

        d = self.segmenter.describe()
        answer = "|".join(str(study_row.get(k)) for k in ("grade", "criterion", "answer_case_id"))
        settings = f"node|{d.get('model_name')}|{d.get('model_sha256')}|"
        settings += f"{self.screen_config.assess!r}|{answer}"
        try:
            res.files["dicom_sr"] = write_dicom_sr(
                res.source, res.row, case_files(self.config.out_dir, res.case_id).sr,
                seg_path=res.files.get("dicom_seg"), model_name=d.get("model_name"),
                uid_settings=settings, allow_failed=True, study=study_row,
                series_case_id=res.case_id,
            )  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - the row says why (output_not_written)
            log.warning("job %d: no SR for a series (%s)", jid, type(exc).__name__)

    def _qc_sc(self, jid: int, res) -> None:
        """The QC picture as a Secondary Capture (opt-in: ``send_qc``)."""
        from client.outputs.dicom_out import write_dicom_qc
        from client.outputs.results import case_files

        d = self.segmenter.describe()
        settings = f"qc|{d.get('model_name')}|{d.get('model_sha256')}|{self.screen_config.assess!r}"
        try:
            res.files["dicom_qc"] = write_dicom_qc(
                res.source, res.files["qc"], case_files(self.config.out_dir, res.case_id).qc_dcm,
                uid_settings=settings,
            )  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - an optional output
            log.warning("job %d: no QC secondary capture (%s)", jid, type(exc).__name__)

    def _write_report(self) -> None:
        from client.outputs.report import write_report
        from client.outputs.results import read_rows

        try:
            with self._store_lock:  # several screening threads: one reader of the rows at a time
                rows = read_rows(self.config.out_dir)
            write_report(rows, self.config.out_dir, {"tool": "hepascreen listen"})
        except Exception as exc:  # noqa: BLE001 - the rows are safe; the report is a view
            log.warning("report.html not written (%s)", type(exc).__name__)

    # -- sending ---------------------------------------------------------------------
    def _send_loop(self) -> bool:
        from .sender import store_files, stow_files

        due = self.jobs.due_sends()
        if not due:
            return False
        dests = {d.name: d for d in self.config.send_to}
        by_dest: dict[str, list] = {}
        for s in due:
            by_dest.setdefault(s["dest"], []).append(s)
        for name, sends in by_dest.items():
            dest = dests.get(name)
            if dest is None:
                for s in sends:
                    self._record(s, False, "destination no longer configured", None)
                continue
            paths = [s["path"] for s in sends]
            if dest.url:
                outcomes, who = stow_files(dest, paths), "DICOMweb"
            else:
                outcomes = store_files(
                    dest, paths, self.config.ae_title, tls=self.config.client_ssl_context()
                )
                who = dest.ae_title
            for s, o in zip(sends, outcomes):
                retry = None
                if not o.ok and o.transient and s["attempts"] < len(self.config.retry_seconds):
                    retry = float(self.config.retry_seconds[s["attempts"]])
                self._record(s, o.ok, o.reason, retry, who)
            if self._stop.is_set():
                break
        return True

    def _record(self, s: dict, ok: bool, reason: str, retry_in, ae: str = "") -> None:
        final = self.jobs.send_result(s["id"], ok, reason, retry_in)
        if ok:
            log.info("job %d: %s sent to %s", s["job_id"], s["kind"], ae)
        elif retry_in is not None:
            log.warning(
                "job %d: %s to %s failed (%s); retry %d in %.0f s",
                s["job_id"], s["kind"], ae, reason, s["attempts"] + 2, retry_in,
            )  # fmt: skip
        else:
            log.error(
                "job %d: %s to %s failed permanently (%s)", s["job_id"], s["kind"], ae, reason
            )
        if final:
            log.info("job %d: %s", s["job_id"], final)


def node_status(out_dir: Path) -> list[dict]:
    """The jobs of the node whose OUT is ``out_dir`` (ids, states, counts, times)."""
    from client.core.errors import ConfigError

    db = node_paths(out_dir)["db"]
    if not db.is_file():
        raise ConfigError(f"{out_dir}: no node state here (expected {db})")
    store = JobStore(db)
    try:
        return store.jobs()
    finally:
        store.close()


def check_destinations(config: NodeConfig) -> list[tuple]:
    """C-ECHO every destination: ``[(destination, SendOutcome), ...]``."""
    from .sender import echo

    quiet_libraries()
    tls = config.client_ssl_context()
    return [(d, echo(d, config.ae_title, tls=tls)) for d in config.send_to]


__all__ = ["Node", "check_destinations", "node_paths", "node_status"]
