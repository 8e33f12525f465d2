"""One-command device check for the first GPU machine: ``python -m benchmarks.gpu_check --out FILE.json``.

Runs in under 5 minutes on a GPU and writes one JSON. Every part is attempted; what
is missing on the machine (no CuPy, no CUDA provider, no driver, no ``trtexec``) is
reported as ``unavailable`` with the reason, never fatal. A part that ran and found
a fault (rows that differ, a session that fell back to the CPU, a failing test) is
``failed``. Exit status: 0 unless some part ``failed`` (1); 2 on usage errors.

Parts (``sections`` in the JSON, each with ``status`` ok | unavailable | failed):

* ``device``: driver version, GPU name, compute capability, memory (``nvidia-smi``),
  whether TensorRT 10's floor (7.0) is met, ``trtexec`` on the path, package versions.
* ``cupy_kernel``: CuPy compiles and runs a kernel on the device
  (``postprocess._xp.gpu_status``: the same check ``--device gpu`` makes).
* ``pytest_gpu``: ``pytest -m gpu`` (the CuPy parity tests), its summary line.
* ``measurement``: ``postprocess.assess`` on a 200 x 512 x 512 phantom with NumPy and
  with CuPy: identical rows (every column), CPU time, CuPy time with an empty kernel
  cache (cold: a fresh process and ``CUPY_CACHE_DIR``), again in that process (warm in
  memory) and in a second process (warm on disk), and peak GPU memory per voxel (CuPy
  pool high-water mark) against ``client.serving.gpu.BYTES_PER_VOXEL``.
* ``onnx_cuda``: the shipped ONNX on ONNX Runtime's CUDA provider vs its CPU provider
  on the same 8 windows: label and confidence agreement, latency at batch 1 and 8, and
  the silent-fallback check of the bundled server (``1/model.py`` ``open_session``).

On a CPU-only machine it is a dry run: the GPU parts say why they are unavailable
(``tests/test_gpu_check.py`` runs it that way, with a smaller phantom).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
from client.core.paths import SHIPPED_ONNX  # noqa: E402

MODEL_DIR = SHIPPED_ONNX.parent
TRTEXEC_DEFAULT = "/usr/src/tensorrt/bin/trtexec"
SHAPE = (200, 512, 512)
SPACING = (1.0, 0.75, 0.75)
PACKAGES = ("numpy", "scipy", "cupy", "onnxruntime", "tritonclient", "SimpleITK", "tensorrt")
TRT10_MIN_CC = 7.0

OK, UNAVAILABLE, FAILED = "ok", "unavailable", "failed"


def _section(fn, *args, **kwargs) -> dict:
    """Run one part; an unexpected exception is a ``failed`` part, never a crash."""
    t = time.perf_counter()
    try:
        out = fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - reported in the JSON, the other parts still run
        out = {"status": FAILED, "reason": f"{type(exc).__name__}: {exc}"}
    out["seconds"] = round(time.perf_counter() - t, 2)
    return out


# --- device ---------------------------------------------------------------------------------
def package_versions() -> dict:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = getattr(importlib.import_module(name), "__version__", "installed")
        except Exception as exc:  # noqa: BLE001 - missing or broken: say which
            out[name] = None if isinstance(exc, ImportError) else f"broken: {exc}"
    return out


def nvidia_smi(run=subprocess.run) -> list[dict] | str:
    """GPUs as nvidia-smi reports them, or why it could not."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return "nvidia-smi not on PATH (no NVIDIA driver, or a container started without the GPU)"
    q = "index,name,compute_cap,driver_version,memory.total,memory.free"
    try:
        r = run([exe, f"--query-gpu={q}", "--format=csv,noheader,nounits"], capture_output=True,
                encoding="utf-8", timeout=30)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"nvidia-smi failed: {exc}"
    if r.returncode != 0:
        return f"nvidia-smi exit {r.returncode}: {(r.stderr or r.stdout).strip()[:300]}"
    gpus = []
    for line in r.stdout.strip().splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) < 6:
            continue
        gpus.append({"index": cells[0], "name": cells[1], "compute_capability": cells[2],
                     "driver": cells[3], "memory_total_mib": cells[4],
                     "memory_free_mib": cells[5]})  # fmt: skip
    return gpus


def device_section(run=subprocess.run) -> dict:
    gpus = nvidia_smi(run)
    trtexec = shutil.which("trtexec") or (
        TRTEXEC_DEFAULT if Path(TRTEXEC_DEFAULT).exists() else None
    )
    out = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "packages": package_versions(),
        "trtexec": trtexec,
        "trtexec_note": None if trtexec else "not on PATH (expected outside NVIDIA's containers)",
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }
    if isinstance(gpus, str):
        return {"status": UNAVAILABLE, "reason": gpus, **out}
    out["gpus"] = gpus
    floors = []
    for g in gpus:
        try:
            cc = float(g["compute_capability"])
        except ValueError:
            continue
        g["tensorrt10_supported"] = cc >= TRT10_MIN_CC
        if cc < TRT10_MIN_CC:
            floors.append(f"{g['name']} (compute capability {cc}) is below TensorRT 10's 7.0")
    if floors:
        return {"status": FAILED, "reason": "; ".join(floors), **out}
    return {"status": OK, **out}


# --- CuPy ------------------------------------------------------------------------------------
def cupy_section() -> dict:
    from postprocess._xp import gpu_status

    t = time.perf_counter()
    ok, why = gpu_status()
    if ok:
        return {"status": OK, "detail": why, "compile_and_run_s": round(time.perf_counter() - t, 3)}
    # No CuPy / no device: unavailable. CuPy and a device present but the kernel fails: failed.
    missing = ("not installed", "no CUDA driver or device", "sees no CUDA device")
    return {"status": UNAVAILABLE if any(m in why for m in missing) else FAILED, "reason": why}


def pytest_section(gpu_ok: bool, timeout_s: float) -> dict:
    if not gpu_ok:
        return {"status": UNAVAILABLE, "reason": "no usable GPU (see cupy_kernel): not run"}
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
           "tests/test_xp_parity.py", "tests/test_gpu_slots.py"]  # fmt: skip
    try:
        r = subprocess.run(cmd, cwd=str(ROOT), capture_output=True, encoding="utf-8",
                           timeout=timeout_s)  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"status": FAILED, "reason": f"pytest -m gpu did not finish in {timeout_s:.0f} s"}
    lines = [ln for ln in r.stdout.strip().splitlines() if ln.strip()]
    summary = lines[-1] if lines else ""
    status = OK if r.returncode == 0 else FAILED
    if r.returncode == 5:  # nothing collected
        status = FAILED
    return {"status": status, "returncode": r.returncode, "summary": summary,
            "command": " ".join(cmd[1:]), "tail": "\n".join(lines[-15:]) if status != OK else ""}  # fmt: skip


# --- measurement: NumPy vs CuPy on the same phantom --------------------------------------------
def make_case(shape):
    from training.phantoms import make_phantom

    p = make_phantom(7, shape=tuple(shape), spacing=SPACING, grade="mild")
    return p


def _row(a) -> dict:
    return json.loads(json.dumps(a.to_row(), default=str))


CUPY_CHILD = r"""
import json, sys, time
import numpy as np
sys.path.insert(0, sys.argv[1])
import cupy
from benchmarks.gpu_check import make_case, _row
from postprocess import assess
p = make_case(json.loads(sys.argv[2]))
pool = cupy.get_default_memory_pool()
out = {"runs": []}
for i in range(2):
    pool.free_all_blocks()
    hu, lab = cupy.asarray(p.hu), cupy.asarray(p.labels)
    base = pool.total_bytes()
    cupy.cuda.Device().synchronize()
    t = time.perf_counter()
    a = assess(hu, lab, p.spacing, direction=p.direction)
    cupy.cuda.Device().synchronize()
    out["runs"].append({"seconds": time.perf_counter() - t,
                        "pool_peak_bytes_above_inputs": int(pool.total_bytes() - base),
                        "pool_peak_bytes": int(pool.total_bytes())})
    out["row"] = _row(a)
    del hu, lab
print("RESULT " + json.dumps(out))
"""


def measurement_section(shape, gpu_ok: bool, timeout_s: float) -> dict:
    from client.serving.gpu import BYTES_PER_VOXEL, measurement_bytes
    from postprocess import assess

    t = time.perf_counter()
    p = make_case(shape)
    made = time.perf_counter() - t
    n = int(p.hu.size)
    t = time.perf_counter()
    cpu = _row(assess(p.hu, p.labels, p.spacing, direction=p.direction))
    cpu_s = time.perf_counter() - t
    out = {"shape": list(shape), "voxels": n, "phantom_s": round(made, 2),
           "numpy_s": round(cpu_s, 3), "numpy_row": cpu,
           "budget_bytes_per_voxel": BYTES_PER_VOXEL,
           "budget_bytes_this_scan": measurement_bytes(shape)}  # fmt: skip
    if not gpu_ok:
        return {
            "status": UNAVAILABLE,
            "reason": "no usable GPU (see cupy_kernel): NumPy only",
            **out,
        }
    runs = []
    with tempfile.TemporaryDirectory(prefix="hepascreen-cupy-cache-") as cache:
        env = dict(os.environ, CUPY_CACHE_DIR=cache)
        for label in ("cold_cache", "warm_disk_cache"):
            r = subprocess.run([sys.executable, "-c", CUPY_CHILD, str(ROOT), json.dumps(list(shape))],
                               capture_output=True, encoding="utf-8", env=env, cwd=str(ROOT),
                               timeout=timeout_s)  # fmt: skip
            line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
            if r.returncode != 0 or not line:
                return {"status": FAILED, "reason": f"CuPy assess ({label}) exit {r.returncode}: "
                        f"{r.stderr.strip()[-800:]}", **out}  # fmt: skip
            runs.append((label, json.loads(line[0][len("RESULT ") :])))
    first = runs[0][1]
    gpu_row = first["row"]
    diff = {k: (cpu.get(k), gpu_row.get(k)) for k in sorted(set(cpu) | set(gpu_row))
            if cpu.get(k) != gpu_row.get(k)}  # fmt: skip
    peak = max(r["pool_peak_bytes"] for _, res in runs for r in res["runs"])
    out.update({
        "cupy_cold_cache_s": round(first["runs"][0]["seconds"], 3),
        "cupy_warm_in_process_s": round(first["runs"][1]["seconds"], 3),
        "cupy_warm_disk_cache_s": round(runs[1][1]["runs"][0]["seconds"], 3),
        "gpu_peak_pool_bytes": peak,
        "gpu_peak_bytes_per_voxel": round(peak / n, 2),
        "within_budget": peak <= measurement_bytes(shape),
        "rows_identical": not diff,
        "row_differences": diff,
        "cupy_row_second_process_identical": runs[1][1]["row"] == gpu_row,
    })  # fmt: skip
    if diff or not out["cupy_row_second_process_identical"]:
        return {"status": FAILED, "reason": f"NumPy and CuPy rows differ in {sorted(diff)}", **out}
    if not out["within_budget"]:
        return {"status": FAILED, "reason": f"peak {out['gpu_peak_bytes_per_voxel']} B/voxel "
                f"exceeds client/serving/gpu.py's budget of {BYTES_PER_VOXEL}", **out}  # fmt: skip
    return {"status": OK, **out}


# --- the shipped ONNX: CUDA provider vs CPU ----------------------------------------------------
def _served_model():
    import importlib.util
    import types

    sys.modules.setdefault(
        "triton_python_backend_utils", types.ModuleType("triton_python_backend_utils")
    )
    spec = importlib.util.spec_from_file_location("hepascreen_served_model", MODEL_DIR / "model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _windows(n: int, shape):
    """``n`` preprocessed model inputs (uint8 [n, 1, *model]) from phantoms, as served."""
    import numpy as np
    import onnxruntime as ort

    from client.reading.preprocess import preprocess_grid, window_batch
    from training.evaluate import onnx_spec
    from training.phantoms import make_phantom

    spec = onnx_spec(ort.InferenceSession(str(MODEL_DIR / "model.onnx"),
                                          providers=["CPUExecutionProvider"]))  # fmt: skip
    out = []
    seed = 0
    while sum(len(w) for w in out) < n:
        p = make_phantom(900 + seed, shape=(80, 160, 160))
        grid, rec = preprocess_grid(p.hu, p.spacing, p.direction, spec)
        out.append(window_batch(grid, rec))
        seed += 1
    return np.concatenate(out)[:n]


def _latency(session, outputs, x, repeats: int) -> float:
    import numpy as np

    session.run(outputs, {session.get_inputs()[0].name: x})  # warm-up
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        session.run(outputs, {session.get_inputs()[0].name: x})
        ts.append(time.perf_counter() - t)
    return round(float(np.median(ts)), 5)


def onnx_section(repeats: int) -> dict:
    import numpy as np

    try:
        import onnxruntime as ort
    except ImportError as exc:
        return {"status": UNAVAILABLE, "reason": f"onnxruntime does not import: {exc}"}
    model = _served_model()
    path = str(MODEL_DIR / "model.onnx")
    x8 = _windows(8, None)
    cpu = model.open_session(ort, path, ort.SessionOptions(), "cpu")
    outputs = [o.name for o in cpu.get_outputs()]
    out = {"onnxruntime": ort.__version__, "available_providers": ort.get_available_providers(),
           "outputs": outputs, "input_shape": list(x8.shape),
           "cpu_latency_s": {"batch_1": _latency(cpu, outputs, x8[:1], repeats),
                             "batch_8": _latency(cpu, outputs, x8, max(1, repeats // 2))}}  # fmt: skip
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return {"status": UNAVAILABLE, "reason": "this ONNX Runtime has no CUDAExecutionProvider "
                "(the CPU build; replace it by onnxruntime-gpu to check the GPU variant)", **out}  # fmt: skip
    try:
        gpu = model.open_session(ort, path, ort.SessionOptions(), "gpu", device_id=0,
                                 gpu_mem_limit_mib=2048)  # fmt: skip
    except model.ProviderError as exc:  # the silent CPU fallback, caught
        return {"status": FAILED, "reason": str(exc), "silent_fallback_detected": True, **out}
    out["silent_fallback_detected"] = False
    out["session_providers"] = gpu.get_providers()
    name = cpu.get_inputs()[0].name
    a = cpu.run(outputs, {name: x8})
    b = gpu.run(outputs, {name: x8})
    agree = {}
    for k, (u, v) in zip(outputs, zip(a, b)):
        d = np.abs(u.astype(np.int16) - v.astype(np.int16))
        agree[k] = {"equal_fraction": float((d == 0).mean()), "max_abs_diff": int(d.max())}
    out["agreement_cuda_vs_cpu"] = agree
    out["cuda_latency_s"] = {"batch_1": _latency(gpu, outputs, x8[:1], repeats),
                             "batch_8": _latency(gpu, outputs, x8, repeats)}  # fmt: skip
    labels = agree.get(outputs[0], {})
    if labels.get("equal_fraction", 0) < 0.999:
        return {"status": FAILED, "reason": "CUDA labels differ from the CPU's in more than "
                "0.1 % of voxels", **out}  # fmt: skip
    return {"status": OK, **out}


# --- the run ---------------------------------------------------------------------------------
def run_check(shape=SHAPE, pytest_timeout_s: float = 150.0, run_pytest: bool = True,
              onnx_repeats: int = 10) -> dict:  # fmt: skip
    """All parts in order; returns the JSON-ready report (never raises for a missing part)."""
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    t0 = time.perf_counter()
    sections = {"device": _section(device_section), "cupy_kernel": _section(cupy_section)}
    gpu_ok = sections["cupy_kernel"]["status"] == OK
    if run_pytest:
        sections["pytest_gpu"] = _section(pytest_section, gpu_ok, pytest_timeout_s)
    else:
        sections["pytest_gpu"] = {"status": UNAVAILABLE, "reason": "--no-pytest"}
    sections["measurement"] = _section(measurement_section, shape, gpu_ok, 240.0)
    sections["onnx_cuda"] = _section(onnx_section, onnx_repeats)
    summary = {
        s: [k for k, v in sections.items() if v["status"] == s] for s in (OK, UNAVAILABLE, FAILED)
    }
    return {"check": "hepascreen gpu_check", "schema": 1, "started": started,
            "seconds": round(time.perf_counter() - t0, 1), "summary": summary,
            "sections": sections}  # fmt: skip


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_check", description=__doc__.splitlines()[0]
    )
    ap.add_argument("--out", type=Path, required=True, help="the JSON report")
    ap.add_argument("--shape", type=int, nargs=3, default=SHAPE, metavar=("Z", "Y", "X"),
                    help="phantom grid of the measurement part (default 200 512 512)")  # fmt: skip
    ap.add_argument("--no-pytest", action="store_true", help="skip the pytest -m gpu part")
    ap.add_argument("--onnx-repeats", type=int, default=10)
    args = ap.parse_args(argv)
    if min(args.shape) < 32:
        ap.error("--shape: every axis needs at least 32 voxels")
    report = run_check(
        tuple(args.shape), run_pytest=not args.no_pytest, onnx_repeats=args.onnx_repeats
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    for name, sec in report["sections"].items():
        why = sec.get("reason") or sec.get("detail") or ""
        print(f"{name:12s} {sec['status']:11s} {why[:160]}")
    print(f"report: {args.out} ({report['seconds']} s)")
    return 1 if report["summary"][FAILED] else 0


if __name__ == "__main__":
    raise SystemExit(main())
