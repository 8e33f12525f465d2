"""Benchmark: serving throughput of the shipped model, with the bundled Triton server.

``python benchmarks/bench_triton.py [--n 24] [--out benchmarks/results]``

All in one run, on the same inputs (phantoms preprocessed to the model size):

* baseline: ONNX Runtime in-process, batch 1, sequential;
* ONNX Runtime in-process, batch 4;
* Triton (gRPC), 1 request in flight (no merging possible);
* Triton, 2 / 4 / 8 requests in flight (the dynamic batcher merges them:
  execution_count < inference_count);
* Triton, 1 in flight, input and output through system shared memory.

Reported as volumes/s and as ratios to the baseline, with the server's own
inference statistics and machine info. These numbers set the CPU model's
``dynamic_batching`` values (model_repository/cpu/hepascreen_vnet/config.pbtxt).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import machine_info, save_result  # noqa: E402


def inputs(model_shape, n):
    from client.reading.preprocess import preprocess
    from training.phantoms import make_phantom

    out = []
    for seed in range(min(n, 6)):
        p = make_phantom(seed, shape=(60, 128, 128))
        out.append(preprocess(p.hu, p.spacing, p.direction, model_shape)[0])
    return [out[i % len(out)] for i in range(n)]


def run_inflight(client, xs, k):
    from concurrent.futures import ThreadPoolExecutor

    before = client.statistics()
    t = time.perf_counter()
    with ThreadPoolExecutor(k) as pool:
        list(pool.map(lambda x: client.infer(x[None]), xs))
    dt = time.perf_counter() - t
    after = client.statistics()
    return (
        dt,
        after["inference_count"] - before["inference_count"],
        after["execution_count"] - before["execution_count"],
    )


def run_shm(url, xs, model_shape):
    import tritonclient.grpc as g
    import tritonclient.utils.shared_memory as shm

    from client.core import contract

    c = g.InferenceServerClient(url)
    nbytes = int(np.prod(xs[0].shape))
    out_bytes = int(np.prod(model_shape))
    hin = shm.create_shared_memory_region("hs_in", "/hs_in", nbytes)
    hout = shm.create_shared_memory_region("hs_out", "/hs_out", out_bytes)
    try:
        c.register_system_shared_memory("hs_in", "/hs_in", nbytes)
        c.register_system_shared_memory("hs_out", "/hs_out", out_bytes)
        t = time.perf_counter()
        for x in xs:
            shm.set_shared_memory_region(hin, [np.ascontiguousarray(x[None])])
            inp = g.InferInput(contract.INPUT_NAME, [1, *x.shape], "UINT8")
            inp.set_shared_memory("hs_in", nbytes)
            out = g.InferRequestedOutput(contract.OUTPUT_NAME)
            out.set_shared_memory("hs_out", out_bytes)
            c.infer(contract.MODEL_NAME, [inp], outputs=[out])
            shm.get_contents_as_numpy(hout, np.uint8, [1, *model_shape]).copy()
        return time.perf_counter() - t
    finally:
        try:
            c.unregister_system_shared_memory()
        except Exception:
            pass
        shm.destroy_shared_memory_region(hin)
        shm.destroy_shared_memory_region(hout)
        c.close()


def main(argv=None) -> int:
    import onnxruntime as ort

    from client.core import contract
    from client.core.paths import SHIPPED_ONNX
    from client.serving.server import EmbeddedServer
    from client.serving.triton import SegmentationClient

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=24)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    onnx_path = SHIPPED_ONNX
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    model_shape = tuple(sess.get_inputs()[0].shape[2:])
    xs = inputs(model_shape, args.n)
    res = {
        "machine": machine_info(onnxruntime=ort.__version__),
        "model_shape": list(model_shape),
        "n": args.n,
    }
    sess.run(None, {contract.INPUT_NAME: xs[0][None]})
    t = time.perf_counter()
    for x in xs:
        sess.run(None, {contract.INPUT_NAME: x[None]})
    base = args.n / (time.perf_counter() - t)
    t = time.perf_counter()
    for i in range(0, args.n, 4):
        sess.run(None, {contract.INPUT_NAME: np.stack(xs[i : i + 4])})
    ort4 = args.n / (time.perf_counter() - t)
    rows = {
        "ort_batch1 (baseline)": {"volumes_per_s": round(base, 2), "ratio": 1.0},
        "ort_batch4": {"volumes_per_s": round(ort4, 2), "ratio": round(ort4 / base, 2)},
    }
    with (
        EmbeddedServer(log_path=Path("/tmp") / "hepascreen_bench_triton_server.log") as srv,
        SegmentationClient(srv.grpc_url, max_in_flight=8) as client,
    ):
        client.infer(xs[0][None])
        for k in (1, 2, 4, 8):
            dt, n_inf, n_exec = run_inflight(client, xs, k)
            rows[f"triton_grpc_{k}_in_flight"] = {
                "volumes_per_s": round(args.n / dt, 2),
                "ratio": round(args.n / dt / base, 2),
                "inference_count": n_inf,
                "execution_count": n_exec,
            }
        try:
            dt = run_shm(srv.grpc_url, xs, model_shape)
            rows["triton_system_shm_1_in_flight"] = {
                "volumes_per_s": round(args.n / dt, 2),
                "ratio": round(args.n / dt / base, 2),
            }
        except Exception as exc:  # noqa: BLE001 - report, do not hide
            rows["triton_system_shm_1_in_flight"] = {"error": str(exc)[:300]}
    res["results"] = rows
    save_result(res, args.out, "triton.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
