"""Evaluate a served ONNX model on held-out phantoms and on the real CT, on the original grid.

``python -m training.evaluate [--onnx model.onnx] [--phantoms 20] [--out docs/model_eval.json]``

For each scan: preprocess (``client.preprocess``) -> ONNX Runtime -> ``to_scan_grid``
-> Dice per organ against the reference labels on the scan's own grid, and the
full measurement (``postprocess.assess``) on the predicted masks vs the truth
(phantoms: the true ratio and grade; real CT: the ratio measured with the reference
masks). Held-out phantoms use seeds 2,000,000+ (training used 0-1,249 and 100,000+
for real-CT augmentations; validation 900,000+) and random sizes, spacings,
orientations and grades.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

GRADES = ("normal", "mild", "moderate", "severe")


def _dice(a, b):
    from .demo_train import dice_per_class

    return dice_per_class(a.astype(np.uint8), b.astype(np.uint8), classes=(1,))[0]


def evaluate_case(sess, hu, labels, spacing, direction, model_shape):
    from client.contract import INPUT_NAME
    from client.preprocess import preprocess, to_scan_grid
    from postprocess import assess

    x, record = preprocess(hu, spacing, direction, model_shape)
    (small,) = sess.run(None, {INPUT_NAME: x[None]})
    pred = to_scan_grid(small[0], record)
    a_pred = assess(hu, pred, spacing)
    a_ref = assess(hu, labels, spacing)
    return {
        "dice_liver": _dice(pred == 1, labels == 1),
        "dice_spleen": _dice(pred == 2, labels == 2),
        "ratio_pred_masks": a_pred.ratio,
        "ratio_ref_masks": a_ref.ratio,
        "grade_pred_masks": a_pred.grade,
        "grade_ref_masks": a_ref.grade,
    }


def main(argv=None) -> int:
    import onnxruntime as ort

    from client.io import read_label_map, read_scan
    from training.phantoms import make_phantom

    root = Path(__file__).resolve().parents[1]
    data = root.parent / "shared" / "data" / "totalseg_example"
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--onnx", type=Path, default=root / "model_repository/cpu/hepascreen_vnet/1/model.onnx"
    )
    ap.add_argument("--phantoms", type=int, default=20)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    sess = ort.InferenceSession(str(args.onnx), providers=["CPUExecutionProvider"])
    model_shape = tuple(sess.get_inputs()[0].shape[2:])
    rows = []
    t0 = time.time()
    for i in range(args.phantoms):
        seed = 2_000_000 + i
        rng = np.random.default_rng(seed)
        nxy = int(rng.integers(160, 320))
        fov = float(rng.uniform(320, 420))
        sz = float(rng.choice([1.0, 2.5, 5.0]))
        nz = int(np.clip(round(rng.uniform(280, 420) / sz), 40, 300))
        p = make_phantom(
            seed,
            shape=(nz, nxy, nxy),
            spacing=(sz, fov / nxy, fov / nxy),
            grade=GRADES[i % 4],
            random_orientation=bool(i % 3 == 0),
        )
        r = evaluate_case(sess, p.hu, p.labels, p.spacing, p.direction, model_shape)
        r.update(
            case=f"phantom_{seed}",
            shape=list(p.hu.shape),
            spacing=[round(s, 3) for s in p.spacing],
            true_ratio=float(p.truth["ratio"]),
            true_grade=p.truth["grade"],
        )
        rows.append(r)
    real = None
    if (data / "ct.nii.gz").exists():
        ct = read_scan(data / "ct.nii.gz")
        lab = read_label_map(data / "labels.nii.gz", ct)
        real = evaluate_case(sess, ct.array, lab, ct.spacing, ct.direction, model_shape)
        real["case"] = "totalseg_example (seen in training, augmented)"
    ph = [r for r in rows]
    summary = {
        "model": str(args.onnx),
        "model_shape": list(model_shape),
        "n_phantoms": len(ph),
        "phantom_dice_liver_mean": round(float(np.nanmean([r["dice_liver"] for r in ph])), 4),
        "phantom_dice_spleen_mean": round(float(np.nanmean([r["dice_spleen"] for r in ph])), 4),
        "phantom_dice_liver_min": round(float(np.nanmin([r["dice_liver"] for r in ph])), 4),
        "phantom_dice_spleen_min": round(float(np.nanmin([r["dice_spleen"] for r in ph])), 4),
        "phantom_ratio_mean_abs_err_pred_masks": round(
            float(np.nanmean([abs(r["ratio_pred_masks"] - r["true_ratio"]) for r in ph])), 4
        ),
        "phantom_grade_correct_pred_masks": f"{sum(r['grade_pred_masks'] == r['true_grade'] for r in ph)}/{len(ph)}",
        "real_ct": real,
        "seconds": round(time.time() - t0, 1),
        "cases": rows,
    }
    text = json.dumps(summary, indent=2, default=float)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
