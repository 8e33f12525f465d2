"""training.build_engine without TensorRT: cache key, hand-built plans, several GPUs, config edits.

TensorRT cannot run here, so a stand-in ``trtexec`` (a script that records its
arguments and environment in the "plan" it writes, and prints trtexec's version
banner) and a stand-in ``nvidia-smi`` exercise the real code paths: which plan
is reused, which is rebuilt, what is never overwritten, which GPU each build
runs on, and what the config says afterwards (parsed by Triton's own protobuf).
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest

onnx = pytest.importorskip("onnx")
from google.protobuf import text_format  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402
from tritonclient.grpc import model_config_pb2  # noqa: E402

from training import build_engine as be  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GPU_CONFIG = ROOT / "model_repository" / "gpu" / "hepascreen_vnet" / "config.pbtxt"


def _parse_config(text: str):
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def _tiny_onnx(path: Path, scale: float = 1.0, confidence: bool = True) -> Path:
    """VOLUME uint8 [N, 1, 4, 4, 4] -> LABELS (and CONFIDENCE) uint8 [N, 4, 4, 4], as the
    served export; ``scale`` changes the bytes."""
    from training.export import add_confidence_output

    nodes = [
        helper.make_node("Cast", ["VOLUME"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["f", "s"], ["g"]),
        helper.make_node("ArgMax", ["g"], ["i"], axis=1, keepdims=0),
        helper.make_node("Cast", ["i"], ["h"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["h"], ["LABELS"], to=TensorProto.UINT8),
    ]
    g = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("VOLUME", TensorProto.UINT8, ["batch", 1, 4, 4, 4])],
        [helper.make_tensor_value_info("LABELS", TensorProto.UINT8, ["batch", 4, 4, 4])],
        [helper.make_tensor("s", TensorProto.FLOAT, [], [scale])],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    if confidence:
        assert add_confidence_output(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def fakes(tmp_path, monkeypatch):
    """Stand-in trtexec and nvidia-smi; returns (trtexec path, set_gpus(csv), set_trt(vNNNNNN))."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    trtexec = bin_dir / "trtexec"
    trtexec.write_text(
        f"#!{sys.executable}\n"
        + textwrap.dedent(
            """
            import json, os, sys
            ver = os.environ.get("FAKE_TRT", "100300")
            if "--help" in sys.argv:
                print(f"&&&& RUNNING TensorRT.trtexec [TensorRT v{ver}] # trtexec --help")
                sys.exit(0)
            out = next(a.split("=", 1)[1] for a in sys.argv if a.startswith("--saveEngine="))
            with open(out, "w") as f:
                json.dump({"argv": sys.argv[1:], "trt": ver,
                           "device": os.environ.get("CUDA_VISIBLE_DEVICES")}, f)
            """
        )
    )
    smi = bin_dir / "nvidia-smi"
    smi.write_text(
        f"#!{sys.executable}\n"
        "import os, sys\n"
        "q = [a for a in sys.argv if a.startswith('--query-gpu=')][0]\n"
        "rows = os.environ.get('FAKE_GPUS', '').split(';')\n"
        "if 'compute_cap' not in q:\n"
        "    rows = [','.join(r.split(',')[:2] + r.split(',')[3:]) for r in rows]\n"
        "print('\\n'.join(rows))\n"
    )
    for f in (trtexec, smi):
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_GPUS", "0, NVIDIA L4, 8.9, GPU-aaaa")
    monkeypatch.setattr(be, "LIB_DIRS", ())  # no libnvinfer here; the banner names the version
    monkeypatch.delenv("LD_LIBRARY_PATH", raising=False)

    def set_gpus(csv):
        monkeypatch.setenv("FAKE_GPUS", csv)

    def set_trt(v):
        monkeypatch.setenv("FAKE_TRT", v)

    return str(trtexec), set_gpus, set_trt


def _repo(tmp_path, max_batch=8):
    model = tmp_path / "models" / "hepascreen_vnet"
    (model / "1").mkdir(parents=True)
    text = GPU_CONFIG.read_text(encoding="utf-8")
    (model / "config.pbtxt").write_text(text)
    return model / "1" / "model.plan", model / "config.pbtxt"


def _args(onnx_path, out, cache, trtexec, *extra):
    return [
        "--onnx",
        str(onnx_path),
        "--out",
        str(out),
        "--cache-dir",
        str(cache),
        "--trtexec",
        trtexec,
        *extra,
    ]


def _plan(out):
    return json.loads(Path(out).read_text(encoding="utf-8"))


# --- the key ------------------------------------------------------------------------------
def test_cache_key_covers_tensorrt_onnx_bytes_build_arguments_and_gpu():
    plan = {"profile": [1, 4, 8], "input_item_shape": [1, 64, 64, 64], "fp16": True}
    plan["workspace_mib"] = 4096
    gpu = be.Gpu(0, "NVIDIA L4", "8.9", "GPU-a")
    k = be.cache_key(plan, "10.3.0", "ab" * 32, gpu)[0]
    assert k == be.cache_key(dict(plan), "10.3.0", "ab" * 32, gpu)[0]
    variants = [
        be.cache_key(plan, "10.4.0", "ab" * 32, gpu),
        be.cache_key(plan, "10.3.0", "cd" * 32, gpu),
        be.cache_key(dict(plan, profile=[1, 4, 4]), "10.3.0", "ab" * 32, gpu),
        be.cache_key(dict(plan, fp16=False), "10.3.0", "ab" * 32, gpu),
        be.cache_key(dict(plan, workspace_mib=2048), "10.3.0", "ab" * 32, gpu),
        be.cache_key(plan, "10.3.0", "ab" * 32, be.Gpu(0, "NVIDIA A10", "8.6", "GPU-b")),
    ]
    assert len({k, *(v[0] for v in variants)}) == 7


def test_tensorrt_version_from_library_name_and_trtexec_banner(tmp_path, fakes, monkeypatch):
    trtexec, _, set_trt = fakes
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "libnvinfer.so.10").touch()
    (lib / "libnvinfer.so.10.3.0").touch()
    assert be.tensorrt_version(trtexec, lib_dirs=[str(lib)]) == "10.3.0"
    set_trt("100400")
    assert be.tensorrt_version(trtexec, lib_dirs=[]) == "10.4.0"
    with pytest.raises(SystemExit, match="cannot tell the TensorRT version"):
        be.tensorrt_version(str(tmp_path / "none"), lib_dirs=[])


# --- cached builds ------------------------------------------------------------------------
def test_cached_engine_is_reused_and_rebuilt_exactly_when_its_key_changes(tmp_path, fakes):
    trtexec, _, set_trt = fakes
    onnx_path = _tiny_onnx(tmp_path / "model.onnx")
    out, _ = _repo(tmp_path)
    cache = tmp_path / "engines"
    assert be.main(_args(onnx_path, out, cache, trtexec)) == 0
    first = _plan(out)
    assert "--skipInference" in first["argv"] and "--fp16" in first["argv"]
    assert "--maxShapes=VOLUME:8x1x4x4x4" in first["argv"]
    rec = json.loads(be.record_path(out).read_text(encoding="utf-8"))
    assert rec["tensorrt"] == "10.3.0" and rec["gpu"] == {"name": "NVIDIA L4", "cc": "8.9"}
    assert rec["onnx_sha256"] == be.sha256_file(onnx_path)
    assert len(list(cache.glob("*.plan"))) == 1

    # Same inputs: nothing built (trtexec would have rewritten the cached file).
    mtime = next(cache.glob("*.plan")).stat().st_mtime_ns
    assert be.main(_args(onnx_path, out, cache, trtexec)) == 0
    assert next(cache.glob("*.plan")).stat().st_mtime_ns == mtime

    # A replacement ONNX with an OLDER file time still gets a new engine.
    old_time = onnx_path.stat().st_mtime - 3600
    _tiny_onnx(onnx_path, scale=2.0)
    os.utime(onnx_path, (old_time, old_time))
    assert be.main(_args(onnx_path, out, cache, trtexec)) == 0
    assert (
        json.loads(be.record_path(out).read_text(encoding="utf-8"))["onnx_sha256"]
        != rec["onnx_sha256"]
    )
    assert len(list(cache.glob("*.plan"))) == 2

    # Other batch settings and a TensorRT upgrade: new engines too.
    assert be.main(_args(onnx_path, out, cache, trtexec, "--max-batch", "16")) == 0
    assert "--maxShapes=VOLUME:16x1x4x4x4" in _plan(out)["argv"]
    set_trt("100400")
    assert be.main(_args(onnx_path, out, cache, trtexec, "--max-batch", "16")) == 0
    assert _plan(out)["trt"] == "100400"
    assert len(list(cache.glob("*.plan"))) == 4

    # Back to the first settings: the first engine comes from the cache, unbuilt.
    set_trt("100300")
    _tiny_onnx(onnx_path)
    assert be.main(_args(onnx_path, out, cache, trtexec)) == 0
    assert _plan(out) == first and len(list(cache.glob("*.plan"))) == 4


def test_hand_built_engine_is_never_overwritten(tmp_path, fakes, capsys):
    trtexec, _, _ = fakes
    onnx_path = _tiny_onnx(tmp_path / "model.onnx")
    out, _ = _repo(tmp_path)
    out.write_bytes(b"my own engine")
    assert be.main(_args(onnx_path, out, tmp_path / "engines", trtexec)) == 0
    assert out.read_bytes() == b"my own engine"
    assert "keeping hand-built engine" in capsys.readouterr().err
    assert not (tmp_path / "engines").exists()
    # --all-gpus (the container's mode) keeps it too; --force replaces it.
    assert be.main(_args(onnx_path, out, tmp_path / "engines", trtexec, "--all-gpus")) == 0
    assert out.read_bytes() == b"my own engine"
    assert be.main(_args(onnx_path, out, tmp_path / "engines", trtexec, "--force")) == 0
    assert _plan(out)["trt"] == "100300"


def test_lower_engine_max_batch_fits_the_config(tmp_path, fakes):
    trtexec, _, _ = fakes
    onnx_path = _tiny_onnx(tmp_path / "model.onnx")
    out, config = _repo(tmp_path)
    with pytest.raises(SystemExit, match="exceeds the engine profile"):
        be.main(_args(onnx_path, out, tmp_path / "e", trtexec, "--max-batch", "2"))
    assert (
        be.main(_args(onnx_path, out, tmp_path / "e", trtexec, "--max-batch", "2", "--fit-config"))
        == 0
    )
    cfg = _parse_config(config.read_text(encoding="utf-8"))
    assert cfg.max_batch_size == 2 and list(cfg.dynamic_batching.preferred_batch_size) == [2]
    assert "--optShapes=VOLUME:2x1x4x4x4" in _plan(out)["argv"]  # opt follows max down


def test_fit_config_text_keeps_sizes_that_fit():
    cfg = _parse_config(be.fit_config_text(GPU_CONFIG.read_text(encoding="utf-8"), 4))
    assert cfg.max_batch_size == 4 and list(cfg.dynamic_batching.preferred_batch_size) == [4]
    assert be.fit_config_text(GPU_CONFIG.read_text(encoding="utf-8"), 16) == GPU_CONFIG.read_text(
        encoding="utf-8"
    )


# --- several GPUs -------------------------------------------------------------------------
def test_parse_gpus_handles_old_drivers_and_mig():
    gpus = be.parse_gpus(
        "0, NVIDIA A100-SXM4-80GB, 8.0, GPU-1111\n1, Tesla T4, [N/A], GPU-2222\n2, NVIDIA A100-SXM4-80GB, 8.0, MIG-3333\n"
    )
    assert [g.compute_capability for g in gpus] == ["8.0", None, "8.0"]
    assert [g.uuid for g in gpus] == ["GPU-1111", "GPU-2222", "MIG-3333"]
    groups = be.group_by_capability(gpus)
    assert list(groups) == ["8.0", "name:Tesla T4"] and [g.index for g in groups["8.0"]] == [0, 2]


def test_all_gpus_builds_one_plan_per_compute_capability_on_that_gpu(tmp_path, fakes):
    trtexec, set_gpus, _ = fakes
    onnx_path = _tiny_onnx(tmp_path / "model.onnx")
    out, config = _repo(tmp_path)
    set_gpus("0, NVIDIA A10, 8.6, GPU-aaaa;1, Tesla T4, 7.5, GPU-bbbb;2, NVIDIA A40, 8.6, GPU-cccc")
    assert be.main(_args(onnx_path, out, tmp_path / "e", trtexec, "--all-gpus")) == 0
    sm86, sm75 = out.with_name("model_sm86.plan"), out.with_name("model_sm75.plan")
    assert _plan(sm86)["device"] == "GPU-aaaa" and _plan(sm75)["device"] == "GPU-bbbb"
    # A10 and A40 share 8.6 but are different models: their one plan is hardware-compatible;
    # the T4 alone gets a plan for its own model.
    assert "--hardwareCompatibilityLevel=ampere+" in _plan(sm86)["argv"]
    assert not any("hardwareCompat" in a for a in _plan(sm75)["argv"])
    assert not out.exists()
    cfg = _parse_config(config.read_text(encoding="utf-8"))
    assert dict(cfg.cc_model_filenames) == {"8.6": "model_sm86.plan", "7.5": "model_sm75.plan"}
    assert cfg.max_batch_size == 8 and cfg.platform == "tensorrt_plan"

    # Back to one GPU model: model.plan, the per-capability plans and the config block go.
    set_gpus("0, NVIDIA L4, 8.9, GPU-dddd")
    assert be.main(_args(onnx_path, out, tmp_path / "e", trtexec, "--all-gpus")) == 0
    assert _plan(out)["device"] == "GPU-dddd"
    assert sorted(p.name for p in out.parent.glob("*.plan")) == ["model.plan"]
    assert dict(_parse_config(config.read_text(encoding="utf-8")).cc_model_filenames) == {}
    assert config.read_text(encoding="utf-8") == GPU_CONFIG.read_text(encoding="utf-8")


def test_all_gpus_without_compute_capability_and_mixed_models_is_a_clear_error(tmp_path, fakes):
    groups = be.group_by_capability(
        [be.Gpu(0, "Tesla T4", None, None), be.Gpu(1, "Tesla P4", None, None)]
    )
    with pytest.raises(SystemExit, match="compute capability"):
        be.plan_files_for(groups, tmp_path / "model.plan")


def test_different_gpu_models_below_ampere_that_share_a_capability_are_refused(tmp_path, fakes):
    trtexec, set_gpus, _ = fakes
    onnx_path = _tiny_onnx(tmp_path / "model.onnx")
    out, _config = _repo(tmp_path)
    set_gpus("0, Tesla T4, 7.5, GPU-aaaa;1, NVIDIA GeForce RTX 2080, 7.5, GPU-bbbb")
    with pytest.raises(SystemExit, match="share compute capability 7.5.*one server per GPU model"):
        be.main(_args(onnx_path, out, tmp_path / "e", trtexec, "--all-gpus"))
    assert not list(out.parent.glob("*.plan"))


def test_a_plan_is_keyed_by_gpu_model_and_compatibility_mode():
    plan = {"profile": [1, 4, 8], "input_item_shape": [1, 64, 64, 64], "fp16": True}
    plan["workspace_mib"] = 4096
    a10, a40 = be.Gpu(0, "NVIDIA A10", "8.6", None), be.Gpu(1, "NVIDIA A40", "8.6", None)
    key = lambda p, g: be.cache_key(p, "10.3.0", "ab" * 32, g)[0]  # noqa: E731
    assert key(plan, a10) != key(plan, a40)  # same capability, different model
    compat = dict(plan, hardware_compat="ampere+")
    assert key(compat, a10) != key(plan, a10)
    assert "hardware_compat" not in be.cache_key(plan, "10.3.0", "ab" * 32, a10)[1]


# --- outputs: the engine keeps every output the GPU config lists ---------------------------
def test_config_output_names_agree_with_tritons_protobuf():
    text = GPU_CONFIG.read_text(encoding="utf-8")
    names = [o.name for o in _parse_config(text).output]
    assert be.config_output_names(text) == names == ["LABELS", "CONFIDENCE"]
    cpu = ROOT / "model_repository" / "cpu" / "hepascreen_vnet" / "config.pbtxt"
    assert be.config_output_names(cpu.read_text(encoding="utf-8")) == names


def test_an_onnx_without_a_listed_output_is_refused_before_building(tmp_path, fakes):
    trtexec, _, _ = fakes
    out, config = _repo(tmp_path)
    labels_only = _tiny_onnx(tmp_path / "old.onnx", confidence=False)
    with pytest.raises(SystemExit, match="lists output CONFIDENCE.*--add-confidence-only"):
        be.main(_args(labels_only, out, tmp_path / "e", trtexec))
    assert not out.exists() and not (tmp_path / "e").exists()
    # The dry run checks the same, and a LABELS-only config takes a LABELS-only file.
    with pytest.raises(SystemExit, match="lists output CONFIDENCE"):
        be.main(["--onnx", str(labels_only), "--out", str(out), "--dry-run"])
    cfg = _parse_config(config.read_text(encoding="utf-8"))
    del cfg.output[1:]
    config.write_text(text_format.MessageToString(cfg), encoding="utf-8")
    assert be.main(_args(labels_only, out, tmp_path / "e", trtexec)) == 0
    # The full export serves both outputs with both listed (the default GPU config).
    full = _tiny_onnx(tmp_path / "model.onnx")
    plan = be.validate(be.build_parser().parse_args(["--onnx", str(full), "--out", str(out)]))
    assert plan["outputs"] == []  # no config beside this --out: nothing to check
    args = ["--onnx", str(full), "--out", str(out), "--config", str(GPU_CONFIG)]
    assert be.validate(be.build_parser().parse_args(args))["outputs"] == ["LABELS", "CONFIDENCE"]


def test_tensorrt_network_without_a_listed_output_is_refused(tmp_path):
    """The TensorRT API path checks the parsed network's outputs before building
    (a stand-in ``tensorrt`` module: the real one cannot run here)."""
    from types import SimpleNamespace

    class Network:
        num_outputs = 1

        def get_output(self, i):
            return SimpleNamespace(name="LABELS")

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            return Network()

        def create_builder_config(self):
            raise AssertionError("built although the network lacks CONFIDENCE")

    trt = SimpleNamespace(
        Logger=type("Logger", (), {"WARNING": 0, "__init__": lambda self, level: None}),
        Builder=Builder,
        NetworkDefinitionCreationFlag=SimpleNamespace(),
        OnnxParser=lambda network, logger: SimpleNamespace(parse_from_file=lambda path: True),
    )
    plan = {"onnx": "m.onnx", "config": "config.pbtxt", "outputs": ["LABELS", "CONFIDENCE"]}
    with pytest.raises(SystemExit, match="lists output CONFIDENCE, the parsed network has LABELS"):
        be._build_python(plan, trt)
