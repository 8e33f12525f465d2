"""Per-class Dice of a multi-class training checkpoint on held-out cases, on each scan's grid.

``python -m training.evaluate_multiclass --checkpoint RUN/latest.pt [--anatomy_cases 4]
[--out FILE.json]``

Reads the class table, the source-level split and the preprocessing from the checkpoint
(``training.demo_train`` stores them), runs its EMA weights (PyTorch twin, no export
needed) through the serving preprocessing and stitching
(:func:`training.evaluate.segment_volume`) and scores, per class:

- the shared real CT (``native`` and the other variants of
  :func:`training.evaluate.real_ct_cases`), against its 61-structure map mapped to the
  class table (a TotalSegmentator model's output, not an expert's). Held out in image
  and anatomy only for a run whose split holds out ``real``;
- painted scans of every held-out real anatomy of the split (seeds 6,000,000+, phases
  in turn, no extra variety): anatomy never seen in training, image synthetic.

Dice is NaN where a class is absent from both masks; means skip NaN.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

PHASES = ("unenhanced", "portal", "arterial", "delayed")


def torch_predictor(checkpoint, threads: int = 1):
    """``predict(uint8 [N, 1, z, y, x]) -> labels`` from a checkpoint's EMA weights.

    ``predict.spec``, ``predict.class_names`` and ``predict.split`` come from the checkpoint.
    """
    import torch

    from client.reading.preprocess import PreprocessSpec

    from .torch_vnet import TorchVNet

    torch.set_num_threads(threads)
    ck = torch.load(checkpoint, weights_only=False)
    names = ck.get("class_names") or ["background", "liver", "spleen"]
    net = TorchVNet(width=ck.get("width", 0.25), num_classes=len(names))
    state = {k: torch.as_tensor(v).float() for k, v in (ck.get("ema") or ck["model"]).items()}
    net.load_state_dict(state)
    net.eval()

    def predict(u8):
        x = torch.from_numpy(np.asarray(u8, np.float32))
        x = x / x.amax(dim=(1, 2, 3, 4), keepdim=True).clamp(min=1.0)
        with torch.no_grad():
            return net(x)[0].argmax(1).numpy().astype(np.uint8)

    predict.spec = PreprocessSpec.from_parameters(ck["preprocess"], tuple(ck["model_shape"]))
    predict.class_names = list(names)
    predict.split = ck.get("split")
    predict.iteration = ck.get("iter")
    return predict


def heldout_anatomy_cases(anatomies, n: int):
    """Painted scans ``(name, hu, classes, spacing, direction)`` of held-out anatomies."""
    from .synth import synth_scan

    out = []
    for a in anatomies:
        for i in range(n):
            seed = 6_000_000 + i
            s = synth_scan(seed, a, phase=PHASES[i % 4], multiclass=True, variety=False)
            out.append((f"{a}_{seed}_{PHASES[i % 4]}", s["hu"], s["classes"], s["spacing"],
                        s["direction"]))  # fmt: skip
    return out


def evaluate(predict, cases) -> dict:
    """Dice per class per case on the scan grid, class means, seconds per case."""
    from .evaluate import segment_volume
    from .metrics import dice_per_class

    names = predict.class_names
    vals = list(range(1, len(names)))
    rows = {}
    for name, hu, lab, sp, d in cases:
        t = time.time()
        pred, _ = segment_volume(predict, hu, sp, d, predict.spec)
        dice = dice_per_class(np.asarray(pred), np.asarray(lab), vals)
        rows[name] = {names[v]: round(x, 4) for v, x in zip(vals, dice)}
        rows[name]["seconds"] = round(time.time() - t, 2)
    return rows


def summarise(rows: dict, names) -> dict:
    """Mean Dice per class over cases (NaN skipped)."""
    out = {}
    for n in names[1:]:
        v = [r[n] for r in rows.values() if r.get(n) is not None and np.isfinite(r[n])]
        out[n] = round(float(np.mean(v)), 4) if v else None
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--anatomy_cases", type=int, default=4, help="per held-out anatomy")
    ap.add_argument("--real_variants", nargs="*", default=["native", "resampled_0.8x0.8x5",
                    "portal"])  # fmt: skip
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    from .evaluate import DATA_DIR, real_ct_cases

    predict = torch_predictor(args.checkpoint, args.threads)
    result = {
        "checkpoint": str(args.checkpoint),
        "iteration": predict.iteration,
        "split": predict.split,
        "classes": dict(enumerate(predict.class_names)),
    }
    if args.real_variants and (DATA_DIR / "ct.nii.gz").exists():
        rows = evaluate(predict, real_ct_cases(variants=tuple(args.real_variants), multiclass=True))
        held = bool(predict.split and "real" in predict.split.get("held_out", []))
        result["real_ct"] = {"held_out_in_image_and_anatomy": held, "cases": rows}
    held = [a for a in (predict.split or {}).get("held_out", []) if a != "real"]
    if held and args.anatomy_cases:
        rows = evaluate(predict, heldout_anatomy_cases(held, args.anatomy_cases))
        result["heldout_anatomy"] = {
            "anatomies": held,
            "mean": summarise(rows, predict.class_names),
            "cases": rows,
        }
    text = json.dumps(result, indent=2, default=float)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
