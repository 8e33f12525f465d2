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


def _explain_compile_failure(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    first = next((ln.strip() for ln in str(exc).splitlines() if "error" in ln.lower()), "")
    detail = first or text.splitlines()[0]
    low = text.lower()
    if "open source file" in low or "vector_types.h" in low or "cuda_fp16.h" in low:
        fix = _HEADERS_FIX
    elif "nvrtc" in low and ("libnvrtc" in low or "cannot open shared object" in low):
        fix = _NVRTC_FIX
    else:
        fix = "see https://docs.cupy.dev/en/stable/install.html (run `python -c 'import cupy; cupy.show_config()'`)"
    return f"CuPy cannot compile a GPU kernel ({detail[:300]}); fix: {fix}"


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
        return False, f"CuPy sees no CUDA driver or device ({type(exc).__name__}: {exc})"
    if n < 1:
        return False, "CuPy sees no CUDA device"
    try:
        kernel = cupy.ElementwiseKernel(
            "float32 x", "float32 y", "y = x * 2.0f + 1.0f", "hepascreen_gpu_check"
        )
        got = kernel(cupy.arange(4, dtype=cupy.float32)).get().tolist()
    except Exception as exc:  # noqa: BLE001 - classified into a fix below
        return False, _explain_compile_failure(exc)
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
