"""``--ray ADDRESS``: the same screen with its scans spread over the actors of a Ray cluster.

::

    hepascreen screen /archive -o /shared/out --ray local                 # Ray on this machine
    hepascreen screen /archive -o /shared/out --ray auto --url gpu-a:8001 --url gpu-b:8001
    hepascreen screen /archive -o /shared/out --ray ray://head:10001 --url-file servers.txt

What runs where:

* **Driver** (the process of the command): discovery, ``--resume`` bookkeeping,
  and the only writer of results.csv/jsonl, attempts.jsonl, run.json and
  report.html (:mod:`client.batch` does all of that exactly as without Ray; this
  module replaces only its worker pool).
* **Actors** (:class:`ScanWorker`, one per ``--ray-workers``): each opens its own
  segmenter once and keeps it (a gRPC client or an :class:`client.endpoints.EndpointPool`
  to the ``--url`` servers, or the ``--masks`` folder) and runs
  :func:`client.pipeline.screen_scan` for the scans it is sent, writing masks and
  QC pictures to OUT itself (atomically: :mod:`client._atomic`), which must
  therefore be a folder every node sees at the same path. It returns the row only.
* **Backpressure**: at most ``--concurrency`` scans (at least one per actor) are in
  flight at once; the next scan is sent to the actor with the fewest in flight when
  one finishes. Actors claim ``--ray-cpus`` CPUs each (default 0.5): whole-CPU
  actors that claim every CPU of a 2-core machine leave nothing for the driver and
  the Triton server and starve Ray's own scheduling (the deadlock seen with Ray
  Data there).
* **A worker that dies** (killed, out of memory, its node lost) is restarted by Ray;
  the scans it had in flight are sent again, at most twice each
  (:data:`MAX_RETRIES`); a scan whose workers died three times gets an error row.
  The driver writes each case_id once, so a retried scan never gives two rows, and
  a retried scan's files replace the dead worker's atomically.

Without ``--url`` the driver starts the bundled server and the actors connect to
it on 127.0.0.1: fine for ``--ray local``; on a cluster give ``--url`` servers the
worker nodes can reach. Ray is the optional extra ``hepascreen[ray]``.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from collections import deque

from . import contract
from .errors import ConfigError, InferenceError

MAX_RETRIES = 2  # a scan whose worker died is sent again at most this many times
DEFAULT_CPUS = 0.5


def add_ray_arguments(ap) -> None:
    """``--ray``, ``--ray-workers``, ``--ray-cpus`` for the screen command."""
    ap.add_argument(
        "--ray", metavar="ADDRESS", default=None, type=ray_address,
        help="run the scans in Ray actors: 'local' starts Ray on this machine, 'auto' joins "
        "the running cluster, or ray://HOST:10001 (needs hepascreen[ray]; OUT must be on a "
        "folder every node sees)",
    )  # fmt: skip
    ap.add_argument("--ray-workers", type=_positive(int), default=None, metavar="N",
                    help="Ray actors (default: one per CPU of the cluster, at most one per scan)")  # fmt: skip
    ap.add_argument("--ray-cpus", type=_positive(float), default=DEFAULT_CPUS, metavar="F",
                    help=f"CPUs each actor claims (default {DEFAULT_CPUS}; fractions keep "
                    "room for the driver and servers)")  # fmt: skip


def _positive(kind):
    def parse(text: str):
        import argparse

        try:
            value = kind(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from exc
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r}: must be > 0")
        return value

    return parse


def ray_address(text: str) -> str:
    """argparse ``type=`` for ``--ray``: the address form, and Ray importable, checked
    before anything is written to OUT (a usage error, exit 2)."""
    import argparse

    if text not in ("local", "auto") and not text.startswith("ray://"):
        raise argparse.ArgumentTypeError(f"{text!r}: expected local, auto or ray://HOST:PORT")
    try:
        import_ray()
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return text


def import_ray():
    """``import ray`` with a message naming the extra when it is missing."""
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(
            f"--ray needs Ray: pip install 'hepascreen[ray]' (import failed: {exc})"
        ) from exc
    return ray


def init_ray(address: str, *, num_cpus: int | None = None) -> bool:
    """Connect to (or start) Ray. Returns True when this call started a local instance.

    ``local``: a new Ray instance on this machine (``num_cpus``, default all) without
    dashboard and with a small object store (only rows travel back); ``auto``: the
    cluster this machine belongs to (``ray start`` ran here); ``ray://HOST:PORT``:
    Ray Client to a remote head node.
    """
    ray = import_ray()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        return False
    if address != "local" and address != "auto" and not address.startswith("ray://"):
        raise ConfigError(f"--ray {address!r}: expected local, auto or ray://HOST:PORT")
    # ray.init replaces the SIGTERM handler with sys.exit: put the caller's back, so
    # SIGTERM still ends the batch cleanly (rows whole, run.json "interrupted", exit 130).
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main else None
    try:
        if address == "local":
            # Ray's head start waits a fixed time for its GCS port file; on a loaded
            # machine that can time out (seen on 2 busy cores): try again, then say so.
            for attempt in range(3):
                try:
                    ray.init(
                        address="local",  # a new instance even where `ray start` left a file
                        num_cpus=num_cpus or os.cpu_count() or 1,
                        include_dashboard=False,
                        object_store_memory=200 * 1024**2,
                        log_to_driver=False,
                        logging_level="WARNING",
                    )
                    return True
                except Exception as exc:  # noqa: BLE001 - Ray raises a bare Exception on a
                    # node start-up timeout ("The current node timed out during startup")
                    ray.shutdown()
                    if attempt == 2:
                        raise ConfigError(
                            f"--ray local: could not start a local Ray instance after 3 tries "
                            f"({exc}); is the machine overloaded?"
                        ) from exc
                    time.sleep(2.0 * (attempt + 1))
        try:
            ray.init(address=address, log_to_driver=False, logging_level="WARNING")
        except (ConnectionError, RuntimeError) as exc:
            hint = ""
            if "RAY_AUTH_MODE" not in os.environ:
                hint = (
                    "; a cluster started with token authentication (the default of `ray start` "
                    "since Ray 2.59) needs RAY_AUTH_MODE=token and its token "
                    "(~/.ray/auth_token or RAY_AUTH_TOKEN) here too"
                )
            raise ConfigError(f"--ray {address}: no Ray cluster there ({exc}){hint}") from exc
        return False
    finally:
        if main and previous is not None:
            signal.signal(signal.SIGTERM, previous)


# --- the segmenter each actor opens ----------------------------------------------
def worker_spec(seg, *, max_in_flight: int = 2, client_kwargs: dict | None = None) -> dict:
    """What an actor needs to open its own segmenter like the driver's ``seg``.

    A :class:`client.pipeline.MaskFolderSegmenter` travels as its folder and label
    map; a :class:`client.pipeline.TritonSegmenter` as its URL(s) (the bundled
    server's loopback URL when the driver started one).
    """
    if seg.kind == "masks":
        return {"kind": "masks", "folder": str(seg.folder), "label_map": seg.label_map}
    client = seg.client
    urls = getattr(client, "urls", None) or [client.url]
    return {
        "kind": "triton",
        "urls": list(urls),
        "max_in_flight": int(max_in_flight),
        "client_kwargs": {k: v for k, v in (client_kwargs or {}).items() if v},
        "model_sha256": getattr(seg, "model_sha256", None),
    }


def segmenter_from_spec(spec: dict):
    """Open the segmenter described by :func:`worker_spec` (in an actor)."""
    from .endpoints import connect
    from .pipeline import MaskFolderSegmenter

    if spec["kind"] == "masks":
        return MaskFolderSegmenter(spec["folder"], spec["label_map"])
    seg = connect(
        spec["urls"], max_in_flight=spec.get("max_in_flight", 2), **spec.get("client_kwargs", {})
    )
    seg.model_sha256 = spec.get("model_sha256")
    return seg


class ScanWorker:
    """A Ray actor's body: one segmenter kept open, :func:`screen_scan` per call.

    Parameters
    ----------
    spec : dict
        From :func:`worker_spec`.
    config : client.pipeline.ScreenConfig
    """

    def __init__(self, spec: dict, config):
        from .pipeline import screen_scan

        self._screen = screen_scan
        self.config = config
        self.segmenter = segmenter_from_spec(spec)

    def info(self) -> dict:
        import socket

        return {"pid": os.getpid(), "host": socket.gethostname()}

    def screen(self, source) -> dict:
        """Screen one scan; returns its row (never the label map: rows travel, files stay)."""
        result = self._screen(source, self.segmenter, self.config)
        return {"row": result.row, "pid": os.getpid()}

    def statistics(self) -> dict | None:
        """This actor's segmenter statistics (requests per endpoint, take-outs, ...)."""
        stats = getattr(self.segmenter, "statistics", None)
        return {**self.info(), "statistics": stats() if stats else None}

    def close(self) -> None:
        self.segmenter.close()


def died_row(src, segmenter_kind: str, message: str) -> dict:
    """The error row of a scan whose workers died :data:`MAX_RETRIES` + 1 times."""
    return {
        "status": contract.STATUS_ERROR,
        "grade": contract.GRADE_INDETERMINATE,
        "error": message,
        "case_id": src.case_id,
        "source": str(src.path),
        "source_id": src.source_id,
        "source_fingerprint": src.fingerprint(),
        "segmenter": segmenter_kind,
    }


class RayScreen:
    """Ray actors screening scans with bounded work in flight (library use and the CLI).

    Parameters
    ----------
    spec : dict
        The actors' segmenter (:func:`worker_spec`).
    config : client.pipeline.ScreenConfig
    workers : int
        Number of actors.
    cpus_per_worker : float
        CPUs each actor claims from Ray.
    in_flight : int, optional
        Scans in flight at once (default: 2 per actor; at least one per actor).
    max_retries : int
        Times a scan is sent again after its worker died.
    restart_timeout_s : float
        How long a dead actor may take to come back before it is given up.

    Use after :func:`init_ray`, in a ``with`` block (actors are killed on exit).
    """

    def __init__(self, spec: dict, config, *, workers: int, cpus_per_worker: float = DEFAULT_CPUS,
                 in_flight: int | None = None, max_retries: int = MAX_RETRIES,
                 restart_timeout_s: float = 300.0):  # fmt: skip
        if workers < 1 or cpus_per_worker <= 0:
            raise ConfigError("--ray-workers must be >= 1 and --ray-cpus > 0")
        self.ray = import_ray()
        self.spec, self.config = spec, config
        self.workers = int(workers)
        self.cpus = float(cpus_per_worker)
        self.in_flight = max(self.workers, int(in_flight or 2 * self.workers))
        self.per_actor = math.ceil(self.in_flight / self.workers)
        self.max_retries = int(max_retries)
        self.restart_timeout_s = float(restart_timeout_s)
        self.actors: list = []
        self.worker_info: list[dict] = []
        self.retried: list[dict] = []

    def __enter__(self) -> RayScreen:
        ray = self.ray
        remote = ray.remote(
            num_cpus=self.cpus,
            max_restarts=-1,  # a killed worker comes back (and reopens its segmenter)
            max_task_retries=0,  # its scans are re-sent by the driver, counted
            max_concurrency=self.per_actor,
        )(ScanWorker)
        self.actors = [remote.remote(self.spec, self.config) for _ in range(self.workers)]
        try:
            self.worker_info = ray.get([a.info.remote() for a in self.actors], timeout=300)
        except Exception as exc:
            self.__exit__()
            cause = getattr(exc, "cause", None) or exc
            raise InferenceError(
                f"Ray workers could not open their segmenter: {type(cause).__name__}: "
                f"{str(cause).strip().splitlines()[-1] if str(cause).strip() else ''}"
            ) from exc
        return self

    def statistics(self, timeout_s: float = 30.0) -> list:
        """Each live actor's :meth:`ScanWorker.statistics` (None for one that does not answer)."""
        refs = [a.statistics.remote() for a in self.actors]
        out = []
        for ref in refs:
            try:
                out.append(self.ray.get(ref, timeout=timeout_s))
            except Exception:  # noqa: BLE001 - a dead or hung actor has no statistics
                out.append(None)
        return out

    def __exit__(self, *exc) -> None:
        for a in self.actors:
            try:
                self.ray.kill(a, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.actors = []

    def run(self, sources, on_row) -> None:
        """Screen ``sources``; ``on_row(row)`` is called on this thread for each, once.

        A scan whose actor died is sent again at most ``max_retries`` times, then
        gets :func:`died_row`. A dead actor gets no scan until Ray has restarted it
        (a readiness probe answers); one that is not back within
        ``restart_timeout_s`` is given up, and when no actor is left the remaining
        scans get error rows.
        """
        ray = self.ray
        from ray.exceptions import (
            NodeDiedError,
            ObjectLostError,
            RayActorError,
            WorkerCrashedError,
        )

        died = (RayActorError, WorkerCrashedError, NodeDiedError, ObjectLostError)
        kind = self.spec["kind"]
        n = len(self.actors)
        queue = deque(sources)
        pending: dict = {}  # ObjectRef -> (source, actor index)
        probes: dict = {}  # ObjectRef -> actor index (readiness of a restarting actor)
        load = [0] * n
        down_since: list[float | None] = [None] * n
        gone = [False] * n
        tries: dict[str, int] = {}

        def reason(exc) -> str:
            text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            return f"{type(exc).__name__}: {text}"

        try:
            while queue or pending:
                up = [j for j in range(n) if down_since[j] is None and not gone[j]]
                while queue and up and len(pending) < self.in_flight:
                    src = queue.popleft()
                    i = min(up, key=lambda j: load[j])
                    load[i] += 1
                    pending[self.actors[i].screen.remote(src)] = (src, i)
                if not pending and not probes:  # every actor given up
                    while queue:
                        src = queue.popleft()
                        on_row(died_row(src, kind, f"{src.path}: no Ray worker left "
                                        f"(restarts did not come back within "
                                        f"{self.restart_timeout_s:.0f} s)"))  # fmt: skip
                    break
                done, _ = ray.wait([*pending, *probes], num_returns=1)
                for ref in done:
                    if ref in probes:
                        i = probes.pop(ref)
                        try:
                            ray.get(ref)
                            down_since[i] = None  # restarted: scans may go there again
                        except died:
                            if time.monotonic() - down_since[i] > self.restart_timeout_s:
                                gone[i] = True
                            else:
                                time.sleep(0.2)
                                probes[self.actors[i].info.remote()] = i
                        continue
                    src, i = pending.pop(ref)
                    load[i] -= 1
                    try:
                        out = ray.get(ref)
                    except died as exc:
                        if down_since[i] is None and not gone[i]:
                            down_since[i] = time.monotonic()
                            probes[self.actors[i].info.remote()] = i
                        k = tries[src.case_id] = tries.get(src.case_id, 0) + 1
                        self.retried.append({"case_id": src.case_id, "try": k,
                                             "reason": reason(exc)})  # fmt: skip
                        if k <= self.max_retries:
                            queue.appendleft(src)
                            continue
                        on_row(died_row(src, kind, f"{src.path}: the Ray worker screening it "
                                        f"died {k} times (last: {reason(exc)})"))  # fmt: skip
                        continue
                    except ray.exceptions.RayTaskError as exc:  # screen_scan never raises
                        on_row(died_row(src, kind, f"{src.path}: unexpected error in the Ray "
                                        f"worker: {str(exc).strip().splitlines()[-1][:300]}"))  # fmt: skip
                        continue
                    on_row(out["row"])
        finally:
            for ref in pending:
                try:
                    ray.cancel(ref, force=False)
                except Exception:  # noqa: BLE001 - best effort on the way out
                    pass


def default_workers(n_todo: int) -> int:
    """One actor per CPU Ray reports (at least 1, at most one per scan)."""
    ray = import_ray()
    cpus = int(ray.cluster_resources().get("CPU", 1))
    return max(1, min(cpus, n_todo))


def run_pool(todo, seg, config, store, manifest, written: list, args) -> None:
    """:func:`client.batch._run_pool`'s counterpart on Ray (same rows, progress, counts).

    ``seg`` is the driver's segmenter (already open): the actors open their own
    from :func:`worker_spec`; the driver writes every row through ``store``.
    """
    from tqdm import tqdm

    if not todo:
        return
    if seg is None:
        raise ConfigError("--ray: no segmenter opened")
    started = init_ray(args.ray)
    if args.ray != "local" and seg.kind == "triton" and not args.url:
        print("warning: --ray without --url: workers use the bundled server on this machine "
              "(127.0.0.1), which other nodes cannot reach", file=sys.stderr)  # fmt: skip
    workers = args.ray_workers or default_workers(len(todo))
    tls = {k: getattr(args, k, None) for k in ("ssl", "root_certificates", "private_key",
                                               "certificate_chain")}  # fmt: skip
    in_flight = max(args.concurrency, workers)
    spec = worker_spec(seg, max_in_flight=math.ceil(in_flight / workers), client_kwargs=tls)
    bar = tqdm(total=len(todo), unit="scan", disable=args.quiet, dynamic_ncols=True)
    t0 = time.perf_counter()
    screen = RayScreen(spec, config, workers=workers, cpus_per_worker=args.ray_cpus,
                       in_flight=in_flight)  # fmt: skip
    info = {"address": args.ray, "started_local": started, "workers": workers,
            "cpus_per_worker": args.ray_cpus, "in_flight": in_flight,
            "segmenter": {k: v for k, v in spec.items() if k != "client_kwargs"}}  # fmt: skip

    def on_row(raw: dict) -> None:
        row = store.write(raw)
        manifest.row_written(row)
        written.append(row)
        bar.update(1)
        if row["status"] == contract.STATUS_ERROR and not args.quiet:
            tqdm.write(f"error: {row['case_id']}: {row['error']}", file=sys.stderr)

    try:
        with screen:
            info["worker_processes"] = screen.worker_info
            info["start_s"] = round(time.perf_counter() - t0, 2)
            manifest.update(ray=info)
            screen.run(todo, on_row)
            # The driver's own segmenter served nothing: the actors' statistics tell.
            info["worker_statistics"] = screen.statistics()
    finally:
        info["retried"] = screen.retried
        manifest.update(ray=info)
        bar.close()
        if started:
            import ray

            ray.shutdown()


__all__ = [
    "MAX_RETRIES",
    "RayScreen",
    "ScanWorker",
    "add_ray_arguments",
    "init_ray",
    "run_pool",
    "segmenter_from_spec",
    "worker_spec",
]
