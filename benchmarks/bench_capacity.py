"""Benchmark: ONNX Runtime CPU seconds per volume of the VNet at 64^3, 96^3, 128^3 and widths 0.25, 0.5.

``python benchmarks/bench_capacity.py [--sizes 64 96 128] [--widths 0.25 0.5] [--repeats 5]``

Each variant is the served graph (uint8 volume in, uint8 labels out: cast,
normalisation, VNet with isotropic 2x2x2 down/up convolutions, argmax) exported
from a randomly initialised Paddle VNet through ``training.export.export_onnx``,
exactly as a trained model would be; weights do not change the run time of a
convolutional network, so random initialisation is enough for timing. The input is
the shared real CT preprocessed by the client (``client.reading.preprocess``) to that size.
Batch 1, ONNX Runtime CPUExecutionProvider with 2 intra-op threads; the shipped model
is timed in the same run. Every repeat times each model once in turn (round-robin),
so changes in the machine's load hit all variants alike. Reported: median and
minimum of ``--repeats`` runs after one warm-up, parameters, ONNX file size, and
the load average during the run (other processes share this machine: compare rows
of one run, not across runs).

Dice per capacity needs one training run per variant; this benchmark does not train.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks._common import machine_info, save_result  # noqa: E402
from client.core.paths import SHIPPED_ONNX  # noqa: E402

SHIPPED = SHIPPED_ONNX
DATA = ROOT.parent / "shared" / "data" / "totalseg_example" / "ct.nii.gz"


def _input(size: int) -> np.ndarray:
    from client.reading.preprocess import preprocess

    if DATA.exists():
        from client.reading.io import read_scan

        ct = read_scan(DATA)
        x, _ = preprocess(ct.array, ct.spacing, ct.direction, (size,) * 3)
    else:  # no shared data: a phantom
        from training.phantoms import make_phantom

        p = make_phantom(0, shape=(80, 160, 160))
        x, _ = preprocess(p.hu, p.spacing, p.direction, (size,) * 3)
    return x[None]


def _export(size: int, width: float, path: Path) -> int:
    """Export a random-init VNet in a fresh process (Paddle's to_static keeps state)."""
    code = (
        "import sys, json, numpy as np, paddle\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from training.export import export_onnx\n"
        "from training.vnet import VNet\n"
        "paddle.seed(0)\n"
        f"net = VNet(width={width})\n"
        f"export_onnx(net, ({size},) * 3, {str(path)!r})\n"
        "print(json.dumps(int(sum(int(np.prod(p.shape)) for p in net.parameters()))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, encoding="utf-8", check=False, cwd=ROOT
    )
    if out.returncode != 0:
        raise RuntimeError(f"export of {size}^3 width {width} failed: {out.stderr[-2000:]}")
    return int(out.stdout.strip().splitlines()[-1])


def _session(path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 96, 128])
    ap.add_argument("--widths", type=float, nargs="+", default=[0.25, 0.5])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)

    import onnxruntime as ort
    import paddle

    from client.core.contract import INPUT_NAME

    inputs = {s: _input(s) for s in args.sizes}
    models = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            for width in args.widths:
                path = Path(tmp) / f"vnet_{size}_{width}.onnx"
                n_params = _export(size, width, path)
                models.append(
                    {
                        "model": f"random-init VNet width {width}",
                        "size": size,
                        "width": width,
                        "params": n_params,
                        "onnx_mb": round(path.stat().st_size / 1e6, 2),
                        "path": path,
                    }
                )
        if SHIPPED.exists() and 64 in inputs:
            models.append(
                {
                    "model": "shipped model.onnx",
                    "size": 64,
                    "width": 0.25,
                    "onnx_mb": round(SHIPPED.stat().st_size / 1e6, 2),
                    "path": SHIPPED,
                }
            )
        sessions = [_session(m["path"], args.threads) for m in models]
        for m, sess in zip(models, sessions):  # warm-up
            sess.run(None, {INPUT_NAME: inputs[m["size"]]})
        times = [[] for _ in models]
        loads = []
        # Round-robin: every repeat times each model once, so load changes hit all alike.
        for _ in range(args.repeats):
            for i, (m, sess) in enumerate(zip(models, sessions)):
                t = time.perf_counter()
                sess.run(None, {INPUT_NAME: inputs[m["size"]]})
                times[i].append(time.perf_counter() - t)
            loads.append(os.getloadavg()[0])
        rows = []
        for m, ts in zip(models, times):
            row = {k: v for k, v in m.items() if k != "path"}
            row.update(median_s=round(float(np.median(ts)), 3), min_s=round(float(np.min(ts)), 3))
            rows.append(row)
    ref = next((r for r in rows if r["model"] == "shipped model.onnx"), None)
    if ref:
        for r in rows:
            r["median_vs_shipped"] = round(r["median_s"] / ref["median_s"], 2)
    res = {
        "benchmark": "capacity: ONNX Runtime CPU seconds per volume (batch 1)",
        "threads": args.threads,
        "repeats": args.repeats,
        "input": "shared real CT preprocessed to each size" if DATA.exists() else "phantom",
        "machine": machine_info(onnxruntime=ort.__version__, paddle=paddle.__version__),
        "load_avg_1min_during": [round(x, 2) for x in loads],
        "rows": rows,
        "note": (
            "Dice per capacity needs a training run per variant (not run: one 2-core "
            "machine, one training at a time). Timings are on a shared machine: see "
            "load_avg_1min; compare rows of one run."
        ),
    }
    save_result(res, args.out, "capacity.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
