"""``--ray ADDRESS``: the same screen with its scans spread over the actors of a Ray cluster.

::

    hepascreen screen /archive -o /shared/out --ray local                 # Ray on this machine
    hepascreen screen /archive -o /shared/out --ray auto --url gpu-a:8001 --url gpu-b:8001
    hepascreen screen /archive -o /shared/out --ray ray://head:10001 --url-file servers.txt

What runs where:

* **Driver** (the process of the command): discovery, ``--resume`` bookkeeping,
  and the only writer of results.csv/jsonl, attempts.jsonl, run.json and
  report.html (:mod:`client.cli.batch` does all of that exactly as without Ray; only
  its executor changes: :class:`client.scaleout.executor.RayExecutor` over
  :class:`RayScreen`).
* **Actors** (:class:`ScanWorker`, one per ``--ray-workers``): each opens its own
  segmenter once and keeps it (a gRPC client or an :class:`client.serving.endpoints.EndpointPool`
  to the ``--url`` servers, or the ``--masks`` folder) and runs
  :func:`client.pipeline.screen.screen_scan` for the scans it is sent, writing masks and
  QC pictures to OUT itself (atomically: :mod:`client.core.atomic`), which must
  therefore be a folder every node sees at the same path. It returns the row only.
* **Backpressure**: at most ``--concurrency`` scans (at least one per actor) are in
  flight at once; the next scan is sent to the actor with the fewest in flight when
  one finishes. Actors claim ``--ray-cpus`` CPUs each (default 0.5): whole-CPU
  actors that claim every CPU of a 2-core machine leave nothing for the driver and
  the Triton server and starve Ray's own scheduling (the deadlock seen with Ray
  Data there).
* **GPUs** (``--device gpu``): each actor claims ``num_gpus`` (``--ray-gpus``, default
  one card shared by ``ceil(workers / GPUs)`` actors), so Ray sets its
  ``CUDA_VISIBLE_DEVICES`` to the card it got (without a GPU claim Ray hides every
  GPU from the actor and each scan fails); the actor's GPU measurement budget and
  slots are its share of that card (:func:`client.serving.gpu.configure`).
* **Joining a cluster** (``auto``, ``ray://``) is bounded: the address is probed first
  (a refused or silent port fails in seconds, naming it) and ``ray.init`` gets
  ``HEPASCREEN_RAY_CONNECT_TIMEOUT_S`` (default 60 s) before the run stops with a
  message saying what to check, instead of retrying for ever.
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
import threading
import time
from collections import deque

from client.core import contract
from client.core.errors import ConfigError, InferenceError

MAX_RETRIES = 2  # a scan whose worker died is sent again at most this many times
DEFAULT_CPUS = 0.5
CONNECT_TIMEOUT_ENV = "HEPASCREEN_RAY_CONNECT_TIMEOUT_S"
DEFAULT_CONNECT_TIMEOUT_S = 60.0
PROBE_TIMEOUT_S = 5.0


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
    ap.add_argument("--ray-gpus", type=_positive(float), default=None, metavar="F",
                    help="GPUs each actor claims with --device gpu (default: the cluster's GPUs "
                    "shared evenly, at most 1; e.g. 0.5 puts two actors on each card)")  # fmt: skip


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
        target = cluster_address(address)
        where = f"--ray {address}" + (f" ({target})" if target and target != address else "")
        problem = probe_address(target) if target else None
        if problem:
            raise ConfigError(f"{where}: cannot reach the Ray cluster: {problem}; {JOIN_CHECKS}")
        timeout_s = connect_timeout_s()
        try:
            call_with_deadline(
                lambda: ray.init(address=address, log_to_driver=False, logging_level="WARNING"),
                timeout_s,
            )
        except TimeoutError as exc:
            raise ConfigError(
                f"{where}: joining the Ray cluster did not finish within {timeout_s:g} s "
                f"({CONNECT_TIMEOUT_ENV}); {JOIN_CHECKS}"
            ) from exc
        except (ConnectionError, RuntimeError) as exc:
            hint = ""
            if "RAY_AUTH_MODE" not in os.environ:
                hint = (
                    "; a cluster started with token authentication (the default of `ray start` "
                    "since Ray 2.59) needs RAY_AUTH_MODE=token and its token "
                    "(~/.ray/auth_token or RAY_AUTH_TOKEN) here too"
                )
            raise ConfigError(f"{where}: no Ray cluster there ({exc}){hint}") from exc
        return False
    finally:
        if main and previous is not None:
            signal.signal(signal.SIGTERM, previous)


JOIN_CHECKS = (
    "check that the head node runs (`ray status` there), that this machine reaches its GCS "
    "port and every node's advertised address (`ray start --node-ip-address` must be an "
    "address the other nodes can reach; firewalls: GCS 6379, Ray Client 10001, worker "
    "ports), and RAY_ADDRESS"
)


def connect_timeout_s() -> float:
    """Seconds ``ray.init`` may take to join a cluster (:data:`CONNECT_TIMEOUT_ENV`)."""
    raw = os.environ.get(CONNECT_TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_CONNECT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise ConfigError(f"{CONNECT_TIMEOUT_ENV}={raw!r}: expected a positive number of seconds")
    return value


def cluster_address(address: str) -> str | None:
    """The ``host:port`` that ``ray.init(address)`` will contact, when it can be known.

    ``ray://HOST:PORT`` gives itself; ``auto`` is ``RAY_ADDRESS`` or else the GCS address
    that `ray start` left on this machine (Ray's own lookup order); None when neither.
    """
    if address.startswith("ray://"):
        return address[len("ray://") :].split("/", 1)[0] or None
    env = os.environ.get("RAY_ADDRESS", "").strip()
    if env and env not in ("auto", "local"):
        return env[len("ray://") :].split("/", 1)[0] if env.startswith("ray://") else env
    try:  # private helper, stable since Ray 1.x; best effort only
        from ray._private.utils import read_ray_address

        return read_ray_address() or None
    except Exception:  # noqa: BLE001 - no address file or another Ray layout
        return None


def probe_address(hostport: str, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """None when a TCP connection to ``host:port`` opens within ``timeout_s``, else why not."""
    import socket

    host, _, port = hostport.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit():
        return f"{hostport!r} is not HOST:PORT"
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return None
    except TimeoutError:
        return f"no answer from {host}:{port} within {timeout_s:.0f} s"
    except OSError as exc:
        return f"{host}:{port}: {exc.strerror or exc}"


def call_with_deadline(fn, timeout_s: float):
    """``fn()`` on a daemon thread; its result, its exception, or TimeoutError after
    ``timeout_s`` (the thread is abandoned: Ray's connection loop cannot be cancelled,
    and the run stops anyway)."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = exc

    th = threading.Thread(target=target, name="hepascreen-ray-init", daemon=True)
    th.start()
    th.join(timeout_s)
    if th.is_alive():
        raise TimeoutError(f"not done within {timeout_s} s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


# --- the actors' resources ----------------------------------------------------------
def gpus_per_worker(cluster_gpus: float, workers: int, requested: float | None = None) -> float:
    """``num_gpus`` of each actor with ``--device gpu``.

    ``requested`` (``--ray-gpus``) wins; otherwise the actors share the cluster's cards
    evenly: ``ceil(workers / cards)`` actors per card, each ``1 / that`` (rounded down to
    Ray's 1e-4 resource precision so that they really fit on one card).

    Raises
    ------
    ConfigError
        The cluster has no GPU.
    """
    if cluster_gpus < 1 and not requested:
        raise ConfigError(
            "--device gpu with --ray: the Ray cluster reports no GPU (ray.cluster_resources() "
            "has no 'GPU'); start the GPU nodes with `ray start --num-gpus N`, or use --device cpu"
        )
    if requested:
        return float(requested)
    per_card = math.ceil(workers / int(cluster_gpus))
    return math.floor(10_000 / per_card) / 10_000


def actor_options(cpus: float, gpus: float, concurrency: int) -> dict:
    """The ``ray.remote`` options of :class:`ScanWorker` (``gpus`` 0: no GPU claimed)."""
    options = {
        "num_cpus": cpus,
        "max_restarts": -1,  # a killed worker comes back (and reopens its segmenter)
        "max_task_retries": 0,  # its scans are re-sent by the driver, counted
        "max_concurrency": concurrency,
    }
    if gpus > 0:
        # Without a GPU claim Ray sets CUDA_VISIBLE_DEVICES="" in the actor: CuPy then
        # sees no device and every scan fails.
        options["num_gpus"] = gpus
    return options


# --- the segmenter each actor opens ----------------------------------------------
def worker_spec(seg, *, max_in_flight: int = 2, client_kwargs: dict | None = None) -> dict:
    """What an actor needs to open its own segmenter like the driver's ``seg``.

    A :class:`client.pipeline.segmenters.MaskFolderSegmenter` travels as its folder and
    label map; a :class:`client.pipeline.segmenters.TritonSegmenter` as its URL(s) (the
    bundled server's loopback URL when the driver started one).
    """
    from client.serving.endpoints import EndpointPool

    if seg.kind == "masks":
        return {"kind": "masks", "folder": str(seg.folder), "label_map": seg.label_map}
    transport = seg.transport
    urls = transport.urls if isinstance(transport, EndpointPool) else [transport.url]
    return {
        "kind": "triton",
        "urls": list(urls),
        "max_in_flight": int(max_in_flight),
        "client_kwargs": {k: v for k, v in (client_kwargs or {}).items() if v},
        "model_sha256": seg.model_sha256,
    }


def segmenter_from_spec(spec: dict):
    """Open the segmenter described by :func:`worker_spec` (in an actor; the caller closes it)."""
    from contextlib import ExitStack

    from client.pipeline.segmenters import open_segmenter

    with ExitStack() as stack:
        if spec["kind"] == "masks":
            return open_segmenter(stack, masks=spec["folder"], label_map=spec["label_map"])
        seg = open_segmenter(
            stack, url=spec["urls"], max_in_flight=spec.get("max_in_flight", 2),
            **spec.get("client_kwargs", {}),
        )  # fmt: skip
        stack.pop_all()  # the actor keeps it open (ScanWorker.close)
    seg.model_sha256 = spec.get("model_sha256")
    return seg


class ScanWorker:
    """A Ray actor's body: one segmenter kept open, :func:`screen_scan` per call.

    Parameters
    ----------
    spec : dict
        From :func:`worker_spec`.
    config : client.pipeline.screen.ScreenConfig
    """

    def __init__(self, spec: dict, config, gpu: dict | None = None):
        from client.pipeline.screen import screen_scan

        self._screen = screen_scan
        self.config = config
        self.gpu = gpu or {}
        if self.gpu:  # this actor's part of its card: budget and slots (client/serving/gpu.py)
            from client.serving.gpu import configure

            configure(concurrency=self.gpu.get("concurrency"), share=min(1.0, self.gpu["share"]))
        self.segmenter = segmenter_from_spec(spec)

    def info(self) -> dict:
        import socket

        out = {"pid": os.getpid(), "host": socket.gethostname()}
        if self.gpu:
            import ray

            out["gpu_ids"] = [str(g) for g in ray.get_gpu_ids()]
            out["cuda_visible_devices"] = os.environ.get("CUDA_VISIBLE_DEVICES")
            out["gpu_share"] = self.gpu["share"]
        return out

    def screen(self, source) -> dict:
        """Screen one scan; returns its row (never the label map: rows travel, files stay)."""
        result = self._screen(source, self.segmenter, self.config)
        return {"row": result.row, "pid": os.getpid()}

    def statistics(self) -> dict | None:
        """This actor's segmenter statistics (requests per endpoint, take-outs, ...)."""
        return {**self.info(), "statistics": self.segmenter.statistics()}

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
    config : client.pipeline.screen.ScreenConfig
    workers : int
        Number of actors.
    cpus_per_worker : float
        CPUs each actor claims from Ray.
    in_flight : int, optional
        Scans in flight at once (default: 2 per actor; at least one per actor).
    gpus_per_worker : float
        ``num_gpus`` each actor claims (0: none; :func:`gpus_per_worker` for
        ``--device gpu``).
    max_retries : int
        Times a scan is sent again after its worker died.
    restart_timeout_s : float
        How long a dead actor may take to come back before it is given up.

    Use after :func:`init_ray`, in a ``with`` block (actors are killed on exit).
    """

    def __init__(self, spec: dict, config, *, workers: int, cpus_per_worker: float = DEFAULT_CPUS,
                 in_flight: int | None = None, max_retries: int = MAX_RETRIES,
                 restart_timeout_s: float = 300.0, gpus_per_worker: float = 0.0):  # fmt: skip
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
        self.gpus = float(gpus_per_worker)
        self.options = actor_options(self.cpus, self.gpus, self.per_actor)
        self.actors: list = []
        self.worker_info: list[dict] = []
        self.retried: list[dict] = []

    def __enter__(self) -> RayScreen:
        ray = self.ray
        remote = ray.remote(**self.options)(ScanWorker)
        gpu = {"share": self.gpus, "concurrency": self.per_actor} if self.gpus > 0 else None
        self.actors = [remote.remote(self.spec, self.config, gpu) for _ in range(self.workers)]
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


__all__ = [
    "MAX_RETRIES",
    "RayScreen",
    "ScanWorker",
    "actor_options",
    "add_ray_arguments",
    "cluster_address",
    "gpus_per_worker",
    "init_ray",
    "segmenter_from_spec",
    "worker_spec",
]
