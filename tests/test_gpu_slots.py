"""client.serving.gpu slot pool and the GPU check in postprocess._xp, on a machine without a GPU.

The slot pool's bound is checked with real threads and stand-in streams (a stream
here is any object with the context protocol and ``synchronize``; CuPy's streams
have both). The GPU check is checked against stand-in ``cupy`` modules that fail
the way CuPy fails (no driver; NVRTC cannot find the CUDA headers), with the
compile error text CuPy 13.6 printed on this machine for its own kernel preamble.
"""

from __future__ import annotations

import sys
import threading
import time
import tracemalloc
import types

import numpy as np
import pytest

from client.serving import gpu
from postprocess import _xp


# --- the numbers behind the slot count ------------------------------------------------------
@pytest.mark.parametrize(
    "free_gb,slots",
    [(11.0, 2), (19.0, 4), (3.5, 1), (80.0, 4), (0.5, 1)],  # 16 GB, 24 GB, 8 GB, 80 GB cards
)
def test_slot_count_from_free_memory_matches_the_documented_examples(free_gb, slots):
    assert gpu.choose_slots(int(free_gb * 1e9)) == slots


def test_reference_scan_estimate():
    assert gpu.measurement_bytes(gpu.REFERENCE_SHAPE) == 512 * 512 * 1000 * 12  # 3.1 GB
    assert 0.9e9 < gpu.measurement_bytes((300, 512, 512)) < 1.0e9


def test_bytes_per_voxel_estimate_covers_the_measured_numpy_footprint():
    """12 B/voxel must exceed what the same algorithm uses per voxel on the CPU.

    tracemalloc sees NumPy's allocations; the peak grows 4.0 B per voxel of scan
    (measured: 12.8 MB at 0.79 M voxels, 23.9 MB at 3.5 M, 75.2 MB at 16.4 M) on top
    of about 10 MB that does not grow with the scan (bootstrap, cube gathers).
    """
    from postprocess import assess
    from training.phantoms import make_phantom

    peaks = []
    for shape in ((48, 128, 128), (96, 192, 192)):
        p = make_phantom(3, shape=shape)
        hu, lab = p.hu.astype(np.int16), p.labels.astype(np.uint8)
        tracemalloc.start()
        assess(hu, lab, p.spacing, direction=p.direction)
        peaks.append((hu.size, tracemalloc.get_traced_memory()[1]))
        tracemalloc.stop()
    (v0, p0), (v1, p1) = peaks
    per_voxel = (p1 - p0) / (v1 - v0) + 3  # temporaries + the int16/uint8 inputs
    assert 5 < per_voxel < gpu.BYTES_PER_VOXEL / 1.5, per_voxel


# --- the pool ---------------------------------------------------------------------------------
class FakeStream:
    """Records which thread made it current and how often it was synchronised."""

    current = threading.local()

    def __init__(self):
        self.syncs = 0

    def __enter__(self):
        FakeStream.current.stream = self
        return self

    def __exit__(self, *exc):
        FakeStream.current.stream = None

    def synchronize(self):
        self.syncs += 1


def _hammer(slots, n_threads=8, hold=0.03, fail_every=0, until=None):
    """``n_threads`` measurements through ``slots``; each holds its slot until ``until``
    are inside at once (an event, bounded at 10 s: the peak is reached by condition, not
    by the threads happening to overlap on a loaded machine), then ``hold`` seconds."""
    active, peak, seen, lock = [0], [0], [], threading.Lock()
    reached = threading.Event()

    def work(i):
        try:
            with slots.slot() as s:
                with lock:
                    active[0] += 1
                    peak[0] = max(peak[0], active[0])
                    if until is None or active[0] >= until:
                        reached.set()
                if s is not None:
                    assert FakeStream.current.stream is s.stream  # this slot's stream is current
                    seen.append(s.index)
                reached.wait(10)
                time.sleep(hold)
                with lock:
                    active[0] -= 1
                if fail_every and i % fail_every == 0:
                    raise RuntimeError("measurement failed")
        except RuntimeError:
            pass

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return peak[0], seen


def test_at_most_n_slots_measure_at_once_whatever_the_concurrency():
    slots = gpu.GpuSlots(2, stream_factory=FakeStream)
    peak, seen = _hammer(slots, n_threads=8, until=2)
    assert peak == 2 and slots.peak_in_use == 2
    assert sorted(set(seen)) == [0, 1] and len(seen) == 8
    streams = [s.stream for s in list(_drain(slots))]
    assert len({id(s) for s in streams}) == 2 and sum(s.syncs for s in streams) == 8


def _drain(slots):
    out = []
    while not slots._free.empty():
        out.append(slots._free.get())
    for s in out:
        slots._free.put(s)
    return out


def test_a_failing_measurement_gives_its_slot_back():
    slots = gpu.GpuSlots(1, stream_factory=FakeStream)
    peak, seen = _hammer(slots, n_threads=6, hold=0.005, fail_every=2)
    assert peak == 1 and len(seen) == 6 and len(_drain(slots)) == 1


def test_cpu_pool_is_a_no_op():
    slots = gpu.GpuSlots.for_run(gpu=False)
    assert not slots.enabled and slots.describe()["slots"] == 0
    peak, seen = _hammer(slots, n_threads=8, hold=0.05, until=8)
    assert peak == 8 and seen == []  # nobody waited
    with pytest.raises(ValueError, match="at least one GPU slot"):
        gpu.GpuSlots(0)


# --- the GPU check ----------------------------------------------------------------------------------
CUPY_136_HEADERS_ERROR = (
    "/opt/venv/lib/python3.11/site-packages/cupy/_core/include/cupy/carray.cuh(57): "
    'catastrophic error: cannot open source file "cuda_fp16.h"\n  #include <cuda_fp16.h>\n'
    '1 catastrophic error detected in the compilation of "k.cu".\nCompilation terminated.'
)


def _fake_cupy(
    devices=1, kernel_error=None, result=(1.0, 3.0, 5.0, 7.0), error_type="CompileException"
):
    cp = types.ModuleType("cupy")

    class Runtime:
        @staticmethod
        def getDeviceCount():
            if devices is None:
                raise RuntimeError(
                    "cudaErrorInsufficientDriver: CUDA driver version is insufficient"
                )
            return devices

        @staticmethod
        def getDeviceProperties(i):
            return {"name": b"Fake GPU"}

    class Device:
        id = 0

    cp.cuda = types.SimpleNamespace(runtime=Runtime, Device=Device)
    cp.float32 = np.float32
    cp.__version__ = "13.6.0"

    class Arr:
        def __init__(self, v):
            self.v = v

        def get(self):
            return np.asarray(self.v)

    cp.arange = lambda n, dtype=None: Arr(np.arange(n, dtype=dtype))

    error_class = type(error_type, (Exception,), {})

    def ElementwiseKernel(*a, **k):
        def run(x):
            if kernel_error is not None:
                raise error_class(kernel_error)
            return Arr(list(result))

        return run

    cp.ElementwiseKernel = ElementwiseKernel
    return cp


@pytest.fixture
def fresh_status(monkeypatch):
    _xp.gpu_status.cache_clear()
    yield lambda cp: monkeypatch.setitem(sys.modules, "cupy", cp)
    _xp.gpu_status.cache_clear()


def test_missing_cuda_headers_is_one_clear_usage_error_naming_the_fix(fresh_status):
    fresh_status(_fake_cupy(kernel_error=CUPY_136_HEADERS_ERROR))
    ok, why = _xp.gpu_status()
    assert not ok and "cannot compile a GPU kernel" in why and 'cuda_fp16.h"' in why
    assert "cuda-cudart-dev-12-X" in why and "nvidia-cuda-runtime-cu12" in why
    assert _xp.gpu_available() is False
    with pytest.raises(_xp.GpuUnavailableError, match="CUDA runtime headers are missing"):
        _xp.to_device(np.zeros(3), True)
    assert _xp.to_device(np.zeros(3), False).shape == (3,)  # CPU path untouched


def test_gpu_check_counts_devices_then_compiles(fresh_status):
    fresh_status(_fake_cupy(devices=None))
    assert "no CUDA driver or device" in _xp.gpu_status()[1]
    _xp.gpu_status.cache_clear()
    fresh_status(_fake_cupy(devices=0))
    assert _xp.gpu_status() == (False, "CuPy sees no CUDA device")
    _xp.gpu_status.cache_clear()
    fresh_status(_fake_cupy(result=(0.0, 0.0, 0.0, 0.0)))
    assert "GPU/driver fault" in _xp.gpu_status()[1]
    _xp.gpu_status.cache_clear()
    fresh_status(_fake_cupy())
    assert _xp.gpu_status() == (True, "CuPy 13.6.0 on Fake GPU") and _xp.gpu_problem() is None


def test_without_cupy_the_reason_names_the_extra(fresh_status, monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy -> ImportError
    ok, why = _xp.gpu_status()
    assert not ok and "hepascreen[gpu]" in why


def test_process_wide_cpu_slot_needs_no_cupy(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # any CuPy import would fail
    with gpu.measurement_slot(False) as s:
        assert s is None
    assert gpu.default_slots(False) is gpu.default_slots(False)


# --- slots honour --concurrency and the process's share of the GPU (issue 23) ----------------------
GIB = 1024**3


def test_slots_never_exceed_the_concurrency_and_scale_with_the_process_share(monkeypatch):
    monkeypatch.delenv(gpu.ENV_SLOTS, raising=False)
    free = 40 * GIB  # 32 GiB budget: room for 10 reference scans, capped at MAX_SLOTS
    full = gpu.GpuSlots.for_run(True, free_bytes=free, stream_factory=FakeStream)
    assert full.n_slots == gpu.MAX_SLOTS and full.budget_bytes == int(free * gpu.BUDGET_FRACTION)
    one = gpu.GpuSlots.for_run(True, concurrency=1, free_bytes=free, stream_factory=FakeStream)
    assert one.n_slots == 1
    # Four Ray actors on one card: each gets a quarter of the budget, so together 80 %.
    quarter = gpu.GpuSlots.for_run(True, share=0.25, free_bytes=free, stream_factory=FakeStream)
    assert quarter.budget_bytes == int(free * 0.25 * gpu.BUDGET_FRACTION)
    assert quarter.n_slots == gpu.choose_slots(int(free * 0.25)) == 2
    with pytest.raises(ValueError, match="share"):
        gpu.GpuSlots.for_run(True, share=1.5, free_bytes=free, stream_factory=FakeStream)


def test_configure_sets_the_process_pool_before_its_first_use(monkeypatch):
    monkeypatch.setattr(gpu, "_SETTINGS", {"concurrency": None, "share": 1.0})
    monkeypatch.setattr(gpu, "_DEFAULT", None)
    made = {}

    def fake_for_run(**kw):
        kw.pop("gpu")
        made.update(kw)
        return gpu.GpuSlots(1, stream_factory=FakeStream)

    monkeypatch.setattr(gpu.GpuSlots, "for_run", staticmethod(fake_for_run))
    gpu.configure(concurrency=3, share=0.5)
    pool = gpu.default_slots(True)
    assert made == {"concurrency": 3, "share": 0.5} and gpu.default_slots(True) is pool
    gpu.configure(concurrency=3, share=0.5)  # the same settings again: fine
    with pytest.raises(RuntimeError, match="configure"):
        gpu.configure(concurrency=8)
    with pytest.raises(ValueError):
        gpu.configure(concurrency=0)


# --- each kernel failure says what failed (issue 23: not every one "cannot compile") ---------------
@pytest.mark.parametrize(
    "error_type, message, expected, fix",
    [
        ("CompileException", CUPY_136_HEADERS_ERROR, "cannot compile a GPU kernel", "cuda-cudart-dev"),
        ("RuntimeError", "libnvrtc.so.12: cannot open shared object file: No such file or directory",
         "cannot load NVRTC", "cuda-nvrtc-12-X"),
        ("CUDADriverError", "CUDA_ERROR_UNSUPPORTED_PTX_VERSION: the provided PTX was compiled with "
         "an unsupported toolchain.", "driver is older than CuPy's CUDA", "upgrade the NVIDIA driver"),
        ("CUDADriverError", "CUDA_ERROR_NO_BINARY_FOR_GPU: no kernel image is available for "
         "execution on the device", "cannot build code for this GPU's architecture", "compute capability"),
        ("OutOfMemoryError", "Out of memory allocating 512 bytes (allocated so far: 0 bytes).",
         "no free memory", "nvidia-smi"),
        ("CUDARuntimeError", "cudaErrorDevicesUnavailable: CUDA-capable device(s) is/are busy or "
         "unavailable", "busy or reserved", "COMPUTE"),
        ("CUDADriverError", "CUDA_ERROR_ILLEGAL_ADDRESS: an illegal memory access was encountered",
         "faulted", "Xid"),
        ("NVRTCError", "NVRTC_ERROR_COMPILATION (6)", "cannot compile a GPU kernel", "show_config"),
        ("CUDARuntimeError", "cudaErrorUnknown: unknown error", "cannot run a GPU kernel", "show_config"),
    ],
)  # fmt: skip
def test_each_kernel_failure_names_what_failed_and_its_fix(fresh_status, error_type, message,
                                                           expected, fix):  # fmt: skip
    fresh_status(_fake_cupy(kernel_error=message, error_type=error_type))
    ok, why = _xp.gpu_status()
    assert not ok and expected in why and fix in why, why
    if expected != "cannot compile a GPU kernel":
        assert "cannot compile" not in why


def test_an_old_or_absent_driver_names_the_container_flag_and_the_driver(fresh_status):
    fresh_status(_fake_cupy(devices=None))
    why = _xp.gpu_status()[1]
    assert (
        "no CUDA driver or device" in why and "--gpus" in why and "upgrade the NVIDIA driver" in why
    )
