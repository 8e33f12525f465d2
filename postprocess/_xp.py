"""Array-module dispatch: one algorithm, NumPy/SciPy on CPU or CuPy on GPU (DESIGN.md 5)."""

from __future__ import annotations

import numpy as np


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


def gpu_available() -> bool:
    """True when CuPy imports and sees a CUDA device (False without a driver)."""
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def to_device(a, gpu: bool):
    """``a`` on the GPU (CuPy) when ``gpu``, else unchanged.

    Raises
    ------
    RuntimeError
        Naming the extra to install when CuPy or a CUDA device is missing.
    """
    if not gpu:
        return a
    try:
        import cupy
    except ImportError as exc:
        raise RuntimeError(
            "GPU postprocessing needs CuPy: pip install 'hepascreen[gpu]' (cupy-cuda12x)"
        ) from exc
    if not gpu_available():
        raise RuntimeError("GPU postprocessing asked for, but CuPy sees no CUDA device")
    return cupy.asarray(a)
