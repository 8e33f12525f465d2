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

# The neighbours: structures beside liver and spleen that a label map or a model may
# carry (contrast-phase evidence, the gate, review). Label values in HepaScreen's own
# label maps (--masks default labelling, masks written from such maps); liver and
# spleen keep 1 and 2. A served model declares its own values and names
# (CLASSES_PARAM); code goes through the names, never through these numbers.
STRUCTURE_LABELS = {
    "liver": LABEL_LIVER,
    "spleen": LABEL_SPLEEN,
    "kidney_right": 3,
    "kidney_left": 4,
    "aorta": 5,
    "inferior_vena_cava": 6,
    "portal_vein_and_splenic_vein": 7,
    "stomach": 8,
    "gallbladder": 9,
    "pancreas": 10,
}
# Config parameter in which a served model declares its classes: "1=liver,2=spleen,...";
# absent = liver and spleen only (LABEL_NAMES). Also written into the ONNX metadata.
CLASSES_PARAM = "hepascreen_classes"

# Label maps brought with ``--masks`` may use another labelling (name -> value in the
# file). TotalSegmentator v2's "total" task (its multilabel output and the shared
# example's labels_all.nii.gz): spleen 1, kidney_right 2, kidney_left 3, gallbladder 4,
# liver 5, stomach 6, pancreas 7, aorta 52, inferior_vena_cava 63,
# portal_vein_and_splenic_vein 64.
# "default" reads liver and spleen only (other values in a user's map are ignored, as
# they may mean anything); "hepascreen" reads every structure of STRUCTURE_LABELS.
LABEL_MAPS = {
    "default": {"liver": LABEL_LIVER, "spleen": LABEL_SPLEEN},
    "hepascreen": dict(STRUCTURE_LABELS),
    "totalsegmentator": {
        "liver": 5,
        "spleen": 1,
        "kidney_right": 2,
        "kidney_left": 3,
        "gallbladder": 4,
        "stomach": 6,
        "pancreas": 7,
        "aorta": 52,
        "inferior_vena_cava": 63,
        "portal_vein_and_splenic_vein": 64,
    },
}

# --- contrast phase and the criterion that holds for it (docs/phase.md) ----------
PHASES = ("unenhanced", "arterial", "portal_venous", "delayed", "unknown")
PHASE_SOURCES = ("image", "tag", "both", "conflict", "none")
CRITERION_RATIO = "liver_spleen_ratio"  # unenhanced CT: the seed's grade
CRITERION_PV_LIVER_HU = "portal_venous_liver_hu"  # Pickhardt et al. 2024
CRITERION_NONE = "none"
CRITERIA = (CRITERION_RATIO, CRITERION_PV_LIVER_HU, CRITERION_NONE)
# Unenhanced CT: liver attenuation -> MRI proton-density fat fraction (Starekova,
# Hernando, Pickhardt, Reeder, Radiology 2021): PDFF (%) ~ -0.58 x HU + 38.2.
PDFF_SLOPE_PER_HU = -0.58
PDFF_INTERCEPT_PCT = 38.2
PDFF_METHOD = "starekova2021_unenhanced_ct"
# Portal-venous CT: liver attenuation alone for moderate steatosis (Pickhardt, Blake,
# Moeller, Garrett, Summers 2024; 1,676 adults): < 80 HU sensitivity 85.6 % /
# specificity 89.6 %; < 90 HU sensitivity 94.9 % / specificity 74.7 %.
PV_LIVER_HU_LIKELY_BELOW = 80.0
PV_LIVER_HU_POSSIBLE_BELOW = 90.0
PV_ASSESSMENTS = (
    "moderate_steatosis_likely",  # liver < 80 HU
    "moderate_steatosis_possible",  # 80 <= liver < 90 HU
    "moderate_steatosis_unlikely",  # liver >= 90 HU
)

# --- preprocessing (MedicalSeg's HUNorm + resample) -------------------------
HU_WINDOW = (-100.0, 300.0)  # HU mapped linearly to 0..255, clipped outside
# Size of the original MedicalSeg model; a served model may be smaller and the
# client reads the size from the served model's configuration.
ORIGINAL_MODEL_SHAPE = (128, 128, 128)  # [z, y, x]
# How a served model wants its input made (client.reading.preprocess.PreprocessSpec), declared
# in the model's config.pbtxt as parameters; absent means "resize" (MedicalSeg):
#   "resize"  - the whole canonical volume linearly resized to the model shape;
#   "spacing" - resampled to a fixed voxel size (PREPROCESS_SPACING_PARAM, "z,y,x" mm),
#               cropped in-plane to the body, padded when smaller than the model box and
#               covered by overlapping model-size windows when larger (sliding window).
PREPROCESS_PARAM = "hepascreen_preprocess"
PREPROCESS_SPACING_PARAM = "hepascreen_spacing_mm"
PREPROCESS_MODES = ("resize", "spacing")

# --- served tensors -----------------------------------------------------------
MODEL_NAME = "hepascreen_vnet"
INPUT_NAME = "VOLUME"  # uint8 [batch, 1, z, y, x], HU-windowed to 0..255
OUTPUT_NAME = "LABELS"  # uint8 [batch, z, y, x], argmax inside the graph
INPUT_DTYPE = "TYPE_UINT8"
OUTPUT_DTYPE = "TYPE_UINT8"
# Optional second output: the model's own confidence per voxel, uint8 [batch, z, y, x]
# = round(255 * softmax probability of the predicted class) (>= 85 with 3 classes).
# Models exported before it have LABELS only; the client then skips the confidence check.
CONFIDENCE_NAME = "CONFIDENCE"
CONFIDENCE_DTYPE = "TYPE_UINT8"
CONFIDENCE_SCALE = 255.0
# Per-model floors of the segmentation gate on the mean confidence inside each final
# organ mask, a config parameter "liver=0.93,spleen=0.95" (calibrated per model:
# benchmarks/bench_confidence.py); absent = no confidence check.
CONFIDENCE_FLOOR_PARAM = "hepascreen_min_confidence"
INPUT_CHANNELS = 1
# Float-in / int32-out variant (training.export --float-variant): diagnostic only, never
# served; the client speaks uint8 only. Kept for a TensorRT version that refuses uint8 I/O.
INPUT_DTYPE_FLOAT_VARIANT = "TYPE_FP32"
OUTPUT_DTYPE_FLOAT_VARIANT = "TYPE_INT32"
MAX_BATCH_SIZE = 8
# Requests one client keeps in flight to one server by default (--concurrency sets it
# for the batch; benchmarks/bench_serving.py measured 4 as enough to fill the batcher).
DEFAULT_MAX_IN_FLIGHT = 4


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
# One colour per grade for every picture and page (QC caption, report.html).
GRADE_RGB = {
    "normal": (46, 158, 91),
    "mild": (217, 180, 40),
    "moderate": (232, 130, 42),
    "severe": (210, 60, 60),
    "indeterminate": (140, 140, 140),
}


def grade_of_ratio(ratio, thresholds: GradeThresholds = GRADE_THRESHOLDS) -> str:
    """The grade of a liver/spleen ratio: the one home of the rule (a ratio on a threshold
    falls in the worse grade; not a finite number: ``indeterminate``)."""
    try:
        r = float(ratio)
    except (TypeError, ValueError):
        return "indeterminate"
    if r != r or r in (float("inf"), float("-inf")):
        return "indeterminate"
    if r > thresholds.normal_above:
        return "normal"
    if r > thresholds.mild_above:
        return "mild"
    if r > thresholds.moderate_above:
        return "moderate"
    return "severe"


# Radiologists' HU rules of thumb reported beside the ratio.
LIVER_HU_MODERATE_BELOW = 40.0  # liver < 40 HU suggests moderate or worse steatosis
LIVER_MINUS_SPLEEN_FAT30_BELOW = -10.0  # L - S < -10 HU suggests > 30 % fat

# --- batch outputs: the result schema, defined once ------------------------------
# Every writer (results.csv, results.jsonl, report.html, docs/results.md) reads
# RESULT_SCHEMA; a row key that is not here is an error, never silently dropped.
SCHEMA_VERSION = "3"

STATUS_OK = "ok"
STATUS_FLAGGED = "flagged"
STATUS_ERROR = "error"
STATUSES = (STATUS_OK, STATUS_FLAGGED, STATUS_ERROR)
GRADE_INDETERMINATE = "indeterminate"
STAGES = ("read", "preprocess", "infer", "map_back", "measure", "write")


@dataclass(frozen=True)
class Column:
    """One result column: its name, unit ("" when it has none) and meaning."""

    name: str
    unit: str
    meaning: str


RESULT_SCHEMA: tuple[Column, ...] = (
    # identity and outcome
    Column(
        "case_id",
        "",
        "path relative to its INPUT, image extension dropped, / -> __ (unique per run; over-long ids end in ~<hash>)",
    ),
    Column("source", "", "the scan's file or DICOM folder as found under the INPUT"),
    Column(
        "study_id",
        "",
        "hash of the DICOM StudyInstanceUID (the series of one study share it; studies.csv has one row per study); an image file is a study of its own",
    ),
    Column(
        "status",
        "",
        "ok (graded, no flag) | flagged (a flag is set; grade may be indeterminate) | error (not measured: see error)",
    ),
    Column(
        "grade",
        "",
        "normal | mild | moderate | severe (liver/spleen ratio > 1.0, 0.7-1.0, 0.5-0.7, <= 0.5) | indeterminate",
    ),
    # the measurement
    Column(
        "ratio", "1", "liver/spleen CT attenuation ratio: mean liver cube HU / mean spleen cube HU"
    ),
    Column(
        "ratio_ci_low", "1", "lower end of the 95 % bootstrap interval of ratio (cubes resampled)"
    ),
    Column("ratio_ci_high", "1", "upper end of the 95 % bootstrap interval of ratio"),
    Column(
        "ratio_mean_pairwise",
        "1",
        "the original project's figure: mean of liver/spleen ratios over all cube pairs (biased upward)",
    ),
    Column("liver_hu", "HU", "mean attenuation of the liver cubes"),
    Column("spleen_hu", "HU", "mean attenuation of the spleen cubes"),
    Column("liver_minus_spleen_hu", "HU", "liver_hu - spleen_hu (< -10 HU suggests > 30 % fat)"),
    Column(
        "liver_volume_ml",
        "ml",
        "volume of the largest connected liver piece (a lower bound when cut by the scan's edge)",
    ),
    Column("spleen_volume_ml", "ml", "volume of the largest connected spleen piece"),
    Column(
        "liver_confidence",
        "1",
        "the model's mean softmax probability inside the measured liver piece (empty when the model has no confidence output)",
    ),
    Column("spleen_confidence", "1", "the same inside the measured spleen piece"),
    Column("n_pairs", "", "liver cubes x spleen cubes paired for the ratio"),
    Column("n_cubes_liver", "", "liver cubes kept after rejection"),
    Column("n_cubes_spleen", "", "spleen cubes kept after rejection"),
    Column(
        "n_rejected_liver", "", "liver cubes rejected (vessels, calcification, artefacts, borders)"
    ),
    Column("n_rejected_spleen", "", "spleen cubes rejected"),
    Column(
        "cube_mm_liver",
        "mm",
        "cube edge used in the liver (smaller than --cube-mm when the organ is small)",
    ),
    Column("cube_mm_spleen", "mm", "cube edge used in the spleen"),
    Column("flags", "", "';'-separated flags (see the flag table); empty when none"),
    Column(
        "contrast_evidence",
        "",
        "what points to contrast enhancement (DICOM tag, spleen or vessel HU); empty when nothing",
    ),
    # contrast phase and the criterion that holds for it (docs/phase.md)
    Column(
        "phase",
        "",
        "contrast phase: unenhanced | arterial | portal_venous | delayed | unknown",
    ),
    Column(
        "phase_source",
        "",
        "what the phase rests on: image | tag (DICOM header) | both (they agree) | conflict (they disagree: phase unknown) | none",
    ),
    Column(
        "phase_basis",
        "",
        "the image evidence: vessels (aorta, portal vein, IVC, kidneys measured) | organs (liver and spleen only) | none",
    ),
    Column(
        "criterion",
        "",
        "the steatosis criterion for this phase: liver_spleen_ratio (unenhanced: grade) | portal_venous_liver_hu (pv_assessment; grade stays indeterminate) | none",
    ),
    Column(
        "aorta_hu", "HU", "median attenuation of the aorta (rim trimmed); empty when not segmented"
    ),
    Column("portal_vein_hu", "HU", "median attenuation of the portal and splenic vein"),
    Column("ivc_hu", "HU", "median attenuation of the inferior vena cava"),
    Column(
        "kidney_cortex_hu",
        "HU",
        "median attenuation of the renal cortex (outer 5 mm of the kidneys)",
    ),
    Column("kidney_medulla_hu", "HU", "median attenuation of the renal medulla (deeper than 9 mm)"),
    Column(
        "pdff_estimate_pct",
        "%",
        "MRI proton-density fat fraction equivalent of the liver attenuation, unenhanced CT only: -0.58 x liver_hu + 38.2 (Starekova et al., Radiology 2021), clipped at 0",
    ),
    Column("pdff_method", "", "the formula behind pdff_estimate_pct (empty when not estimated)"),
    Column(
        "pv_assessment",
        "",
        "portal-venous phase only, from liver_hu alone (Pickhardt et al. 2024): moderate_steatosis_likely (< 80 HU) | moderate_steatosis_possible (80-90 HU) | moderate_steatosis_unlikely (>= 90 HU)",
    ),
    Column(
        "liver_hu_ci_low",
        "HU",
        "lower end of the 95 % bootstrap interval of liver_hu (cubes resampled); with a ratio grade or pv_assessment",
    ),
    Column("liver_hu_ci_high", "HU", "upper end of the 95 % bootstrap interval of liver_hu"),
    Column(
        "notes",
        "",
        "'; '-separated notes: what the reader did to the data (gantry tilt corrected, spacing regularised, ...) and what the measurement found (why a mask was doubted, ...)",
    ),
    Column(
        "error",
        "",
        "why the scan was not measured (names the file and what was wrong); empty when measured",
    ),
    # acquisition covariates (DICOM; empty for NIfTI/NRRD/MHA), never identifiers
    Column("manufacturer", "", "DICOM Manufacturer (0008,0070)"),
    Column("manufacturer_model", "", "DICOM Manufacturer's Model Name (0008,1090)"),
    Column("kvp", "kV", "DICOM KVP (0018,0060): tube peak voltage"),
    Column("convolution_kernel", "", "DICOM Convolution Kernel (0018,1210): reconstruction kernel"),
    Column("slice_thickness_mm", "mm", "DICOM Slice Thickness (0018,0050)"),
    Column(
        "contrast_agent",
        "",
        "DICOM Contrast/Bolus Agent (0018,0010): the contrast tag as written by the scanner",
    ),
    Column("series_description", "", "DICOM Series Description (0008,103E)"),
    Column(
        "study_instance_uid",
        "",
        "DICOM Study Instance UID; only with --link-uids (links results back to PACS)",
    ),
    Column("series_instance_uid", "", "DICOM Series Instance UID; only with --link-uids"),
    # timings
    Column("seconds", "s", "wall time of this scan, all stages"),
    *(Column(f"seconds_{s}", "s", f"time in the {s.replace('_', ' ')} stage") for s in STAGES),
    # provenance
    Column(
        "source_id",
        "",
        "hash of the source's resolved path (and DICOM series): the scan's identity for --resume",
    ),
    Column(
        "source_fingerprint",
        "",
        "hash of source_id, file sizes and modification times: a changed file is screened again on --resume",
    ),
    Column(
        "attempt",
        "",
        "1 for the first attempt at this case_id in this OUT, 2 for the next (earlier attempts: attempts.jsonl)",
    ),
    Column("run_id", "", "identifier of the run that wrote the row (also in run.json)"),
    Column("finished_at", "UTC", "when the row was written (ISO 8601)"),
    Column("schema_version", "", "version of this column list"),
    Column("tool_version", "", "HepaScreen version"),
    Column("segmenter", "", "triton (served model) | masks (label maps from --masks)"),
    Column("model_name", "", "served model name (empty with --masks)"),
    Column("model_version", "", "served model version (empty with --masks)"),
    Column(
        "model_sha256",
        "",
        "SHA-256 of the served model file when known (bundled server); empty for a remote --url server",
    ),
)
RESULT_COLUMNS = tuple(c.name for c in RESULT_SCHEMA)
