"""Benchmark: does the model's own confidence separate good masks from bad ones?

``python benchmarks/bench_confidence.py [--model NAME=PATH.onnx ...] [--phantoms 10]``

The served ``CONFIDENCE`` output (``client.core.contract.CONFIDENCE_NAME``: ``round(255 * p)``,
p the softmax probability of the predicted class) is averaged inside each measured organ
piece, exactly as the pipeline does (``postprocess.assess``, ``mean_confidence``). This
script measures that number against the Dice of the same mask, on masks made by REAL
models (no hand-broken masks: those are ``bench_gate.py``'s job), and picks the floors
the model config declares (``hepascreen_min_confidence``).

Models: by default the shipped model and the previous demo model (read from git history,
commit ``PREVIOUS_COMMIT``; skipped when git or that commit is missing). A model without
the output gets it added in memory (``training.export.add_confidence_output``).

Cases (references: the shared CT's own liver/spleen labels; the phantoms' truth):

* the shared real CT: its 8 validation variants (``training.evaluate.real_ct_cases``:
  native, 0.8 x 0.8 x 5 mm, painted contrast phases, slab, partial coverage);
* the same CT made hard on purpose (how archives break a model): Gaussian noise of
  60 / 120 / 200 HU (low dose), a 3-voxel blur (soft kernel), stored values without the
  rescale intercept (HU + 1024, a common DICOM/NIfTI export fault), and a 2x contrast
  stretch around 40 HU (a wrong rescale slope);
* ``--phantoms`` held-out phantoms (``training.evaluate.heldout_phantom``), plain and with
  200 HU noise.

Per organ mask: Dice, mean confidence, the grade from the model's masks and from the
reference masks, and whether the rest of the gate already made the scan indeterminate.
A mask is ``bad`` below Dice 0.80 and ``good`` from 0.85. For each floor on a grid:
bad masks flagged, good masks flagged, and scans whose grade would be WRONG without the
confidence check but are caught by it. Writes benchmarks/results/confidence.json.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks._common import machine_info, save_result  # noqa: E402
from client.core.paths import PROJECT_ROOT, SHIPPED_ONNX  # noqa: E402

SHIPPED = SHIPPED_ONNX
# The demo model shipped before the fixed-spacing model (commit c2a54c1 replaced it).
PREVIOUS_COMMIT = "c2a54c1^"
MODEL_PATH_IN_REPO = SHIPPED_ONNX.relative_to(PROJECT_ROOT).as_posix()
BAD_BELOW, GOOD_FROM = 0.80, 0.85
FLOORS = tuple(round(0.90 + 0.005 * i, 3) for i in range(17))  # 0.900 .. 0.980


def previous_model(tmp: Path) -> Path | None:
    """The previous demo model from git history (None when unavailable)."""
    out = tmp / "previous.onnx"
    try:
        blob = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{PREVIOUS_COMMIT}:{MODEL_PATH_IN_REPO}"],
            check=True,
            capture_output=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    out.write_bytes(blob)
    return out


def session(path: Path, threads: int):
    """ONNX Runtime session with the confidence output (added in memory when missing)."""
    import onnx
    import onnxruntime as ort

    from training.export import add_confidence_output

    model = onnx.load(str(path))
    added = add_confidence_output(model)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess, added


def hard_variants(hu):
    """The shared CT made hard on purpose: ``name -> hu``."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(0)
    f = hu.astype(np.float32)
    out = {}
    for sd in (60, 120, 200):
        out[f"noise_{sd}hu"] = f + rng.normal(0, sd, f.shape).astype(np.float32)
    out["blur_3vox"] = ndi.gaussian_filter(f, 3.0)
    out["no_rescale_intercept"] = f + 1024.0
    out["slope_2x"] = (f - 40.0) * 2.0 + 40.0
    return {k: np.clip(v, -1024, 3071).astype(np.int16) for k, v in out.items()}


def thin_slices(hu, labels, spacing):
    """A thin-slice reconstruction of the shared CT (0.75 x 0.75 x 1.5 mm, 30 HU of white
    noise), as in ``bench_gate.py``'s good set: where the gate sits closest to its limits."""
    from scipy import ndimage as ndi

    zoom = (spacing[0] / 1.5, spacing[1] / 0.75, spacing[2] / 0.75)
    hf = ndi.zoom(np.asarray(hu, np.float32), zoom, order=1)
    hf = (hf + np.random.default_rng(3).normal(0, 30, hf.shape)).astype(np.int16)
    return hf, ndi.zoom(np.asarray(labels), zoom, order=0), (1.5, 0.75, 0.75)


def cases(n_phantoms: int):
    """``(name, group, hu, labels, spacing, direction)``."""
    from training.evaluate import heldout_phantom, real_ct_cases

    real = real_ct_cases()
    out = [(f"real_{n}", "real_ct", h, np.asarray(lab), sp, d) for n, h, lab, sp, d in real]
    _, hu0, lab0, sp0, d0 = real[0]
    out.append(("real_0.75x0.75x1.5mm_noise_30hu", "real_ct", *thin_slices(hu0, lab0, sp0), d0))
    for name, h in hard_variants(np.asarray(hu0)).items():
        out.append((f"real_{name}", "real_ct_hard", h, np.asarray(lab0), sp0, d0))
    rng = np.random.default_rng(1)
    for i in range(n_phantoms):
        p = heldout_phantom(i)
        out.append((f"phantom_{i}", "phantom", p.hu, p.labels, p.spacing, p.direction))
        noisy = np.clip(p.hu + rng.normal(0, 200, p.hu.shape), -1024, 3071).astype(np.int16)
        out.append(
            (f"phantom_{i}_noise_200hu", "phantom_hard", noisy, p.labels, p.spacing, p.direction)
        )
    return out


def run_case(sess, spec, hu, spacing, direction):
    """Labels and the confidence map on the scan's grid, as ``TritonSegmenter`` makes them."""
    from client.core.contract import CONFIDENCE_NAME, INPUT_NAME, OUTPUT_NAME
    from client.reading.preprocess import preprocess_windows, to_scan_grid

    x, record = preprocess_windows(hu, spacing, direction, spec)
    labs, confs = [], []
    for i in range(len(x)):
        lab, conf = sess.run([OUTPUT_NAME, CONFIDENCE_NAME], {INPUT_NAME: x[i : i + 1]})
        labs.append(lab)
        confs.append(conf)
    return to_scan_grid(np.concatenate(labs), record), to_scan_grid(np.concatenate(confs), record)


def dice(a, b) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int(np.logical_and(a, b).sum()) / s


def measure(models, case_list, threads):
    from postprocess import assess
    from postprocess.components import keep_largest
    from training.evaluate import onnx_spec

    ref_grade = {}
    rows = []
    for mname, path in models.items():
        sess, added = session(path, threads)
        spec = onnx_spec(sess)
        for name, group, hu, lab, sp, d in case_list:
            t0 = time.perf_counter()
            if name not in ref_grade:
                ref_grade[name] = assess(hu, lab, sp, direction=d).grade
            pred, conf = run_case(sess, spec, hu, sp, d)
            a = assess(hu, pred, sp, direction=d, confidence=conf)
            kept = keep_largest(pred, (1, 2))  # what assess measures
            row = {
                "model": mname,
                "case": name,
                "group": group,
                "grade_model_masks": a.grade,
                "grade_reference_masks": ref_grade[name],
                "indeterminate_without_confidence": a.grade == "indeterminate",
                "flags": list(a.flags),
                "seconds": round(time.perf_counter() - t0, 2),
            }
            for k, organ in ((1, "liver"), (2, "spleen")):
                conf_v = getattr(a, f"{organ}_confidence")
                row[f"dice_{organ}"] = round(dice(kept == k, lab == k), 4)
                row[f"confidence_{organ}"] = None if not np.isfinite(conf_v) else round(conf_v, 4)
            rows.append(row)
            print(
                f"{mname:>10} {name:<28} dice {row['dice_liver']:.3f}/{row['dice_spleen']:.3f} "
                f"conf {row['confidence_liver']}/{row['confidence_spleen']} "
                f"grade {a.grade} (ref {ref_grade[name]})",
                flush=True,
            )
    return rows


def floor_table(rows):
    """Per organ and floor: bad / good masks flagged; wrong grades caught."""
    table = {}
    for organ in ("liver", "spleen"):
        have = [r for r in rows if r[f"confidence_{organ}"] is not None]
        bad = [r for r in have if r[f"dice_{organ}"] < BAD_BELOW]
        good = [r for r in have if r[f"dice_{organ}"] >= GOOD_FROM]
        entries = []
        for f in FLOORS:
            entries.append(
                {
                    "floor": f,
                    "bad_flagged": sum(r[f"confidence_{organ}"] < f for r in bad),
                    "bad_flagged_gate_missed": sum(
                        r[f"confidence_{organ}"] < f and not r["indeterminate_without_confidence"]
                        for r in bad
                    ),
                    "good_flagged": sum(r[f"confidence_{organ}"] < f for r in good),
                }
            )
        table[organ] = {"n_bad": len(bad), "n_good": len(good), "floors": entries}
    return table


def cost(path: Path, threads: int, repeats: int = 15) -> dict:
    """ONNX Runtime seconds per window with LABELS only vs LABELS + CONFIDENCE (the shared
    CT's window, alternating so that load changes hit both alike)."""
    from client.core.contract import CONFIDENCE_NAME, INPUT_NAME, OUTPUT_NAME
    from client.reading.preprocess import preprocess_windows
    from training.evaluate import onnx_spec, real_ct_cases

    sess, _ = session(path, threads)
    _, hu, _, sp, d = real_ct_cases(variants=("native",))[0]
    x, _ = preprocess_windows(hu, sp, d, onnx_spec(sess))
    x = np.ascontiguousarray(x[:1])
    times = {"labels_only": [], "labels_and_confidence": []}
    outs = {"labels_only": [OUTPUT_NAME], "labels_and_confidence": [OUTPUT_NAME, CONFIDENCE_NAME]}
    for k in outs:  # warm-up
        sess.run(outs[k], {INPUT_NAME: x})
    for _ in range(repeats):
        for k, names in outs.items():
            t0 = time.perf_counter()
            sess.run(names, {INPUT_NAME: x})
            times[k].append(time.perf_counter() - t0)
    med = {k: float(np.median(v)) for k, v in times.items()}
    return {
        "threads": threads,
        "repeats": repeats,
        "median_s": {k: round(v, 4) for k, v in med.items()},
        "min_s": {k: round(float(min(v)), 4) for k, v in times.items()},
        "ratio_median": round(med["labels_and_confidence"] / med["labels_only"], 3),
    }


def extremes(rows):
    """Per model and organ: the lowest confidence of a good mask, the highest of a bad one."""
    out = {}
    for m in sorted({r["model"] for r in rows}):
        for organ in ("liver", "spleen"):
            have = [r for r in rows if r["model"] == m and r[f"confidence_{organ}"] is not None]
            good = [r for r in have if r[f"dice_{organ}"] >= GOOD_FROM]
            bad = [r for r in have if r[f"dice_{organ}"] < BAD_BELOW]
            lo = min(good, key=lambda r: r[f"confidence_{organ}"], default=None)
            hi = max(bad, key=lambda r: r[f"confidence_{organ}"], default=None)
            out[f"{m}_{organ}"] = {
                "good_min": None if lo is None else [lo[f"confidence_{organ}"], lo["case"]],
                "bad_max": None if hi is None else [hi[f"confidence_{organ}"], hi["case"]],
            }
    return out


def wrong_grades(rows, floors):
    """Scans graded wrong from the model's masks without the confidence check, and which
    the floors catch."""
    out = []
    for r in rows:
        g, ref = r["grade_model_masks"], r["grade_reference_masks"]
        if g == "indeterminate" or ref == "indeterminate" or g == ref:
            continue
        caught = [
            o
            for o in ("liver", "spleen")
            if r[f"confidence_{o}"] is not None and r[f"confidence_{o}"] < floors[o]
        ]
        out.append(
            {
                "model": r["model"],
                "case": r["case"],
                "grade": g,
                "reference": ref,
                "caught_by": caught,
            }
        )
    return out


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", default=[], help="NAME=PATH.onnx (repeatable)")
    ap.add_argument("--phantoms", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--floor", action="append", default=[], help="ORGAN=F: floors to report")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        models = {}
        if args.model:
            for item in args.model:
                name, _, path = item.partition("=")
                models[name] = Path(path)
        else:
            models["shipped"] = SHIPPED
            prev = previous_model(Path(tmp))
            if prev is not None:
                models["previous"] = prev
        t0 = time.perf_counter()
        rows = measure(models, cases(args.phantoms), args.threads)
    floors = {"liver": 0.93, "spleen": 0.95}
    for item in args.floor:
        organ, _, v = item.partition("=")
        floors[organ] = float(v)
    result = {
        "benchmark": "confidence",
        "machine": machine_info(onnxruntime=_ort_version()),
        "models": {
            k: str(v.name if k != "shipped" else v.relative_to(ROOT)) for k, v in models.items()
        },
        "bad_below_dice": BAD_BELOW,
        "good_from_dice": GOOD_FROM,
        "floors_reported": floors,
        "floor_table": floor_table(rows),
        "extremes": extremes(rows),
        "cost_per_window": cost(next(iter(models.values())), args.threads),
        "wrong_grades_without_confidence": wrong_grades(rows, floors),
        "rows": rows,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    path = save_result(result, args.out, "confidence.json")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
