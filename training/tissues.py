"""The tissue vocabulary of label-map synthesis (imports nothing).

Shared by the phantom anatomy maps (:func:`training.phantoms.make_anatomy_map`), the
mapping of real multi-structure segmentations (TotalSegmentator names, in
:mod:`training.synth` and :mod:`training.labelmap_body`) and the tissue -> class table
(:func:`training.classes.tissue_lut`). :mod:`training.phantoms` re-exports both names.
"""

from __future__ import annotations

TISSUES = {
    "air": 0,
    "fat": 1,
    "muscle": 2,
    "bone": 3,
    "liver": 4,
    "spleen": 5,
    "kidney_cortex": 6,
    "kidney_medulla": 7,
    "stomach": 8,
    "small_bowel": 9,
    "colon": 10,
    "pancreas": 11,
    "gallbladder": 12,
    "artery": 13,
    "vein": 14,
    "portal_vein": 15,
    "lung": 16,
    "bladder": 17,
    "soft": 18,
    "heart": 19,
    "cord": 20,
    "cartilage": 21,
    "gas": 22,
}
N_TISSUES = len(TISSUES)
