"""A segmenter that survives its server: restarts, deadlines, quick failure of dead endpoints.

:class:`SupervisedSegmenter` owns the bundled Triton server (or a remote ``--url``)
and the gRPC client; it is a :class:`client.serving.model.Transport`::

    with SupervisedSegmenter(url=None, log_path=out / "server.log") as seg:
        labels = seg.infer(batch)[contract.OUTPUT_NAME]  # uint8 [N, 1, z, y, x] -> [N, z, y, x]
        stats = seg.statistics()                          # this run only (for run.json)

What it does so callers do not have to:

* **Deadline per request, derived from measured inference time.** At start a
  second warm-up request of zeros is timed (the first absorbs lazy loading); afterwards every answered request is.
  A request gets ``max(min_deadline_s, deadline_factor * max(slowest recent
  latency, warm-up time x max_in_flight))`` seconds (queueing included).
* **Bundled server died** (process exited, requests answered UNAVAILABLE): it is
  restarted on fresh ports (at most ``max_restarts`` times per run) and the
  requests in flight are retried on the new server; the caller only sees the
  delay. A background watchdog also notices a death between requests.
* **Bundled server hung** (e.g. SIGSTOP, a deadlocked backend): the request's
  deadline expires, a liveness check gets no answer within 2 s, the server's
  process group is SIGKILLed and restarted, the request retried. A server that
  answers the liveness check was merely slow: the request is retried with a
  doubled deadline instead.
* **Remote endpoint dead**: the first failing request checks liveness and fails
  with a clear message; later requests fail at once with the same message
  (re-checked every ``down_recheck_s`` seconds) instead of each waiting through
  retries.
* When the restarts are used up, every request fails at once with a message
  naming the reason and the server log.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from pathlib import Path

import numpy as np

from client.core import contract
from client.core.errors import InferenceError

RECOVERABLE = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED", "RESOURCE_EXHAUSTED", "INTERNAL")


class SupervisedSegmenter:
    """Segment volumes through Triton, restarting the bundled server when it dies or hangs.

    Parameters
    ----------
    url : str, optional
        ``host:port`` of a remote server's gRPC endpoint; None starts the bundled
        server (:class:`client.serving.server.EmbeddedServer`).
    model_repository : Path, optional
        For the bundled server (default: the project's CPU repository).
    log_path : Path, optional
        Bundled server's log (appended across restarts).
    max_in_flight : int
        Requests meant to be outstanding at once (the bound of
        :class:`client.serving.futures.InferenceFutures` over this object; queueing
        behind them counts in the deadline).
    max_restarts : int
        Restarts of the bundled server per run before giving up.
    deadline_factor, min_deadline_s : float
        Per-request deadline: ``max(min_deadline_s, deadline_factor * reference)``
        where the reference is the slowest of the last 64 answered requests, at least
        the warm-up request's time times ``max_in_flight``.
    first_deadline_s : float
        Deadline of the warm-up request (model loading may be slow).
    ready_timeout_s : float
        How long to wait for a server to become ready (start and each restart).
    down_recheck_s : float
        A remote server found dead is checked again after this many seconds;
        requests in between fail at once.
    watch_interval_s : float
        How often the watchdog thread checks that the bundled server process lives
        (0: no thread); every ``max(2, 2 x interval)`` s it also asks for liveness, and
        three unanswered checks in a row (2 s each) count as a hang.
    server_kwargs, client_kwargs : dict, optional
        More arguments for :class:`EmbeddedServer` (e.g. ``extra_args``) /
        :class:`SegmentationClient` (e.g. TLS options for a remote server); other
        keyword arguments go to the client too.

    Attributes
    ----------
    model : client.serving.model.ServedModel
        The served model (read by :meth:`start`; None before).

    Raises
    ------
    InferenceError
        From :meth:`start` when no server can be reached or the model does not
        match the contract; from requests as described in the module docstring.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        model_repository: Path | str | None = None,
        log_path: Path | str | None = None,
        max_in_flight: int = contract.DEFAULT_MAX_IN_FLIGHT,
        max_restarts: int = 3,
        deadline_factor: float = 4.0,
        min_deadline_s: float = 10.0,
        first_deadline_s: float = 300.0,
        ready_timeout_s: float = 60.0,
        down_recheck_s: float = 5.0,
        watch_interval_s: float = 1.0,
        server_kwargs: dict | None = None,
        client_kwargs: dict | None = None,
        **more_client_kwargs,
    ):
        self.remote_url = url
        self.model_repository = model_repository
        self.log_path = log_path
        self.max_in_flight = max(1, int(max_in_flight))
        self.max_restarts = int(max_restarts)
        self.deadline_factor = float(deadline_factor)
        self.min_deadline_s = float(min_deadline_s)
        self.first_deadline_s = float(first_deadline_s)
        self.ready_timeout_s = float(ready_timeout_s)
        self.down_recheck_s = float(down_recheck_s)
        self.watch_interval_s = float(watch_interval_s)
        self.server_kwargs = dict(server_kwargs or {})
        self.client_kwargs = {**(client_kwargs or {}), **more_client_kwargs}
        self.server = None
        self.client = None
        self.model = None
        self.restarts = 0
        self.events: list[dict] = []
        self._gen = 0
        self._old_clients: list = []
        self._lock = threading.Lock()  # state below
        self._restart_lock = threading.Lock()  # one restart at a time
        self._latencies: deque = deque(maxlen=64)
        self._warmup_s: float | None = None
        self._gave_up: str | None = None
        self._down: dict | None = None
        self._n_requests = 0
        self._n_volumes = 0
        self._baseline = {"inference_count": 0, "execution_count": 0}
        self._baseline_gen = 0
        self._stop = threading.Event()
        self._watchdog: threading.Thread | None = None
        self._t0 = time.monotonic()

    # -- life cycle -----------------------------------------------------------------
    @property
    def embedded(self) -> bool:
        return self.remote_url is None

    @property
    def url(self) -> str:
        return self.remote_url or self.server.grpc_url

    def start(self) -> SupervisedSegmenter:
        """Start (or reach) the server, check the model, time a warm-up request."""
        if self.client is not None:
            return self
        try:
            if self.embedded:
                from client.serving.server import EmbeddedServer

                self.server = EmbeddedServer(
                    self.model_repository,
                    log_path=self.log_path,
                    startup_timeout_s=self.ready_timeout_s,
                    **self.server_kwargs,
                )
                self.server.start()
            self.client = self._new_client()
            self.model = self.client.model
            # The warm-up's two requests are excluded from this run's counts: on a fresh
            # bundled server they are the first two; on a remote one (which may have
            # served others before) wait until the counter has moved past them, else a
            # late update lands in this run's statistics.
            before = 0 if self.embedded else self._counts_after(None)["inference_count"]
            self._warm_up()
            self._baseline = self._counts_after(before + 2)
        except BaseException:
            self.close()
            raise
        if self.embedded and self.watch_interval_s > 0:
            self._watchdog = threading.Thread(
                target=self._watch, name="triton-watchdog", daemon=True
            )
            self._watchdog.start()
        return self

    def _new_client(self):
        from client.serving.triton import SegmentationClient

        return SegmentationClient(
            self.url,
            max_in_flight=self.max_in_flight,
            retries=0,
            ready_timeout_s=self.ready_timeout_s
            if self.embedded
            else min(self.ready_timeout_s, 30.0),
            **self.client_kwargs,
        )

    def _warm_up(self) -> None:
        zeros = np.zeros((1, *self.model.input_shape), np.uint8)
        self.client.infer(zeros, timeout_s=self.first_deadline_s, retries=1)  # loads lazily
        t = time.monotonic()
        self.client.infer(zeros, timeout_s=self.first_deadline_s, retries=1)  # the timed one
        self._warmup_s = time.monotonic() - t

    def _counts_after(self, at_least: int | None) -> dict:
        """Server counters now (the warm-up is excluded from this run's counts).

        Statistics are updated just after a response is sent: poll briefly (at most 3 s)
        until the inference count reaches ``at_least`` (None: take them as they are).
        """
        deadline = time.monotonic() + 3.0
        while True:
            try:
                st = self.client.statistics(timeout_s=5.0)
            except InferenceError:
                return {"inference_count": 0, "execution_count": 0}
            counts = {k: int(st[k]) for k in ("inference_count", "execution_count")}
            if at_least is None or counts["inference_count"] >= at_least:
                return counts
            if time.monotonic() > deadline:
                return counts
            time.sleep(0.05)

    def close(self) -> None:
        """Stop the watchdog, close the clients, stop the bundled server (idempotent)."""
        self._stop.set()
        if self._watchdog is not None and self._watchdog is not threading.current_thread():
            self._watchdog.join(timeout=10)
        for c in [*self._old_clients, self.client]:
            if c is not None:
                c.close()
        self._old_clients = []
        if self.server is not None:
            self.server.stop()

    def __enter__(self) -> SupervisedSegmenter:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- requests ---------------------------------------------------------------------
    def deadline_s(self) -> float:
        """The deadline a request gets now (seconds), from measured inference times."""
        with self._lock:
            recent = max(self._latencies) if self._latencies else 0.0
        ref = max(recent, (self._warmup_s or 0.0) * self.max_in_flight)
        return max(self.min_deadline_s, self.deadline_factor * ref)

    def _current(self):
        if self.client is None:
            raise InferenceError("segmenter not started (call start() or use it in a with block)")
        if self._gave_up:
            raise InferenceError(self._gave_up)
        down = self._down
        if down is not None:
            if time.monotonic() - down["checked"] < self.down_recheck_s:
                raise InferenceError(down["message"], status="UNAVAILABLE")
            if self.client.is_live(2.0):
                self._event("remote server reachable again")
                self._down = None
            else:
                down["checked"] = time.monotonic()
                raise InferenceError(down["message"], status="UNAVAILABLE")
        with self._lock:
            return self._gen, self.client

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Segment a batch ``[N, 1, z, y, x]`` uint8 -> the model's outputs by name, surviving
        server faults (see :meth:`client.serving.triton.SegmentationClient.infer`)."""
        timeout = None
        attempts = 0
        while True:
            gen, client = self._current()
            t = self.deadline_s() if timeout is None else timeout
            t0 = time.monotonic()
            try:
                out = client.infer(batch, timeout_s=t, retries=0)
            except InferenceError as exc:
                if exc.status not in RECOVERABLE:
                    raise
                attempts += 1
                if attempts > self.max_restarts + 3:
                    raise InferenceError(
                        f"{exc} (gave up after {attempts} attempts)", status=exc.status
                    ) from exc
                action = self._recover(gen, client, exc, t)
                timeout = 2 * t if action == "longer" else None
                continue
            with self._lock:
                self._latencies.append(time.monotonic() - t0)
                self._n_requests += 1
                self._n_volumes += int(batch.shape[0])
            return out

    # -- faults -------------------------------------------------------------------------
    def _event(self, what: str) -> None:
        with self._lock:
            self.events.append({"t_s": round(time.monotonic() - self._t0, 2), "event": what})

    def _recover(self, gen: int, client, exc: InferenceError, deadline: float) -> str:  # noqa: C901
        """Decide after a failed request: 'retry', 'longer' (same server, more time) or raise."""
        if not self.embedded:
            if client.is_live(2.0):
                return "longer" if exc.status == "DEADLINE_EXCEEDED" else "retry"
            msg = (
                f"Triton at {self.url} is not reachable ({exc.status}: no answer to a liveness "
                "check within 2 s); scans are not segmented until it answers again"
            )
            self._down = {"message": msg, "checked": time.monotonic()}
            self._event(f"remote server unreachable ({exc.status})")
            raise InferenceError(msg, status="UNAVAILABLE") from exc
        with self._restart_lock:
            if self._gave_up:
                raise InferenceError(self._gave_up) from exc
            if gen != self._gen:
                return "retry"  # another request already restarted the server
            srv = self.server
            proc = srv._proc
            if srv.is_running() and client.is_live(2.0):
                if exc.status == "INTERNAL":
                    raise exc
                return "longer" if exc.status == "DEADLINE_EXCEEDED" else "retry"
            # A killed server's connections close while the process is still exiting:
            # give it a moment to become reapable, so the reason names what happened.
            t_end = time.monotonic() + 2.0
            while srv.is_running() and time.monotonic() < t_end:
                time.sleep(0.05)
            if not srv.is_running():
                rc = proc.poll() if proc is not None else None
                reason = f"tritonserver exited (code {rc})"
            else:
                reason = (
                    f"tritonserver stopped answering ({exc.status} with a request deadline of "
                    f"{deadline:.1f} s; no answer to a liveness check within 2 s)"
                )
            self._restart(reason)
            return "retry"

    def _restart(self, reason: str) -> None:
        """Kill and restart the bundled server on fresh ports (caller holds _restart_lock)."""
        from client.serving.server import _free_port

        if self.restarts >= self.max_restarts:
            tail = self.server.last_log_tail or self.server._log_tail(8)
            self._gave_up = (
                f"the bundled Triton server failed {self.restarts + 1} times, last: {reason}; "
                f"gave up after {self.max_restarts} restarts (log {self.server.log_path}): "
                + " | ".join(tail.splitlines()[-3:])
            )
            self._event(f"gave up: {reason}")
            self.server.kill()
            raise InferenceError(self._gave_up)
        self._event(f"restart {self.restarts + 1}: {reason}")
        self.server.kill()
        host = self.server.host
        self.server.http_port = _free_port(host)
        self.server.grpc_port = _free_port(host)
        self.server.metrics_port = _free_port(host)
        try:
            self.server.start()
            client = self._new_client()
        except InferenceError as exc:
            self.restarts += 1
            if self.restarts >= self.max_restarts:
                self._gave_up = (
                    f"the bundled Triton server could not be restarted after {reason}: {exc}"
                )
                raise InferenceError(self._gave_up) from exc
            return self._restart(f"restart failed: {str(exc).splitlines()[0]}")
        with self._lock:
            self._old_clients.append(self.client)
            self.client = client
            self._gen += 1
            self.restarts += 1
            self._baseline = {"inference_count": 0, "execution_count": 0}
            self._baseline_gen = self._gen
        self._event(f"restarted on {self.server.grpc_url}")

    def _watch(self) -> None:
        """Background: restart a bundled server that died or hangs between requests."""
        misses = 0
        last_probe = time.monotonic()
        while not self._stop.wait(self.watch_interval_s):
            if self._gave_up or self.server is None:
                return
            with self._lock:
                gen, client = self._gen, self.client
            try:
                if not self.server.is_running():
                    with self._restart_lock:
                        if gen == self._gen and not self._stop.is_set():
                            self._restart("tritonserver exited (seen by the watchdog)")
                    continue
                if time.monotonic() - last_probe >= max(2.0, 2 * self.watch_interval_s):
                    last_probe = time.monotonic()
                    misses = 0 if client.is_live(2.0) else misses + 1
                    if misses >= 3:
                        misses = 0
                        with self._restart_lock:
                            if gen == self._gen and not self._stop.is_set():
                                self._restart(
                                    "tritonserver stopped answering liveness checks (watchdog)"
                                )
            except InferenceError:
                return  # gave up; requests report it
            except Exception:  # noqa: BLE001 - the watchdog must not die silently mid-run
                continue

    # -- statistics ---------------------------------------------------------------------------
    def statistics(self) -> dict:
        """This run's statistics (never the server's lifetime counters).

        ``requests`` / ``volumes``: answered by the server for this object (exact,
        across restarts). ``inference_count`` / ``execution_count``: the server's own
        counters since this run started or since the last restart
        (``server_counts_since``), minus what a remote server had counted before.
        Also ``restarts``, ``events``, ``deadline_s``, ``warmup_s``.
        """
        out: dict = {
            "requests": self._n_requests,
            "volumes": self._n_volumes,
            "restarts": self.restarts,
            "events": list(self.events),
            "deadline_s": round(self.deadline_s(), 2),
            "warmup_s": None if self._warmup_s is None else round(self._warmup_s, 3),
            "server_counts_since": "start"
            if self._baseline_gen == 0
            else f"restart {self.restarts}",
        }
        try:
            st = self.client.statistics(timeout_s=5.0)
            for k in ("inference_count", "execution_count"):
                out[k] = int(st[k]) - int(self._baseline.get(k, 0))
            out["batch_stats"] = st.get("batch_stats", [])
        except (InferenceError, AttributeError):
            out["inference_count"] = out["execution_count"] = None
        return out
