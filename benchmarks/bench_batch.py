"""Benchmark: end-to-end archive screening with ``python -m client.batch`` and the demo model.

``python benchmarks/bench_batch.py [--n 20] [--shape 200 512 512] [--work /tmp/hs_bench]``

Writes ``--n`` realistic-size phantoms (512 x 512 x 200, 0.7-0.8 mm in-plane,
all grades, NIfTI) and screens the folder twice in the same run with the
embedded Triton server: ``--concurrency 1`` (baseline: stages strictly in
sequence) and ``--concurrency 4`` (stages of different scans overlap, the
dynamic batcher can merge requests). Reports scans/minute, the ratio, the
fraction of worker time in each stage (from run.json) and grade accuracy
against the phantoms' truth.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import machine_info, save_result  # noqa: E402


def main(argv=None) -> int:
    import csv

    import SimpleITK as sitk

    from client.batch import main as batch
    from training.phantoms import make_phantom

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--shape", type=int, nargs=3, default=(200, 512, 512))
    ap.add_argument("--work", type=Path, default=Path("/tmp/hs_bench_batch"))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    scans = args.work / "scans"
    truth = {}
    t = time.perf_counter()
    scans.mkdir(parents=True, exist_ok=True)
    grades = ("normal", "mild", "moderate", "severe")
    for i in range(args.n):
        case = f"p{i:03d}"
        p = make_phantom(7000 + i, shape=tuple(args.shape), grade=grades[i % 4])
        truth[case] = p.truth["grade"]
        path = scans / f"{case}.nii.gz"
        if not path.exists():
            sitk.WriteImage(p.to_scan().to_sitk(), str(path), useCompression=True)
    gen_s = time.perf_counter() - t
    res = {
        "machine": machine_info(),
        "n_scans": args.n,
        "shape": list(args.shape),
        "phantom_generation_s": round(gen_s, 1),
        "runs": {},
    }
    for conc in (1, 4):
        out = args.work / f"out_c{conc}"
        shutil.rmtree(out, ignore_errors=True)
        t = time.perf_counter()
        rc = batch([str(scans), "-o", str(out), "--quiet", "--concurrency", str(conc)])
        wall = time.perf_counter() - t
        run = json.loads((out / "run.json").read_text())
        with open(out / "results.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        correct = sum(r["grade"] == truth[r["case_id"]] for r in rows)
        res["runs"][f"concurrency_{conc}"] = {
            "exit_code": rc,
            "wall_s_including_server_start": round(wall, 1),
            "scans_per_minute": round(60 * args.n / wall, 2),
            "stage_fraction": run["timings"]["stage_fraction"],
            "stage_seconds": run["timings"]["stage_seconds"],
            "grades_correct": f"{correct}/{len(rows)}",
            "inference_statistics": {
                k: run["inference_statistics"][k] for k in ("inference_count", "execution_count")
            },
        }
    c1, c4 = res["runs"]["concurrency_1"], res["runs"]["concurrency_4"]
    res["speedup_concurrency_4_vs_1"] = round(c4["scans_per_minute"] / c1["scans_per_minute"], 2)
    save_result(res, args.out, "batch.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
