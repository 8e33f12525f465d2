"""Benchmark: serving the shipped model, in-process ONNX Runtime vs Triton gRPC.

``python benchmarks/bench_serving.py [--requests 24] [--repeats 3] [--out benchmarks/results]``

All in one run, on the same real preprocessed volumes (the shared real CT and
phantoms at the served model's input size, :func:`benchmarks.load.input_pool`):

* baseline: ONNX Runtime in-process, batch 1, one call at a time;
* ONNX Runtime in-process, batch 2, 4, 8;
* Triton gRPC (bundled server, Python backend running the same ONNX file) driven by
  the load generator (:mod:`benchmarks.load`) at concurrency 1, 2, 4, 8, 16, requests
  of 1 volume, with the model's ``dynamic_batching`` as shipped (on) and with it
  removed from a copy of the repository (off);
* Triton, requests of ``max_batch_size`` volumes at concurrency 1, 2, 4 (on).

Every cell is measured ``--repeats`` times, interleaved, and the median of each
statistic is reported, with volumes/s as a ratio to the baseline measured in the
same run. Latency is per request (one volume at batch 1), client side.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import machine_info, save_result  # noqa: E402
from benchmarks.load import LoadConfig, input_pool, percentiles, run_load  # noqa: E402


def repository_without_batching(src: Path, dest: Path) -> Path:
    """Copy a model repository with every ``dynamic_batching { ... }`` block removed."""
    shutil.copytree(src, dest, symlinks=True)
    for cfg in dest.glob("*/config.pbtxt"):
        text = cfg.read_text()
        out, i = [], 0
        for m in re.finditer(r"dynamic_batching\s*\{", text):
            if m.start() < i:
                continue
            depth, j = 1, m.end()
            while depth and j < len(text):
                depth += {"{": 1, "}": -1}.get(text[j], 0)
                j += 1
            out.append(text[i : m.start()])
            i = j
        out.append(text[i:])
        new = "".join(out)
        if "dynamic_batching" in new:
            raise RuntimeError(f"{cfg}: could not remove dynamic_batching")
        cfg.write_text(new)
    return dest


def ort_cell(sess, name, vols, batch, n_volumes) -> dict:
    """Sequential in-process calls of ``batch`` volumes until ``n_volumes`` are done."""
    xs = [
        np.concatenate([vols[(i + j) % len(vols)][None] for j in range(batch)])
        for i in range(len(vols))
    ]
    lat = []
    done = 0
    t0 = time.perf_counter()
    i = 0
    while done < n_volumes:
        t = time.perf_counter()
        sess.run(None, {name: xs[i % len(xs)]})
        lat.append(time.perf_counter() - t)
        done += batch
        i += 1
    wall = time.perf_counter() - t0
    return {
        "volumes": done,
        "wall_s": round(wall, 4),
        "volumes_per_s": round(done / wall, 3),
        "latency": percentiles(lat),
    }


def _median_cell(cells: list[dict]) -> dict:
    out = {
        "volumes_per_s": round(statistics.median(c["volumes_per_s"] for c in cells), 3),
        "volumes_per_s_all": [c["volumes_per_s"] for c in cells],
        "latency": {
            k: round(statistics.median(c["latency"][k] for c in cells), 5)
            for k in ("p50_s", "p95_s", "p99_s", "mean_s", "max_s")
        },
    }
    for k in (
        "server_inference_count",
        "server_execution_count",
        "mean_server_batch",
        "requests_failed",
    ):
        if k in cells[0]:
            vals = [c[k] for c in cells if c.get(k) is not None]
            out[k] = statistics.median(vals) if vals else None
    return out


def main(argv=None) -> int:
    import onnxruntime as ort

    from client import contract
    from client.server import DEFAULT_REPOSITORY, EmbeddedServer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--requests", type=int, default=24, help="requests (volumes at batch 1) per cell"
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--max-seconds-per-level", type=float, default=60.0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)

    onnx_path = DEFAULT_REPOSITORY / contract.MODEL_NAME / "1" / "model.onnx"
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    model_shape = tuple(sess.get_inputs()[0].shape[2:])
    vols, names = input_pool(model_shape, ROOT.parent / "shared" / "data")
    sess.run(None, {contract.INPUT_NAME: vols[0][None]})

    tmp = Path(tempfile.mkdtemp(prefix="hs_bench_serving_"))
    repos = {
        "on": DEFAULT_REPOSITORY,
        "off": repository_without_batching(DEFAULT_REPOSITORY, tmp / "repo"),
    }
    ort_raw: dict[int, list] = {b: [] for b in (1, 2, 4, 8)}
    triton_raw: dict[str, list] = {}
    meta = {}
    try:
        for rep in range(args.repeats):
            for b in ort_raw:
                ort_raw[b].append(
                    ort_cell(sess, contract.INPUT_NAME, vols, b, max(args.requests, 8))
                )
            for mode, repo in repos.items():
                with EmbeddedServer(repo, log_path=tmp / f"server_{mode}_{rep}.log") as srv:
                    res = run_load(
                        LoadConfig(
                            url=srv.grpc_url,
                            concurrency=args.concurrency,
                            requests=args.requests,
                            max_seconds_per_level=args.max_seconds_per_level,
                        )
                    )
                    results = [res]
                    max_batch = res["model"]["max_batch_size"]
                    if mode == "on" and max_batch > 1:
                        results.append(
                            run_load(
                                LoadConfig(
                                    url=srv.grpc_url,
                                    concurrency=[c for c in args.concurrency if c <= 4],
                                    batch=max_batch,
                                    requests=max(4, args.requests // max_batch),
                                    max_seconds_per_level=args.max_seconds_per_level,
                                )
                            )
                        )
                    for r in results:
                        batch = r["config"]["batch"]
                        meta.setdefault(
                            f"batching_{mode}_batch{batch}",
                            {
                                "model": r["model"],
                                "bytes_per_request": r["bytes_per_request"],
                                "server": r["endpoint"]["server"],
                            },
                        )
                        for lvl in r["levels"]:
                            key = f"triton_batching_{mode}_batch{batch}_c{lvl['concurrency']}"
                            triton_raw.setdefault(key, []).append(lvl)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    base = statistics.median(c["volumes_per_s"] for c in ort_raw[1])
    rows = {}
    for b, cells in ort_raw.items():
        m = _median_cell(cells)
        m["ratio"] = round(m["volumes_per_s"] / base, 2)
        m.update(path="onnxruntime_in_process", batch=b, concurrency=1)
        rows[f"ort_batch{b}" + (" (baseline)" if b == 1 else "")] = m
    for key, cells in triton_raw.items():
        m = _median_cell(cells)
        m["ratio"] = round(m["volumes_per_s"] / base, 2)
        mode, batch, conc = re.match(r"triton_batching_(on|off)_batch(\d+)_c(\d+)", key).groups()
        m.update(path="triton_grpc", dynamic_batching=mode, batch=int(batch), concurrency=int(conc))
        rows[key] = m
    res = {
        "machine": machine_info(onnxruntime=ort.__version__, numpy=np.__version__),
        "shared_machine": True,
        "model_shape": list(model_shape),
        "inputs": names,
        "requests_per_cell": args.requests,
        "repeats": args.repeats,
        "statistic": "median over repeats; latency per request, client side",
        "servers": meta,
        "results": rows,
    }
    save_result(res, args.out, "serving.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
