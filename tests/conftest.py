"""Shared fixtures: the array-module fixture and the real data in ../shared/data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from postprocess._xp import gpu_available, gpu_problem

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


_XP_PARAMS = [pytest.param("numpy", id="numpy")]
_XP_PARAMS.append(
    pytest.param(
        "cupy",
        id="cupy",
        marks=[
            pytest.mark.gpu,
            pytest.mark.skipif(not gpu_available(), reason=f"no usable GPU: {gpu_problem()}"),
        ],
    )
)


@pytest.fixture(params=_XP_PARAMS)
def xp(request):
    """The array module under test: NumPy always, CuPy when a GPU is present."""
    if request.param == "numpy":
        return np
    import cupy

    return cupy


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ../shared/data (real CT and DICOM test data)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real test data not found at {SHARED_DATA}: clone the project beside shared/")
    return SHARED_DATA
