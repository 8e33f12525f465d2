"""QC picture and report.html: the new code against the code before issue 11, same run.

1. QC picture time on the real CT (122 x 101 x 112) and on a 512 x 512 x 300 phantom:
   the previous ``qc_png`` (two panels, no cubes, bitmap font) against the new one
   (three panels, cubes, legend, caption in Roboto), median of repeats.
2. A 10,000-row report: write time and file size, then load time and memory in headless
   chromium (Debian's; ``scripts/install_chromium.sh``) for the previous static report
   and the new one. Every row has a QC thumbnail (hard links to one real QC picture, so
   each is a separate URL the browser must fetch and decode): the new picture of the
   real CT for both, and, as shipped before, the previous report with the previous
   (smaller) picture. Load time: wall time of
   ``chromium --headless --dump-dom`` (it returns after the load event, so every eagerly
   loaded image is in), minus the same command on an empty page. Memory: peak summed
   PSS (and RSS) of the chromium process tree, polled every 20 ms from /proc.

The previous code is read from git (``BASELINE_COMMIT``), so both run on this machine in
this process. Result: ``benchmarks/results/report.json``.

Usage: ``python benchmarks/bench_report.py [--rows 10000] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import machine_info, save_result  # noqa: E402

BASELINE_COMMIT = "8520dea"  # last commit with the previous client/outputs/report.py


def _baseline_module():
    src = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{BASELINE_COMMIT}:client/outputs/report.py"],
        capture_output=True,
        encoding="utf-8",
        check=True,
    ).stdout
    tmp = Path(tempfile.mkdtemp()) / "report_before.py"
    tmp.write_text(src)
    spec = importlib.util.spec_from_file_location("client._report_before", tmp)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _median_time(fn, repeats):
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return round(statistics.median(ts), 4)


def bench_qc(old, repeats: int, tmp: Path) -> dict:
    from client.outputs.qc import qc_png
    from client.reading.io import read_label_map, read_scan
    from postprocess import assess
    from training.phantoms import make_phantom

    data = ROOT.parent / "shared" / "data" / "totalseg_example"
    ct = read_scan(data / "ct.nii.gz")
    lab = read_label_map(data / "labels.nii.gz", ct)
    p = make_phantom(1, shape=(300, 512, 512))
    cases = {
        "real_ct_122x101x112": (ct.array, lab, ct.spacing, ct.direction),
        "phantom_512x512x300": (p.hu, np.asarray(p.labels), p.spacing, p.direction),
    }
    out = {}
    for name, (hu, labels, spacing, direction) in cases.items():
        a = assess(hu, labels, spacing)
        row = {"case_id": name, "status": "ok", **a.to_row()}
        args = (hu, labels, spacing)
        t_old = _median_time(
            lambda args=args, d=direction, n=name: old.qc_png(*args, tmp / "old.png", n, d),
            repeats,
        )
        t_new = _median_time(
            lambda args=args, d=direction, row=row, a=a: qc_png(
                *args, tmp / "new.png", direction=d, row=row, assessment=a
            ),
            repeats,
        )
        out[name] = {
            "before_s": t_old,
            "after_s": t_new,
            "before_png_kb": round((tmp / "old.png").stat().st_size / 1024, 1),
            "after_png_kb": round((tmp / "new.png").stat().st_size / 1024, 1),
        }
    return out


def _rows(n: int, seed: int = 0) -> list[dict]:
    from client.core import contract

    rng = np.random.default_rng(seed)
    grades = ("normal", "mild", "moderate", "severe")
    rows = []
    for k in range(n):
        cid = f"site{k % 7}__patient{k:05d}__ct" + (" #%" if k % 997 == 0 else "")
        ratio = float(rng.normal(1.15, 0.25))
        status = "error" if k % 50 == 0 else ("flagged" if k % 9 == 0 else "ok")
        r = {c: None for c in getattr(contract, "RESULT_COLUMNS", ())}
        r.update(case_id=cid, source=f"/archive/{cid}.nii.gz", status=status, seconds=1.234)
        if status == "error":
            r.update(grade="indeterminate", error=f"/archive/{cid}.nii.gz: truncated file")
        else:
            g = (
                "normal"
                if ratio > 1
                else "mild"
                if ratio > 0.7
                else "moderate"
                if ratio > 0.5
                else "severe"
            )
            assert g in grades
            r.update(
                grade=g,
                ratio=round(ratio, 4),
                ratio_ci_low=round(ratio - 0.03, 4),
                ratio_ci_high=round(ratio + 0.03, 4),
                ratio_mean_pairwise=round(ratio + 0.02, 4),
                liver_hu=round(float(rng.normal(50, 10)), 2),
                spleen_hu=round(float(rng.normal(45, 4)), 2),
                liver_volume_ml=round(float(rng.normal(1600, 300)), 1),
                spleen_volume_ml=round(float(rng.normal(220, 60)), 1),
                n_pairs=40000,
                flags="liver_cut_by_edge" if status == "flagged" else "",
                error="",
            )
        rows.append(r)
    return rows


def _tree_memory(root_pid: int) -> tuple[int, int]:
    """Summed (PSS, RSS) in bytes of ``root_pid`` and its descendants."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(d))
    todo, pss, rss = [root_pid], 0, 0
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            with open(f"/proc/{pid}/smaps_rollup") as fh:
                for line in fh:
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1]) * 1024
                    elif line.startswith("Rss:"):
                        rss += int(line.split()[1]) * 1024
        except OSError:
            pass
    return pss, rss


def chromium_load(binary: str, url: str, timeout: float = 300.0) -> dict:
    """Wall time and peak memory of ``chromium --headless --dump-dom url``."""
    cmd = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--window-size=1280,900",
        "--user-data-dir=" + tempfile.mkdtemp(prefix="chromium-bench-"),
        "--dump-dom",
        url,
    ]
    peak = [0, 0]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    done = threading.Event()

    def poll():
        while not done.is_set():
            pss, rss = _tree_memory(proc.pid)
            peak[0], peak[1] = max(peak[0], pss), max(peak[1], rss)
            time.sleep(0.02)

    th = threading.Thread(target=poll, daemon=True)
    th.start()
    dom, _ = proc.communicate(timeout=timeout)
    wall = time.perf_counter() - t0
    done.set()
    th.join()
    return {
        "wall_s": round(wall, 3),
        "peak_pss_mb": round(peak[0] / 2**20, 1),
        "peak_rss_mb": round(peak[1] / 2**20, 1),
        "dom_kb": round(len(dom) / 1024, 1),
        "rc": proc.returncode,
    }


def bench_report(old, n: int, repeats: int, tmp: Path, binary: str | None) -> dict:
    from client.outputs.report import write_report

    rows = _rows(n)
    qc_png = tmp / "one_qc.png"
    if not qc_png.exists():
        raise SystemExit("QC picture missing: run bench_qc first")
    res: dict = {"rows": n}
    runs = (
        ("before", old.write_report, qc_png),
        ("after", write_report, qc_png),
        # The previous report with the previous (smaller) QC pictures, as it shipped.
        ("before_with_previous_qc_pictures", old.write_report, tmp / "old_qc.png"),
    )
    for name, fn, thumb in runs:
        out = tmp / name
        (out / "qc").mkdir(parents=True, exist_ok=True)
        for r in rows:
            dst = out / "qc" / f"{r['case_id']}.png"
            if not dst.exists():
                os.link(thumb, dst)
        t = time.perf_counter()
        path = fn(rows, out, {"model": {"name": "bench"}, "timings": {}})
        res[name] = {
            "write_s": round(time.perf_counter() - t, 3),
            "html_mb": round(path.stat().st_size / 2**20, 2),
        }
        if binary:
            loads = [chromium_load(binary, path.resolve().as_uri()) for _ in range(repeats)]
            res[name]["chromium"] = min(loads, key=lambda d: d["wall_s"])
            res[name]["chromium_all_wall_s"] = [d["wall_s"] for d in loads]
    if binary:
        blank = tmp / "blank.html"
        blank.write_text("<!doctype html><title>x</title>")
        loads = [chromium_load(binary, blank.resolve().as_uri()) for _ in range(repeats)]
        res["empty_page"] = min(loads, key=lambda d: d["wall_s"])
        for name, _, _ in runs:
            c = res[name]["chromium"]
            c["load_s_minus_empty"] = round(c["wall_s"] - res["empty_page"]["wall_s"], 3)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    import shutil

    import PIL

    from client.outputs.qc import qc_png

    binary = next(
        (shutil.which(b) for b in ("chromium", "chromium-browser") if shutil.which(b)), None
    )
    version = (
        subprocess.run([binary, "--version"], capture_output=True, encoding="utf-8").stdout.strip()
        if binary
        else None
    )
    old = _baseline_module()
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-report-") as d:
        tmp = Path(d)
        qc = bench_qc(old, args.repeats, tmp)
        # One real QC picture (the new one, real CT) as every row's thumbnail.
        from client.reading.io import read_label_map, read_scan

        data = ROOT.parent / "shared" / "data" / "totalseg_example"
        ct = read_scan(data / "ct.nii.gz")
        lab = read_label_map(data / "labels.nii.gz", ct)
        qc_png(ct.array, lab, ct.spacing, tmp / "one_qc.png", "x", ct.direction)
        old.qc_png(ct.array, lab, ct.spacing, tmp / "old_qc.png", "x", ct.direction)
        rep = bench_report(old, args.rows, args.repeats, tmp, binary)
    res = {
        "benchmark": "report",
        "baseline": f"client/outputs/report.py at {BASELINE_COMMIT}",
        "machine": machine_info(numpy=np.__version__, pillow=PIL.__version__, chromium=version),
        # Other jobs share this machine: its load average says how noisy the times are.
        "load_average_1_5_15_min": {"start": load_start, "end": os.getloadavg()},
        "qc_picture": qc,
        "report": rep,
    }
    save_result(res, args.out, "report.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
