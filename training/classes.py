"""The class table of the neighbours model (issue 19): label value -> structure name.

One home for the multi-class targets, importing nothing heavy (NumPy only inside the
helpers). Liver keeps 1 and spleen 2 (the contract's values, so existing masks and
tools keep working); the neighbours follow. :func:`classes_parameter` is the form that
goes into the served model's ONNX metadata and ``config.pbtxt`` parameters (key
:data:`METADATA_KEY` = ``client.core.contract.CLASSES_PARAM``), from which the client reads
the names (``client.serving.triton.model_classes``); :func:`labels_json` is kept for pool.json.

Sources map into this table by NAME, never by value (the label values of the
TotalSegmentator maps differ between subjects):

- TotalSegmentator maps: :data:`TOTALSEG_CLASS` (structure name -> class name).
  ``kidney_cyst_*`` is NOT kidney (background, painted as fluid): the kidney class is
  parenchyma, as in TotalSegmentator v2, so kidney HU is not biased by cysts.
  Iliac arteries/veins, the superior vena cava etc. are background (painted as vessels).
- Phantom anatomies (:func:`training.phantoms.make_anatomy_map`, tissue classes):
  :data:`TISSUE_CLASS`; their iliac arteries are background too (the map reports them
  separately). Phantom anatomies have no duodenum: that class is absent from their
  images as well as their labels (nothing duodenum-like is painted), so predicting
  background there is right and no loss masking is needed.
- Plain phantoms (:func:`training.phantoms.make_phantom`): liver, spleen, kidneys and
  aorta are labelled (``label_neighbours=True``); they contain no other class.

Rule: a structure that is painted is labelled with its class, or is background in
every source (e.g. iliac arteries, adrenals, oesophagus), so no class needs an ignore
label. One known exception: a plain phantom's abdominal cavity is one uniform "bowel /
mesenteric fat mixture" (-60..10 HU) labelled background, while bowel is a class
elsewhere (seen in the held-out run's validation: bowel predicted inside plain
phantoms, Dice 0 there). It is 10 % of the ``neighbours_heldout`` pool and differs
from real bowel (no wall, gas or contents); the next fresh pool should drop plain
phantoms from multi-class mixtures or give that cavity an ignore label.
"""

from __future__ import annotations

import json

# Label value -> name. Values are contiguous (the network's output channels).
CLASSES: tuple[tuple[int, str], ...] = (
    (0, "background"),
    (1, "liver"),
    (2, "spleen"),
    (3, "kidney"),
    (4, "aorta"),
    (5, "inferior_vena_cava"),
    (6, "portal_splenic_vein"),
    (7, "stomach"),
    (8, "gallbladder"),
    (9, "pancreas"),
    (10, "duodenum"),
    (11, "small_bowel"),
    (12, "colon"),
)
NUM_CLASSES = len(CLASSES)
CLASS_NAMES: tuple[str, ...] = tuple(n for _, n in CLASSES)
CLASS_INDEX: dict[str, int] = {n: v for v, n in CLASSES}
# The served model declares its classes in the config parameter / ONNX metadata key
# client.core.contract.CLASSES_PARAM ("hepascreen_classes"), as "1=liver,2=spleen,...":
# :func:`classes_parameter` (read by client.serving.triton.model_classes; the contrast phase
# finds aorta, portal vein, IVC and kidneys by these names).
METADATA_KEY = "hepascreen_classes"

# TotalSegmentator structure name -> class name (exact names; anything else: background).
TOTALSEG_CLASS: dict[str, str] = {
    "liver": "liver",
    "spleen": "spleen",
    "kidney_left": "kidney",
    "kidney_right": "kidney",
    "aorta": "aorta",
    "inferior_vena_cava": "inferior_vena_cava",
    "portal_vein_and_splenic_vein": "portal_splenic_vein",
    "stomach": "stomach",
    "gallbladder": "gallbladder",
    "pancreas": "pancreas",
    "duodenum": "duodenum",
    "small_bowel": "small_bowel",
    "colon": "colon",
}

# Phantom tissue name (training.phantoms.TISSUES) -> class name.
TISSUE_CLASS: dict[str, str] = {
    "liver": "liver",
    "spleen": "spleen",
    "kidney_cortex": "kidney",
    "kidney_medulla": "kidney",
    "artery": "aorta",  # minus the iliac arteries (make_anatomy_map(parts=...))
    "vein": "inferior_vena_cava",  # the phantom's only vein tube
    "portal_vein": "portal_splenic_vein",
    "stomach": "stomach",
    "gallbladder": "gallbladder",
    "pancreas": "pancreas",
    "small_bowel": "small_bowel",
    "colon": "colon",
}


def labels_dict() -> dict[str, str]:
    """``{"0": "background", "1": "liver", ...}`` (JSON object keys are strings)."""
    return {str(v): n for v, n in CLASSES}


def labels_json() -> str:
    """The class table as compact JSON, for ONNX metadata / config parameters."""
    return json.dumps(labels_dict(), separators=(",", ":"))


def classes_parameter() -> str:
    """The class table as the served model declares it: ``"1=liver,2=spleen,3=kidney,..."``
    (background left out), the value of ``client.core.contract.CLASSES_PARAM``."""
    return ",".join(f"{v}={n}" for v, n in CLASSES if v != 0)


def parse_labels_json(text: str) -> dict[int, str]:
    """Inverse of :func:`labels_json`: ``{0: "background", 1: "liver", ...}``."""
    return {int(k): str(v) for k, v in json.loads(text).items()}


def totalseg_lut(names: dict):
    """Lookup table (uint8 [256]) from a TotalSegmentator map's values to class values.

    ``names``: label value (str or int) -> structure name (``labels_all_names.json``).
    """
    import numpy as np

    lut = np.zeros(256, np.uint8)
    for value, name in names.items():
        cls = TOTALSEG_CLASS.get(str(name))
        if cls is not None:
            lut[int(value)] = CLASS_INDEX[cls]
    return lut


def tissue_lut():
    """Lookup table (uint8 [N_TISSUES]) from phantom tissue values to class values."""
    import numpy as np

    from .tissues import N_TISSUES, TISSUES

    lut = np.zeros(N_TISSUES, np.uint8)
    for tissue, cls in TISSUE_CLASS.items():
        lut[TISSUES[tissue]] = CLASS_INDEX[cls]
    return lut
