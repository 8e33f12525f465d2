"""Measurement core: organs, cubes, liver/spleen ratio, grade and flags (NumPy or CuPy).

Importing this package never needs CuPy; pass cupy arrays to run on the GPU.
"""

from ._xp import get_xp, gpu_available
from .assess import Assessment, OrganMeasurement, assess, grade_ratio, measure_organ
from .components import (
    bounding_box,
    keep_largest,
    largest_connected_component,
    organ_volume_ml,
    touches_edge,
)
from .config import AssessConfig
from .cubes import cube_size_voxels, cube_stats, sample_cubes, valid_cube_positions

__all__ = [
    "AssessConfig",
    "Assessment",
    "OrganMeasurement",
    "assess",
    "bounding_box",
    "cube_size_voxels",
    "cube_stats",
    "get_xp",
    "gpu_available",
    "grade_ratio",
    "keep_largest",
    "largest_connected_component",
    "measure_organ",
    "organ_volume_ml",
    "sample_cubes",
    "touches_edge",
    "valid_cube_positions",
]
