"""How the scans of a run are executed: threads in this process, or Ray actors.

One interface, :class:`Executor`: ``run(sources, on_row, more=None)`` screens
``sources`` with :func:`client.pipeline.screen.screen_scan` and calls ``on_row(row)``
once per scan, on the calling thread, in the order the scans finish; then, while
``more()`` returns further scans (the rounds of ``--series best``,
:func:`client.pipeline.study.rounds`), screens those too, with the same threads or
actors. The caller owns everything a row does next (store it, count it, show
progress): :mod:`client.cli.batch` has the one row handler of a run, whichever
executor runs it.

* :class:`ThreadExecutor`: at most ``concurrency`` scans in flight in a thread pool;
  their stages overlap and the server's dynamic batcher merges their requests.
* :class:`RayExecutor`: :class:`client.scaleout.ray_runner.RayScreen` (actors that
  keep their segmenter open, bounded in flight, dead-worker retries) with Ray started
  or joined for the run and stopped after it (``--ray``, docs/scale-out.md).

Executors take explicit options (:class:`RayOptions`), never the parsed command line.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from client.core import contract
from client.core.errors import ConfigError
from client.scaleout import ray_runner as rr  # Ray itself is imported only when a run uses it

if TYPE_CHECKING:
    from client.pipeline.screen import ScreenConfig
    from client.pipeline.segmenters import Segmenter
    from client.reading.discover import ScanSource

RowCallback = Callable[[dict], None]
"""Called with each scan's row (a dict of :data:`client.core.contract.RESULT_SCHEMA`)."""
MoreSources = Callable[[], Sequence["ScanSource"]]
"""Called once the scans given so far are done: the next ones, or an empty sequence to stop."""


@runtime_checkable
class Executor(Protocol):
    """Runs scans and hands each row to one callback (see the module docstring)."""

    def run(
        self,
        sources: Sequence[ScanSource],
        on_row: RowCallback,
        more: MoreSources | None = None,
    ) -> None:
        """Screen ``sources``, then every batch ``more()`` gives until it gives none;
        ``on_row(row)`` once per scan, on this thread. Returns when all are done."""
        ...


def _batches(sources: Sequence[ScanSource], more: MoreSources | None):
    """``sources``, then what ``more()`` returns, until a batch is empty."""
    batch = list(sources)
    while batch:
        yield batch
        batch = list(more()) if more is not None else []


@dataclass(frozen=True)
class ThreadExecutor:
    """Scans in a thread pool of this process, at most ``concurrency`` in flight.

    Parameters
    ----------
    segmenter : Segmenter or None
        Open, shared by the threads (None only when there is nothing to screen).
    config : ScreenConfig
    concurrency : int
        Scans in flight (and threads) at once.
    """

    segmenter: Segmenter | None
    config: ScreenConfig
    concurrency: int = contract.DEFAULT_MAX_IN_FLIGHT

    def run(
        self,
        sources: Sequence[ScanSource],
        on_row: RowCallback,
        more: MoreSources | None = None,
    ) -> None:
        from client.pipeline.screen import screen_scan

        batches = _batches(sources, more)
        batch = next(batches, None)
        if batch is None:
            return
        pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="scan")
        pending: set = set()
        try:
            while batch is not None:
                queue = deque(batch)
                while queue or pending:
                    while queue and len(pending) < self.concurrency:
                        pending.add(pool.submit(screen_scan, queue.popleft(), self.segmenter,
                                                self.config))  # fmt: skip
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for f in finished:
                        on_row(f.result().row)
                batch = next(batches, None)
        finally:
            for f in pending:
                f.cancel()
            pool.shutdown(wait=True, cancel_futures=True)


@dataclass(frozen=True)
class RayOptions:
    """How :class:`RayExecutor` runs (the ``--ray*`` options, docs/scale-out.md).

    Parameters
    ----------
    address : str
        ``local``, ``auto`` or ``ray://HOST:PORT`` (:func:`ray_runner.init_ray`).
    workers : int, optional
        Actors (default: one per CPU of the cluster, at most one per scan).
    cpus_per_worker : float
        CPUs each actor claims.
    gpus_per_worker : float, optional
        GPUs each actor claims with ``device='gpu'`` (default: the cluster's shared
        evenly, :func:`ray_runner.gpus_per_worker`).
    concurrency : int
        Scans in flight at once (at least one per actor).
    client_kwargs : mapping
        TLS settings of the actors' gRPC clients (``ssl``, ``root_certificates``, ...).
    """

    address: str
    workers: int | None = None
    cpus_per_worker: float = rr.DEFAULT_CPUS
    gpus_per_worker: float | None = None
    concurrency: int = contract.DEFAULT_MAX_IN_FLIGHT
    client_kwargs: Mapping[str, object] = field(default_factory=dict)


class RayExecutor:
    """Scans in Ray actors (:class:`client.scaleout.ray_runner.RayScreen`).

    Ray is started (``local``) or joined when :meth:`run` gets scans, and one set of
    actors serves every batch of the run; a Ray instance this run started is shut down
    at its end. Nothing is started for an empty ``sources``.

    Parameters
    ----------
    segmenter : Segmenter
        The driver's segmenter, already open: the actors open their own like it
        (:func:`ray_runner.worker_spec`).
    config : ScreenConfig
    options : RayOptions
    on_info : callable, optional
        Called with the run's Ray description (address, workers and their processes,
        CPUs and GPUs per actor, in flight, the actors' segmenter, ``worker_statistics``,
        ``retried``) when the actors are up and again at the end (``run.json`` ``ray``).
    """

    def __init__(
        self,
        segmenter: Segmenter | None,
        config: ScreenConfig,
        options: RayOptions,
        on_info: Callable[[dict], None] | None = None,
    ):
        self.segmenter, self.config, self.options = segmenter, config, options
        self.on_info = on_info or (lambda info: None)

    def run(
        self,
        sources: Sequence[ScanSource],
        on_row: RowCallback,
        more: MoreSources | None = None,
    ) -> None:
        if not sources:
            return
        seg, opt = self.segmenter, self.options
        if seg is None:
            raise ConfigError("--ray: no segmenter opened")
        started = rr.init_ray(opt.address)
        workers = opt.workers or rr.default_workers(len(sources))
        in_flight = max(opt.concurrency, workers)
        spec = rr.worker_spec(seg, max_in_flight=math.ceil(in_flight / workers),
                              client_kwargs=dict(opt.client_kwargs))  # fmt: skip
        gpus = 0.0
        if getattr(self.config, "device", "cpu") == "gpu":
            gpus = rr.gpus_per_worker(rr.import_ray().cluster_resources().get("GPU", 0), workers,
                                      opt.gpus_per_worker)  # fmt: skip
        t0 = time.perf_counter()
        screen = rr.RayScreen(spec, self.config, workers=workers,
                              cpus_per_worker=opt.cpus_per_worker, in_flight=in_flight,
                              gpus_per_worker=gpus)  # fmt: skip
        info = {"address": opt.address, "started_local": started, "workers": workers,
                "cpus_per_worker": opt.cpus_per_worker, "gpus_per_worker": gpus,
                "in_flight": in_flight,
                "segmenter": {k: v for k, v in spec.items() if k != "client_kwargs"}}  # fmt: skip
        try:
            with screen:
                info["worker_processes"] = screen.worker_info
                info["start_s"] = round(time.perf_counter() - t0, 2)
                self.on_info(info)
                for batch in _batches(sources, more):
                    screen.run(batch, on_row)
                # The driver's own segmenter served nothing: the actors' statistics tell.
                info["worker_statistics"] = screen.statistics()
        finally:
            info["retried"] = screen.retried
            self.on_info(info)
            if started:
                rr.import_ray().shutdown()


__all__ = [
    "Executor",
    "MoreSources",
    "RayExecutor",
    "RayOptions",
    "RowCallback",
    "ThreadExecutor",
]
