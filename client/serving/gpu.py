"""A small pool of GPU slots for the measurement: bounded GPU memory, one CUDA stream per slot.

Why
---
With ``--device gpu`` every worker thread used to copy its whole scan to the GPU and
measure it there: up to ``--concurrency`` full-size scans at once beside Triton's
engine, all on CuPy's default stream (so no overlap was gained either). A
:class:`GpuSlots` pool lets at most ``n_slots`` scans be on the GPU at a time,
whatever ``--concurrency`` is; the others wait for a slot (their reading,
preprocessing and inference go on meanwhile). Each slot owns one non-blocking
CUDA stream, made current for the thread inside the slot, so the scans in
different slots overlap on the GPU. One stream per SLOT (not per thread)
also bounds CuPy's memory pool: it keeps freed blocks per stream (one arena per
stream in ``cupy.cuda.memory.SingleDeviceMemoryPool``), so the cached memory
stays at most ``n_slots`` scans' worth; a pool limit (``budget_bytes``) makes an
oversized scan fail alone with an out-of-memory error row instead of starving
Triton.

On CPU (``enabled=False``, or no usable GPU) a slot is a no-op context: nothing
waits, nothing imports CuPy.

Numbers behind the slot count (ESTIMATES: nothing could be measured on a GPU here)
---------------------------------------------------------------------------------
* Measurement memory per scan: the inputs are int16 HU + uint8 labels = 3 B/voxel.
  The NumPy run of ``postprocess.assess`` on phantoms (``tracemalloc``) peaked at
  12.8 MB for 0.79 M voxels, 23.9 MB for 3.5 M and 75.2 MB for 16.4 M: 4.0 B per
  voxel plus about 10 MB that does not grow with the scan, i.e. about 7 B/voxel
  with the inputs. CuPy's connected-component labelling works in int32 over the
  organ's box and CuPy rounds allocations up, so we budget 1.7x that:
  :data:`BYTES_PER_VOXEL` = 12 (tests/test_gpu_slots.py re-measures the slope).
* Reference scan: a thin-slice abdomen/pelvis CT, 512 x 512 x 1000 voxels
  (0.625 mm slices over 62.5 cm): 262 M voxels x 12 B = 3.1 GB. A routine
  512 x 512 x 300 scan needs about 0.9 GB.
* Budget: 80 % of the GPU memory free when the client starts. Compose starts
  the client after the server is healthy, so Triton's engine and execution context
  and both CUDA contexts are already accounted for. (For scale: the original
  full-width VNet at 128^3 writes 314 M activation elements per volume,
  benchmarks/GPU.md, i.e. 0.63 GB per volume in FP16 if nothing were reused;
  TensorRT reuses activation memory, so a batch-8 context is estimated at 3-4 GB
  with weights and workspace; the shipped quarter-width 64^3 model needs far less.)
* Slots = budget // reference scan, at least 1, at most :data:`MAX_SLOTS` = 4
  (beyond a few concurrent measurements the small, memory-bound kernels of
  labelling and filtering no longer overlap usefully on one GPU). Examples:
  16 GB card, ~11 GB free -> 8.8 GB budget -> 2 slots; 24 GB (~19 GB free) -> 4;
  8 GB (~3.5 GB free) -> 1 slot (a 262 M-voxel scan may then exceed the budget
  and fail alone as out of memory; 512 x 512 x 300 scans fit).
* ``HEPASCREEN_GPU_SLOTS=N`` overrides the count; the budget still applies.
* Slots never exceed the scans that can be in flight (``--concurrency``, or a Ray
  actor's concurrency): :func:`configure` before the first measurement.
* Several processes on one GPU (Ray actors with fractional ``num_gpus``): each
  process gets its ``share`` of the budget and of the slot count
  (:func:`configure`), so N actors on a card together stay within the 80 %.
"""

from __future__ import annotations

import os
import queue
import threading
from contextlib import contextmanager
from dataclasses import dataclass

BYTES_PER_VOXEL = 12
REFERENCE_SHAPE = (1000, 512, 512)  # [z, y, x]
BUDGET_FRACTION = 0.8
MAX_SLOTS = 4
ENV_SLOTS = "HEPASCREEN_GPU_SLOTS"


def measurement_bytes(shape) -> int:
    """Estimated peak GPU memory of measuring one scan of ``shape`` (see the module notes)."""
    n = 1
    for s in shape:
        n *= int(s)
    return n * BYTES_PER_VOXEL


def choose_slots(
    free_bytes: int,
    reference_shape=REFERENCE_SHAPE,
    budget_fraction: float = BUDGET_FRACTION,
    max_slots: int = MAX_SLOTS,
) -> int:
    """Slots that fit ``budget_fraction`` of ``free_bytes`` for reference-sized scans (1..max)."""
    budget = int(free_bytes * budget_fraction)
    return max(1, min(max_slots, budget // measurement_bytes(reference_shape)))


@dataclass
class _Slot:
    index: int
    stream: object  # cupy.cuda.Stream, or a stand-in with the same context protocol


class GpuSlots:
    """At most ``n_slots`` measurements on the GPU at once, each on its own CUDA stream.

    Parameters
    ----------
    n_slots : int
        Number of slots (>= 1).
    enabled : bool
        False gives a no-op pool (CPU runs).
    budget_bytes : int, optional
        Limit of CuPy's default memory pool (None: no limit).
    stream_factory : callable, optional
        Makes one stream per slot; default ``cupy.cuda.Stream(non_blocking=True)``.

    Examples
    --------
    >>> slots = GpuSlots.for_run(gpu=False)        # CPU: slot() is a no-op
    >>> with slots.slot():
    ...     pass
    """

    def __init__(self, n_slots: int, enabled: bool = True, budget_bytes=None, stream_factory=None):
        if n_slots < 1:
            raise ValueError(f"expected at least one GPU slot, got {n_slots}")
        self.enabled = bool(enabled)
        self.n_slots = int(n_slots) if self.enabled else 0
        self.budget_bytes = budget_bytes if self.enabled else None
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self.peak_in_use = 0
        self._in_use = 0
        if not self.enabled:
            return
        if stream_factory is None:
            import cupy

            if budget_bytes:
                cupy.get_default_memory_pool().set_limit(size=int(budget_bytes))

            def stream_factory():
                return cupy.cuda.Stream(non_blocking=True)

        for i in range(self.n_slots):
            self._free.put(_Slot(i, stream_factory()))

    @classmethod
    def for_run(
        cls,
        gpu: bool,
        concurrency: int | None = None,
        share: float = 1.0,
        free_bytes=None,
        stream_factory=None,
    ) -> GpuSlots:
        """The pool for one batch run: no-op on CPU, sized from free GPU memory on GPU.

        Call after the GPU check (``postprocess._xp.require_gpu``). ``concurrency``
        caps the count (more slots than worker threads would never be used);
        ``share`` (0 < share <= 1) is this process's part of the GPU when several
        processes use it (Ray actors): budget and slot count are sized from
        ``share`` x the free memory. ``free_bytes`` and ``stream_factory`` replace the CUDA query and streams (tests).
        """
        if not gpu:
            return cls(1, enabled=False)
        if not 0 < share <= 1:
            raise ValueError(f"expected a GPU share in (0, 1], got {share}")
        if free_bytes is None:
            import cupy

            free_bytes, _total = cupy.cuda.runtime.memGetInfo()
        mine = int(free_bytes * share)
        raw = os.environ.get(ENV_SLOTS, "").strip()
        if raw and not (raw.isdigit() and int(raw) > 0):
            raise ValueError(f"{ENV_SLOTS}={raw!r}: expected a positive whole number of GPU slots")
        n = int(raw) if raw else choose_slots(mine)
        if concurrency:
            n = min(n, int(concurrency))
        return cls(max(1, n), enabled=True, budget_bytes=int(mine * BUDGET_FRACTION),
                   stream_factory=stream_factory)  # fmt: skip

    def describe(self) -> dict:
        """For run.json: slot count, memory budget and the estimate behind them."""
        return {
            "enabled": self.enabled,
            "slots": self.n_slots,
            "budget_bytes": self.budget_bytes,
            "bytes_per_voxel_estimate": BYTES_PER_VOXEL,
            "reference_shape": list(REFERENCE_SHAPE),
            "peak_slots_in_use": self.peak_in_use,
        }

    @contextmanager
    def slot(self):
        """Hold one GPU slot; its stream is CuPy's current stream inside the block.

        Copy the scan to the GPU, measure it and bring the results back to the host
        inside the block; the stream is synchronised before the slot is released.
        Yields the slot (None on CPU).
        """
        if not self.enabled:
            yield None
            return
        s = self._free.get()
        with self._lock:
            self._in_use += 1
            self.peak_in_use = max(self.peak_in_use, self._in_use)
        try:
            with s.stream:
                yield s
            s.stream.synchronize()
        finally:
            with self._lock:
                self._in_use -= 1
            self._free.put(s)


_DEFAULT: GpuSlots | None = None
_DEFAULT_LOCK = threading.Lock()
_CPU = None
_SETTINGS = {"concurrency": None, "share": 1.0}


def configure(concurrency: int | None = None, share: float = 1.0) -> None:
    """Settings of the process-wide pool, before its first use.

    Parameters
    ----------
    concurrency : int, optional
        Scans this process can have in flight (``--concurrency``; a Ray actor's
        ``max_concurrency``): the slot count never exceeds it.
    share : float
        This process's part of the GPU (a Ray actor's ``num_gpus``, e.g. 0.5 for two
        actors per card): the memory budget and slot count are scaled by it.

    Raises
    ------
    RuntimeError
        When the pool was already created with other settings (it is never resized
        under running measurements).
    """
    if concurrency is not None and int(concurrency) < 1:
        raise ValueError(f"expected concurrency >= 1, got {concurrency}")
    if not 0 < float(share) <= 1:
        raise ValueError(f"expected a GPU share in (0, 1], got {share}")
    new = {"concurrency": None if concurrency is None else int(concurrency), "share": float(share)}
    with _DEFAULT_LOCK:
        if _DEFAULT is not None and new != _SETTINGS:
            raise RuntimeError(
                f"GPU slots already created with {_SETTINGS}; configure() must come first"
            )
        _SETTINGS.update(new)


def default_slots(gpu: bool) -> GpuSlots:
    """The process-wide pool: a no-op one for CPU runs, one sized from free GPU memory for GPU.

    Created on first use (after the GPU check, ``postprocess._xp.require_gpu``) and shared
    by every worker thread, so the bound holds whatever ``--concurrency`` is.
    """
    global _DEFAULT, _CPU
    if not gpu:
        if _CPU is None:
            _CPU = GpuSlots(1, enabled=False)
        return _CPU
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = GpuSlots.for_run(gpu=True, **_SETTINGS)
        return _DEFAULT


def measurement_slot(gpu: bool):
    """``with measurement_slot(gpu): ...``: hold a GPU slot for one scan's measurement.

    A no-op on CPU. Inside the block, copy the scan to the GPU, measure it and bring the
    results to the host (``postprocess.assess`` returns host values).
    """
    return default_slots(gpu).slot()
