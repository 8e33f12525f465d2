"""Contrast phase from the image (vessels, kidneys, spleen) beside the DICOM tag.

The liver/spleen ratio holds on unenhanced CT only, and most archive CT is enhanced,
often without a usable tag (NIfTI conversions drop it). The phase is read where
steatosis cannot move the evidence (docs/phase.md):

* ``aorta``, ``portal_vein`` (portal + splenic vein), ``ivc``: unenhanced blood is
  35-60 HU whatever the liver's fat; iodine lifts it to 150-350 HU.
* ``kidney_cortex`` / ``kidney_medulla``: unenhanced parenchyma is 30-40 HU; the
  cortex enhances before the medulla (corticomedullary phase = arterial), then the
  parenchyma is homogeneous (nephrographic / excretory).
* the spleen (40-60 HU unenhanced) as a cross-check.

Each structure's attenuation is the median inside it after trimming its partial-
volume rim. Structures come from the label map when it carries them (a served model
that declares the classes, or ``--masks`` maps such as TotalSegmentator's); without
them the phase falls back to the liver and spleen evidence of
:mod:`postprocess.contrast` (``basis = "organs"``: enhanced or not, phase unknown).

Rules, not a classifier: every threshold is a named field of
:class:`postprocess.config.PhaseConfig` with the published measurement behind it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

from ._xp import to_numpy
from .config import PhaseConfig

ENHANCED_PHASES = ("arterial", "portal_venous", "delayed")
VESSELS = ("aorta", "portal_vein", "ivc")
MEASURED = ("aorta", "portal_vein", "ivc", "kidney_cortex", "kidney_medulla", "kidney")


def structure_group(name: str) -> str | None:
    """The phase-evidence group of a class name (TotalSegmentator or HepaScreen names)."""
    n = name.strip().lower()
    if n in ("aorta", "abdominal_aorta"):
        return "aorta"
    if n.startswith("inferior_vena_cava") or n == "ivc":
        return "ivc"
    if n.startswith("portal_vein") or n.startswith("portal_splenic"):
        return "portal_vein"
    if n.startswith("kidney") and "cyst" not in n:
        return "kidney"
    return None


def evidence_classes(classes: dict | None) -> dict[str, tuple[int, ...]]:
    """``{group: label values}`` for the groups a ``{name: value}`` class table carries."""
    out: dict[str, list[int]] = {}
    for name, value in (classes or {}).items():
        g = structure_group(str(name))
        if g is not None and value is not None and int(value) > 0:
            out.setdefault(g, []).append(int(value))
    return {g: tuple(sorted(v)) for g, v in out.items()}


def _box(slices, stride, shape):
    """Coarse-grid box -> full-grid box, one coarse step of slack on each side."""
    return tuple(
        slice(max(0, (s.start - 1) * k), min(n, (s.stop + 1) * k))
        for s, k, n in zip(slices, stride, shape)
    )


def inside(mask: np.ndarray, mm: float, spacing) -> np.ndarray:
    """Voxels of ``mask`` whose box neighbourhood of about ``mm`` (``max(1, round(mm /
    spacing))`` voxels per axis) lies inside ``mask``: a binary erosion by a box, with
    everything outside the array counted as outside (a separable minimum filter)."""
    from scipy import ndimage as ndi

    size = tuple(2 * max(1, int(round(mm / float(s)))) + 1 for s in spacing)
    return ndi.minimum_filter(mask.view(np.uint8), size=size, mode="constant", cval=0) > 0


def _median(values: np.ndarray, min_n: int = 10) -> float:
    return float(np.median(values)) if values.size >= min_n else float("nan")


def structure_attenuation(hu, labels, classes: dict | None, spacing, stride, cfg: PhaseConfig):
    """Median HU of every phase-evidence structure the label map carries.

    Parameters
    ----------
    hu, labels : ndarray [z, y, x]
        The scan (HU) and its label map on the same grid (NumPy or CuPy).
    classes : dict
        ``{name: label value}`` of the label map (names as in
        :data:`client.core.contract.STRUCTURE_LABELS` or TotalSegmentator's).
    spacing : (z, y, x) mm
    stride : (z, y, x) int
        Coarse grid on which the structures' boxes are found (one pass over a strided
        copy); the medians are taken on the full grid inside those boxes.
    cfg : PhaseConfig

    Returns
    -------
    dict
        ``{"aorta": HU, "portal_vein": HU, "ivc": HU, "kidney": HU, "kidney_cortex": HU,
        "kidney_medulla": HU}`` for what was found (structures under
        ``cfg.min_structure_ml`` are left out), plus ``"<group>_ml"`` volumes.
    """
    from scipy import ndimage as ndi

    groups = evidence_classes(classes)
    if not groups:
        return {}
    coarse = tuple(slice(None, None, int(s)) for s in stride)
    lab_c = np.ascontiguousarray(to_numpy(labels[coarse]))
    top = max(v for vals in groups.values() for v in vals)
    objects = ndi.find_objects(lab_c, max_label=top)
    # Medians need no sub-millimetre grid: vessels measured on about 1.5 mm (every 2nd
    # voxel of a 0.75 mm plane), which keeps the phase a small part of the measure stage.
    out: dict = {}
    for group, values in groups.items():
        # The kidneys (large, and split by a Euclidean depth) on about twice that.
        mm = cfg.measure_mm * (2.0 if group == "kidney" else 1.0)
        step = tuple(max(1, int(mm // float(s))) for s in spacing)
        sp = tuple(float(s) * k for s, k in zip(spacing, step))
        voxel_ml = float(np.prod(sp)) / 1000.0
        parts: dict[str, list] = {"all": [], "core": [], "cortex": [], "medulla": []}
        for v in values:  # each label in its own box (the two kidneys lie apart)
            if v - 1 >= len(objects) or objects[v - 1] is None:
                continue
            box = tuple(
                slice(b.start, b.stop, k)
                for b, k in zip(_box(objects[v - 1], stride, labels.shape), step)
            )
            mask = to_numpy(labels[box]) == v
            if not mask.any():
                continue
            h = to_numpy(hu[box]).astype(np.float32, copy=False)
            # Trim the rim of partial-volume voxels (fat around the aorta, liver around the
            # portal vein): keep voxels at least trim_mm inside along every axis.
            core = inside(mask, cfg.trim_mm, sp)
            parts["all"].append(h[mask])
            parts["core"].append(h[core])
            if group == "kidney":  # Euclidean depth (mm): small boxes, one per kidney
                depth = ndi.distance_transform_edt(np.pad(mask, 1), sampling=sp)[1:-1, 1:-1, 1:-1]
                parts["cortex"].append(h[(depth > cfg.trim_mm) & (depth <= cfg.cortex_mm)])
                parts["medulla"].append(h[depth > cfg.medulla_mm])
        cat = {k: np.concatenate(x) if x else np.zeros(0, np.float32) for k, x in parts.items()}
        if cat["all"].size * voxel_ml < cfg.min_structure_ml:
            continue
        core = cat["core"] if cat["core"].size >= 10 else cat["all"]  # thin: take it whole
        out[f"{group}_ml"] = round(cat["all"].size * voxel_ml, 1)
        out[group] = _median(core)
        if group == "kidney":
            out["kidney_cortex"] = _median(cat["cortex"])
            out["kidney_medulla"] = _median(cat["medulla"])
    return {k: v for k, v in out.items() if not (isinstance(v, float) and math.isnan(v))}


_NONE_WORDS = re.compile(r"^\s*(none|no|nil|n/?a|0|-+|without)\s*$", re.I)
_DESC_RULES = (  # SeriesDescription words -> phase (first match wins; docs/phase.md)
    ("unenhanced", re.compile(r"non[\s_-]?con|\bw/o\b|without|native|plain|unenh|pre[\s_-]?con|\bnc\b", re.I)),
    ("arterial", re.compile(r"arter|\bart\b|\bcta\b|angio", re.I)),
    ("portal_venous", re.compile(r"portal|\bpv\b|venous|\bven\b|70\s?s", re.I)),
    ("delayed", re.compile(r"delay|equilib|\blate\b|excret|urogr|\d+\s?min", re.I)),
)  # fmt: skip


def tag_phase(contrast_agent, series_description=None) -> str | None:
    """What the DICOM header says: a phase, ``"enhanced"`` (agent named, phase not said),
    ``"unenhanced"`` (the description says so) or None (nothing usable).

    The Contrast/Bolus Agent (0018,0010) says that contrast was given; scanners and
    PACS often copy it into every series of a study, so it is evidence, not truth
    (:func:`combine` weighs it against the image). Words in the Series Description
    (0008,103E) name the phase where they do.
    """
    agent = str(contrast_agent or "").strip()
    has_agent = bool(agent) and not _NONE_WORDS.match(agent)
    desc = str(series_description or "")
    said = next((ph for ph, rx in _DESC_RULES if desc and rx.search(desc)), None)
    if said == "unenhanced":
        return "unenhanced"
    if said is not None:
        return said
    return "enhanced" if has_agent else None


@dataclass
class PhaseResult:
    """The scan's phase and the evidence behind it.

    Attributes
    ----------
    phase : str
        unenhanced | arterial | portal_venous | delayed | unknown
    source : str
        image | tag | both | conflict | none
    basis : str
        ``vessels`` (aorta / portal vein / IVC / kidneys measured), ``organs`` (liver
        and spleen evidence only) or ``none``.
    image_phase : str
        What the image alone says (``enhanced`` when enhanced, phase unknown).
    tag : str or None
        What the header says (:func:`tag_phase`).
    hu : dict
        Structure attenuations (:func:`structure_attenuation`).
    """

    phase: str = "unknown"
    source: str = "none"
    basis: str = "none"
    image_phase: str = "unknown"
    tag: str | None = None
    hu: dict = field(default_factory=dict)
    flags: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    @property
    def enhanced(self) -> bool:
        """True when the scan is (or may be) enhanced: any phase but unenhanced."""
        return self.phase != "unenhanced"

    def details(self) -> dict:
        return {
            "phase": self.phase,
            "source": self.source,
            "basis": self.basis,
            "image_phase": self.image_phase,
            "tag": self.tag,
            "hu": {k: round(float(v), 1) for k, v in self.hu.items()},
        }


def _f(d: dict, k: str) -> float:
    v = d.get(k)
    return float(v) if v is not None and math.isfinite(v) else float("nan")


def image_phase(hu_s: dict, spleen_hu: float, cfg: PhaseConfig) -> tuple[str, list, list]:
    """Phase from structure attenuations alone: (phase or ``enhanced`` or ``unknown``,
    flags, notes). ``unknown`` with no flag means there was no vessel or kidney to read."""
    a, p, v = _f(hu_s, "aorta"), _f(hu_s, "portal_vein"), _f(hu_s, "ivc")
    k, kc, km = _f(hu_s, "kidney"), _f(hu_s, "kidney_cortex"), _f(hu_s, "kidney_medulla")
    vessels = [x for x in (a, p, v) if math.isfinite(x)]
    if not vessels and not math.isfinite(k):
        return "unknown", [], []
    what = ", ".join(f"{n} {_f(hu_s, n):.0f} HU" for n in MEASURED if math.isfinite(_f(hu_s, n)))
    v_unenh = bool(vessels) and all(x <= cfg.blood_max_hu for x in vessels)
    v_enh = any(x > cfg.enhanced_min_hu for x in vessels)
    k_unenh = math.isfinite(k) and k <= cfg.kidney_unenhanced_max_hu
    k_enh = math.isfinite(k) and k > cfg.kidney_enhanced_min_hu
    if (v_unenh and not k_enh) or (not vessels and k_unenh):
        if math.isfinite(spleen_hu) and spleen_hu > cfg.spleen_unenhanced_max_hu:
            return "unknown", ["phase_conflict"], [
                f"vessels/kidneys unenhanced ({what}) but spleen {spleen_hu:.0f} HU"
            ]  # fmt: skip
        return "unenhanced", [], []
    if not (v_enh or k_enh):
        return "unknown", ["phase_uncertain"], [
            f"phase not readable: {what} (between unenhanced and enhanced)"
        ]  # fmt: skip
    if v_unenh and k_enh:  # kidneys enhanced, every vessel unenhanced: contradictory
        return "unknown", ["phase_conflict"], [f"kidneys enhanced but vessels not ({what})"]
    cmd = kc - km if math.isfinite(kc) and math.isfinite(km) else float("nan")
    arterial = (
        math.isfinite(a)
        and a >= cfg.arterial_aorta_hu
        and (not math.isfinite(p) or a - p >= cfg.arterial_gap_hu)
    ) or (math.isfinite(cmd) and cmd >= cfg.corticomedullary_hu)
    if arterial:
        return "arterial", [], []
    level = [x for x in (a, p) if math.isfinite(x)]
    if not level:
        return (
            "enhanced",
            [],
            [f"enhanced, phase not readable without aorta or portal vein ({what})"],
        )
    return ("portal_venous" if float(np.mean(level)) >= cfg.portal_min_hu else "delayed"), [], []


def combine(img: str, basis: str, tag: str | None) -> tuple[str, str, list, list]:
    """The image's and the header's word -> (phase, source, flags, notes).

    Strong image evidence (``basis == "vessels"``) and the tag are weighed as equals:
    where they disagree neither is trusted (phase ``unknown``, flag ``phase_conflict``).
    Weak image evidence (``organs``: only the liver and spleen) cannot say the scan is
    unenhanced, only fail to see enhancement, so a tag naming contrast decides then.
    """
    img_enh = img in ENHANCED_PHASES or img == "enhanced"
    if tag is None:
        phase = "unknown" if img == "enhanced" else img
        return phase, ("none" if img == "unknown" and basis == "none" else "image"), [], []
    tag_enh = tag != "unenhanced"
    if img == "unknown" or (basis == "organs" and not img_enh):
        # Nothing readable, or the weak evidence saw nothing: the header decides.
        if basis == "organs" and tag == "unenhanced":
            return "unenhanced", "both", [], []
        phase = tag if tag in ENHANCED_PHASES or tag == "unenhanced" else "unknown"
        return phase, "tag", [], []
    if tag_enh == img_enh and (
        tag in ("enhanced", "unenhanced") or img == "enhanced" or tag == img
    ):
        phase = img if img != "enhanced" else (tag if tag in ENHANCED_PHASES else "unknown")
        return phase, "both", [], []
    if basis == "organs" and img_enh and tag_enh:  # weak "enhanced" agrees with a named phase
        return tag, "both", [], []
    return "unknown", "conflict", ["phase_conflict"], [
        f"the DICOM header says {tag}, the image says {img}: neither is trusted"
    ]  # fmt: skip


def classify_phase(
    hu_s: dict, spleen_hu: float, organ_evidence, tag: str | None, cfg: PhaseConfig
) -> PhaseResult:
    """The scan's phase from structure HU (or the liver/spleen evidence) and the tag.

    Parameters
    ----------
    hu_s : dict
        :func:`structure_attenuation` output (may be empty).
    spleen_hu : float
        Spleen attenuation from the kept cubes (nan when not measured).
    organ_evidence : sequence of str
        Liver/spleen contrast evidence (:func:`postprocess.contrast.contrast_evidence`),
        used only when no vessel or kidney was measured.
    tag : str or None
        :func:`tag_phase` of the header.
    cfg : PhaseConfig
    """
    res = PhaseResult(tag=tag, hu=dict(hu_s))
    img, flags, notes = image_phase(hu_s, spleen_hu, cfg) if cfg.enabled else ("unknown", [], [])
    if img != "unknown" or flags:
        res.basis = "vessels"
    elif cfg.enabled:
        res.basis = "organs"
        img = "enhanced" if organ_evidence else "unenhanced"
    res.image_phase = img
    res.flags += flags
    res.notes += notes
    if flags:  # the image contradicts itself or is unreadable: it says nothing
        res.phase, res.source = "unknown", ("image" if tag is None else "tag")
        if tag is not None and tag != "enhanced":
            res.notes.append(f"the DICOM header says {tag}")
        return res
    res.phase, res.source, f2, n2 = combine(img, res.basis, tag)
    res.flags += f2
    res.notes += n2
    return res


__all__ = [
    "ENHANCED_PHASES",
    "PhaseResult",
    "classify_phase",
    "combine",
    "evidence_classes",
    "image_phase",
    "structure_attenuation",
    "structure_group",
    "tag_phase",
]
