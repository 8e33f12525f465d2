"""Every config.pbtxt against the contract module, Triton's own schema and the shipped ONNX."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from client import contract
from client.triton import check_model_config

REPO = Path(__file__).resolve().parents[1] / "model_repository"
CONFIGS = sorted(REPO.glob("*/*/config.pbtxt"))


def load(path: Path) -> dict:
    msg = text_format.Parse(
        path.read_text(encoding="utf-8"), model_config_pb2.ModelConfig()
    )  # Triton's schema
    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


def test_both_repositories_are_present():
    assert {p.parent.parent.name for p in CONFIGS} == {"cpu", "gpu"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.parent.parent.name)
def test_config_matches_contract(path):
    cfg = load(path)
    assert cfg["name"] == contract.MODEL_NAME == path.parent.name
    assert check_model_config(cfg) == []
    assert 1 <= int(cfg["max_batch_size"]) <= contract.MAX_BATCH_SIZE
    db = cfg["dynamic_batching"]
    assert all(1 <= int(b) <= int(cfg["max_batch_size"]) for b in db["preferred_batch_size"])
    assert int(db["max_queue_delay_microseconds"]) > 0


def test_cpu_and_gpu_serve_the_same_tensors():
    cpu = load(REPO / "cpu" / contract.MODEL_NAME / "config.pbtxt")
    gpu = load(REPO / "gpu" / contract.MODEL_NAME / "config.pbtxt")
    assert cpu["input"] == gpu["input"] and cpu["output"] == gpu["output"]
    assert cpu["backend"] == "python" and cpu["instance_group"][0]["kind"] == "KIND_CPU"
    assert gpu["platform"] == "tensorrt_plan" and gpu["instance_group"][0]["kind"] == "KIND_GPU"


def test_shipped_onnx_matches_the_cpu_config():
    import onnx

    cfg = load(REPO / "cpu" / contract.MODEL_NAME / "config.pbtxt")
    params = {k: v["string_value"] for k, v in cfg.get("parameters", {}).items()}
    model_file = REPO / "cpu" / contract.MODEL_NAME / "1" / params["onnx_file"]
    assert model_file.is_file(), f"{model_file} missing: the demo model ships with the project"
    m = onnx.load(str(model_file))
    onnx.checker.check_model(m)
    (inp,) = m.graph.input
    (out,) = m.graph.output
    assert inp.name == contract.INPUT_NAME and out.name == contract.OUTPUT_NAME
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert out.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    idims = [d.dim_value or d.dim_param for d in inp.type.tensor_type.shape.dim]
    odims = [d.dim_value or d.dim_param for d in out.type.tensor_type.shape.dim]
    assert isinstance(idims[0], str) and isinstance(odims[0], str)  # dynamic batch
    assert idims[1:] == [int(d) for d in cfg["input"][0]["dims"]]
    assert odims[1:] == [int(d) for d in cfg["output"][0]["dims"]]
    assert max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) >= 17


def test_shipped_onnx_runs_in_onnxruntime_at_batch_1_and_3():
    import onnxruntime as ort

    cfg = load(REPO / "cpu" / contract.MODEL_NAME / "config.pbtxt")
    dims = [int(d) for d in cfg["input"][0]["dims"]]
    sess = ort.InferenceSession(
        str(REPO / "cpu" / contract.MODEL_NAME / "1" / "model.onnx"),
        providers=["CPUExecutionProvider"],
    )
    rng = np.random.default_rng(0)
    for b in (1, 3):
        x = rng.integers(0, 256, (b, *dims), dtype=np.uint8)
        (y,) = sess.run(None, {contract.INPUT_NAME: x})
        assert y.dtype == np.uint8 and y.shape == (b, *dims[1:])
        assert set(np.unique(y)) <= {0, 1, 2}
