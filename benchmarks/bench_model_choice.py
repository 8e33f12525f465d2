"""Benchmark: CPU seconds per SCAN of candidate served models, each with its own preprocessing.

``python benchmarks/bench_model_choice.py --model NAME=PATH.onnx [--model ...] [--repeats 5]``

A model's preprocessing comes from its ONNX metadata (``training.evaluate.onnx_spec``;
none = MedicalSeg's whole-volume resize), so a fixed-spacing model is timed with all its
windows. Per scan: ``client.reading.preprocess.preprocess_windows`` + ONNX Runtime on every
window (batch 1, CPUExecutionProvider, 2 intra-op threads, as the bundled server runs
it) + ``to_scan_grid``. Scans (built from the shared real CT, so nothing is downloaded):

* ``real_ct``: the CT as shared (122 x 101 x 112, 3 mm);
* ``clinical_512``: the same CT resampled to 0.78 x 0.78 mm pixels in a 512 x 512 field
  of view of 400 mm (air around the body) with 2.5 mm slices: a clinical-size volume;
* ``slab_42mm``: 14 slices through the spleen (``training.evaluate.crop_slices``);
* ``long_1m``: the CT stacked three times along z (about 1 m: a chest-abdomen-pelvis-
  legs length), the case where fixed spacing needs several windows along z.

Rows of one run are comparable (round-robin repeats: every repeat times each model on
each scan once, so a change in the machine's load hits all alike); report the median,
the minimum and the ratio to the first model. Writes benchmarks/results/model_choice.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import machine_info, save_result  # noqa: E402


def scans():
    """``name -> (hu, spacing, direction)`` built from the shared real CT."""
    from scipy import ndimage as ndi

    from client.reading.io import read_label_map, read_scan
    from training.evaluate import DATA_DIR, crop_slices

    ct = read_scan(DATA_DIR / "ct.nii.gz")
    hu = np.asarray(ct.array, dtype=np.int16)
    lab = np.asarray(read_label_map(DATA_DIR / "labels.nii.gz", ct))
    sp, d = tuple(ct.spacing), ct.direction
    out = {"real_ct": (hu, sp, d)}
    # 0.78 mm pixels, 400 mm field of view (512 x 512) centred on the body, 2.5 mm slices.
    fov, n = 400.0, 512
    zoom = (sp[0] / 2.5, sp[1] / (fov / n), sp[2] / (fov / n))
    body = ndi.zoom(hu.astype(np.float32), zoom, order=1).astype(np.int16)
    canvas = np.full((body.shape[0], n, n), -1000, np.int16)
    oy, ox = (n - body.shape[1]) // 2, (n - body.shape[2]) // 2
    canvas[:, oy : oy + body.shape[1], ox : ox + body.shape[2]] = body
    out["clinical_512"] = (canvas, (2.5, fov / n, fov / n), d)
    out["slab_42mm"] = (crop_slices(hu, lab, "slab_42mm")[0], sp, d)
    out["long_1m"] = (np.concatenate([hu, hu, hu]), sp, d)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", required=True, help="NAME=PATH.onnx")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)

    import onnxruntime as ort

    from client.core.contract import INPUT_NAME
    from client.reading.preprocess import preprocess_windows, to_scan_grid
    from training.evaluate import onnx_spec

    models = []
    for item in args.model:
        name, _, path = item.partition("=")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = args.threads
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        models.append({"name": name, "path": path, "sess": sess, "spec": onnx_spec(sess)})
    cases = scans()

    def run(m, hu, sp, d):
        x, rec = preprocess_windows(hu, sp, d, m["spec"])
        small = np.concatenate(
            [m["sess"].run(None, {INPUT_NAME: x[i : i + 1]})[0] for i in range(len(x))]
        )
        to_scan_grid(small, rec)
        return len(rec.windows)

    times = {(m["name"], c): [] for m in models for c in cases}
    windows = {}
    for m in models:  # warm-up
        for c, (hu, sp, d) in cases.items():
            windows[(m["name"], c)] = run(m, hu, sp, d)
    load = []
    for _ in range(args.repeats):
        for c, (hu, sp, d) in cases.items():
            for m in models:
                t = time.perf_counter()
                run(m, hu, sp, d)
                times[(m["name"], c)].append(time.perf_counter() - t)
        load.append(round(os.getloadavg()[0], 2))
    rows = []
    for c, (hu, sp, _d) in cases.items():
        base = float(np.median(times[(models[0]["name"], c)]))
        for m in models:
            t = times[(m["name"], c)]
            rows.append(
                {
                    "scan": c,
                    "scan_shape": list(hu.shape),
                    "scan_spacing_mm": [round(float(v), 3) for v in sp],
                    "model": m["name"],
                    "preprocess": m["spec"].parameters(),
                    "model_shape": list(m["spec"].model_shape),
                    "windows": windows[(m["name"], c)],
                    "median_s": round(float(np.median(t)), 3),
                    "min_s": round(float(np.min(t)), 3),
                    "median_vs_first": round(float(np.median(t)) / base, 2),
                }
            )
    res = {
        "benchmark": "CPU seconds per scan: preprocessing + every window through ONNX Runtime + map back",
        "threads": args.threads,
        "repeats": args.repeats,
        "models": {m["name"]: m["path"] for m in models},
        "machine": machine_info(onnxruntime=ort.__version__),
        "load_avg_1min_during": load,
        "rows": rows,
    }
    save_result(res, args.out, "model_choice.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
