"""Benchmark: the segmentation-quality gate on good and deliberately broken masks.

``python benchmarks/bench_gate.py [--phantoms 40] [--broken-phantoms 4] [--out benchmarks/results]``

* Broken: every breakage of benchmarks/gate_cases.py on the shared real CT (with
  other organs of its 61-structure map labelled as spleen or liver) and on
  phantoms stored in random orientations. "Flagged" = grade ``indeterminate``.
  "Harmful" = the same masks graded with the gate switched off give a grade other
  than the truth (the cases the gate exists for).
* Good: the real CT with its reference masks (native and resampled to
  0.8 x 0.8 x 5 mm), the shipped model's own masks of the real CT, and phantoms of
  every grade, size, orientation and noise level, some cut by the scan's edge.
  "Falsely flagged" = a gate flag (segmentation doubtful, implausible placement or
  attenuation) on a good mask.
* No abdomen: the real CT cropped to the pelvis, phantoms cropped below the organs,
  chest-only scans painted from phantom anatomy (unenhanced, portal and arterial: a
  chest CT angiography) and the real GE head CT, all segmented by the REAL shipped
  model (model_repository/cpu/hepascreen_vnet/1/model.onnx, or ``--model``, through
  ONNX Runtime and the preprocessing its metadata declares): every one must be
  ``indeterminate``. The real CT from its lung bases up (it holds the upper halves of
  liver and spleen) must get its reference masks' grade or ``indeterminate``.

Writes benchmarks/results/gate.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks._common import machine_info, save_result  # noqa: E402
from benchmarks.gate_cases import (  # noqa: E402
    REAL,
    add_arms,
    broken_generic,
    broken_real,
    load_real,
    resample_real,
)
from client.core.paths import SHIPPED_ONNX  # noqa: E402

GATE_FLAGS = {
    "liver_segmentation_doubtful",
    "spleen_segmentation_doubtful",
    "organs_implausibly_placed",
    "liver_hu_implausible",
    "spleen_hu_implausible",
    "ratio_implausible",
}
MODEL = SHIPPED_ONNX


def model_segmenter():
    """The shipped model through ONNX Runtime and the shared preprocessing (None if absent)."""
    if not MODEL.exists():
        return None
    import onnxruntime as ort

    from client.reading.preprocess import PreprocessSpec, preprocess_windows, to_scan_grid

    sess = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = tuple(int(n) for n in inp.shape[2:])
    # The preprocessing the model declares in its ONNX metadata (none: MedicalSeg's resize).
    spec = PreprocessSpec.from_parameters(dict(sess.get_modelmeta().custom_metadata_map), shape)

    def seg(hu, spacing, direction):
        x, rec = preprocess_windows(hu, spacing, direction, spec)
        out = np.concatenate(
            [sess.run(None, {inp.name: x[i : i + 4]})[0] for i in range(0, len(x), 4)]
        )
        return to_scan_grid(out, rec)

    return seg


def good_cases(n_phantoms: int, seg=None, n_model_phantoms: int = 0):
    """``[(name, hu, labels, spacing, direction, true_grade)]`` of good segmentations.

    With ``seg`` (the shipped model) the list also holds the model's own masks of the
    real CT and of ``n_model_phantoms`` phantoms (imperfect but good masks: Dice in
    the case name).
    """
    from training.phantoms import make_phantom

    hu, lab, _, _, sp, d = load_real()
    out = [("real_reference", hu, lab, sp, d, "normal")]
    h5, l5 = resample_real(hu, lab, sp, d, (5.0, 0.8, 0.8))
    out.append(("real_reference_0.8x0.8x5mm", h5, l5, (5.0, 0.8, 0.8), d, "normal"))
    rng = np.random.default_rng(1)
    noisy = (hu + rng.normal(0, 25, hu.shape)).astype(np.int16)
    out.append(("real_reference_noise_25hu", noisy, lab, sp, d, "normal"))
    fov = (slice(None), slice(10, -10), slice(12, -12))
    out.append(("real_reference_fov_cropped", hu[fov], lab[fov], sp, d, "normal"))
    # Stored with x and y swapped (direction columns swapped to match).
    ht, lt = (np.ascontiguousarray(a.transpose(0, 2, 1)) for a in (hu, lab))
    dt = d[:, [1, 0, 2]]
    out.append(("real_reference_transposed", ht, lt, sp, dt, "normal"))
    ha, la = add_arms(hu, lab, sp, d)
    out.append(("real_reference_arms_beside_body", ha, la, sp, d, "normal"))
    from client.reading.io import read_label_map, read_scan

    small = read_scan(REAL / "ct_small.nii.gz")
    small_lab = read_label_map(REAL / "labels_small.nii.gz", small)
    out.append(
        ("real_small_30_slices", small.array, small_lab, small.spacing, small.direction, "normal")
    )
    if seg is not None:
        out.append(("real_model_masks", hu, seg(hu, sp, d), sp, d, "normal"))
        out.append(("real_model_masks_noise_25hu", noisy, seg(noisy, sp, d), sp, d, "normal"))
        out.append(("real_model_masks_transposed", ht, seg(ht, sp, dt), sp, dt, "normal"))
        out.append(("real_model_masks_arms_beside_body", ha, seg(ha, sp, d), sp, d, "normal"))
        out.append(
            (
                "real_model_masks_0.8x0.8x5mm",
                h5,
                seg(h5, (5.0, 0.8, 0.8), d),
                (5.0, 0.8, 0.8),
                d,
                "normal",
            )
        )
        out.append(
            (
                "real_small_model_masks",
                small.array,
                seg(small.array, small.spacing, small.direction),
                small.spacing,
                small.direction,
                "normal",
            )
        )
    # A thin-slice reconstruction: 0.75 x 0.75 mm pixels, 1.5 mm slices, white noise of
    # 30 HU (typical of such slices), reference masks and (with ``seg``) the model's.
    from scipy import ndimage as ndi

    zoom = (sp[0] / 1.5, sp[1] / 0.75, sp[2] / 0.75)
    rng_f = np.random.default_rng(3)
    hf = ndi.zoom(hu.astype(np.float32), zoom, order=1)
    hf = (hf + rng_f.normal(0, 30, hf.shape)).astype(np.int16)
    lf = ndi.zoom(np.asarray(lab), zoom, order=0)
    spf = (1.5, 0.75, 0.75)
    out.append(("real_reference_0.75x0.75x1.5mm_noise_30hu", hf, lf, spf, d, "normal"))
    if seg is not None:
        out.append(
            ("real_model_masks_0.75x0.75x1.5mm_noise_30hu", hf, seg(hf, spf, d), spf, d, "normal")
        )
    shapes = [(48, 96, 96), (64, 128, 128), (40, 80, 100), (80, 112, 112), (32, 96, 96)]
    for seed in range(n_phantoms):
        grade = ("normal", "mild", "moderate", "severe")[seed % 4]
        p = make_phantom(
            2000 + seed,
            shape=shapes[seed % len(shapes)],
            grade=grade,
            random_orientation=seed % 3 != 0,
            cut_liver=seed % 6 == 5,
            noise_sd=(None, 25.0, 5.0)[seed % 3],
            fov_mm=(350.0, 300.0, 420.0)[seed % 3],
        )
        out.append((f"phantom_{seed}", p.hu, p.labels, p.spacing, p.direction, p.truth["grade"]))
    for seed in range(n_model_phantoms if seg is not None else 0):
        p = make_phantom(
            5000 + seed,
            shape=[(64, 128, 128), (48, 96, 96), (80, 160, 160)][seed % 3],
            grade=("normal", "mild", "moderate", "severe")[seed % 4],
            random_orientation=seed % 2 == 1,
        )
        s = seg(p.hu, p.spacing, p.direction)
        dice = [
            2 * ((s == v) & (p.labels == v)).sum() / max(1, (s == v).sum() + (p.labels == v).sum())
            for v in (1, 2)
        ]
        name = f"phantom_model_masks_{seed}_dice_{dice[0]:.2f}_{dice[1]:.2f}"
        out.append((name, p.hu, s, p.spacing, p.direction, p.truth["grade"]))
    return out


def broken_cases(n_phantoms: int, rng):
    """``[(name, hu, labels, spacing, direction, true_grade)]`` of broken segmentations."""
    from training.phantoms import make_phantom

    hu, lab, lab_all, names, sp, d = load_real()
    out = [
        (f"real/{k}", hu, v, sp, d, "normal")
        for k, v in broken_real(hu, lab, lab_all, names, sp, d, rng).items()
    ]
    for seed in range(n_phantoms):
        grade = ("normal", "mild", "moderate", "severe")[seed % 4]
        p = make_phantom(3000 + seed, shape=(64, 128, 128), grade=grade, random_orientation=True)
        for k, v in broken_generic(p.labels, p.spacing, p.direction, rng).items():
            out.append((f"phantom{seed}/{k}", p.hu, v, p.spacing, p.direction, p.truth["grade"]))
    return out


def no_abdomen_cases(seg):
    """Scans without (or with only a part of) an abdomen, segmented by the model.

    ``[(name, hu, model_labels, spacing, direction, truth_labels or None)]``. Where the
    truth holds liver and spleen (the real CT from its lung bases up holds the upper
    halves of both), the rule is "the grade of the reference masks or indeterminate";
    where it holds neither (pelvis crops, phantoms cut below the organs, chest-only
    synthetic scans, the real head CT: truth None or empty) the scan must be
    ``indeterminate``.
    """
    from client.reading.io import read_scan
    from training.phantoms import make_phantom
    from training.synth import synth_scan

    hu, lab, lab_all, names, sp, d = load_real()
    lungs = np.isin(lab_all, [v for k, v in names.items() if k.startswith("lung")])
    liver = lab_all == names["liver"]
    z_lung = int(np.nonzero(lungs.any(axis=(1, 2)))[0].min())
    z_liver = int(np.nonzero(liver.any(axis=(1, 2)))[0].min())
    out = []
    for name, sl in (
        ("real_from_lung_base_up", slice(z_lung, None)),
        ("real_pelvis_below_liver", slice(0, z_liver)),
        ("real_pelvis_lower_half", slice(0, hu.shape[0] // 2)),
    ):
        h = np.ascontiguousarray(hu[sl])
        out.append((name, h, seg(h, sp, d), sp, d, np.ascontiguousarray(lab[sl])))
    for seed in range(3):
        p = make_phantom(4000 + seed, shape=(64, 128, 128))
        zs = np.nonzero(np.isin(p.labels, (1, 2)).any(axis=(1, 2)))[0]
        cut = (slice(0, max(4, int(zs.min()) - 1)),)
        h = np.ascontiguousarray(p.hu[cut])
        t = np.ascontiguousarray(p.labels[cut])
        out.append(
            (
                f"phantom_{seed}_below_organs",
                h,
                seg(h, p.spacing, p.direction),
                p.spacing,
                p.direction,
                t,
            )
        )
    # Chest-only scans painted from phantom anatomy maps (lungs, heart, aorta, ribs):
    # unenhanced, and arterial (a chest CT angiography: enhanced heart and aorta).
    for seed, phase in (
        (7001, "unenhanced"),
        (7002, "arterial"),
        (7003, "arterial"),
        (7004, "portal"),
    ):
        s = synth_scan(seed, "phantom", phase=phase, scenario="chest")
        out.append(
            (
                f"synthetic_chest_only_{phase}_{seed}",
                s["hu"],
                seg(s["hu"], s["spacing"], s["direction"]),
                s["spacing"],
                s["direction"],
                s["labels"],
            )
        )
    head_dir = ROOT.parent / "shared" / "data" / "dicom_edge_cases" / "ge_head_ct_gantry_tilt"
    if head_dir.exists():
        s = read_scan(head_dir)
        out.append(
            (
                "real_ge_head_ct",
                s.array,
                seg(s.array, s.spacing, s.direction),
                s.spacing,
                s.direction,
                None,
            )
        )
    return out


def expected_without_abdomen(hu, truth, spacing, direction):
    """The allowed outcomes of a scan of :func:`no_abdomen_cases`: ``{"indeterminate"}``
    when the truth holds no liver or no spleen, else also the reference masks' grade."""
    from postprocess import assess

    if truth is None or not (truth == 1).any() or not (truth == 2).any():
        return {"indeterminate"}
    ref = assess(hu, truth, spacing, direction=direction).grade
    return {"indeterminate", ref}


def run(n_good: int, n_broken_phantoms: int, n_model: int = 12, seed: int = 0) -> dict:
    from postprocess import AssessConfig, assess
    from postprocess.config import GateConfig

    off = AssessConfig(gate=GateConfig(enabled=False))
    rng = np.random.default_rng(seed)
    seg = model_segmenter()
    res: dict = {}
    t0 = time.perf_counter()
    rows = []
    for name, hu, lab, sp, d, truth in good_cases(n_good, seg, n_model):
        a = assess(hu, lab, sp, direction=d)
        gate = sorted(GATE_FLAGS & set(a.flags))
        rows.append(
            {
                "case": name,
                "grade": a.grade,
                "truth": truth,
                "gate_flags": gate,
                "notes": list(a.notes),
            }
        )
    n_false = sum(bool(r["gate_flags"]) for r in rows)
    res["good"] = {
        "n": len(rows),
        "falsely_flagged": n_false,
        "false_flag_rate": round(n_false / len(rows), 4),
        "graded_right": sum(r["grade"] == r["truth"] for r in rows),
        "cases": rows,
    }
    rows = []
    for name, hu, lab, sp, d, truth in broken_cases(n_broken_phantoms, rng):
        a = assess(hu, lab, sp, direction=d)
        b = assess(hu, lab, sp, off, direction=d)
        harmful = b.grade not in ("indeterminate", truth)
        rows.append(
            {
                "case": name,
                "grade": a.grade,
                "flagged": a.grade == "indeterminate",
                "grade_without_gate": b.grade,
                "truth": truth,
                "harmful_without_gate": harmful,
                "flags": list(a.flags),
                "notes": list(a.notes),
            }
        )
    n = len(rows)
    flagged = sum(r["flagged"] for r in rows)
    harmful = [r for r in rows if r["harmful_without_gate"]]
    res["broken"] = {
        "n": n,
        "flagged": flagged,
        "flag_rate": round(flagged / n, 4),
        "n_real": sum(r["case"].startswith("real/") for r in rows),
        "flag_rate_real": round(
            np.mean([r["flagged"] for r in rows if r["case"].startswith("real/")]), 4
        ),
        "flag_rate_phantoms": round(
            np.mean([r["flagged"] for r in rows if not r["case"].startswith("real/")]), 4
        ),
        "n_harmful_without_gate": len(harmful),
        "harmful_flagged": sum(r["flagged"] for r in harmful),
        "wrong_grades_with_gate": sum(
            (not r["flagged"]) and r["grade"] != r["truth"] for r in rows
        ),
        "missed": [r["case"] for r in rows if not r["flagged"]],
        "flags_fired": dict(
            Counter(f for r in rows for f in r["flags"] if f in GATE_FLAGS).most_common()
        ),
        "cases": rows,
    }
    if seg is not None:
        rows = []
        for name, hu, lab, sp, d, truth in no_abdomen_cases(seg):
            a = assess(hu, lab, sp, direction=d)
            allowed = expected_without_abdomen(hu, truth, sp, d)
            rows.append(
                {
                    "case": name,
                    "grade": a.grade,
                    "allowed": sorted(allowed),
                    "right": a.grade in allowed,
                    "flags": list(a.flags),
                    "notes": list(a.notes),
                }
            )
        res["no_abdomen"] = {
            "model": str(MODEL.relative_to(ROOT)) if MODEL.is_relative_to(ROOT) else str(MODEL),
            "n": len(rows),
            "indeterminate": sum(r["grade"] == "indeterminate" for r in rows),
            "right": sum(r["right"] for r in rows),
            "cases": rows,
        }
    res["seconds"] = round(time.perf_counter() - t0, 1)
    return res


def main(argv=None) -> int:
    global MODEL
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--phantoms", type=int, default=40, help="good phantoms")
    ap.add_argument("--broken-phantoms", type=int, default=4, help="phantoms to break")
    ap.add_argument(
        "--model-phantoms", type=int, default=12, help="phantoms segmented by the model"
    )
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument(
        "--model",
        type=Path,
        default=MODEL,
        help="ONNX model for the model-made masks (default: shipped)",
    )
    args = ap.parse_args(argv)
    MODEL = args.model.resolve()
    res = {
        "machine": machine_info(),
        **run(args.phantoms, args.broken_phantoms, args.model_phantoms),
    }
    save_result(res, args.out, "gate.json")
    b, g = res["broken"], res["good"]
    print(
        f"broken: {b['flagged']}/{b['n']} flagged ({100 * b['flag_rate']:.1f} %), harmful "
        f"{b['harmful_flagged']}/{b['n_harmful_without_gate']} flagged; good: "
        f"{g['falsely_flagged']}/{g['n']} falsely flagged; missed: {b['missed']}"
    )
    if "no_abdomen" in res:
        na = res["no_abdomen"]
        print(
            f"no abdomen: {na['right']}/{na['n']} right (indeterminate, or the reference "
            f"masks' grade where the scan holds both organs); {na['indeterminate']} indeterminate"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
