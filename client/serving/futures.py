"""The one futures layer: requests in flight over any transport, with back-pressure.

A transport (:class:`client.serving.model.Transport`) answers one batch at a time,
synchronously. :class:`InferenceFutures` keeps several requests outstanding so that
the server's dynamic batcher has work to merge, and blocks the caller while
``max_in_flight`` are outstanding, so that at most that many requests (and their
volumes) are held at once::

    with SupervisedSegmenter(url) as transport, InferenceFutures(transport) as futures:
        outs = [f.result() for f in [futures.submit(w[None]) for w in windows]]
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from client.core.errors import InferenceError
from client.serving.model import Transport


class InferenceFutures:
    """``transport.infer`` on a bounded thread pool: :meth:`submit` returns a Future.

    Parameters
    ----------
    transport : Transport
        Not owned: :meth:`close` stops the threads, the caller closes the transport.
    max_in_flight : int, optional
        Requests outstanding at once (default: ``transport.max_in_flight``).
    """

    def __init__(self, transport: Transport, max_in_flight: int | None = None):
        self.transport = transport
        n = transport.max_in_flight if max_in_flight is None else max_in_flight
        self.max_in_flight = max(1, int(n))
        self._slots = threading.BoundedSemaphore(self.max_in_flight)
        self._pool: ThreadPoolExecutor | None = ThreadPoolExecutor(
            self.max_in_flight, thread_name_prefix="infer"
        )

    def submit(self, batch: np.ndarray) -> Future:
        """Queue ``transport.infer(batch)``; the Future resolves to its outputs by name.

        Blocks while ``max_in_flight`` requests are outstanding (back-pressure).
        """
        pool = self._pool
        if pool is None:
            raise InferenceError("inference futures closed")
        self._slots.acquire()
        try:
            fut = pool.submit(self.transport.infer, batch)
        except BaseException:
            self._slots.release()
            raise
        fut.add_done_callback(lambda _f: self._slots.release())
        return fut

    def close(self) -> None:
        """Wait for the requests outstanding and stop the threads (idempotent)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def __enter__(self) -> InferenceFutures:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["InferenceFutures"]
