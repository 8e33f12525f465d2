"""The GPU readiness pieces that can run without a GPU (issue 23).

* The bundled server's ONNX Runtime GPU variant refuses a session that silently fell
  back to the CPU (checked with the CPU build of ONNX Runtime, which "accepts" a
  requested CUDA provider and then runs on the CPU: exactly the silent fallback).
* ``python -m benchmarks.gpu_check`` dry-runs on this CPU machine: every GPU part is
  reported as unavailable with its reason, nothing is fatal, the JSON is written.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import pytest

from client.core.paths import SHIPPED_ONNX

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = SHIPPED_ONNX.parent


@pytest.fixture()
def served_model(monkeypatch):
    """``1/model.py`` with a stand-in for Triton's stub module."""
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils",
                        types.ModuleType("triton_python_backend_utils"))  # fmt: skip
    loader = importlib.util.spec_from_file_location("hs_model_gpu", MODEL_DIR / "model.py")
    model = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(model)
    return model


def test_a_cuda_session_that_fell_back_to_the_cpu_is_refused_with_the_fix(
    served_model, monkeypatch
):
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this ONNX Runtime has a CUDA provider: the fallback cannot be staged")
    # ONNX Runtime with broken cuDNN lists CUDA as available, then runs on the CPU:
    # the CPU build asked for CUDA does the same (a warning, a CPU session).
    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])  # fmt: skip
    with pytest.warns(UserWarning, match="CUDAExecutionProvider"):
        with pytest.raises(served_model.ProviderError) as err:
            served_model.open_session(ort, str(MODEL_DIR / "model.onnx"), ort.SessionOptions(),
                                      "gpu", device_id=0, gpu_mem_limit_mib=512)  # fmt: skip
    msg = str(err.value)
    assert "session runs on CPUExecutionProvider" in msg and "cuDNN" in msg
    assert "onnxruntime-gpu" in msg and "never both" in msg


def test_without_a_cuda_provider_the_gpu_variant_names_the_package(served_model):
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this ONNX Runtime has a CUDA provider")
    with pytest.raises(
        served_model.ProviderError, match="no CUDAExecutionProvider.*onnxruntime-gpu"
    ):
        served_model.open_session(ort, str(MODEL_DIR / "model.onnx"), ort.SessionOptions(), "gpu")
    with pytest.raises(served_model.ProviderError, match="expected cpu or gpu"):
        served_model.open_session(ort, str(MODEL_DIR / "model.onnx"), ort.SessionOptions(), "tpu")
    cpu = served_model.open_session(ort, str(MODEL_DIR / "model.onnx"), ort.SessionOptions(), "cpu")
    assert cpu.get_providers() == ["CPUExecutionProvider"]


def test_the_gpu_config_caps_onnx_runtimes_cuda_arena():
    text = (MODEL_DIR.parent / "configs" / "gpu.pbtxt").read_text(encoding="utf-8")
    assert 'key: "gpu_mem_limit_mib"' in text


# --- FP16 evidence (training/fp16.py) -------------------------------------------------------
def test_recorded_fp16_evidence_is_of_the_shipped_model_and_covers_confidence():
    import hashlib

    rec = json.loads((ROOT / "docs" / "model_fp16.json").read_text(encoding="utf-8"))
    shipped = hashlib.sha256((MODEL_DIR / "model.onnx").read_bytes()).hexdigest()
    assert rec["onnx_sha256"] == shipped, (
        "rerun: python -m training.fp16 --out docs/model_fp16.json"
    )
    assert rec["label_changed_fraction"] < 1e-4
    assert rec["confidence_max_abs_change_255"] <= 3
    # FP16 moves the organ means far less than their distance to the gate's floors.
    assert (
        rec["organ_mean_confidence_max_abs_change"] < rec["smallest_fp32_margin_above_floor"] / 10
    )
    assert any(c["case"] == "real_ct" for c in rec["cases"])


def test_confidence_change_counts_voxels_and_organ_means():
    np = pytest.importorskip("numpy")
    from training.fp16 import confidence_change

    labels = np.array([[1, 1, 2, 0]], np.uint8)
    c32 = np.array([[250, 240, 230, 255]], np.uint8)
    c16 = np.array([[250, 242, 229, 255]], np.uint8)
    rec = confidence_change(labels, c32, labels, c16, {"liver": 0.9})
    assert rec["confidence_changed_voxels"] == 2 and rec["confidence_max_abs_change_255"] == 2
    assert rec["liver_mean_change"] == pytest.approx(1 / 255)
    assert rec["liver_fp32_margin_above_floor"] == pytest.approx(245 / 255 - 0.9)
    assert "spleen_fp32_margin_above_floor" not in rec  # no floor declared


# --- python -m benchmarks.gpu_check: dry run on this CPU machine -----------------------------
@pytest.mark.slow
def test_gpu_check_dry_run_reports_every_part_and_never_fails_for_missing_pieces(tmp_path):
    import subprocess

    out = tmp_path / "gpu_check.json"
    r = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", "--out", str(out), "--shape", "48", "128", "128",
         "--onnx-repeats", "2"],
        cwd=ROOT, capture_output=True, encoding="utf-8", timeout=600,
    )  # fmt: skip
    rep = json.loads(out.read_text(encoding="utf-8"))
    sections = rep["sections"]
    assert set(sections) == {"device", "cupy_kernel", "pytest_gpu", "measurement", "onnx_cuda"}
    assert all(s["status"] in ("ok", "unavailable", "failed") for s in sections.values())
    assert r.returncode == (1 if rep["summary"]["failed"] else 0), r.stdout + r.stderr
    dev = sections["device"]
    assert "numpy" in dev["packages"] and "trtexec" in dev
    meas = sections["measurement"]
    assert meas["numpy_row"]["grade"] and meas["budget_bytes_per_voxel"] > 0
    onnx = sections["onnx_cuda"]
    assert onnx["cpu_latency_s"]["batch_1"] > 0 and onnx["input_shape"][0] == 8
    from postprocess._xp import gpu_available

    if not gpu_available():  # the dry run: every GPU part says why it did not run
        assert rep["summary"]["failed"] == [] and r.returncode == 0
        for name in ("cupy_kernel", "pytest_gpu", "measurement"):
            assert sections[name]["status"] == "unavailable" and sections[name]["reason"]
        assert onnx["status"] == "unavailable" and "onnxruntime-gpu" in onnx["reason"]
        assert "unavailable" in r.stdout


def test_device_part_reports_the_compute_capability_floor(monkeypatch):
    import shutil

    from benchmarks import gpu_check

    class Done:
        returncode = 0
        stdout = (
            "0, Tesla P100-PCIE-16GB, 6.0, 550.54, 16384, 16000\n"
            "1, NVIDIA L4, 8.9, 550.54, 23034, 22000\n"
        )
        stderr = ""

    real_which = shutil.which
    monkeypatch.setattr(
        shutil, "which", lambda n: "/usr/bin/nvidia-smi" if n == "nvidia-smi" else real_which(n)
    )
    sec = gpu_check.device_section(run=lambda *a, **k: Done())
    assert sec["status"] == "failed" and "P100" in sec["reason"] and "7.0" in sec["reason"]
    assert [g["tensorrt10_supported"] for g in sec["gpus"]] == [False, True]
