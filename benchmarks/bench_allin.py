"""Benchmark: all-in client CPU per scan against decompressing the same files once.

``python benchmarks/bench_allin.py [--n 8] [--concurrency 2] [--repeats 3]
[--tree NAME=DIR ...] [--work /tmp/hs_bench_allin]``

Writes ``--n`` phantoms of 300 x 512 x 512 (NIfTI, gzip; all grades) unless the
work folder has them, then in ONE run, interleaved ``--repeats`` times:

* ``gzip -dc`` of every file (the baseline: decompressing the input once);
* ``python -m client.batch`` on the folder with the bundled Triton server, once
  per source tree given with ``--tree`` (default: this checkout only; e.g.
  ``--tree before=/tmp/old_checkout --tree after=.`` compares two versions of the
  client on the same machine in the same run).

CPU seconds are the user + system time of the batch process and everything it
waited for (the bundled server included, its start amortised over the scans),
read with ``os.wait4``. Per-stage seconds come from each run's ``run.json``.
With several trees the outputs are compared: the masks (decompressed bytes), the QC
pictures (file bytes) and the result rows without their timing and run columns
must be identical. Writes ``benchmarks/results/allin.json``.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import machine_info, save_result  # noqa: E402

SHAPE = (300, 512, 512)
GRADES = ("normal", "mild", "moderate", "severe")
# Row columns that legitimately differ between two runs of the same scans.
VOLATILE = ("seconds", "run_id", "finished_at", "attempt", "source_fingerprint")


def make_scans(folder: Path, n: int, shape=SHAPE) -> dict:
    """Write ``n`` phantoms ``p000.nii.gz ...`` (kept when present); returns case -> grade."""
    import SimpleITK as sitk

    from training.phantoms import make_phantom

    folder.mkdir(parents=True, exist_ok=True)
    truth_path = folder / "truth.json"
    truth = json.loads(truth_path.read_text(encoding="utf-8")) if truth_path.is_file() else {}
    for i in range(n):
        case = f"p{i:03d}"
        path = folder / f"{case}.nii.gz"
        if path.exists() and case in truth:
            continue
        p = make_phantom(7000 + i, shape=tuple(shape), grade=GRADES[i % 4])
        truth[case] = p.truth["grade"]
        sitk.WriteImage(p.to_scan().to_sitk(), str(path), useCompression=True)
    truth_path.write_text(json.dumps(truth, indent=1))
    return {k: v for k, v in truth.items() if (folder / f"{k}.nii.gz").exists()}


def make_real_scans(folder: Path, n: int) -> dict:
    """Write ``n`` copies of the shared REAL CT on a clinical grid (512 x 512 x 336,
    0.75 x 0.75 x 1 mm: linear resampling, air around the 366 mm field of view, 12 HU
    noise, a seed per copy) as ``r000.nii.gz ...``: real anatomy the model segments,
    unlike an ellipsoid phantom (issue 23). Kept when present; returns case -> grade of
    the reference masks (normal)."""
    import numpy as np
    import SimpleITK as sitk

    from client.reading.io import read_scan

    src = ROOT.parent / "shared" / "data" / "totalseg_example" / "ct.nii.gz"
    folder.mkdir(parents=True, exist_ok=True)
    ct = read_scan(src).to_sitk()
    spacing = (0.75, 0.75, 1.0)
    size = (512, 512, int(round(ct.GetSize()[2] * ct.GetSpacing()[2] / spacing[2])))
    centre = ct.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in ct.GetSize()])
    d = np.asarray(ct.GetDirection()).reshape(3, 3)
    half = d @ (np.array(spacing) * (np.array(size) - 1) / 2)
    ref = sitk.Image(size, sitk.sitkInt16)
    ref.SetSpacing(spacing)
    ref.SetDirection(ct.GetDirection())
    ref.SetOrigin(tuple(np.array(centre) - half))
    base = sitk.GetArrayFromImage(
        sitk.Resample(ct, ref, sitk.Transform(), sitk.sitkLinear, -1024, sitk.sitkInt16)
    )
    truth = {}
    for i in range(n):
        case = f"r{i:03d}"
        path = folder / f"{case}.nii.gz"
        truth[case] = "normal"
        if path.exists():
            continue
        rng = np.random.default_rng(9000 + i)
        arr = base + rng.normal(0, 12, base.shape).astype(np.float32)
        img = sitk.GetImageFromArray(np.clip(np.round(arr), -1024, 3071).astype(np.int16))
        img.CopyInformation(ref)
        sitk.WriteImage(img, str(path), useCompression=True)
    (folder / "truth.json").write_text(json.dumps(truth, indent=1))
    return truth


def _run_cpu(cmd, cwd=None, env=None) -> tuple[int, float, float, int]:
    """Run ``cmd``; (exit code, wall s, CPU s of it and its waited-for children, max RSS KiB)."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL)
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss


def gzip_cpu(files) -> tuple[float, float]:
    """(CPU s, wall s) of ``gzip -dc`` over every file, output discarded."""
    cpu = wall = 0.0
    for f in files:
        rc, w, c, _ = _run_cpu(["gzip", "-dc", str(f)])
        if rc != 0:
            raise RuntimeError(f"gzip -dc {f} failed with exit code {rc}")
        cpu += c
        wall += w
    return cpu, wall


def run_batch(tree: Path, scans: Path, out: Path, concurrency: int, repo: Path) -> dict:
    """One ``client.batch`` run of the client in ``tree``; CPU, wall and run.json timings."""
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, PYTHONPATH=str(tree))
    cmd = [sys.executable, "-m", "client.batch", str(scans), "-o", str(out), "--quiet"]
    cmd += ["--concurrency", str(concurrency), "--model-repository", str(repo)]
    rc, wall, cpu, rss = _run_cpu(cmd, cwd=tree, env=env)
    run = json.loads((out / "run.json").read_text(encoding="utf-8"))
    return {
        "exit_code": rc,
        "wall_s": wall,
        "cpu_s": cpu,
        "max_rss_kib": rss,
        "stage_seconds": run["timings"]["stage_seconds"],
    }


def _digest(path: Path) -> str:
    """SHA-256 of the file's content; of the DECOMPRESSED bytes for ``.gz`` (the NIfTI
    header and voxels: two gzip encoders give different bytes for the same mask)."""
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        data = gzip.decompress(data)
    return hashlib.sha256(data).hexdigest()


def output_signature(out: Path) -> dict:
    """Masks and QC pictures by content hash; result rows without volatile columns."""
    with open(out / "results.csv", newline="") as fh:
        rows = {
            r["case_id"]: {k: v for k, v in r.items() if not any(k.startswith(p) for p in VOLATILE)}
            for r in csv.DictReader(fh)
        }
    files = {
        f"{sub}/{p.name}": _digest(p)
        for sub in ("masks", "qc")
        for p in sorted((out / sub).glob("*"))
        if p.is_file()
    }
    return {"rows": rows, "files": files}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tree", action="append", default=[], metavar="NAME=DIR")
    ap.add_argument("--work", type=Path, default=Path("/tmp/hs_bench_allin"))
    ap.add_argument("--scans", type=Path, help="folder of .nii.gz scans (default: phantoms)")
    ap.add_argument("--real", action="store_true",
                    help="the shared real CT on a 512 x 512 x 336 clinical grid instead of phantoms")  # fmt: skip
    ap.add_argument("--model-repository", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--name", default="allin.json")
    args = ap.parse_args(argv)
    from client.core.paths import model_repository

    repo = model_repository(args.model_repository)
    trees = dict(t.split("=", 1) for t in args.tree) or {"this_checkout": str(ROOT)}
    trees = {k: Path(v).resolve() for k, v in trees.items()}
    scans = args.scans or args.work / ("real" if args.real else "scans")
    if args.scans is not None:
        truth = {}
    else:
        truth = make_real_scans(scans, args.n) if args.real else make_scans(scans, args.n)
    files = sorted(scans.glob("*.nii.gz"))
    n = len(files)
    samples: dict = {"gzip_dc": []}
    samples.update({k: [] for k in trees})
    sigs: dict = {}
    for rep in range(args.repeats):
        cpu, wall = gzip_cpu(files)
        samples["gzip_dc"].append({"cpu_s": cpu, "wall_s": wall})
        for name, tree in trees.items():
            out = args.work / f"out_{name}"
            r = run_batch(tree, scans, out, args.concurrency, repo)
            if r["exit_code"] != 0:
                raise RuntimeError(f"client.batch in {tree} exited with {r['exit_code']}")
            samples[name].append(r)
            if rep == 0:
                sigs[name] = output_signature(out)
    gz = statistics.median(s["cpu_s"] for s in samples["gzip_dc"]) / n
    res = {
        "machine": machine_info(),
        "shared_machine": True,
        "what": (
            "CPU seconds per scan of `python -m client.batch` (process + bundled Triton "
            "server, server start amortised), medians of interleaved repeats, against "
            "`gzip -dc` of the same files in the same run"
        ),
        "n_scans": n,
        "shape_zyx": None
        if args.scans is not None
        else ([336, 512, 512] if args.real else list(SHAPE)),
        "scans": "real CT on a clinical grid"
        if args.real
        else ("phantoms" if args.scans is None else str(args.scans)),
        "mean_file_bytes": int(sum(f.stat().st_size for f in files) / n),
        "concurrency": args.concurrency,
        "repeats": args.repeats,
        "gzip_dc_cpu_s_per_scan": round(gz, 3),
        "trees": {},
    }
    for name in trees:
        runs = samples[name]
        cpu = statistics.median(r["cpu_s"] for r in runs) / n
        stages = {
            k: round(statistics.median(r["stage_seconds"][k] for r in runs) / n, 4)
            for k in runs[0]["stage_seconds"]
        }
        res["trees"][name] = {
            "path": str(trees[name]),
            "cpu_s_per_scan": round(cpu, 3),
            "cpu_ratio_to_gzip_dc": round(cpu / gz, 2),
            "cpu_s_per_scan_all_repeats": [round(r["cpu_s"] / n, 3) for r in runs],
            "wall_s_median": round(statistics.median(r["wall_s"] for r in runs), 1),
            "stage_wall_s_per_scan_median": stages,
            "max_rss_mib": round(max(r["max_rss_kib"] for r in runs) / 1024, 1),
        }
    if truth:
        first = next(iter(sigs.values()))["rows"]
        ok = sum(first.get(c, {}).get("grade") == g for c, g in truth.items())
        res["grades_correct"] = f"{ok}/{len(truth)}"
    if len(trees) > 1:
        names = list(trees)
        ref = sigs[names[0]]
        res["outputs_identical_to_" + names[0]] = {
            k: {
                "rows": sigs[k]["rows"] == ref["rows"],
                "masks_and_qc_bytes": sigs[k]["files"] == ref["files"],
            }
            for k in names[1:]
        }
    save_result(res, args.out, args.name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
