"""Every config.pbtxt against the contract module, Triton's own schema and the shipped ONNX."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from client.core import contract
from client.serving.triton import check_model_config

ROOT = Path(__file__).resolve().parents[1]
REPO = ROOT / "model_repository"
MODEL = REPO / "cpu" / contract.MODEL_NAME / "1" / "model.onnx"
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


@pytest.mark.parametrize(
    "path",
    CONFIGS + sorted(REPO.glob("*/*/configs/*.pbtxt")),
    ids=lambda p: str(p.relative_to(REPO)),
)
def test_config_lists_confidence_after_labels_with_the_same_dims(path):
    cfg = load(path)
    labels, conf = cfg["output"]
    assert labels["name"] == contract.OUTPUT_NAME and conf["name"] == contract.CONFIDENCE_NAME
    assert conf["data_type"] == contract.CONFIDENCE_DTYPE
    assert conf["dims"] == labels["dims"] == cfg["input"][0]["dims"][1:]
    # The gate's floors, calibrated for these weights: below the lowest confidence of the
    # shipped model's good masks in the committed benchmark (no good mask flagged), and
    # the same in every config (the TensorRT engine is built from the same ONNX).
    from client.serving.triton import model_confidence_floor

    floor = model_confidence_floor(cfg)
    assert floor is not None and set(floor) == {"liver", "spleen"}
    bench = json.loads((ROOT / "benchmarks" / "results" / "confidence.json").read_text())
    assert bench["models"]["shipped"] == str(MODEL.relative_to(ROOT))
    for organ, f in floor.items():
        assert f < bench["extremes"][f"shipped_{organ}"]["good_min"][0]
        assert f == model_confidence_floor(load(CONFIGS[0]))[organ]


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
    assert inp.name == contract.INPUT_NAME
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    idims = [d.dim_value or d.dim_param for d in inp.type.tensor_type.shape.dim]
    assert isinstance(idims[0], str)  # dynamic batch
    assert idims[1:] == [int(d) for d in cfg["input"][0]["dims"]]
    # Every output the config lists, in the config's order, uint8 with the config's dims.
    outs = {o.name: o for o in m.graph.output}
    assert [o["name"] for o in cfg["output"]] == [o.name for o in m.graph.output]
    for want in cfg["output"]:
        out = outs[want["name"]]
        assert out.type.tensor_type.elem_type == onnx.TensorProto.UINT8
        odims = [d.dim_value or d.dim_param for d in out.type.tensor_type.shape.dim]
        assert isinstance(odims[0], str)  # dynamic batch
        assert odims[1:] == [int(d) for d in want["dims"]]
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
        y, c = sess.run([contract.OUTPUT_NAME, contract.CONFIDENCE_NAME], {contract.INPUT_NAME: x})
        assert y.dtype == c.dtype == np.uint8 and y.shape == c.shape == (b, *dims[1:])
        assert set(np.unique(y)) <= {0, 1, 2}
        # 3 classes: the predicted one has probability >= 1/3, i.e. >= 85 of 255.
        assert c.min() >= round(contract.CONFIDENCE_SCALE / contract.NUM_CLASSES)


# --- the declared preprocessing (client.reading.preprocess.PreprocessSpec) ------------------------
ALL_CONFIGS = CONFIGS + sorted(REPO.glob("*/*/configs/*.pbtxt"))
SHIPPED_ONNX = REPO / "cpu" / contract.MODEL_NAME / "1" / "model.onnx"
PREPROCESS_KEYS = (contract.PREPROCESS_PARAM, contract.PREPROCESS_SPACING_PARAM)


def _id(p: Path) -> str:
    return str(p.relative_to(REPO))


def onnx_declared_spec(onnx_path: Path, model_shape):
    """The spec an ONNX file's metadata_props declare (None when they say nothing)."""
    import onnx

    from client.reading.preprocess import PreprocessSpec

    m = onnx.load(str(onnx_path), load_external_data=False)
    meta = {p.key: p.value for p in m.metadata_props if p.key in PREPROCESS_KEYS}
    return PreprocessSpec.from_parameters(meta, model_shape) if meta else None


def engine_onnx_of_the_gpu_image() -> Path:
    """The ONNX docker/Dockerfile.server copies for the TensorRT engine build."""
    text = (REPO.parent / "docker" / "Dockerfile.server").read_text(encoding="utf-8")
    src = next(
        ln.split()[1] for ln in text.splitlines() if ln.startswith("COPY") and "model.onnx" in ln
    )
    return REPO.parent / src


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=_id)
def test_every_config_declares_a_valid_preprocessing(path):
    from client.reading.preprocess import PreprocessSpec
    from client.serving.triton import model_preprocess_spec

    cfg = load(path)
    assert contract.PREPROCESS_PARAM in cfg.get("parameters", {}), "declare it explicitly"
    spec = model_preprocess_spec(cfg)
    assert spec.model_shape == tuple(int(d) for d in cfg["input"][0]["dims"][1:])
    assert spec.mode in contract.PREPROCESS_MODES
    assert PreprocessSpec.from_parameters(spec.parameters(), spec.model_shape) == spec


def test_the_gpu_engine_config_declares_the_shipped_models_preprocessing():
    """The GPU image builds its TensorRT engine from the shipped CPU model.onnx, so the
    GPU repository must declare the preprocessing that model was trained with."""
    from client.serving.triton import model_preprocess_spec

    gpu = model_preprocess_spec(load(REPO / "gpu" / contract.MODEL_NAME / "config.pbtxt"))
    cpu = model_preprocess_spec(load(REPO / "cpu" / contract.MODEL_NAME / "config.pbtxt"))
    assert gpu == cpu


def test_cpu_config_and_its_gpu_variant_declare_the_same_preprocessing():
    from client.serving.triton import model_preprocess_spec

    base = REPO / "cpu" / contract.MODEL_NAME
    assert model_preprocess_spec(load(base / "config.pbtxt")) == model_preprocess_spec(
        load(base / "configs" / "gpu.pbtxt")
    )


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=_id)
def test_onnx_metadata_agrees_with_the_config(path):
    """Where the model file says how it was trained (training.export writes the keys), the
    config must say the same. The GPU config is checked against the ONNX its engine is
    built from (docker/Dockerfile.server)."""
    from client.serving.triton import model_preprocess_spec

    cfg = load(path)
    onnx_path = engine_onnx_of_the_gpu_image() if path.parts[-4] == "gpu" else SHIPPED_ONNX
    assert onnx_path.is_file(), onnx_path
    spec = model_preprocess_spec(cfg)
    declared = onnx_declared_spec(onnx_path, spec.model_shape)
    assert declared is None or declared == spec, (
        f"{onnx_path.name} declares {declared.parameters()}, {_id(path)} {spec.parameters()}"
    )


def test_onnx_metadata_check_catches_a_contradiction(tmp_path, monkeypatch):
    """The comparison above and the Python backend's own check, on a relabelled copy."""
    import importlib.util
    import sys
    import types

    import onnx

    from client.reading.preprocess import PreprocessSpec

    m = onnx.load(str(SHIPPED_ONNX))
    m.metadata_props.add(key=contract.PREPROCESS_PARAM, value="spacing")
    m.metadata_props.add(key=contract.PREPROCESS_SPACING_PARAM, value="6,6,6")
    onnx.save(m, str(tmp_path / "m.onnx"))
    spec = onnx_declared_spec(tmp_path / "m.onnx", (64, 64, 64))
    assert spec == PreprocessSpec("spacing", (64, 64, 64), (6.0, 6.0, 6.0))
    assert onnx_declared_spec(SHIPPED_ONNX, (64, 64, 64)) in (None, load_cpu_spec())
    # The served model (1/model.py) imports Triton's stub module: give it a stand-in.
    stub = types.ModuleType("triton_python_backend_utils")
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", stub)
    loader = importlib.util.spec_from_file_location("hs_model", SHIPPED_ONNX.parent / "model.py")
    model = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(model)
    assert (model.PREPROCESS_PARAM, model.PREPROCESS_SPACING_PARAM) == PREPROCESS_KEYS
    meta = {contract.PREPROCESS_PARAM: "spacing", contract.PREPROCESS_SPACING_PARAM: "6,6,6"}
    assert "declares preprocessing spacing" in model._preprocess_mismatch({}, meta)
    assert "declares preprocessing spacing" in model._preprocess_mismatch(
        {contract.PREPROCESS_PARAM: "resize"}, meta
    )
    assert (
        model._preprocess_mismatch(
            {contract.PREPROCESS_PARAM: "spacing", contract.PREPROCESS_SPACING_PARAM: "6, 6, 6.0"},
            meta,
        )
        is None
    )
    assert model._preprocess_mismatch({contract.PREPROCESS_PARAM: "spacing"}, {}) is None
    assert "4.0" in model._preprocess_mismatch(
        {contract.PREPROCESS_PARAM: "spacing", contract.PREPROCESS_SPACING_PARAM: "4,4,4"}, meta
    )


def load_cpu_spec():
    from client.serving.triton import model_preprocess_spec

    return model_preprocess_spec(load(REPO / "cpu" / contract.MODEL_NAME / "config.pbtxt"))


@pytest.mark.parametrize(
    "params, match",
    [
        ({"hepascreen_preprocess": {"string_value": "nnunet"}}, "hepascreen_preprocess.*nnunet"),
        ({"hepascreen_preprocess": {"string_value": "spacing"}}, "hepascreen_spacing_mm.*nothing"),
        (
            {
                "hepascreen_preprocess": {"string_value": "spacing"},
                "hepascreen_spacing_mm": {"string_value": "6;6;6"},
            },
            "hepascreen_spacing_mm.*'6;6;6'",
        ),
    ],
)
def test_check_model_config_rejects_bad_preprocessing_parameters(params, match):
    import re

    cfg = load(REPO / "cpu" / contract.MODEL_NAME / "config.pbtxt")
    base = {k: v for k, v in cfg["parameters"].items() if not k.startswith("hepascreen_")}
    cfg["parameters"] = {**base, **params}
    problems = check_model_config(cfg)
    assert len(problems) == 1 and re.search(match, problems[0]), problems
    assert problems[0].startswith("preprocessing parameters: model parameter")


@pytest.mark.parametrize("mode", contract.PREPROCESS_MODES)
def test_check_model_config_accepts_either_mode(mode):
    from client.serving.triton import model_preprocess_spec

    cfg = load(REPO / "cpu" / contract.MODEL_NAME / "config.pbtxt")
    cfg["parameters"] = {**cfg["parameters"], contract.PREPROCESS_PARAM: {"string_value": mode}}
    if mode == "spacing":
        cfg["parameters"][contract.PREPROCESS_SPACING_PARAM] = {"string_value": "6,6,6"}
    assert check_model_config(cfg) == []
    assert model_preprocess_spec(cfg).mode == mode


def test_the_served_session_lets_idle_threads_sleep(monkeypatch):
    """1/model.py applies the config's intra_op_allow_spinning (no busy-waiting threads
    on a CPU the client shares): initialize() with the shipped cpu config."""
    import importlib.util
    import sys
    import types

    stub = types.ModuleType("triton_python_backend_utils")
    stub.TritonModelException = RuntimeError
    stub.get_output_config_by_name = lambda cfg, name: next(
        o for o in cfg["output"] if o["name"] == name
    )
    stub.triton_string_to_numpy = lambda t: np.uint8
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", stub)
    repo = REPO / "cpu" / contract.MODEL_NAME
    spec = importlib.util.spec_from_file_location("hs_model_under_test", repo / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = load(repo / "config.pbtxt")
    assert cfg["parameters"]["intra_op_allow_spinning"]["string_value"] == "0"
    model = module.TritonPythonModel()
    model.initialize({"model_config": json.dumps(cfg), "model_repository": str(repo),
                      "model_version": "1"})  # fmt: skip
    opts = model.session.get_session_options()
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
