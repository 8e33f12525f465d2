"""The model contract: the one home of names, labels, windows and grade thresholds.

Imports nothing but the standard library so that every part (training, the
Triton model, the client, postprocess, tests) can share it cheaply. A test
checks every ``config.pbtxt`` under ``model_repository/`` against it.
"""

from __future__ import annotations

from dataclasses import dataclass

# --- labels (as the original MedicalSeg project) ---------------------------
LABEL_BACKGROUND = 0
LABEL_LIVER = 1
LABEL_SPLEEN = 2
NUM_CLASSES = 3
LABEL_NAMES = {LABEL_BACKGROUND: "background", LABEL_LIVER: "liver", LABEL_SPLEEN: "spleen"}

# Label maps brought with ``--masks`` may use another labelling.
LABEL_MAPS = {
    "default": {"liver": 1, "spleen": 2},
    "totalsegmentator": {"liver": 5, "spleen": 1},
}

# --- preprocessing (MedicalSeg's HUNorm + resample) -------------------------
HU_WINDOW = (-100.0, 300.0)  # HU mapped linearly to 0..255, clipped outside
# Size of the original MedicalSeg model; a served model may be smaller and the
# client reads the size from the served model's configuration.
ORIGINAL_MODEL_SHAPE = (128, 128, 128)  # [z, y, x]

# --- served tensors -----------------------------------------------------------
MODEL_NAME = "hepascreen_vnet"
INPUT_NAME = "VOLUME"  # uint8 [batch, 1, z, y, x], HU-windowed to 0..255
OUTPUT_NAME = "LABELS"  # uint8 [batch, z, y, x], argmax inside the graph
INPUT_DTYPE = "TYPE_UINT8"
OUTPUT_DTYPE = "TYPE_UINT8"
INPUT_CHANNELS = 1
# Float-in / int32-out variant for a TensorRT version that refuses uint8 I/O.
INPUT_DTYPE_FLOAT_VARIANT = "TYPE_FP32"
OUTPUT_DTYPE_FLOAT_VARIANT = "TYPE_INT32"
MAX_BATCH_SIZE = 8


# --- grading (Chinese Medical Association criteria on non-contrast CT) -------
@dataclass(frozen=True)
class GradeThresholds:
    """Liver/spleen CT ratio thresholds: r > normal_above is normal, r > mild_above
    is mild, r > moderate_above is moderate, anything else severe. A ratio equal
    to a threshold falls in the worse grade (exactly 1.0 is mild)."""

    normal_above: float = 1.0
    mild_above: float = 0.7
    moderate_above: float = 0.5


GRADE_THRESHOLDS = GradeThresholds()
GRADES = ("normal", "mild", "moderate", "severe", "indeterminate")

# Radiologists' HU rules of thumb reported beside the ratio.
LIVER_HU_MODERATE_BELOW = 40.0  # liver < 40 HU suggests moderate or worse steatosis
LIVER_MINUS_SPLEEN_FAT30_BELOW = -10.0  # L - S < -10 HU suggests > 30 % fat

# --- batch outputs -------------------------------------------------------------
RESULT_COLUMNS = (
    "case_id",
    "source",
    "status",
    "grade",
    "ratio",
    "ratio_ci_low",
    "ratio_ci_high",
    "ratio_mean_pairwise",
    "liver_hu",
    "spleen_hu",
    "liver_minus_spleen_hu",
    "liver_volume_ml",
    "spleen_volume_ml",
    "n_pairs",
    "flags",
    "error",
    "seconds",
)
STATUSES = ("ok", "flagged", "error")
