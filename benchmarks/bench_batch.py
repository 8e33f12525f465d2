"""Benchmark: end-to-end archive screening with ``python -m client.batch`` and the demo model.

``python benchmarks/bench_batch.py [--n 20 100] [--distinct 20] [--shape 300 512 512]
[--concurrency 4] [--work /tmp/hs_bench_batch]``

Writes ``--distinct`` realistic-size phantoms (512 x 512 in-plane, 0.7-0.8 mm, all
grades, NIfTI .nii.gz; kept in ``--work`` between runs); a run of N scans screens
N files named ``p000 ... p{N-1}``, the distinct phantoms repeated as hard links
when N is larger (same bytes, own case ids). Each run is ``python -m client.batch``
in its own process with the bundled Triton server (server start included):

* ``n20_concurrency_1``: stages strictly in sequence; gives each stage's time per
  scan on its own (the "slowest stage alone");
* ``n{N}_concurrency_{C}`` for every N: the stages of different scans overlap.

Per run: scans/minute (the run's own processing wall time from ``run.json``, and
with server start), stage seconds and fractions, CPU seconds per scan (batch process
plus bundled server, read with ``os.wait4``), the client process's peak RSS
(``VmHWM`` polled from ``/proc``; the server is a separate process), overlap
efficiency (scans/minute over the throughput of the slowest stage alone, that is
60 / its seconds per scan at concurrency 1; on a machine with few cores the stages
compete for the same cores, so ``cpu_bound_scans_per_minute``, 60 x cores / CPU
seconds per scan, is given beside it), bytes on the wire per scan and grade
accuracy against the phantoms' truth. Wire bytes are computed from the gRPC
messages the client sends and receives for one volume (protobuf size of the
ModelInfer request and response + 5-byte gRPC prefix + 9-byte HTTP/2 DATA frame
headers per 16 KiB; HTTP/2 HEADERS frames, a few hundred bytes, not counted).
Writes ``benchmarks/results/batch.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import machine_info, save_result  # noqa: E402


def _vm_hwm_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def run_batch(scans: Path, out: Path, concurrency: int) -> dict:
    """``python -m client.batch`` in its own process: exit code, wall, CPU, client peak RSS."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "client.batch", str(scans), "-o", str(out), "--quiet"]
    cmd += ["--concurrency", str(concurrency)]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL)
    peak = [0]
    done = threading.Event()

    def poll():
        while not done.is_set():
            v = _vm_hwm_kib(proc.pid)
            if v:
                peak[0] = max(peak[0], v)
            done.wait(0.2)

    th = threading.Thread(target=poll, daemon=True)
    th.start()
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    done.set()
    th.join()
    return {
        "exit_code": os.waitstatus_to_exitcode(status),
        "wall_s": wall,
        "cpu_s": ru.ru_utime + ru.ru_stime,
        "client_peak_rss_mb": round(peak[0] / 1024, 1),
    }


def wire_bytes_per_volume(model_shape, channels: int = 1) -> dict:
    """Bytes of one volume's ModelInfer request and response on the wire (see module doc)."""
    import numpy as np
    import tritonclient.grpc as g
    from tritonclient.grpc import _utils, service_pb2

    from client.core import contract

    x = np.zeros((1, channels, *model_shape), np.uint8)
    inp = g.InferInput(contract.INPUT_NAME, list(x.shape), "UINT8")
    inp.set_data_from_numpy(x)
    out = g.InferRequestedOutput(contract.OUTPUT_NAME)
    req = _utils._get_inference_request(
        contract.MODEL_NAME, [inp], "", "", [out], 0, False, False, 0, None, None
    )
    y = np.zeros((1, *model_shape), np.uint8)
    resp = service_pb2.ModelInferResponse(model_name=contract.MODEL_NAME, model_version="1")
    o = resp.outputs.add()
    o.name, o.datatype = contract.OUTPUT_NAME, "UINT8"
    o.shape.extend(y.shape)
    resp.raw_output_contents.append(y.tobytes())

    def framed(n):
        n += 5  # gRPC length prefix
        return n + 9 * -(-n // 16384)  # HTTP/2 DATA frame headers

    payload = int(x.nbytes + y.nbytes)
    total = framed(req.ByteSize()) + framed(resp.ByteSize())
    return {
        "tensor_bytes": payload,
        "wire_bytes": total,
        "overhead_bytes": total - payload,
    }


def served_model_shape() -> tuple[int, int, int]:
    """Spatial input shape of the bundled model, from its ``config.pbtxt`` (``dims: [1, z, y, x]``)."""
    import re

    from client.core import contract
    from client.core.paths import model_repository

    text = (model_repository() / contract.MODEL_NAME / "config.pbtxt").read_text(encoding="utf-8")
    dims = re.search(r"dims:\s*\[([^\]]*)\]", text)
    if dims is None:
        raise RuntimeError("no input dims in the bundled model's config.pbtxt")
    return tuple(int(v) for v in dims.group(1).split(",")[-3:])


def main(argv=None) -> int:
    import SimpleITK as sitk

    from training.phantoms import make_phantom

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[20, 100])
    ap.add_argument("--distinct", type=int, default=20)
    ap.add_argument("--shape", type=int, nargs=3, default=(300, 512, 512))
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--work", type=Path, default=Path("/tmp/hs_bench_batch"))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    pool = args.work / "phantoms"
    pool.mkdir(parents=True, exist_ok=True)
    truth_path = pool / "truth.json"
    truth = json.loads(truth_path.read_text(encoding="utf-8")) if truth_path.is_file() else {}
    t = time.perf_counter()
    grades = ("normal", "mild", "moderate", "severe")
    for i in range(args.distinct):
        case = f"p{i:03d}"
        path = pool / f"{case}.nii.gz"
        if path.exists() and case in truth:
            continue
        p = make_phantom(7000 + i, shape=tuple(args.shape), grade=grades[i % 4])
        truth[case] = p.truth["grade"]
        sitk.WriteImage(p.to_scan().to_sitk(), str(path), useCompression=True)
        truth_path.write_text(json.dumps(truth, indent=1))
    gen_s = time.perf_counter() - t
    sizes = [(pool / f"p{i:03d}.nii.gz").stat().st_size for i in range(args.distinct)]
    res = {
        "machine": machine_info(),
        "shared_machine": True,
        "n_scans": max(args.n),
        "n_distinct_phantoms": args.distinct,
        "shape": list(args.shape),
        "mean_file_bytes": int(sum(sizes) / len(sizes)),
        "phantom_generation_s": round(gen_s, 1),
        "runs": {},
    }
    plan = [(min(args.n), 1)] + [(n, args.concurrency) for n in args.n]
    alone = None
    for n, conc in plan:
        scans = args.work / f"scans_{n}"
        shutil.rmtree(scans, ignore_errors=True)
        scans.mkdir(parents=True)
        for i in range(n):
            os.link(pool / f"p{i % args.distinct:03d}.nii.gz", scans / f"p{i:03d}.nii.gz")
        out = args.work / f"out_n{n}_c{conc}"
        r = run_batch(scans, out, conc)
        run = json.loads((out / "run.json").read_text(encoding="utf-8"))
        with open(out / "results.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        correct = sum(
            row["grade"] == truth[f"p{int(row['case_id'][1:]) % args.distinct:03d}"] for row in rows
        )
        tim = run["timings"]
        per_stage = {k: round(v / n, 4) for k, v in tim["stage_seconds"].items()}
        entry = {
            "n_scans": n,
            "concurrency": conc,
            "exit_code": r["exit_code"],
            "wall_s_including_server_start": round(r["wall_s"], 1),
            "scans_per_minute_including_server_start": round(60 * n / r["wall_s"], 2),
            "processing_wall_s": tim.get("wall_s"),
            "scans_per_minute": tim.get("scans_per_minute"),
            "stage_fraction": tim["stage_fraction"],
            "stage_seconds": tim["stage_seconds"],
            "stage_seconds_per_scan": per_stage,
            "cpu_s_per_scan": round(r["cpu_s"] / n, 3),
            "peak_rss_mb": r["client_peak_rss_mb"],
            "grades_correct": f"{correct}/{len(rows)}",
            "inference_statistics": {
                k: run["inference_statistics"].get(k)
                for k in ("inference_count", "execution_count")
            },
        }
        if conc == 1 and alone is None:
            slowest = max(per_stage, key=per_stage.get)
            alone = {"stage": slowest, "seconds_per_scan": per_stage[slowest]}
            res["slowest_stage_alone"] = {
                **alone,
                "scans_per_minute": round(60 / per_stage[slowest], 2),
                "from_run": f"n{n}_concurrency_1",
            }
        # What the CPU alone allows: every core busy with this run's work (server included).
        entry["cpu_bound_scans_per_minute"] = round(60 * (os.cpu_count() or 1) * n / r["cpu_s"], 2)
        if alone and entry["scans_per_minute"]:
            entry["overlap_efficiency"] = round(
                entry["scans_per_minute"] / (60 / alone["seconds_per_scan"]), 3
            )
        res["runs"][f"n{n}_concurrency_{conc}"] = entry
        shutil.rmtree(scans, ignore_errors=True)
    ms = served_model_shape()
    wire = wire_bytes_per_volume(ms)
    wire["model_shape"] = list(ms)
    res["wire_bytes_per_scan"] = wire
    for e in res["runs"].values():
        e["wire_bytes_per_scan"] = wire["wire_bytes"]
    rss = {e["n_scans"]: e["peak_rss_mb"] for e in res["runs"].values() if e["concurrency"] > 1}
    if len(rss) > 1:
        lo, hi = min(rss), max(rss)
        res[f"peak_rss_ratio_n{hi}_to_n{lo}"] = round(rss[hi] / rss[lo], 2)
    save_result(res, args.out, "batch.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
