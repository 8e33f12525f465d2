"""Benchmark: ``postprocess.assess`` vs the original project's measurement method.

``python benchmarks/bench_postprocess.py [--shape 300 512 512] [--seeds 20] [--repeats 5] [--out benchmarks/results]``

Speed, on one thread, on every volume of ``volumes`` (median of ``--repeats``, CPU and
wall seconds, the methods interleaved so that load drift hits them alike):

* ``phantom_300x512x512``: a 512 x 512 x 300 phantom, 0.75 x 0.75 x 1 mm, int16;
* ``large_liver``: 512 x 512 x 300 at 0.7 x 0.7 x 1 mm with a 2.4 L liver and a
  0.37 L spleen, float32 HU (the issue-23 case: a user's volume loaded as floats);
* ``real_ct``: the shared real CT (``totalseg_example``) with its reference masks.

On each: ``ours`` (``postprocess.assess`` as shipped), ``before`` (the same call with
the implementations issue 23 replaced, ``benchmarks/_postprocess_before.py``) and the
original method with 5 and 200 cubes. ``equality`` checks that ``ours`` and ``before``
give identical results (every row column, flags, notes, evidence, cube corners and
means) on the speed volumes, the ``--seeds`` accuracy phantoms and the real CT over
the same seeds.

Before issue 23 (kept for the design notes below), the single volume was:

* ours: ``postprocess.assess`` (largest components, valid cube positions by a
  separable minimum filter over the organ's bounding box, 200 cubes per organ
  gathered at once, rejection, bootstrap CI, segmentation gate and contrast
  evidence; also timed with the gate and the contrast evidence switched off);
* baseline: the original method re-implemented as it worked - SimpleITK
  ConnectedComponent + RelabelComponent to keep the largest piece, a
  LabelIntensityStatistics filter per organ, cubes placed at random voxels and
  kept when fully inside, cut and averaged one by one in Python, every pair
  formed with ``itertools.product``; measured with the same number of cubes (200)
  and with the original's 5 cubes.

Design alternatives measured in the same run (issue 2: "measure which design is
fastest"): valid positions by separable min filter vs a summed-volume table;
cube statistics by gathering the sampled cubes vs float64 summed-volume tables
of HU and HU^2 over the bounding box.

Accuracy over ``--seeds`` phantoms with known truth (true masks given to both
methods), and over the same seeds on the real CT with its reference masks
(against the mean-HU ratio of the eroded masks).
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import machine_info, save_result  # noqa: E402


# --- the original method ------------------------------------------------------------------
def original_method(
    hu: np.ndarray, labels: np.ndarray, spacing, n_cubes=5, cube_mm=10.0, seed=0, max_tries=100_000
):
    """The original project's measurement (SimpleITK statistics, Python cube loop, product pairing)."""
    import SimpleITK as sitk

    rng = np.random.default_rng(seed)
    img = sitk.GetImageFromArray(hu.astype(np.int16))
    img.SetSpacing(tuple(float(s) for s in spacing[::-1]))
    means = {}
    for organ in (1, 2):
        mask = sitk.GetImageFromArray((labels == organ).astype(np.uint8))
        mask.CopyInformation(img)
        cc = sitk.RelabelComponent(sitk.ConnectedComponent(mask, True), sortByObjectSize=True)
        largest = sitk.Equal(cc, 1)
        stats = sitk.LabelIntensityStatisticsImageFilter()
        stats.Execute(sitk.Cast(largest, sitk.sitkUInt8), img)
        if not stats.HasLabel(1):
            means[organ] = []
            continue
        x0, y0, z0, sx, sy, sz = stats.GetBoundingBox(1)
        arr = sitk.GetArrayFromImage(largest).astype(bool)
        size = [max(1, int(round(cube_mm / s))) for s in spacing]
        found = []
        tries = 0
        while len(found) < n_cubes and tries < max_tries:
            tries += 1
            z = int(rng.integers(z0, z0 + sz))
            y = int(rng.integers(y0, y0 + sy))
            x = int(rng.integers(x0, x0 + sx))
            sl = (slice(z, z + size[0]), slice(y, y + size[1]), slice(x, x + size[2]))
            cube = arr[sl]
            if cube.shape == tuple(size) and cube.all():
                found.append(float(hu[sl].mean()))
        means[organ] = found
    pairs = [lm / sm for lm, sm in itertools.product(means[1], means[2]) if sm != 0]
    return float(np.mean(pairs)) if pairs else float("nan")


# --- design alternatives --------------------------------------------------------------------
def positions_sat(mask: np.ndarray, size) -> np.ndarray:
    """Valid cube corners by a summed-volume table of the mask (int32)."""
    s = np.zeros(tuple(n + 1 for n in mask.shape), np.int32)
    s[1:, 1:, 1:] = mask.astype(np.int32).cumsum(0).cumsum(1).cumsum(2)
    a, b, c = size
    box = (
        s[a:, b:, c:]
        - s[:-a, b:, c:]
        - s[a:, :-b, c:]
        - s[a:, b:, :-c]
        + s[:-a, :-b, c:]
        + s[:-a, b:, :-c]
        + s[a:, :-b, :-c]
        - s[:-a, :-b, :-c]
    )
    return np.argwhere(box == a * b * c)


def stats_sat(hu: np.ndarray, corners: np.ndarray, size):
    """Cube mean and SD by float64 summed-volume tables of HU and HU^2."""
    out = []
    for v in (hu.astype(np.float64), hu.astype(np.float64) ** 2):
        s = np.zeros(tuple(n + 1 for n in v.shape))
        s[1:, 1:, 1:] = v.cumsum(0).cumsum(1).cumsum(2)
        z, y, x = corners.T
        a, b, c = size
        out.append(
            (
                s[z + a, y + b, x + c]
                - s[z, y + b, x + c]
                - s[z + a, y, x + c]
                - s[z + a, y + b, x]
                + s[z, y, x + c]
                + s[z, y + b, x]
                + s[z + a, y, x]
                - s[z, y, x]
            )
            / (a * b * c)
        )
    mean = out[0]
    return mean, np.sqrt(np.maximum(out[1] - mean**2, 0))


def timed(fn, repeats=3):
    ts = []
    res = None
    for _ in range(repeats):
        t = time.perf_counter()
        res = fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts)), res


def eroded_ratio(hu, labels, spacing):
    from scipy import ndimage as ndi

    r = [max(1, int(round(5.0 / s))) for s in spacing]
    st = np.ones([2 * k + 1 for k in r], bool)
    li = ndi.binary_erosion(labels == 1, st)
    sp = ndi.binary_erosion(labels == 2, st)
    return float(hu[li].mean() / hu[sp].mean())


def large_liver_case():
    """512 x 512 x 300, 0.7 x 0.7 x 1 mm, liver 2.39 L, spleen 0.37 L, float32 HU.

    The phantom is drawn at 0.77 x the voxel size (organs of normal size in mm, then the
    grid is declared at 0.7 x 0.7 x 1 mm, which scales every organ by 1 / 0.77^3 = 2.2).
    """
    from training.phantoms import make_phantom

    f = 0.77
    p = make_phantom(1, shape=(300, 512, 512), spacing=(1.0 * f, 0.7 * f, 0.7 * f), grade="mild")
    return p.hu.astype(np.float32), p.labels, (1.0, 0.7, 0.7), p.direction


def _comparable(a) -> dict:
    """Everything of an Assessment that must not change: the row, flags, notes, evidence,
    the cubes (corners, kept, means, SDs) of both organs."""
    import json

    out = {"row": a.to_row(), "flags": list(a.flags), "notes": list(a.notes),
           "evidence": json.loads(json.dumps(a.evidence, default=str))}  # fmt: skip
    for organ in (a.liver, a.spleen):
        out[organ.name] = [organ.corners.tolist(), organ.kept.tolist(), organ.means.tolist(),
                           organ.sds.tolist(), organ.n_valid_positions, organ.volume_ml]  # fmt: skip
    return out


def speed_on(name, hu, labels, spacing, direction, repeats: int) -> dict:
    """ours / before / original (5 and 200 cubes) on one volume, interleaved, medians."""
    from benchmarks._postprocess_before import before
    from postprocess import assess

    def ours():
        return assess(hu, labels, spacing, direction=direction)

    def old():
        with before():
            return assess(hu, labels, spacing, direction=direction)

    runs = {"ours": ours, "before": old,
            "original_5_cubes": lambda: original_method(hu, labels, spacing, n_cubes=5),
            "original_200_cubes": lambda: original_method(hu, labels, spacing, n_cubes=200)}  # fmt: skip
    ours()  # warm-up (imports, first-touch of the pages)
    wall = {k: [] for k in runs}
    cpu = {k: [] for k in runs}
    results = {}
    for _ in range(repeats):
        for k, fn in runs.items():
            w, c = time.perf_counter(), time.process_time()
            results[k] = fn()
            cpu[k].append(time.process_time() - c)
            wall[k].append(time.perf_counter() - w)
    med = lambda v: round(float(np.median(v)), 4)  # noqa: E731
    entry = {"volume": name, "grid": list(hu.shape), "dtype": str(hu.dtype),
             "spacing_mm": list(spacing),
             "liver_ml": round(float((labels == 1).sum()) * float(np.prod(spacing)) / 1000, 1),
             "spleen_ml": round(float((labels == 2).sum()) * float(np.prod(spacing)) / 1000, 1),
             "cpu_s": {k: med(v) for k, v in cpu.items()},
             "wall_s": {k: med(v) for k, v in wall.items()}}  # fmt: skip
    c = entry["cpu_s"]
    entry["speedup_vs_original_5_cubes"] = round(c["original_5_cubes"] / c["ours"], 1)
    entry["speedup_vs_original_200_cubes"] = round(c["original_200_cubes"] / c["ours"], 1)
    entry["speedup_vs_before"] = round(c["before"] / c["ours"], 2)
    entry["identical_to_before"] = _comparable(results["ours"]) == _comparable(results["before"])
    entry["ratio"] = results["ours"].to_row()["ratio"]
    entry["grade"] = results["ours"].grade
    return entry


def equality(cases) -> dict:
    """``ours`` vs ``before`` on every case: identical comparables, else the differing cases."""
    from benchmarks._postprocess_before import before
    from postprocess import assess

    same, differ = 0, []
    for name, args, kwargs in cases:
        a = _comparable(assess(*args, **kwargs))
        with before():
            b = _comparable(assess(*args, **kwargs))
        if a == b:
            same += 1
        else:
            differ.append(name)
    return {"cases": same + len(differ), "identical": same, "differing": differ}


def main(argv=None) -> int:
    import scipy
    import SimpleITK as sitk

    from postprocess import (
        AssessConfig,
        assess,
        bounding_box,
        cube_size_voxels,
        cube_stats,
        largest_connected_component,
        sample_cubes,
        valid_cube_positions,
    )
    from training.phantoms import make_phantom

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=3, default=(300, 512, 512))
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats per method and volume")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    sitk.ProcessObject_SetGlobalDefaultNumberOfThreads(1)

    p = make_phantom(0, shape=tuple(args.shape), spacing=(1.0, 0.75, 0.75), grade="mild")
    hu, labels, spacing = p.hu, p.labels, p.spacing
    res: dict = {
        "machine": {
            **machine_info(),
            "threads_used": 1,
            "numpy": np.__version__,
            "scipy": scipy.__version__,
            "SimpleITK": sitk.Version_VersionString(),
        },
        "grid": list(hu.shape),
        "spacing_mm": list(spacing),
        "liver_voxels": int((labels == 1).sum()),
        "spleen_voxels": int((labels == 2).sum()),
    }
    from postprocess.config import ContrastConfig, GateConfig

    no_checks = AssessConfig(gate=GateConfig(enabled=False), contrast=ContrastConfig(enabled=False))
    t_ours, a = timed(lambda: assess(hu, labels, spacing, direction=p.direction), repeats=5)
    t_plain, _ = timed(
        lambda: assess(hu, labels, spacing, no_checks, direction=p.direction), repeats=5
    )
    t_orig200, _ = timed(lambda: original_method(hu, labels, spacing, n_cubes=200), repeats=1)
    t_orig5, _ = timed(lambda: original_method(hu, labels, spacing, n_cubes=5), repeats=1)
    res["speed_s"] = {
        "ours_assess_200_cubes": round(t_ours, 3),
        "ours_assess_without_gate_and_contrast": round(t_plain, 3),
        "original_200_cubes": round(t_orig200, 3),
        "original_5_cubes": round(t_orig5, 3),
    }
    res["speedup_vs_original_same_cubes"] = round(t_orig200 / t_ours, 1)
    res["speedup_vs_original_5_cubes"] = round(t_orig5 / t_ours, 1)

    # Issue 23: every volume, ours vs before vs the original, CPU seconds, same run.
    volumes = [speed_on("phantom_300x512x512", hu, labels, spacing, p.direction, args.repeats)]
    volumes.append(speed_on("large_liver", *large_liver_case(), args.repeats))
    real = ROOT.parent / "shared" / "data" / "totalseg_example"
    if real.exists():
        from client.reading.io import read_label_map, read_scan

        ct = read_scan(real / "ct.nii.gz")
        lab = read_label_map(real / "labels.nii.gz", ct)
        volumes.append(speed_on("real_ct", ct.array, lab, ct.spacing, ct.direction, args.repeats))
    res["volumes"] = volumes
    res["volumes_what"] = (
        "CPU seconds, median of the repeats, one thread, methods interleaved; speedups are "
        "original / ours in the same run; 'before' = assess with the implementations issue 23 "
        "replaced (benchmarks/_postprocess_before.py)"
    )

    # Design alternatives on the liver's bounding box.
    comp = largest_connected_component(labels == 1)
    bb = bounding_box(comp)
    sub = comp[bb]
    size = cube_size_voxels(10.0, spacing)
    t_minf, pos = timed(lambda: valid_cube_positions(comp, size))
    t_sat, pos_sat = timed(lambda: positions_sat(sub, size))
    corners = sample_cubes(pos, 200, np.random.default_rng(0))
    t_gather, (m1, _) = timed(lambda: cube_stats(hu, corners, size))
    t_statsat, (m2, _) = timed(lambda: stats_sat(hu, corners, size), repeats=1)
    res["design_s"] = {
        "valid_positions_separable_min_filter": round(t_minf, 4),
        "valid_positions_summed_volume_table_bbox": round(t_sat, 4),
        "cube_stats_gather_200": round(t_gather, 5),
        "cube_stats_float64_tables_whole_grid": round(t_statsat, 4),
        "n_valid_positions": [int(pos.shape[0]), int(pos_sat.shape[0])],
        "gather_vs_table_max_abs_diff_hu": float(np.max(np.abs(np.asarray(m1) - m2))),
    }

    # Accuracy over seeds with true masks.
    err_ours, err_orig, err_orig_pair200 = [], [], []
    for seed in range(args.seeds):
        ph = make_phantom(
            1000 + seed,
            shape=(80, 192, 192),
            grade=("normal", "mild", "moderate", "severe")[seed % 4],
        )
        truth = ph.truth["ratio"]
        err_ours.append(
            abs(assess(ph.hu, ph.labels, ph.spacing, AssessConfig(seed=seed)).ratio - truth)
        )
        err_orig.append(abs(original_method(ph.hu, ph.labels, ph.spacing, 5, seed=seed) - truth))
        err_orig_pair200.append(
            abs(original_method(ph.hu, ph.labels, ph.spacing, 200, seed=seed) - truth)
        )
    real = ROOT.parent / "shared" / "data" / "totalseg_example"
    real_res = {}
    if real.exists():
        from client.reading.io import read_label_map, read_scan

        ct = read_scan(real / "ct.nii.gz")
        lab = read_label_map(real / "labels.nii.gz", ct)
        ref = eroded_ratio(ct.array, lab, ct.spacing)
        ours = [
            assess(ct.array, lab, ct.spacing, AssessConfig(seed=s)).ratio for s in range(args.seeds)
        ]
        orig = [original_method(ct.array, lab, ct.spacing, 5, seed=s) for s in range(args.seeds)]
        real_res = {
            "eroded_mask_ratio": round(ref, 4),
            "ours_mean_abs_err": round(float(np.mean(np.abs(np.array(ours) - ref))), 4),
            "ours_sd": round(float(np.std(ours)), 4),
            "original_5_cubes_mean_abs_err": round(float(np.mean(np.abs(np.array(orig) - ref))), 4),
            "original_5_cubes_sd": round(float(np.std(orig)), 4),
        }
    eq_cases = []
    for seed in range(args.seeds):
        ph = make_phantom(1000 + seed, shape=(80, 192, 192),
                          grade=("normal", "mild", "moderate", "severe")[seed % 4])  # fmt: skip
        eq_cases.append((f"phantom_{1000 + seed}", (ph.hu, ph.labels, ph.spacing),
                         {"config": AssessConfig(seed=seed), "direction": ph.direction}))  # fmt: skip
    if real.exists():
        for s in range(args.seeds):
            eq_cases.append((f"real_ct_seed_{s}", (ct.array, lab, ct.spacing),
                             {"config": AssessConfig(seed=s), "direction": ct.direction}))  # fmt: skip
    res["equality"] = equality(eq_cases)
    res["equality"]["speed_volumes_identical"] = all(v["identical_to_before"] for v in volumes)
    res["accuracy_phantoms"] = {
        "seeds": args.seeds,
        "ours_mean_abs_err": round(float(np.mean(err_ours)), 4),
        "original_5_cubes_mean_abs_err": round(float(np.mean(err_orig)), 4),
        "original_200_cubes_mean_of_pairwise_mean_abs_err": round(
            float(np.mean(err_orig_pair200)), 4
        ),
    }
    res["accuracy_real_ct"] = real_res
    save_result(res, args.out, "postprocess.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
