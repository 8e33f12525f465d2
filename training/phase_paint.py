"""Test and demo data for contrast-phase recognition and steatosis: phases and fatty livers
painted onto the shared REAL unenhanced CT from published attenuation measurements.

This module is deliberately independent of :mod:`training.synth` (the training-image
synthesis): none of its values or code are used here, so tests built on these images do
not grade the synthesis by itself. Every attenuation below comes from a published
measurement (cited in :data:`REFERENCES`) or says ``"typical value, no source found"``.

What it makes
-------------
* :func:`paint_phase`: the real CT with aorta, IVC, portal/splenic vein, kidneys (cortex as
  an outer shell of the TotalSegmentator kidney mask, medulla inside), liver and spleen
  moved to a phase's attenuation (:data:`PHASE_HU`) while each keeps its real texture and
  noise (voxel minus the structure's own mean, added to the target). The arterial spleen
  gets a mottled (heterogeneous) pattern on top.
* :func:`paint_steatosis`: an UNENHANCED scan with the liver parenchyma at a chosen HU
  (60 down to 0) while synthetic intrahepatic vessels (:func:`liver_vessel_mask`), the
  portal-vein trunk, IVC and aorta stay at blood attenuation: the classic sign of a fatty
  liver (vessels brighter than the parenchyma). :func:`leaky_liver_labels` gives a liver /
  spleen label map whose liver takes in one voxel of neighbouring tissue on one side.
* :func:`write_phase_study`: one DICOM study (one StudyInstanceUID) with four series
  (the real CT unenhanced, painted arterial, portal-venous, delayed), with or without
  contrast tags, plus NIfTI copies.

Axis convention as in :mod:`client.reading.scan`: arrays ``[z, y, x]``.

Attenuation table (absolute HU; ``range`` is the spread in the source where it gives one)
-----------------------------------------------------------------------------------------
Where a source reports ENHANCEMENT (HU above the unenhanced value) the table adds it to
the unenhanced value of the same table row, and says so.

================  ===========  =======================  ==========================================
phase             structure    mean HU (range)          source
================  ===========  =======================  ==========================================
unenhanced        aorta/IVC/   42 (38-50)               [DAHMARDEH2025] non-anaemic blood above
                  portal vein,                          37.5 (women) / 38.5 HU (men);
                  blood                                 [AORTA_IVC_ANAEMIA] aorta 37.7, IVC 36.1 HU
                                                        mean in a cohort including anaemic patients
unenhanced        kidney       35 (30-50)               typical value, no primary source found
                  cortex/med.                           (textbook range 30-50 HU)
unenhanced        liver        60 (55-65)               [STAREKOVA2021] PDFF ~ -0.58 x HU + 38.2:
                                                        60 HU ~ 3 % fat; [PICKHARDT2024] < 40 HU =
                                                        moderate steatosis
unenhanced        spleen       50 (42-59)               [PARK_LS] non-steatotic liver minus spleen
                                                        1 to 18 HU: liver 60 -> spleen 42-59
arterial          aorta        340 (290-380)            [GOSHIMA_AJR] aorta +300-336 HU at 10-15 s
                                                        after the trigger; [HAP_RADIOLOGY2007]
                                                        +284-309 HU (SD 42-56)
arterial          portal vein  135 (115-165)            [GOSHIMA_AJR] proximal portal veins
                                                        +75-104 HU; [RADIOPAEDIA_LAP] 145 +- 20 HU
arterial          IVC          70 (45-100)              typical value, no source found
                                                        (infrarenal IVC unopacified, suprarenal IVC
                                                        takes enhanced renal venous return)
arterial          kidney       cortex 240, medulla 115  [KIDNEY_EJR2007] cortex +195-217 HU at 10-30 s;
                                                        cortex minus medulla 110-140 HU
arterial          liver        80 (75-90)               [GOSHIMA_AJR] +15-25 HU; [RADIOPAEDIA_LAP]
                                                        +20-30 HU
arterial          spleen       152 (147-158), mottled   [GOSHIMA_AJR] +97-108 HU; pattern
                               (extra SD 25)            [GUNN_SPLEEN] (arciform / mottled); the
                                                        mottle amplitude is a typical value, no
                                                        source found
arterial          blood (intra 77 (66-93)               [GOSHIMA_AJR] hepatic veins +24-51 HU
                  -hepatic)
portal_venous     aorta        165 (159-167)            [GOSHIMA_AJR] aorta +117-125 HU at 45-55 s
portal_venous     portal vein  170 (150-190)            typical value, no source found
portal_venous     IVC          130 (110-150)            typical value, no source found
portal_venous     kidney       cortex 200, medulla 180  [KIDNEY_EJR2007] medulla +145 HU at 55 s;
                                                        cortex minus medulla < 30 HU from 45 s
portal_venous     liver        110 (100-125)            [PICKHARDT2024] enhancement 47.3 HU in
                                                        livers without moderate steatosis;
                                                        [GOSHIMA_AJR] peak +59-63 HU
portal_venous     spleen       128 (123-132)            [GOSHIMA_AJR] +73-82 HU at 45-55 s
portal_venous     blood (intra 160 (140-180)            typical value, no source found
                  -hepatic)
delayed           aorta/IVC/   115 (95-135)             typical value, no source found (10-min
                  portal vein,                          delayed as in [PICKHARDT2024]'s protocol;
                  blood                                 blood pools equilibrated)
delayed           liver        92 (85-100)              [ECV_SCIREP2025] liver ECV 25.5 % in
                                                        controls: enhancement = ECV x blood
                                                        enhancement / (1 - Hct), Hct 0.42 (typical)
delayed           spleen       95 (85-105)              typical value, no source found
delayed           kidney       cortex 145, medulla 145  typical value, no source found
================  ===========  =======================  ==========================================

The arterial row is the LATE arterial (hepatic arterial) phase. Other structures of the
scan (pancreas, bowel wall, muscle, ...) are left as they are in every phase.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

PHASES = ("unenhanced", "arterial", "portal_venous", "delayed")

#: Full citations; keys are used in :data:`PHASE_HU`.
REFERENCES = {
    "DAHMARDEH2025": (
        "Dahmardeh H, Gerami A, Khansari M, Abdolkarimi L, Pakdaman Kolour SS, Ghodsi M, "
        "Danesh H, Ghazanfari Hashemi M. Left ventricle blood attenuation in non-contrast "
        "chest CT scan as a clue for prediction of anemia. Frontiers in Biomedical "
        "Technologies, 2025 (523 patients; anaemia cut-offs 37.5 HU women, 38.5 HU men)."
    ),
    "AORTA_IVC_ANAEMIA": (
        "Enhancement of anemia detection by correlating computed tomography findings of "
        "abdominal aorta and inferior vena cava with laboratory investigations (151 patients; "
        "mean unenhanced aorta 37.7 HU, IVC 36.1 HU). Authors, journal and year were not "
        "shown in the copy found."
    ),
    "STAREKOVA2021": (
        "Starekova J, Hernando D, Pickhardt PJ, Reeder SB. Quantification of liver fat "
        "content with CT and MRI: state of the art. Radiology 2021;301:250-262."
    ),
    "PICKHARDT2024": (
        "Pickhardt PJ, Blake GM, Moeller A, Garrett JW, Summers RM. Post-contrast CT liver "
        "attenuation alone is superior to the liver-spleen difference for identifying "
        "moderate hepatic steatosis. 2024 (1,676 adults, unenhanced / portal venous / 10-min "
        "delayed; portal liver enhancement 47.3 HU without vs 35.7 HU with moderate "
        "steatosis; thresholds 80 and 90 HU). Journal not shown in the copy found (also an "
        "ARRS 2024 abstract)."
    ),
    "PARK_LS": (
        "Park YS, Park SH, Lee SS, Kim DY, Shin YM, Lee W, Lee SG, Yu ES. Biopsy-proven "
        "nonsteatotic liver in adults: estimation of reference range for difference in "
        "attenuation between the liver and the spleen at nonenhanced CT (96 non-steatotic "
        "livers; reference range 1 to 18 HU). Journal and year not shown in the copy found "
        "(Radiology 2011 from memory, not verified)."
    ),
    "GOSHIMA_AJR": (
        "MDCT of the liver and hypervascular hepatocellular carcinomas: optimizing scan "
        "delays for bolus-tracking techniques of hepatic arterial and portal venous phases "
        "(171 patients, 2 mL/kg of 300 mgI/mL at 4 mL/s; contrast enhancement index of aorta, "
        "spleen, portal veins, liver, hepatic veins). Authors, journal and year were not "
        "shown in the copy found (from memory: Goshima S, Kanematsu M, et al., AJR 2006; "
        "not verified)."
    ),
    "HAP_RADIOLOGY2007": (
        "Bolus tracking to time hepatic arterial phase imaging of hypervascular HCCs with a "
        "40-detector CT scanner (192 patients; aortic enhancement 284.3-308.7 HU, SD 42-56, "
        "9-18 s after a 100 HU trigger). PubMed 17329690; authors not verified in the copy "
        "found."
    ),
    "RADIOPAEDIA_LAP": (
        "Murphy A, et al. Late arterial phase. Radiopaedia.org, revised 23 Mar 2023 (peak "
        "aortic 290-360 HU; liver +20-30 HU; portal vein 145 +- 20 HU). Reference article, "
        "not a primary study."
    ),
    "KIDNEY_EJR2007": (
        "Multi-detector row CT of the kidney: optimizing scan delays for bolus tracking "
        "techniques of arterial, corticomedullary, and nephrographic phases. Eur J Radiol "
        "2007;63(3):420-426 (128 patients; cortex +195-217 HU at 10-30 s, medulla +145 HU at "
        "55 s, cortex-medulla 110-140 HU at 5-30 s and < 30 HU from 45 s). Authors not "
        "verified in the copy found."
    ),
    "GUNN_SPLEEN": (
        "Gunn ML. Inhomogeneous splenic enhancement (case 57). In: Pearls and Pitfalls in "
        "Emergency Radiology, Cambridge University Press 2013 (arciform, focal and diffuse "
        "mottled arterial-phase patterns)."
    ),
    "ECV_SCIREP2025": (
        "Spectral CT extracellular volume fraction for the severity of liver cirrhosis. "
        "Scientific Reports 2025, doi:10.1038/s41598-025-03717-x (controls: liver ECV "
        "25.49 +- 3.15 %). Authors not verified in the copy found."
    ),
}

NO_SOURCE = "typical value, no source found"


def _e(mean, lo, hi, refs, note=""):
    return {"mean": float(mean), "range": (float(lo), float(hi)), "refs": tuple(refs), "note": note}


_BLOOD0 = 42.0  # unenhanced blood
_KIDNEY0 = 35.0
_LIVER0 = 60.0
_SPLEEN0 = 50.0

#: PHASE_HU[phase][structure] -> {"mean": HU, "range": (lo, hi), "refs": (keys), "note": str}
#: Structures: aorta, inferior_vena_cava, portal_vein_and_splenic_vein, kidney_cortex,
#: kidney_medulla, liver, spleen, blood (vessels inside the liver). The arterial spleen also
#: has "mottle_sd" (HU SD of the heterogeneous pattern added on top of the real texture).
PHASE_HU: dict[str, dict[str, dict]] = {
    "unenhanced": {
        "aorta": _e(_BLOOD0, 38, 50, ("DAHMARDEH2025", "AORTA_IVC_ANAEMIA")),
        "inferior_vena_cava": _e(_BLOOD0, 36, 50, ("DAHMARDEH2025", "AORTA_IVC_ANAEMIA")),
        "portal_vein_and_splenic_vein": _e(_BLOOD0, 36, 50, ("DAHMARDEH2025", "AORTA_IVC_ANAEMIA")),
        "kidney_cortex": _e(_KIDNEY0, 30, 50, (), NO_SOURCE + " (textbook range 30-50 HU)"),
        "kidney_medulla": _e(_KIDNEY0, 30, 50, (), NO_SOURCE + " (textbook range 30-50 HU)"),
        "liver": _e(_LIVER0, 55, 65, ("STAREKOVA2021", "PICKHARDT2024")),
        "spleen": _e(_SPLEEN0, 42, 59, ("PARK_LS",), "liver 60 minus the 1-18 HU range"),
        "blood": _e(_BLOOD0, 38, 50, ("DAHMARDEH2025", "AORTA_IVC_ANAEMIA")),
    },
    "arterial": {
        "aorta": _e(340, 290, 380, ("GOSHIMA_AJR", "HAP_RADIOLOGY2007"), "42 + ~300 HU"),
        "inferior_vena_cava": _e(70, 45, 100, (), NO_SOURCE),
        "portal_vein_and_splenic_vein": _e(
            135, 115, 165, ("GOSHIMA_AJR", "RADIOPAEDIA_LAP"), "42 + 75-104 HU; 145 +- 20 HU"
        ),
        "kidney_cortex": _e(240, 230, 252, ("KIDNEY_EJR2007",), "35 + 195-217 HU"),
        "kidney_medulla": _e(115, 100, 130, ("KIDNEY_EJR2007",), "cortex minus 110-140 HU"),
        "liver": _e(80, 75, 90, ("GOSHIMA_AJR", "RADIOPAEDIA_LAP"), "60 + 15-30 HU"),
        "spleen": {
            **_e(152, 147, 158, ("GOSHIMA_AJR", "GUNN_SPLEEN"), "50 + 97-108 HU; mottled"),
            "mottle_sd": 25.0,
            "mottle_note": NO_SOURCE + " (amplitude of the heterogeneous pattern)",
        },
        "blood": _e(77, 66, 93, ("GOSHIMA_AJR",), "hepatic veins: 42 + 24-51 HU"),
    },
    "portal_venous": {
        "aorta": _e(165, 159, 167, ("GOSHIMA_AJR",), "42 + 117-125 HU"),
        "inferior_vena_cava": _e(130, 110, 150, (), NO_SOURCE),
        "portal_vein_and_splenic_vein": _e(170, 150, 190, (), NO_SOURCE),
        "kidney_cortex": _e(200, 185, 210, ("KIDNEY_EJR2007",), "medulla + < 30 HU"),
        "kidney_medulla": _e(180, 170, 190, ("KIDNEY_EJR2007",), "35 + 145 HU"),
        "liver": _e(110, 100, 125, ("PICKHARDT2024", "GOSHIMA_AJR"), "60 + 47-63 HU"),
        "spleen": _e(128, 123, 132, ("GOSHIMA_AJR",), "50 + 73-82 HU"),
        "blood": _e(160, 140, 180, (), NO_SOURCE),
    },
    "delayed": {
        "aorta": _e(115, 95, 135, (), NO_SOURCE),
        "inferior_vena_cava": _e(115, 95, 135, (), NO_SOURCE),
        "portal_vein_and_splenic_vein": _e(115, 95, 135, (), NO_SOURCE),
        "kidney_cortex": _e(145, 125, 165, (), NO_SOURCE),
        "kidney_medulla": _e(145, 125, 165, (), NO_SOURCE),
        "liver": _e(
            92,
            85,
            100,
            ("ECV_SCIREP2025",),
            "60 + 0.255 x (115 - 42) / (1 - 0.42); haematocrit 0.42 is " + NO_SOURCE,
        ),
        "spleen": _e(95, 85, 105, (), NO_SOURCE),
        "blood": _e(115, 95, 135, (), NO_SOURCE),
    },
}

#: Which TotalSegmentator structures take which PHASE_HU row. Each listed structure is
#: moved to the row's mean on its own (so each has that mean); the iliac vessels follow the
#: aorta / IVC.
STRUCTURE_LABELS = {
    "aorta": ("aorta", "iliac_artery_left", "iliac_artery_right"),
    "inferior_vena_cava": ("inferior_vena_cava", "iliac_vena_left", "iliac_vena_right"),
    "portal_vein_and_splenic_vein": ("portal_vein_and_splenic_vein",),
    "liver": ("liver",),
    "spleen": ("spleen",),
}
KIDNEYS = ("kidney_left", "kidney_right")

#: Seconds after the start of injection used for the sample study's times/descriptions.
PHASE_DELAY_S = {"arterial": 35, "portal_venous": 70, "delayed": 600}


# --------------------------------------------------------------------------- helpers
def _ids(names: dict, name: str) -> list[int]:
    return [int(k) for k, v in names.items() if v == name]


def structure_mask(labels: np.ndarray, names: dict, name: str) -> np.ndarray:
    """Boolean mask of one named structure.

    Parameters
    ----------
    labels : ndarray
        Label map ``[z, y, x]``.
    names : dict
        Label value (int or str) -> structure name (TotalSegmentator names).
    name : str
        Structure name, e.g. ``"liver"``.

    Returns
    -------
    ndarray of bool
        Empty when the name is absent.
    """
    ids = _ids(names, name)
    if not ids:
        return np.zeros(labels.shape, bool)
    return np.isin(labels, ids)


def _shift(mask: np.ndarray, axis: int, step: int) -> np.ndarray:
    """``mask`` moved by ``step`` voxels along ``axis`` (vacated voxels False)."""
    out = np.zeros_like(mask)
    src = [slice(None)] * mask.ndim
    dst = [slice(None)] * mask.ndim
    if step > 0:
        src[axis], dst[axis] = slice(0, -step), slice(step, None)
    else:
        src[axis], dst[axis] = slice(-step, None), slice(0, step)
    out[tuple(dst)] = mask[tuple(src)]
    return out


def erode(mask: np.ndarray, iterations: int = 1) -> np.ndarray:
    """Binary erosion with the 6-neighbourhood (NumPy only).

    Parameters
    ----------
    mask : ndarray of bool
    iterations : int

    Returns
    -------
    ndarray of bool
    """
    m = mask.astype(bool)
    for _ in range(iterations):
        e = m.copy()
        for axis in range(m.ndim):
            for step in (1, -1):
                e &= _shift(m, axis, step)
        m = e
    return m


def kidney_cortex_medulla(
    labels: np.ndarray, names: dict, *, cortex_voxels: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """Split the TotalSegmentator kidney masks into cortex (outer shell) and medulla.

    TotalSegmentator has one label per kidney; the cortex is modelled as the outer
    ``cortex_voxels`` voxels of each kidney mask (6-neighbourhood erosion), the medulla as
    the rest. With the shared 3 mm CT, 2 voxels is about 6 mm (the cortex is about
    5-10 mm thick: typical value, no source found).

    Parameters
    ----------
    labels, names : see :func:`structure_mask`
    cortex_voxels : int
        Shell thickness in voxels.

    Returns
    -------
    cortex, medulla : ndarray of bool
    """
    cortex = np.zeros(labels.shape, bool)
    medulla = np.zeros(labels.shape, bool)
    for k in KIDNEYS:
        m = structure_mask(labels, names, k)
        if not m.any():
            continue
        inner = erode(m, cortex_voxels)
        cortex |= m & ~inner
        medulla |= inner
    return cortex, medulla


def _move(out: np.ndarray, hu: np.ndarray, mask: np.ndarray, target: float) -> None:
    """Set ``out[mask]`` to ``target`` plus the real texture (voxel minus the mask's mean).

    Integer HU stay integer: the shift is split into a whole-HU part for every voxel and
    +1 HU for a seeded share of the voxels, so that rounding to int16 later cannot bias the
    mean (a plain fractional shift would round every voxel the same way, up to 0.5 HU).
    """
    if not mask.any():
        return
    v = hu[mask].astype(np.float64)
    shift = target - v.mean()
    if np.all(v == np.round(v)):
        base = np.floor(shift)
        k = int(round((shift - base) * v.size))
        add = np.full(v.size, base)
        if k:
            idx = np.random.default_rng(v.size).choice(v.size, size=k, replace=False)
            add[idx] += 1.0
        out[mask] = v + add
    else:
        out[mask] = v + shift


def _smooth_noise(shape, sigma: float, rng) -> np.ndarray:
    """Zero-mean Gaussian-smoothed white noise (FFT; NumPy only), unit SD."""
    w = rng.standard_normal(shape)
    freqs = np.meshgrid(*[np.fft.fftfreq(n) for n in shape], indexing="ij")
    k2 = sum(f**2 for f in freqs)
    g = np.exp(-2.0 * (np.pi**2) * (sigma**2) * k2)
    s = np.real(np.fft.ifftn(np.fft.fftn(w) * g))
    s -= s.mean()
    sd = s.std()
    return s / sd if sd > 0 else s


def _to_int16(a: np.ndarray) -> np.ndarray:
    return np.clip(np.round(a), -32768, 32767).astype(np.int16)


def _names(names: dict) -> dict:
    return {int(k): str(v) for k, v in names.items()}


# --------------------------------------------------------------------------- phases
def paint_phase(
    hu: np.ndarray,
    labels: np.ndarray,
    names: dict,
    phase: str,
    *,
    seed: int = 0,
    cortex_voxels: int = 2,
    liver_vessels: bool = False,
) -> np.ndarray:
    """Paint a contrast phase onto a real unenhanced CT.

    Each structure of :data:`STRUCTURE_LABELS`, the kidney cortex and medulla
    (:func:`kidney_cortex_medulla`) is moved so that its mean is ``PHASE_HU[phase][row]
    ["mean"]`` while keeping its real texture: ``target + (voxel - structure mean)``.
    The arterial spleen gets an extra smooth random (mottled) pattern of SD
    ``PHASE_HU["arterial"]["spleen"]["mottle_sd"]``, zero mean inside the spleen, so its
    mean stays the target. Everything else is unchanged.

    Parameters
    ----------
    hu : ndarray
        The real unenhanced CT in HU, ``[z, y, x]``.
    labels : ndarray
        Its label map (same shape).
    names : dict
        Label value -> TotalSegmentator name.
    phase : str
        One of :data:`PHASES`. ``"unenhanced"`` moves the structures to the published
        unenhanced values (the real CT itself is the usual unenhanced series).
    seed : int
        Seed of the spleen mottle and of the optional vessels.
    cortex_voxels : int
        Kidney cortex shell thickness in voxels.
    liver_vessels : bool
        Also draw :func:`liver_vessel_mask` vessels inside the liver at the phase's
        ``blood`` value (the liver row then applies to the parenchyma without them).

    Returns
    -------
    ndarray of int16
        The painted copy.
    """
    if phase not in PHASE_HU:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    names = _names(names)
    table = PHASE_HU[phase]
    rng = np.random.default_rng(seed)
    out = hu.astype(np.float64, copy=True)
    vessels = None
    if liver_vessels:
        vessels = liver_vessel_mask(labels, names, seed=seed)
    for row, structures in STRUCTURE_LABELS.items():
        for s in structures:
            m = structure_mask(labels, names, s)
            if s == "liver" and vessels is not None:
                m &= ~vessels
            _move(out, hu, m, table[row]["mean"])
    cortex, medulla = kidney_cortex_medulla(labels, names, cortex_voxels=cortex_voxels)
    _move(out, hu, cortex, table["kidney_cortex"]["mean"])
    _move(out, hu, medulla, table["kidney_medulla"]["mean"])
    mottle = table["spleen"].get("mottle_sd", 0.0)
    spleen = structure_mask(labels, names, "spleen")
    if mottle and spleen.any():
        zz, yy, xx = np.nonzero(spleen)
        box = tuple(slice(a.min(), a.max() + 1) for a in (zz, yy, xx))
        field_ = _smooth_noise(spleen[box].shape, sigma=1.5, rng=rng)
        sub = spleen[box]
        f = field_[sub]
        f = (f - f.mean()) / (f.std() or 1.0) * mottle
        region = out[box]
        region[sub] += f
        out[box] = region
    if vessels is not None and vessels.any():
        _move(out, hu, vessels, table["blood"]["mean"])
    return _to_int16(out)


# --------------------------------------------------------------------------- steatosis
def _nearest(points: np.ndarray, target: np.ndarray) -> np.ndarray:
    d = ((points - target) ** 2).sum(axis=1)
    return points[int(np.argmin(d))]


def _capsule(shape, p0, p1, r) -> tuple[tuple, np.ndarray]:
    """Voxels within ``r`` of segment p0-p1 (voxel units): (box slices, bool mask in box)."""
    lo = np.maximum(np.floor(np.minimum(p0, p1) - r - 1).astype(int), 0)
    hi = np.minimum(np.ceil(np.maximum(p0, p1) + r + 2).astype(int), np.array(shape))
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    grid = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij"), -1)
    d = p1 - p0
    dd = float(d @ d) or 1.0
    t = np.clip(((grid - p0) @ d) / dd, 0.0, 1.0)
    closest = p0 + t[..., None] * d
    dist2 = ((grid - closest) ** 2).sum(-1)
    return box, dist2 <= r * r


def liver_vessel_mask(
    labels: np.ndarray,
    names: dict,
    *,
    seed: int = 0,
    fraction: float = 0.05,
    radius: float = 1.3,
    min_radius: float = 0.9,
) -> np.ndarray:
    """Synthetic branching vessel tubes inside the liver mask (the shared map has none).

    Two trees are grown: a portal tree from the liver voxel nearest the portal-vein trunk
    (hilum) and a hepatic-vein tree from the liver voxel nearest the upper IVC. Each new
    branch starts at a random point of an existing branch and runs 5-15 voxels towards a
    random point of the liver interior; radii shrink by 15 % per generation down to
    ``min_radius``. Branches are clipped to the liver mask; growth stops when the tubes
    fill ``fraction`` of the liver. With the shared 3 mm CT the default radius is about
    4 mm (trunks) down to 2.7 mm.

    Parameters
    ----------
    labels, names : see :func:`structure_mask`
    seed : int
        Deterministic for a given seed.
    fraction : float
        Target share of liver voxels (default 5 %).
    radius, min_radius : float
        Trunk and smallest branch radius, in voxels.

    Returns
    -------
    ndarray of bool
        Vessel voxels, all inside the liver mask.
    """
    names = _names(names)
    liver = structure_mask(labels, names, "liver")
    vessels = np.zeros(labels.shape, bool)
    n_liver = int(liver.sum())
    if n_liver == 0:
        return vessels
    rng = np.random.default_rng(seed)
    pts = np.argwhere(liver).astype(float)
    centre = pts.mean(axis=0)
    interior = np.argwhere(erode(liver, 2)).astype(float)
    if len(interior) < 10:
        interior = pts
    roots = []
    pv = np.argwhere(structure_mask(labels, names, "portal_vein_and_splenic_vein")).astype(float)
    if len(pv):
        roots.append(_nearest(pts, _nearest(pv, centre)))
    ivc = np.argwhere(structure_mask(labels, names, "inferior_vena_cava")).astype(float)
    if len(ivc):
        zmax = pts[:, 0].max()
        upper = ivc[ivc[:, 0] <= zmax]
        if len(upper):
            top = upper[upper[:, 0] >= np.percentile(upper[:, 0], 75)]
            roots.append(_nearest(pts, _nearest(top, centre)))
    if not roots:
        roots.append(_nearest(pts, centre))
    target_n = int(round(fraction * n_liver))
    # nodes: (point, radius); start each tree with a trunk towards the liver centre
    nodes: list[tuple[np.ndarray, float]] = []

    def grow(p0, direction_to, r):
        vec = direction_to - p0
        n = np.linalg.norm(vec)
        if n < 1e-6:
            return None
        length = rng.uniform(5.0, 15.0)
        p1 = p0 + vec / n * min(length, n)
        box, cap = _capsule(labels.shape, p0, p1, r)
        vessels[box] |= cap & liver[box]
        for t in (0.5, 1.0):
            nodes.append((p0 + t * (p1 - p0), r))
        return p1

    for root in roots:
        p = root
        for _ in range(3):  # trunk: a few segments towards the interior
            tgt = interior[rng.integers(len(interior))] * 0.3 + centre * 0.7
            p = grow(p, tgt, radius) if p is not None else None
            if p is None:
                break
    guard = 0
    while int(vessels.sum()) < target_n and nodes and guard < 2000:
        guard += 1
        i = int(rng.integers(len(nodes)))
        p0, r0 = nodes[i]
        cand = interior[rng.integers(len(interior), size=32)]
        d = np.linalg.norm(cand - p0, axis=1)
        ok = cand[(d > 4) & (d < 25)]
        if len(ok) == 0:
            continue
        grow(p0, ok[0], max(min_radius, r0 * 0.85))
    return vessels


def paint_steatosis(
    hu: np.ndarray,
    labels: np.ndarray,
    names: dict,
    liver_hu: float,
    *,
    seed: int = 0,
    spleen_hu: float | None = PHASE_HU["unenhanced"]["spleen"]["mean"],
    blood_hu: float = PHASE_HU["unenhanced"]["blood"]["mean"],
    vessel_fraction: float = 0.05,
    return_vessels: bool = False,
):
    """An UNENHANCED scan with a (fatty) liver at ``liver_hu`` and vessels at blood HU.

    The liver parenchyma (liver mask minus :func:`liver_vessel_mask`) is moved to
    ``liver_hu``; the intrahepatic vessels, aorta, IVC (and iliac vessels) and the portal /
    splenic vein are moved to ``blood_hu`` (about 42 HU, :data:`PHASE_HU`); the spleen to
    ``spleen_hu`` (default the published unenhanced 50 HU, ``None`` keeps the real spleen,
    about 33 HU). Real texture is kept everywhere (voxel minus its structure's mean).
    With ``liver_hu`` below about 40 HU the vessels are brighter than the parenchyma, the
    classic sign of steatosis; with 60 HU they are darker, as in a normal liver.

    Parameters
    ----------
    hu, labels, names : as :func:`paint_phase`
    liver_hu : float
        Liver parenchyma mean (e.g. 60, 38, 27, 15, 5, 0).
    seed : int
        Seed of the vessel tree.
    spleen_hu, blood_hu : float
        See above.
    vessel_fraction : float
        Share of liver voxels drawn as vessels.
    return_vessels : bool
        Also return the vessel mask.

    Returns
    -------
    ndarray of int16, or (ndarray, ndarray of bool) with ``return_vessels``
    """
    names = _names(names)
    out = hu.astype(np.float64, copy=True)
    vessels = liver_vessel_mask(labels, names, seed=seed, fraction=vessel_fraction)
    liver = structure_mask(labels, names, "liver")
    _move(out, hu, liver & ~vessels, float(liver_hu))
    _move(out, hu, vessels, float(blood_hu))
    for row in ("aorta", "inferior_vena_cava", "portal_vein_and_splenic_vein"):
        for s in STRUCTURE_LABELS[row]:
            _move(out, hu, structure_mask(labels, names, s), float(blood_hu))
    if spleen_hu is not None:
        _move(out, hu, structure_mask(labels, names, "spleen"), float(spleen_hu))
    img = _to_int16(out)
    return (img, vessels) if return_vessels else img


def reference_labels(labels: np.ndarray, names: dict) -> np.ndarray:
    """The 61-structure map reduced to the seed's labels: 0 background, 1 liver, 2 spleen."""
    names = _names(names)
    out = np.zeros(labels.shape, np.uint8)
    out[structure_mask(labels, names, "liver")] = 1
    out[structure_mask(labels, names, "spleen")] = 2
    return out


def leaky_liver_labels(
    labels: np.ndarray,
    names: dict,
    *,
    shift: tuple[int, int, int] = (0, 1, 0),
    voxels: int = 1,
    hu: np.ndarray | None = None,
    window: tuple[float, float] = (-30.0, 150.0),
) -> np.ndarray:
    """Liver/spleen label map (1/2) whose liver takes in neighbouring tissue on ONE side.

    The liver mask is moved by ``shift`` (array axes ``[z, y, x]``), ``voxels`` times, and
    united with itself; spleen voxels stay spleen. For the shared CT (direction
    diag(-1, -1, 1): +y index runs anteriorly, +x to the patient's right) the default
    ``(0, 1, 0)`` grows the liver one voxel anteriorly: 1,937 voxels (4.6 % of the liver),
    mostly abdominal wall and partial-volume fat (median 0 HU, 65 % between -30 and 100 HU).
    With ``hu`` given, only neighbours inside ``window`` (soft tissue) are added.

    Parameters
    ----------
    labels, names : see :func:`structure_mask`
    shift : tuple of int
        One step, e.g. ``(0, 1, 0)``.
    voxels : int
        Number of steps.
    hu : ndarray, optional
        The image, to add only soft-tissue neighbours.
    window : tuple of float
        HU window of the neighbours added when ``hu`` is given.

    Returns
    -------
    ndarray of uint8
    """
    names = _names(names)
    out = reference_labels(labels, names)
    liver = out == 1
    grown = liver.copy()
    step = liver
    for _ in range(voxels):
        for axis, s in enumerate(shift):
            if s:
                step = _shift(step, axis, int(s))
        grown |= step
    add = grown & (out != 2) & ~liver
    if hu is not None:
        add &= (hu >= window[0]) & (hu <= window[1])
    out[add] = 1
    return out


# --------------------------------------------------------------------------- data
def shared_data_dir() -> Path:
    """``../shared/data/totalseg_example`` relative to the project root."""
    return Path(__file__).resolve().parents[2] / "shared" / "data" / "totalseg_example"


def load_example(folder: str | Path | None = None):
    """Read the shared real CT, its 61-structure label map and the names.

    Parameters
    ----------
    folder : path, optional
        Default :func:`shared_data_dir`.

    Returns
    -------
    scan : client.reading.scan.ScanVolume
        The real CT (``ct.nii.gz``).
    labels : ndarray
        ``labels_all.nii.gz`` on the same grid (checked).
    names : dict
        Label value (int) -> name.
    """
    import SimpleITK as sitk

    from client.reading.io import read_scan

    folder = Path(folder) if folder else shared_data_dir()
    scan = read_scan(folder / "ct.nii.gz")
    lab = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "labels_all.nii.gz")))
    if lab.shape != scan.array.shape:
        raise ValueError(f"labels_all shape {lab.shape} != CT shape {scan.array.shape}")
    names = _names(json.loads((folder / "labels_all_names.json").read_text()))
    return scan, lab, names


# --------------------------------------------------------------------------- study
_UID_ROOT = "1.2.826.0.1.3680043.8.498."

SERIES_DESCRIPTIONS_TAGGED = {
    "unenhanced": "ABD NONCON 3.0",
    "arterial": "ABD ART 35s 3.0",
    "portal_venous": "ABD PV 70s 3.0",
    "delayed": "ABD DELAYED 10min 3.0",
}
NEUTRAL_DESCRIPTION = "AXIAL 3.0"


@dataclass
class PhaseStudy:
    """What :func:`write_phase_study` wrote.

    Attributes
    ----------
    study_uid : str
    series_uids : dict
        phase -> SeriesInstanceUID.
    dicom_dirs : dict
        phase -> series folder.
    nifti_paths : dict
        phase -> NIfTI file (no tags); empty when ``nifti=False``.
    arrays : dict
        phase -> the int16 HU array written.
    tags : bool
        Whether the enhanced series carry contrast tags.
    """

    study_uid: str
    series_uids: dict = field(default_factory=dict)
    dicom_dirs: dict = field(default_factory=dict)
    nifti_paths: dict = field(default_factory=dict)
    arrays: dict = field(default_factory=dict)
    tags: bool = True


def _uid(rng) -> str:
    return _UID_ROOT + str(int(rng.integers(10**15, 10**18)))


def phase_arrays(scan, labels, names, *, seed: int = 0, liver_vessels: bool = False) -> dict:
    """The four series of the sample study: the real CT and the three painted phases.

    Returns
    -------
    dict
        phase -> int16 array; ``"unenhanced"`` is the real CT unchanged.
    """
    arrays = {"unenhanced": _to_int16(np.asarray(scan.array))}
    for k, ph in enumerate(PHASES[1:]):
        arrays[ph] = paint_phase(
            scan.array, labels, names, ph, seed=seed + k, liver_vessels=liver_vessels
        )
    return arrays


_BOLUS_START = "101500"  # ContrastBolusStartTime of the enhanced series (tags=True)


def write_phase_study(
    out_dir: str | Path,
    *,
    tags: bool = True,
    seed: int = 0,
    nifti: bool = True,
    dicom: bool = True,
    data_dir: str | Path | None = None,
    liver_vessels: bool = False,
    dicom_subdir: str = "dicom",
) -> PhaseStudy:
    """Write the shared real CT as ONE multi-phase DICOM study (and NIfTI copies).

    Layout: ``out_dir/<dicom_subdir>/<n>_<phase>/`` (one series per folder, files without
    extension, written by :func:`client.reading.dicom.write_series`, then given one
    StudyInstanceUID, FrameOfReferenceUID, seeded Series/SOP UIDs, series numbers and
    descriptions) and ``out_dir/nifti/<phase>.nii.gz`` (no tags). The unenhanced series is
    the real CT unchanged; the others are :func:`paint_phase` outputs.

    With ``tags=True`` the enhanced series carry ContrastBolusAgent, ContrastBolusRoute,
    ContrastBolusVolume and ContrastBolusStartTime, and descriptions such as
    ``"ABD PV 70s 3.0"``; SeriesTime/AcquisitionTime are the bolus start plus the phase
    delay (:data:`PHASE_DELAY_S`). With ``tags=False`` no series has a contrast tag, all
    descriptions are ``"AXIAL 3.0"`` and all series share one time.

    Parameters
    ----------
    out_dir : path
    tags : bool
    seed : int
        UIDs and painting are deterministic for a seed.
    nifti, dicom : bool
        Which forms to write.
    data_dir : path, optional
        Folder of ct.nii.gz / labels_all.nii.gz / labels_all_names.json.
    liver_vessels : bool
        Passed to :func:`paint_phase`.
    dicom_subdir : str
        Sub-folder of the series folders (``""``: directly in ``out_dir``).

    Returns
    -------
    PhaseStudy
    """
    import SimpleITK as sitk

    from client.reading.dicom import write_series
    from client.reading.scan import ScanVolume

    out_dir = Path(out_dir)
    scan, labels, names = load_example(data_dir)
    arrays = phase_arrays(scan, labels, names, seed=seed, liver_vessels=liver_vessels)
    rng = np.random.default_rng(seed)
    study = PhaseStudy(study_uid=_uid(rng), arrays=arrays, tags=tags)
    frame_uid = _uid(rng)
    for n, ph in enumerate(PHASES, start=1):
        vol = ScanVolume(
            array=arrays[ph], spacing=scan.spacing, origin=scan.origin, direction=scan.direction
        )
        series_uid = _uid(rng)
        study.series_uids[ph] = series_uid
        if nifti:
            p = out_dir / "nifti" / f"{ph}.nii.gz"
            p.parent.mkdir(parents=True, exist_ok=True)
            sitk.WriteImage(vol.to_sitk(), str(p), useCompression=True)
            study.nifti_paths[ph] = p
        if not dicom:
            continue
        folder = (out_dir / dicom_subdir if dicom_subdir else out_dir) / f"{n:02d}_{ph}"
        if folder.exists():
            for old in folder.iterdir():
                if old.is_file():
                    old.unlink()
        paths = write_series(vol, folder)
        study.dicom_dirs[ph] = folder
        _tag_series(paths, study.study_uid, series_uid, frame_uid, n, ph, tags)
    return study


def _tag_series(paths, study_uid, series_uid, frame_uid, n, ph, tags) -> None:
    """Give the files of series ``n`` (phase ``ph``) the study's UIDs, seeded SOP UIDs,
    dates, times (bolus start + phase delay with ``tags``), descriptions and, with
    ``tags`` on an enhanced phase, the contrast bolus tags (removed otherwise)."""
    import pydicom

    enhanced = ph != "unenhanced"
    delay = PHASE_DELAY_S.get(ph, -60)
    t = 10 * 3600 + 15 * 60 + delay if tags else 10 * 3600 + 15 * 60
    hhmmss = f"{t // 3600:02d}{(t // 60) % 60:02d}{t % 60:02d}"
    for k, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        sop = f"{series_uid}.{k + 1}"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = sop
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.FrameOfReferenceUID = frame_uid
        ds.SeriesNumber = n
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = "20260101"
        ds.StudyTime = "101000"
        ds.SeriesTime = ds.AcquisitionTime = hhmmss
        ds.StudyDescription = "ABDOMEN" if not tags else "ABDOMEN MULTIPHASE"
        ds.SeriesDescription = SERIES_DESCRIPTIONS_TAGGED[ph] if tags else NEUTRAL_DESCRIPTION
        for kw in (
            "ContrastBolusAgent",
            "ContrastBolusRoute",
            "ContrastBolusVolume",
            "ContrastBolusStartTime",
        ):
            if kw in ds:
                delattr(ds, kw)
        if tags and enhanced:
            ds.ContrastBolusAgent = "IOPAMIDOL 300"
            ds.ContrastBolusRoute = "IV"
            ds.ContrastBolusVolume = "100"
            ds.ContrastBolusStartTime = _BOLUS_START
        ds.save_as(path)


def write_reference_masks(out_dir: str | Path, case_ids, *, data_dir=None, leaky: bool = False):
    """Write the reference liver/spleen map (1/2) as ``out_dir/<case_id>.nii.gz`` for --masks.

    Parameters
    ----------
    out_dir : path
    case_ids : iterable of str
    data_dir : path, optional
    leaky : bool
        Use :func:`leaky_liver_labels` (liver takes one voxel of neighbours on one side).

    Returns
    -------
    list of Path
    """
    import SimpleITK as sitk

    scan, labels, names = load_example(data_dir)
    lab = leaky_liver_labels(labels, names) if leaky else reference_labels(labels, names)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for cid in case_ids:
        p = out_dir / f"{cid}.nii.gz"
        sitk.WriteImage(scan.to_sitk(lab), str(p), useCompression=True)
        paths.append(p)
    return paths


def write_steatosis_cases(
    out_dir: str | Path,
    liver_hus=(60, 38, 27, 15, 5, 0),
    *,
    seed: int = 0,
    data_dir=None,
) -> dict:
    """Write unenhanced steatosis cases as NIfTI ``out_dir/steatosis_liver<HU>.nii.gz``.

    Returns
    -------
    dict
        liver HU -> path.
    """
    import SimpleITK as sitk

    scan, labels, names = load_example(data_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for h in liver_hus:
        img = paint_steatosis(scan.array, labels, names, h, seed=seed)
        p = out_dir / f"steatosis_liver{int(h):02d}.nii.gz"
        sitk.WriteImage(scan.to_sitk(img), str(p), useCompression=True)
        paths[h] = p
    return paths
