"""Several Triton servers behind one segmenter: least outstanding work, failover, probing.

``--url`` may be given several times (and ``--url-file FILE``, one ``host:port`` a
line, ``#`` comments). :class:`EndpointPool` is then the transport
(:class:`client.serving.model.Transport`) in place of a single
:class:`client.serving.supervisor.SupervisedSegmenter`::

    from client.pipeline.segmenters import TritonSegmenter
    with TritonSegmenter.connect(["gpu-a:8001", "gpu-b:8001"]) as segmenter:
        result = screen_scan("ct.nii.gz", segmenter, ScreenConfig())

* **Routing**: each request goes to the healthy endpoint with the fewest requests
  outstanding (ties: the one that has served fewer, so a sequential caller
  alternates). Every endpoint has the same model (name, input shape), checked at start.
* **Failover**: a request that fails for a reason of the server (UNAVAILABLE,
  DEADLINE_EXCEEDED after the supervisor's own retries, ...) takes that endpoint
  out and is sent again to another one; the caller sees only the delay. A request
  the server refuses for its content (e.g. INVALID_ARGUMENT) fails as before.
* **Probing**: a background thread checks the endpoints taken out (and those that
  could not be reached at start) every ``probe_interval_s`` seconds and puts one
  back once it is live and its model ready.
* When no endpoint is healthy, a request waits up to ``wait_healthy_s`` for one to
  come back, then fails with a message naming every endpoint and its last error
  (the scan becomes an error row; ``--resume`` retries it later).

The pool is a plain object with threads: it works the same in the single-process
CLI and inside a Ray actor (:mod:`client.scaleout.ray_runner`), where each actor keeps its
own pool open for the life of the actor.
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

import numpy as np

from client.core import contract
from client.core.errors import ConfigError, InferenceError
from client.serving.model import ServedModel

# Failures that say something about the endpoint, not about the request.
ENDPOINT_FAULTS = (
    "UNAVAILABLE",
    "DEADLINE_EXCEEDED",
    "CANCELLED",
    "RESOURCE_EXHAUSTED",
    "INTERNAL",
    "UNKNOWN",
    None,
)


def read_url_file(path: Path | str) -> list[str]:
    """``host:port`` lines of ``path`` (blank lines and ``#`` comments skipped).

    Raises
    ------
    ConfigError
        The file is missing, holds no URL, or a line is not ``host:port``.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"--url-file {p}: cannot read it ({exc.strerror})") from exc
    urls = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        check_url(line, f"{p} line {n}")
        urls.append(line)
    if not urls:
        raise ConfigError(f"--url-file {p}: no host:port line in it")
    return urls


def check_url(url: str, where: str = "--url") -> str:
    """``url`` when it looks like ``host:port`` (gRPC, no scheme); ConfigError otherwise."""
    host, sep, port = url.rpartition(":")
    if "://" in url or not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{where}: {url!r} is not HOST:PORT of a Triton gRPC endpoint")
    return url


def unique_urls(urls) -> list[str]:
    """``urls`` without repeats, order kept (``None`` -> ``[]``; a str is one URL)."""
    if urls is None:
        return []
    if isinstance(urls, str):
        urls = [urls]
    return list(dict.fromkeys(urls))


class _UrlFileAction(argparse.Action):
    """``--url-file FILE``: append the file's URLs to ``args.url`` at parse time."""

    def __call__(self, parser, namespace, value, option_string=None):
        try:
            urls = read_url_file(value)
        except ConfigError as exc:
            parser.error(str(exc))
        namespace.url = [*(getattr(namespace, "url", None) or []), *urls]


def _url_type(text: str) -> str:
    try:
        return check_url(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def add_url_arguments(ap: argparse.ArgumentParser) -> None:
    """``--url`` (repeatable) and ``--url-file``: ``args.url`` is a list of URLs or None."""
    ap.add_argument(
        "--url", action="append", type=_url_type, metavar="HOST:PORT",
        help="Triton gRPC endpoint; repeat for several servers (each request goes to the one "
        "with the least outstanding work; a failing one is taken out and probed). "
        "Default: start the bundled server",
    )  # fmt: skip
    ap.add_argument(
        "--url-file", action=_UrlFileAction, metavar="FILE",
        help="more endpoints, one HOST:PORT a line (# comments)",
    )  # fmt: skip


class _Endpoint:
    def __init__(self, url: str):
        self.url = url
        self.sup = None  # SupervisedSegmenter once reached
        self.healthy = False
        self.outstanding = 0
        self.requests = 0
        self.failures = 0
        self.last_error = "not contacted yet"

    def state(self) -> dict:
        return {
            "url": self.url,
            "healthy": self.healthy,
            "requests": self.requests,
            "failures": self.failures,
            "outstanding": self.outstanding,
            "last_error": None if self.healthy else self.last_error,
        }


class EndpointPool:
    """Several Triton endpoints serving the same model, used as one
    (a :class:`client.serving.model.Transport`).

    Parameters
    ----------
    urls : list of str
        ``host:port`` gRPC endpoints (repeats dropped).
    max_in_flight : int
        Requests outstanding at once per endpoint (the pool's ``max_in_flight`` is that
        many times the number of endpoints).
    probe_interval_s : float
        How often endpoints taken out are checked.
    wait_healthy_s : float
        How long a request waits for an endpoint to come back when none is healthy.
    connect_timeout_s : float
        How long :meth:`start` waits for each endpoint to be ready.
    client_kwargs : dict, optional
        TLS options etc. for :class:`client.serving.triton.SegmentationClient`.
    **supervisor_kw
        More :class:`client.serving.supervisor.SupervisedSegmenter` arguments (deadlines).

    Attributes
    ----------
    model : client.serving.model.ServedModel
        The first endpoint's served model (None before :meth:`start`); an endpoint
        serving another name, input size, preprocessing, confidence output or floors, or
        classes is refused.

    Raises
    ------
    InferenceError
        From :meth:`start` when no endpoint answers, or two serve different models
        (name, input size or declared preprocessing).
    """

    def __init__(
        self,
        urls,
        *,
        max_in_flight: int = contract.DEFAULT_MAX_IN_FLIGHT,
        probe_interval_s: float = 2.0,
        wait_healthy_s: float = 60.0,
        connect_timeout_s: float = 10.0,
        client_kwargs: dict | None = None,
        **supervisor_kw,
    ):
        urls = unique_urls(urls)
        if not urls:
            raise ConfigError("EndpointPool needs at least one host:port")
        self.endpoints = [_Endpoint(u) for u in urls]
        self.per_endpoint = max(1, int(max_in_flight))
        self.max_in_flight = self.per_endpoint * len(self.endpoints)
        self.probe_interval_s = float(probe_interval_s)
        self.wait_healthy_s = float(wait_healthy_s)
        self.connect_timeout_s = float(connect_timeout_s)
        self.client_kwargs = dict(client_kwargs or {})
        self.supervisor_kw = supervisor_kw
        self.events: list[dict] = []
        self.model: ServedModel | None = None
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._prober: threading.Thread | None = None
        self._t0 = time.monotonic()
        self._n_volumes = 0

    @property
    def urls(self) -> list[str]:
        return [e.url for e in self.endpoints]

    @property
    def url(self) -> str:
        return ",".join(self.urls)

    # -- life cycle ---------------------------------------------------------------
    def start(self) -> EndpointPool:
        """Reach every endpoint (those that do not answer are probed in the background)."""
        if self._prober is not None:
            return self
        for ep in self.endpoints:
            self._connect(ep, self.connect_timeout_s)
        up = [e for e in self.endpoints if e.healthy]
        if not up:
            self.close()
            raise InferenceError(
                "no Triton endpoint answered: "
                + "; ".join(f"{e.url}: {e.last_error}" for e in self.endpoints)
            )
        self._prober = threading.Thread(target=self._probe_loop, name="endpoint-probe", daemon=True)
        self._prober.start()
        return self

    def _connect(self, ep: _Endpoint, timeout_s: float) -> bool:
        """Start a supervised client for ``ep``; True when it is usable now."""
        from client.serving.supervisor import SupervisedSegmenter

        sup = SupervisedSegmenter(
            ep.url, max_in_flight=self.per_endpoint, ready_timeout_s=timeout_s,
            down_recheck_s=0.0, client_kwargs=self.client_kwargs, **self.supervisor_kw,
        )  # fmt: skip
        try:
            sup.start()
        except InferenceError as exc:
            ep.last_error = str(exc).splitlines()[0]
            return False
        m = sup.model
        with self._cond:
            if self.model is None:
                self.model = m
            first = self.model
            # Same input size but another preprocessing would give wrong masks silently.
            if _input_of(m) != _input_of(first):
                sup.close()
                ep.last_error = (
                    f"serves {m.name} with input {m.model_shape} and preprocessing "
                    f"{_describe(m.preprocess_spec)}, the other endpoints {first.name} with "
                    f"{first.model_shape} and {_describe(first.preprocess_spec)}"
                )
                self._event(f"{ep.url} refused: {ep.last_error}")
                return False
            if _judgement_of(m) != _judgement_of(first):
                # The gate (and the phase) would judge the same scan differently depending
                # on the endpoint.
                sup.close()
                ep.last_error = (
                    f"serves {m.name} with confidence output/floor/classes {_judgement_of(m)}, "
                    f"the other endpoints {_judgement_of(first)}"
                )
                self._event(f"{ep.url} refused: {ep.last_error}")
                return False
            ep.sup, ep.healthy = sup, True
            self._cond.notify_all()
        return True

    def close(self) -> None:
        """Stop the prober and close every endpoint's client (idempotent)."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._prober is not None and self._prober is not threading.current_thread():
            self._prober.join(timeout=10)
        for ep in self.endpoints:
            if ep.sup is not None:
                ep.sup.close()
                ep.sup = None
            ep.healthy = False

    def __enter__(self) -> EndpointPool:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- routing ------------------------------------------------------------------
    def healthy_urls(self) -> list[str]:
        """URLs of the endpoints requests go to now."""
        with self._cond:
            return [e.url for e in self.endpoints if e.healthy]

    def _pick(self):
        deadline = time.monotonic() + self.wait_healthy_s
        with self._cond:
            while True:
                up = [e for e in self.endpoints if e.healthy]
                if up:
                    ep = min(up, key=lambda e: (e.outstanding, e.requests))
                    ep.outstanding += 1
                    return ep, ep.sup  # the client as of now (the prober may replace it)
                left = deadline - time.monotonic()
                if left <= 0 or self._stop.is_set():
                    raise InferenceError(
                        f"no healthy Triton endpoint (waited {self.wait_healthy_s:.0f} s): "
                        + "; ".join(f"{e.url}: {e.last_error}" for e in self.endpoints),
                        status="UNAVAILABLE",
                    )
                self._cond.wait(min(left, 1.0))

    def _take_out(self, ep: _Endpoint, exc: Exception) -> None:
        with self._cond:
            ep.failures += 1
            ep.last_error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if ep.healthy:
                ep.healthy = False
                self._event(f"{ep.url} taken out: {ep.last_error}")

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Segment ``[N, 1, z, y, x]`` on the least busy healthy endpoint, failing over;
        the model's outputs by name."""
        tries = 0
        while True:
            ep, sup = self._pick()
            try:
                out = sup.infer(batch)
            except InferenceError as exc:
                if exc.status not in ENDPOINT_FAULTS:
                    raise  # the request's fault: another endpoint would refuse it too
                self._take_out(ep, exc)
                tries += 1
                if tries > 2 * len(self.endpoints):
                    raise InferenceError(
                        f"{exc} (tried {tries} times on {len(self.endpoints)} endpoints)",
                        status=exc.status,
                    ) from exc
                continue
            finally:
                with self._cond:
                    ep.outstanding -= 1
            with self._cond:
                ep.requests += 1
                self._n_volumes += int(batch.shape[0])
            return out

    # -- probing ------------------------------------------------------------------
    def _probe_loop(self) -> None:
        while not self._stop.wait(self.probe_interval_s):
            for ep in list(self.endpoints):
                if ep.healthy or self._stop.is_set():
                    continue
                try:
                    self._probe(ep)
                except Exception as exc:  # noqa: BLE001 - the prober must keep running
                    ep.last_error = f"probe failed: {type(exc).__name__}: {exc}"

    def _probe(self, ep: _Endpoint) -> None:
        """Reconnect to ``ep`` on a fresh channel (a channel that saw the server go away
        waits out gRPC's reconnect backoff, up to minutes) and time a warm-up request."""
        old, ep.sup = ep.sup, None
        if old is not None:
            old.close()
        if self._connect(ep, min(2.0, self.probe_interval_s)):
            self._event(f"{ep.url} put back (live, model ready, warm-up answered)")

    # -- reporting ----------------------------------------------------------------
    def _event(self, what: str) -> None:
        self.events.append({"t_s": round(time.monotonic() - self._t0, 2), "event": what})

    def statistics(self) -> dict:
        """This run's statistics: totals, and per endpoint its state and supervisor statistics."""
        per = []
        for ep in self.endpoints:
            st = ep.state()
            if ep.sup is not None and ep.healthy:  # a dead one would make us wait
                try:
                    st["supervisor"] = ep.sup.statistics()
                except Exception:  # noqa: BLE001 - a dead endpoint has no statistics
                    st["supervisor"] = None
            per.append(st)
        return {
            "requests": sum(e.requests for e in self.endpoints),
            "volumes": self._n_volumes,
            "endpoints": per,
            "events": list(self.events),
        }


def _input_of(m: ServedModel) -> tuple:
    """What makes two servers' inputs the same: model name, input size, preprocessing."""
    return (m.name, m.model_shape, m.preprocess_spec)


def _judgement_of(m: ServedModel) -> tuple:
    """What makes two servers' answers read the same: confidence output, floors, classes."""
    return (m.has_confidence, m.confidence_floor, m.classes)


def _describe(spec) -> str:
    if spec is None:
        return "unknown"
    params = spec.parameters()
    return ", ".join(f"{k}={v}" for k, v in params.items())


__all__ = [
    "EndpointPool",
    "add_url_arguments",
    "check_url",
    "read_url_file",
    "unique_urls",
]
