"""Measurement core: organs, cubes, liver/spleen ratio, grade, flags, segmentation gate
and contrast evidence (NumPy or CuPy).

Importing this package never needs CuPy; pass cupy arrays to run on the GPU. The gate
(``postprocess.gate.check_segmentation``) and the contrast evidence
(``postprocess.contrast.contrast_evidence``) run inside :func:`assess`; their NumPy/CuPy
parity is tested through it.
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
from .config import AssessConfig, ContrastConfig, GateConfig
from .contrast import ContrastResult
from .cubes import (
    cube_size_voxels,
    cube_stats,
    sample_cubes,
    valid_cube_positions,
)
from .flags import BLOCKING, FLAGS
from .gate import GateResult, OrganEvidence

__all__ = [
    "BLOCKING",
    "FLAGS",
    "AssessConfig",
    "Assessment",
    "ContrastConfig",
    "ContrastResult",
    "GateConfig",
    "GateResult",
    "OrganEvidence",
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
