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

The machine these run on is shared, and its load changes within minutes, so every
cell is paired with the baseline: a short ONNX Runtime batch-1 burst right before and
right after it, and the cell's ratio is its volumes/s over the mean of the two. Each
cell is measured ``--repeats`` times and the median of each statistic is reported.
CPU seconds per volume (this process; the server's process group) are reported too:
they barely move with competing load, unlike volumes/s. Latency is per request,
client side.
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
from benchmarks.load import (  # noqa: E402
    LoadConfig,
    _Endpoint,
    input_pool,
    measure_level,
    percentiles,
    wire_bytes,
)


def repository_without_batching(src: Path, dest: Path) -> Path:
    """Copy a model repository with every ``dynamic_batching { ... }`` block removed."""
    shutil.copytree(src, dest, symlinks=True)
    for cfg in dest.glob("*/config.pbtxt"):
        text = cfg.read_text(encoding="utf-8")
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
    c0, t0 = time.process_time(), time.perf_counter()
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
        "client_cpu_s_per_volume": round((time.process_time() - c0) / done, 4),
        "latency": percentiles(lat),
    }


def _median_cell(cells: list[dict]) -> dict:
    def med(key):
        vals = [c[key] for c in cells if c.get(key) is not None]
        return round(statistics.median(vals), 4) if vals else None

    out = {
        "volumes_per_s": med("volumes_per_s"),
        "volumes_per_s_all": [c["volumes_per_s"] for c in cells],
        "ratio": med("ratio"),
        "ratio_all": [c.get("ratio") for c in cells],
        "latency": {
            k: round(statistics.median(c["latency"][k] for c in cells), 5)
            for k in ("p50_s", "p95_s", "p99_s", "mean_s", "max_s")
        },
    }
    for k in (
        "client_cpu_s_per_volume",
        "server_cpu_s_per_volume",
        "mean_server_batch",
        "requests_failed",
        "baseline_volumes_per_s",
    ):
        if any(k in c for c in cells):
            out[k] = med(k)
    return out


def main(argv=None) -> int:
    import onnxruntime as ort

    from client.core import contract
    from client.core.paths import SHIPPED_ONNX, SOURCE_REPOSITORY
    from client.serving.server import EmbeddedServer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=16, help="volumes per cell")
    ap.add_argument("--baseline-volumes", type=int, default=6, help="volumes per baseline burst")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--max-seconds-per-level", type=float, default=90.0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)

    onnx_path = SHIPPED_ONNX
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    model_shape = tuple(sess.get_inputs()[0].shape[2:])
    vols, names = input_pool(model_shape, ROOT.parent / "shared" / "data")
    name = contract.INPUT_NAME
    sess.run(None, {name: vols[0][None]})

    def baseline():
        return ort_cell(sess, name, vols, 1, args.baseline_volumes)["volumes_per_s"]

    def paired(measure):
        b0 = baseline()
        cell = measure()
        b1 = baseline()
        cell["baseline_volumes_per_s"] = round((b0 + b1) / 2, 3)
        cell["ratio"] = round(cell["volumes_per_s"] / cell["baseline_volumes_per_s"], 3)
        return cell

    tmp = Path(tempfile.mkdtemp(prefix="hs_bench_serving_"))
    repos = {
        "on": SOURCE_REPOSITORY,
        "off": repository_without_batching(SOURCE_REPOSITORY, tmp / "repo"),
    }
    raw: dict[str, list] = {}
    meta: dict = {}
    try:
        for rep in range(args.repeats):
            for b in (1, 2, 4, 8):
                raw.setdefault(f"ort_batch{b}", []).append(
                    paired(lambda b=b: ort_cell(sess, name, vols, b, max(args.requests, b)))
                )
            for mode, repo in repos.items():
                with EmbeddedServer(repo, log_path=tmp / f"server_{mode}_{rep}.log") as srv:
                    cfg = LoadConfig(url=srv.grpc_url)
                    from client.serving.triton import SegmentationClient

                    with SegmentationClient(srv.grpc_url) as sc:
                        max_batch, model_cfg = sc.model.max_batch_size, sc.model.config
                    eps = [_Endpoint(cfg, srv.grpc_url) for _ in range(max(args.concurrency))]
                    try:
                        cells = [(1, c) for c in args.concurrency]
                        if mode == "on" and max_batch > 1:
                            cells += [(max_batch, c) for c in args.concurrency if c <= 4]
                        for batch, c in cells:
                            batches = [
                                np.ascontiguousarray(
                                    np.concatenate(
                                        [vols[(i + j) % len(vols)][None] for j in range(batch)]
                                    )
                                )
                                for i in range(len(vols))
                            ]
                            if rep == 0 and c == 1:
                                meta[f"batching_{mode}_batch{batch}"] = {
                                    "max_batch_size": max_batch,
                                    "dynamic_batching": model_cfg.get("dynamic_batching", "off"),
                                    "bytes_per_request": wire_bytes(eps[0], batches[0]),
                                }
                            for w in range(2):  # warm-up, not counted
                                eps[0].infer(*eps[0].request(batches[w % len(batches)]))
                            n_req = max(c, -(-args.requests // batch))
                            lvl = paired(
                                lambda eps=eps, batches=batches, c=c, n_req=n_req: measure_level(
                                    eps, batches, c, n_req, args.max_seconds_per_level, srv.pid
                                )
                            )
                            raw.setdefault(f"triton_batching_{mode}_batch{batch}_c{c}", []).append(
                                lvl
                            )
                    finally:
                        for ep in eps:
                            ep.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    rows = {}
    for key, cells in raw.items():
        m = _median_cell(cells)
        if key.startswith("ort_"):
            b = int(key[len("ort_batch") :])
            m.update(path="onnxruntime_in_process", batch=b, concurrency=1)
            key = key + (" (baseline)" if b == 1 else "")
        else:
            mode, batch, conc = re.match(
                r"triton_batching_(on|off)_batch(\d+)_c(\d+)", key
            ).groups()
            m.update(
                path="triton_grpc", dynamic_batching=mode, batch=int(batch), concurrency=int(conc)
            )
        rows[key] = m
    res = {
        "machine": machine_info(onnxruntime=ort.__version__, numpy=np.__version__),
        "shared_machine": True,
        "model_shape": list(model_shape),
        "inputs": names,
        "requests_per_cell": args.requests,
        "baseline_volumes_per_burst": args.baseline_volumes,
        "repeats": args.repeats,
        "statistic": (
            "median over repeats; ratio = cell volumes/s over the mean of ONNX Runtime batch-1 "
            "bursts right before and after it; latency per request, client side"
        ),
        "servers": meta,
        "results": rows,
    }
    save_result(res, args.out, "serving.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
