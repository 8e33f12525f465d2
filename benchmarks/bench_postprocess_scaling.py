"""Benchmark: ``postprocess.assess`` time and peak memory vs voxel count, against the original method.

``python benchmarks/bench_postprocess_scaling.py [--sizes 128,128,128 300,512,512 ...] [--out benchmarks/results]``

The same phantom anatomy (``training.phantoms.make_phantom``, default spacing: the
field of view stays the same, the grid gets finer) at grids from 128^3 (2 M voxels)
to 600 x 512 x 512 (157 M voxels). For each grid, each method runs in a fresh
subprocess on one thread (``OMP_NUM_THREADS=1``, SimpleITK 1 thread) that loads the
volume, resets its peak-RSS counter (``/proc/self/clear_refs``), runs the method and
reports wall and CPU seconds (medians of the repeats) and the peak resident memory above what the loaded
inputs already used. Methods: ``assess`` with 200 cubes per organ (as shipped); the
original project's method (``bench_postprocess.original_method``) with 200 cubes and
with its own 5 cubes. Writes ``results/postprocess_scaling.json``, which
``make_results.py`` plots. The machine may be shared: ratios within one grid are
the robust numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import machine_info, save_result  # noqa: E402

DEFAULT_SIZES = ["128,128,128", "200,256,256", "150,512,512", "300,512,512", "600,512,512"]
METHODS = ("ours_assess_200_cubes", "original_200_cubes", "original_5_cubes")


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(method: str, folder: Path, repeats: int) -> dict:
    """Run one method on the saved volume (in this fresh process) and measure it."""
    import SimpleITK as sitk

    sitk.ProcessObject_SetGlobalDefaultNumberOfThreads(1)
    hu = np.load(folder / "hu.npy")
    labels = np.load(folder / "labels.npy")
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    spacing = tuple(meta["spacing"])
    direction = np.asarray(meta["direction"])
    if method == "ours_assess_200_cubes":
        from postprocess import assess

        def fn():
            return assess(hu, labels, spacing, direction=direction)
    else:
        from benchmarks.bench_postprocess import original_method

        n = 200 if method == "original_200_cubes" else 5

        def fn():
            return original_method(hu, labels, spacing, n_cubes=n)

    rss0 = _status_kb("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset VmHWM (peak RSS) to the current RSS
        reset = True
    except OSError:
        reset = False
    walls, cpus = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    hwm = _status_kb("VmHWM")
    return {
        "s": round(float(np.median(walls)), 4),
        "cpu_s": round(float(np.median(cpus)), 4),
        "peak_extra_mb": round((hwm - rss0) / 1024, 1) if reset else None,
        "inputs_rss_mb": round(rss0 / 1024, 1),
    }


def code_version(path: str = "postprocess/") -> str:
    """Commit of ``path`` and whether the working tree differs from it (shared tree)."""
    try:
        h = subprocess.run(
            ["git", "log", "-1", "--format=%h", "--", path],
            cwd=ROOT,
            capture_output=True,
            encoding="utf-8",
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "--", path], cwd=ROOT, timeout=10)
        return f"{h}{' + uncommitted changes' if dirty.returncode else ''}"
    except (OSError, subprocess.SubprocessError):
        return "unknown"  # fmt: skip


def add_speedups(row: dict) -> dict:
    """Original method's time over ours, by wall time and by CPU time (steadier when shared)."""
    for m in METHODS[1:]:
        for suffix, tag in (("_s", ""), ("_cpu", "_cpu")):
            ours, theirs = row.get(f"{METHODS[0]}{suffix}"), row.get(f"{m}{suffix}")
            if ours and theirs:
                row[f"speedup{tag}_vs_{m}"] = round(theirs / ours, 1)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=DEFAULT_SIZES, help="z,y,x grids")
    ap.add_argument("--repeats", type=int, default=3, help="repeats of ours")
    ap.add_argument(
        "--original-repeats", type=int, default=3, help="repeats of the original method"
    )
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.folder, args.repeats)))
        return 0

    import scipy
    import SimpleITK as sitk

    from training.phantoms import make_phantom

    rows = []
    with tempfile.TemporaryDirectory(prefix="hs_pp_scaling_") as tmp:
        for size in args.sizes:
            shape = tuple(int(v) for v in size.split(","))
            p = make_phantom(0, shape=shape, grade="mild")
            folder = Path(tmp)
            np.save(folder / "hu.npy", p.hu)
            np.save(folder / "labels.npy", p.labels)
            (folder / "meta.json").write_text(
                json.dumps(
                    {"spacing": list(p.spacing), "direction": np.asarray(p.direction).tolist()}
                )
            )
            row = {
                "grid": list(shape),
                "voxels": int(np.prod(shape)),
                "spacing_mm": [round(float(s), 3) for s in p.spacing],
                "liver_voxels": int((p.labels == 1).sum()),
                "spleen_voxels": int((p.labels == 2).sum()),
            }
            del p
            for method in METHODS:
                reps = args.repeats if method.startswith("ours") else args.original_repeats
                out = subprocess.run(
                    [sys.executable, __file__, "--child", method, "--folder", str(folder),
                     "--repeats", str(reps)],
                    capture_output=True, encoding="utf-8", check=False, cwd=ROOT,
                )  # fmt: skip
                if out.returncode != 0:
                    row[f"{method}_error"] = out.stderr.strip().splitlines()[-1][:300]
                    continue
                r = json.loads(out.stdout.strip().splitlines()[-1])
                row[f"{method}_s"] = r["s"]
                row[f"{method}_cpu"] = r["cpu_s"]
                row[f"{method}_peak_mb"] = r["peak_extra_mb"]
            add_speedups(row)
            print(json.dumps(row), flush=True)
            rows.append(row)
    res = {
        "machine": {
            **machine_info(),
            "threads_used": 1,
            "numpy": np.__version__,
            "scipy": scipy.__version__,
            "SimpleITK": sitk.Version_VersionString(),
        },
        "shared_machine": True,
        "postprocess_version": code_version(),
        "what": (
            "same phantom anatomy at finer grids; each method in a fresh subprocess, one thread; assess as shipped (segmentation gate and contrast evidence on); "
            f"*_s wall seconds, *_cpu CPU seconds (medians of {args.repeats} repeats for ours, "
            f"{args.original_repeats} for the original), *_peak_mb peak RSS above the loaded inputs"
        ),
        "scaling": rows,
    }
    save_result(res, args.out, "postprocess_scaling.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
