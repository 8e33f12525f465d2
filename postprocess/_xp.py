"""Array-module dispatch: one algorithm, NumPy/SciPy on CPU or CuPy on GPU (DESIGN.md 5).

Whether the GPU is usable is decided once per process by :func:`gpu_status`, which
compiles and runs a tiny CuPy kernel: counting devices is not enough, because CuPy
compiles every kernel at run time with NVRTC and, with CUDA >= 12.2, that needs the
CUDA runtime headers (CuPy's kernel preamble includes ``cuda_fp16.h``, which includes
``vector_types.h``; CuPy install docs, "CuPy always raises NVRTC_ERROR_COMPILATION
(6)"; cupy/cupy#8466). A machine with a driver and a device but without the headers
(e.g. a ``nvidia/cuda:*-runtime`` image) would otherwise pass the check and fail
every scan with a compile error instead of stopping once with the fix.
"""

from __future__ import annotations

import functools

import numpy as np

_INSTALL_CUPY = "pip install 'hepascreen[gpu]' (cupy-cuda12x)"
_HEADERS_FIX = (
    "the CUDA runtime headers are missing. Install the ones matching your CUDA version: "
    "'apt-get install cuda-cudart-dev-12-X' (NVIDIA's apt repository; X = your CUDA minor "
    "version) with CUDA_PATH pointing at that CUDA (default /usr/local/cuda), or "
    "pip install 'nvidia-cuda-runtime-cu12==12.X.*' matching NVRTC, or use the project's "
    "client image (docker/Dockerfile.client), which has them"
)
_NVRTC_FIX = (
    "NVRTC (CUDA's run-time compiler) is missing: install cuda-nvrtc-12-X (apt) or "
    "pip install 'nvidia-cuda-nvrtc-cu12==12.X.*'"
)


class GpuUnavailableError(RuntimeError):
    """The GPU was asked for but CuPy cannot run kernels here; the message names the fix."""


def get_xp(*arrays):
    """Return ``(xp, ndimage)`` for the arrays: CuPy + cupyx.scipy.ndimage for cupy arrays."""
    for a in arrays:
        if type(a).__module__.split(".")[0] == "cupy":
            import cupy
            import cupyx.scipy.ndimage as cndi

            return cupy, cndi
    from scipy import ndimage

    return np, ndimage


def to_numpy(a):
    """Host copy of an array (no-op for NumPy)."""
    if type(a).__module__.split(".")[0] == "cupy":
        return a.get()
    return np.asarray(a)


_DRIVER_FIX = (
    "upgrade the NVIDIA driver (CUDA 12.x needs R525 or later; `nvidia-smi` shows the CUDA "
    "version the driver supports) or install a CuPy wheel and NVRTC no newer than that "
    "CUDA version"
)
_SHOW_CONFIG = "run `python -c 'import cupy; cupy.show_config()'` and see https://docs.cupy.dev/en/stable/install.html"

# (substrings of the error, what went wrong, fix): first match wins. Each failure of the
# test kernel says what failed (compiling, loading the compiler, loading the compiled
# kernel, launching it, memory) instead of reporting every failure as "cannot compile".
_KERNEL_FAILURES = (
    (
        ("open source file", "vector_types.h", "cuda_fp16.h"),
        "CuPy cannot compile a GPU kernel",
        _HEADERS_FIX,
    ),
    (
        ("libnvrtc", "nvrtc64", "cannot open shared object file"),
        "CuPy cannot load NVRTC, CUDA's run-time compiler",
        _NVRTC_FIX,
    ),
    (
        ("unsupported_ptx_version", "unsupported ptx", "unsupported toolchain"),
        "the NVIDIA driver is older than CuPy's CUDA: it cannot load the kernel NVRTC compiled",
        _DRIVER_FIX,
    ),
    (
        ("insufficientdriver", "insufficient driver", "driver version is insufficient"),
        "the NVIDIA driver is too old for CuPy's CUDA",
        _DRIVER_FIX,
    ),
    (
        (
            "no kernel image",
            "no_binary_for_gpu",
            "invalid device function",
            "invalid_ptx",
            "invalid value for --gpu-architecture",
            "unsupported gpu architecture",
        ),
        "CuPy's CUDA cannot build code for this GPU's architecture",
        "install a CuPy and NVRTC whose CUDA version supports this GPU's compute capability "
        "(a newer GPU needs a newer CUDA 12.x)",
    ),
    (
        ("out of memory", "memoryallocation", "outofmemoryerror"),
        "the GPU has no free memory even for a test kernel",
        "other processes hold it (`nvidia-smi` lists them); free the GPU or pick another "
        "with CUDA_VISIBLE_DEVICES",
    ),
    (
        ("devicesunavailable", "devices unavailable", "busy or unavailable", "exclusive"),
        "the GPU is busy or reserved (exclusive-process compute mode)",
        "`nvidia-smi -q -d COMPUTE` shows the mode; stop the other process or use another GPU",
    ),
    (
        ("ecc", "illegal address", "launch failure", "hardware stack error", "xid"),
        "the GPU faulted while running a test kernel",
        "check `nvidia-smi -q` for ECC/Xid errors; reset or replace the GPU",
    ),
)


def _explain_kernel_failure(exc: BaseException) -> str:
    """What failed when the test kernel did not run, and the fix (one line)."""
    kind = type(exc).__name__
    text = f"{kind}: {exc}"
    first = next((ln.strip() for ln in str(exc).splitlines() if "error" in ln.lower()), "")
    detail = (first or text.splitlines()[0] if text.strip() else kind)[:300]
    low = text.lower().replace("cudaerror", "cudaerror ")
    squashed = low.replace("_", "").replace(" ", "")
    for needles, what, fix in _KERNEL_FAILURES:
        if any(n in low or n.replace("_", "").replace(" ", "") in squashed for n in needles):
            return f"{what} ({detail}); fix: {fix}"
    if "compile" in kind.lower() or "nvrtc" in kind.lower():
        return f"CuPy cannot compile a GPU kernel ({detail}); fix: {_SHOW_CONFIG}"
    return f"CuPy cannot run a GPU kernel ({detail}); fix: {_SHOW_CONFIG}"


_explain_compile_failure = _explain_kernel_failure  # the name used before issue 23


@functools.lru_cache(maxsize=1)
def gpu_status() -> tuple[bool, str]:
    """Whether CuPy can run kernels on a CUDA device here, and why not (cached per process).

    Imports CuPy, counts devices, then compiles and runs a one-line elementwise kernel
    (the same NVRTC path every CuPy kernel takes; the compiled kernel lands in CuPy's
    kernel cache, ``CUPY_CACHE_DIR``) and checks its result.

    Returns
    -------
    (bool, str)
        ``(True, "CuPy <version> on <device>")`` or ``(False, reason naming the fix)``.
    """
    try:
        import cupy
    except ImportError:
        return False, f"CuPy is not installed: {_INSTALL_CUPY}"
    except Exception as exc:  # noqa: BLE001 - a broken install must not crash the caller
        return (
            False,
            f"CuPy does not import ({type(exc).__name__}: {exc}); reinstall: {_INSTALL_CUPY}",
        )
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # noqa: BLE001 - no driver: CuPy imports, every call raises
        low = str(exc).lower().replace("_", "").replace(" ", "")
        if "insufficientdriver" in low or "driverversionisinsufficient" in low:
            return False, (
                f"CuPy sees no CUDA driver or device, or a driver too old for its CUDA "
                f"({type(exc).__name__}: {exc}); fix: in a container, start it with the GPU "
                f"(--gpus / the NVIDIA Container Toolkit); otherwise {_DRIVER_FIX}"
            )
        return False, f"CuPy sees no CUDA driver or device ({type(exc).__name__}: {exc})"
    if n < 1:
        return False, "CuPy sees no CUDA device"
    try:
        kernel = cupy.ElementwiseKernel(
            "float32 x", "float32 y", "y = x * 2.0f + 1.0f", "hepascreen_gpu_check"
        )
        got = kernel(cupy.arange(4, dtype=cupy.float32)).get().tolist()
    except Exception as exc:  # noqa: BLE001 - classified into a fix below
        return False, _explain_kernel_failure(exc)
    if got != [1.0, 3.0, 5.0, 7.0]:
        return False, f"a CuPy test kernel returned {got}, expected [1, 3, 5, 7]: GPU/driver fault"
    try:
        name = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"]
        name = name.decode() if isinstance(name, bytes) else str(name)
    except Exception:  # noqa: BLE001 - cosmetic only
        name = f"device {cupy.cuda.Device().id}"
    return True, f"CuPy {cupy.__version__} on {name}"


def gpu_available() -> bool:
    """True when CuPy imports, sees a CUDA device and can compile and run a kernel."""
    return gpu_status()[0]


def gpu_problem() -> str | None:
    """Why the GPU cannot be used (a message naming the fix), or None when it can."""
    ok, why = gpu_status()
    return None if ok else why


def require_gpu() -> None:
    """Raise :class:`GpuUnavailableError` (message names the fix) unless the GPU is usable."""
    problem = gpu_problem()
    if problem is not None:
        raise GpuUnavailableError(f"GPU postprocessing asked for, but {problem}")


def to_device(a, gpu: bool):
    """``a`` on the GPU (CuPy) when ``gpu``, else unchanged.

    Raises
    ------
    GpuUnavailableError
        (a RuntimeError) naming the fix when CuPy, a device or the kernel compiler
        (CUDA headers) is missing.
    """
    if not gpu:
        return a
    require_gpu()
    import cupy

    return cupy.asarray(a)
