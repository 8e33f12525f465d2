"""docker/ files: parsed, cross-checked with the project, and the server entrypoint run with stand-ins.

There is no Docker engine, GPU or TensorRT here. What can be checked is checked:
every COPY source exists and passes .dockerignore; the server keeps NVIDIA's
entrypoint and uses the non-deprecated config flag; the client image has the CUDA
headers CuPy needs and none of the server-only packages; compose, the GPU config and
client/core/contract.py agree on the batch size; ``docker-compose config`` validates; and
docker/entrypoint-server.sh really runs (stand-in nvidia-smi, trtexec and
tritonserver) through first start, restart, a lower ENGINE_MAX_BATCH and a
hand-built engine.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from client.core import contract
from client.core.paths import SHIPPED_ONNX

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
GPU_CONFIG = ROOT / "model_repository" / "gpu" / "hepascreen_vnet" / "config.pbtxt"
CPU_ONNX = SHIPPED_ONNX


def _copy_sources(dockerfile: Path) -> list[str]:
    out = []
    for line in dockerfile.read_text(encoding="utf-8").replace("\\\n", " ").splitlines():
        m = re.match(r"\s*COPY\s+(?!--from)(.+)", line)
        if m:
            parts = m.group(1).split()
            out += parts[:-1]
    return out


def _compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text(encoding="utf-8"))


def _config_max_batch() -> int:
    return int(
        re.search(r"^max_batch_size:\s*(\d+)", GPU_CONFIG.read_text(encoding="utf-8"), re.M).group(
            1
        )
    )


# --- build context ------------------------------------------------------------------------
def _dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; a matched folder covers its contents."""
    excluded = False
    for pat in patterns:
        neg = pat.startswith("!")
        p = pat[1:] if neg else pat
        p = p.rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if p.startswith("**/"):
            hit = any(fnmatch.fnmatch(part, p[3:]) for part in parts)
        else:
            hit = any(fnmatch.fnmatch(pre, p) for pre in prefixes)
        if hit:
            excluded = not neg
    return excluded


def _dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


@pytest.mark.parametrize("name", ["Dockerfile.server", "Dockerfile.client"])
def test_every_copied_path_exists_and_is_in_the_build_context(name):
    srcs = _copy_sources(DOCKER / name)
    assert srcs
    missing = [s for s in srcs if not (ROOT / s).exists()]
    assert not missing, missing
    ignored = [s for s in srcs if _dockerignore_excludes(s, _dockerignore())]
    assert not ignored, f".dockerignore drops what {name} copies: {ignored}"


def test_dockerignore_keeps_the_virtualenv_git_and_data_out():
    pats = _dockerignore()
    heavy_paths = (".venv/lib/x.so", ".git/objects/ab", "runs/x/model.pdparams", "out/results.csv")
    for heavy in heavy_paths + ("training/checkpoints/run/model.pdparams",):
        assert _dockerignore_excludes(heavy, pats), heavy
    assert _dockerignore_excludes("client/__pycache__/batch.cpython-311.pyc", pats)
    assert not _dockerignore_excludes("model_repository/gpu/hepascreen_vnet/1/model.plan", pats)


# --- server image ---------------------------------------------------------------------------
def test_server_image_keeps_nvidias_entrypoint_and_builds_the_engine():
    text = (DOCKER / "Dockerfile.server").read_text(encoding="utf-8")
    assert re.search(r"FROM nvcr.io/nvidia/tritonserver:\$\{TRITON_VERSION\}-py3", text)
    assert "model_repository/gpu /models" in text
    entrypoint = json.loads(re.search(r"^ENTRYPOINT\s+(\[.*\])", text, re.M).group(1))
    assert entrypoint == ["/opt/nvidia/nvidia_entrypoint.sh", "/usr/local/bin/entrypoint-server.sh"]
    assert "R560" in text  # driver floor written where the image is defined
    entry = (DOCKER / "entrypoint-server.sh").read_text(encoding="utf-8")
    assert "training.build_engine" in entry and "--cache-dir" in entry and "--all-gpus" in entry
    assert "--disable-auto-complete-config" in entry and "--strict-model-config" not in entry
    assert 'exec tritonserver --model-repository="$REPOSITORY"' in entry


# --- client image ---------------------------------------------------------------------------
def test_client_image_has_cuda_runtime_headers_for_cupy():
    text = (DOCKER / "Dockerfile.client").read_text(encoding="utf-8")
    version = re.search(r"ARG CUDA_VERSION=(\d+\.\d+\.\d+)", text).group(1)
    assert re.search(r"FROM nvidia/cuda:\$\{CUDA_VERSION\}-runtime-ubuntu22.04", text)
    # The header package is derived from the image's own CUDA version (12.4.1 -> 12-4).
    assert "cut -d. -f1-2 | tr . -" in text and '"cuda-cudart-dev-${CUDA_PKG}"' in text
    assert version.startswith("12.")
    assert "test -f /usr/local/cuda/include/vector_types.h" in text
    assert "CUDA_PATH=/usr/local/cuda" in text and "CUPY_CACHE_DIR=/cache/cupy" in text
    assert "check_cupy_compile.py" in text


def test_client_python_is_not_from_ubuntus_universe_component():
    text = (DOCKER / "Dockerfile.client").read_text(encoding="utf-8")
    apt = " ".join(re.findall(r"apt-get install[^&]*", text))
    assert "python3" not in apt  # jammy's python3.11 is a universe package
    assert re.search(r"FROM ghcr.io/astral-sh/uv:\$\{UV_VERSION\} AS uv", text)
    assert re.search(r"ARG UV_VERSION=\d+\.\d+\.\d+", text)  # pinned, never :latest
    assert "uv python install 3.11" in text and "UV_PYTHON_PREFERENCE=only-managed" in text
    assert "uv venv --seed --python 3.11 /opt/venv" in text


def test_client_requirements_are_the_projects_minus_server_only_packages():
    import tomllib

    r = subprocess.run(
        [sys.executable, str(DOCKER / "client_requirements.py"), str(ROOT / "pyproject.toml")],
        capture_output=True,
        encoding="utf-8",
        check=True,
    )
    reqs = r.stdout.split()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    names = [re.split(r"[\[<>=!~; ]", x, maxsplit=1)[0].lower() for x in reqs]
    assert "nvidia-pytriton" not in names and "onnxruntime" not in names
    assert any(n.startswith("cupy-cuda12x") for n in names)
    expected = [
        d
        for d in project["dependencies"]
        if not d.lower().startswith(("nvidia-pytriton", "onnxruntime"))
    ] + project["optional-dependencies"]["gpu"]
    assert reqs == [e.replace(" ", "") for e in expected] or r.stdout.splitlines() == expected
    text = (DOCKER / "Dockerfile.client").read_text(encoding="utf-8")
    assert "--no-deps ." in text and '! python -c "import pytriton"' in text


def test_cupy_compile_check_runs_where_cupy_is_installed():
    pytest.importorskip("cupy")
    r = subprocess.run(
        [sys.executable, str(DOCKER / "check_cupy_compile.py")],
        capture_output=True,
        encoding="utf-8",
    )
    assert r.returncode in (0, 1)
    assert ("NVRTC compiled" in r.stdout) or ("cuda-cudart-dev" in r.stderr)


# --- compose ----------------------------------------------------------------------------------
def test_compose_wiring_and_health_checks():
    c = _compose()
    server, client = c["services"]["server"], c["services"]["client"]
    assert "v2/health/ready" in " ".join(server["healthcheck"]["test"])
    assert "curl" not in " ".join(server["healthcheck"]["test"])
    assert client["depends_on"]["server"]["condition"] == "service_healthy"
    assert all(p.startswith("127.0.0.1:") for p in server["ports"])  # loopback by default
    assert "--url" in client["command"] and "server:8001" in client["command"]
    i = client["command"].index("--device")
    assert client["command"][i + 1] == "gpu"
    for svc in (server, client):
        assert (ROOT / "docker" / svc["build"]["context"] / svc["build"]["dockerfile"]).exists()
        assert svc["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


def test_a_server_that_cannot_start_is_not_restarted_in_a_loop():
    """A failing engine build under ``unless-stopped`` rebuilds for ever; ``on-failure`` with a
    count stops after a few tries (a crash in service is still restarted)."""
    policy = _compose()["services"]["server"]["restart"]
    m = re.fullmatch(r"on-failure:(\d+)", policy)
    assert m and 1 <= int(m.group(1)) <= 5, policy
    assert "restart" not in _compose()["services"]["client"]  # a batch run: never restarted


def test_engine_batch_settings_agree_with_the_gpu_config_and_contract():
    env = _compose()["services"]["server"]["environment"]
    max_batch, opt_batch = int(env["ENGINE_MAX_BATCH"]), int(env["ENGINE_OPT_BATCH"])
    assert max_batch == _config_max_batch() == contract.MAX_BATCH_SIZE
    prefs = re.search(
        r"preferred_batch_size:\s*\[([^\]]*)\]", GPU_CONFIG.read_text(encoding="utf-8")
    ).group(1)
    assert opt_batch in [int(x) for x in prefs.split(",")] and opt_batch <= max_batch


def test_cupy_kernel_cache_is_a_volume():
    c = _compose()
    client = c["services"]["client"]
    cache = client["environment"]["CUPY_CACHE_DIR"]
    assert f"cupy-cache:{cache}" in client["volumes"] and "cupy-cache" in c["volumes"]
    assert "engines:/engines" in c["services"]["server"]["volumes"]


def test_compose_config_validates_with_the_compose_cli():
    if shutil.which("docker-compose"):
        cmd = ["docker-compose", "-f", str(DOCKER / "compose.yaml"), "config", "-q"]
    elif (
        shutil.which("docker")
        and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
    ):
        cmd = ["docker", "compose", "-f", str(DOCKER / "compose.yaml"), "config", "-q"]
    else:
        pytest.skip("no docker compose CLI on this machine (apt-get install docker-compose)")
    r = subprocess.run(cmd, capture_output=True, encoding="utf-8")
    assert r.returncode == 0, r.stderr


def test_gpu_config_parses_with_tritons_own_protobuf():
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    cfg = text_format.Parse(GPU_CONFIG.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())
    assert cfg.platform == "tensorrt_plan" and cfg.max_batch_size == contract.MAX_BATCH_SIZE
    assert cfg.input[0].name == contract.INPUT_NAME and cfg.output[0].name == contract.OUTPUT_NAME
    assert model_config_pb2.DataType.Name(cfg.output[0].data_type) == contract.OUTPUT_DTYPE
    # The engine serves the confidence map too (built from the ONNX that has it).
    assert [o.name for o in cfg.output] == [contract.OUTPUT_NAME, contract.CONFIDENCE_NAME]
    assert model_config_pb2.DataType.Name(cfg.output[1].data_type) == contract.CONFIDENCE_DTYPE
    assert list(cfg.output[1].dims) == list(cfg.output[0].dims)


# --- the server entrypoint, run ----------------------------------------------------------------
@pytest.fixture
def server_env(tmp_path):
    """A model repository copy, an engine cache and stand-ins for NVIDIA's tools."""
    bins = tmp_path / "bin"
    bins.mkdir()
    (bins / "trtexec").write_text(
        f"#!{sys.executable}\n"
        + textwrap.dedent(
            """
            import json, sys
            if "--help" in sys.argv:
                print("&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # trtexec --help")
                sys.exit(0)
            out = next(a.split("=", 1)[1] for a in sys.argv if a.startswith("--saveEngine="))
            json.dump({"argv": sys.argv[1:]}, open(out, "w"))
            """
        )
    )
    (bins / "nvidia-smi").write_text("#!/bin/sh\necho '0, NVIDIA L4, 8.9, GPU-1234'\n")
    log = tmp_path / "tritonserver.args"
    (bins / "tritonserver").write_text(f'#!/bin/sh\necho "$@" > {log}\n')
    # A wrapper, not a symlink: a symlinked venv interpreter would lose its site-packages.
    (bins / "python3").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    for f in bins.iterdir():
        f.chmod(0o755)
    repo = tmp_path / "models"
    shutil.copytree(ROOT / "model_repository" / "gpu", repo)
    env = dict(
        os.environ,
        PATH=f"{bins}{os.pathsep}{os.environ['PATH']}",
        MODEL_REPOSITORY=str(repo),
        HEPASCREEN_DIR=str(ROOT),
        ENGINE_ONNX=str(CPU_ONNX),
        ENGINE_CACHE_DIR=str(tmp_path / "engines"),
        PYTHONPATH=str(ROOT),
    )
    env.pop("ENGINE_MAX_BATCH", None)
    env.pop("ENGINE_OPT_BATCH", None)
    env.pop("LD_LIBRARY_PATH", None)
    plan = repo / "hepascreen_vnet" / "1" / "model.plan"
    return env, plan, log, tmp_path / "engines"


def _run_entrypoint(env, *args):
    r = subprocess.run(
        ["bash", str(DOCKER / "entrypoint-server.sh"), *args],
        env=env,
        capture_output=True,
        encoding="utf-8",
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    return r


def test_entrypoint_first_start_restart_and_lower_batch(server_env):
    env, plan, log, cache = server_env
    _run_entrypoint(env, "--log-verbose=1")
    argv = json.loads(plan.read_text(encoding="utf-8"))["argv"]
    assert "--skipInference" in argv and "--fp16" in argv
    assert f"--maxShapes=VOLUME:{_config_max_batch()}x1x64x64x64" in argv
    assert "--optShapes=VOLUME:4x1x64x64x64" in argv
    served = log.read_text(encoding="utf-8").split()
    assert served[:2] == [
        f"--model-repository={env['MODEL_REPOSITORY']}",
        "--disable-auto-complete-config",
    ]
    assert served[-1] == "--log-verbose=1"
    assert len(list(cache.glob("*.plan"))) == 1

    _run_entrypoint(env)  # restart: the cached plan, nothing built
    assert len(list(cache.glob("*.plan"))) == 1

    _run_entrypoint(dict(env, ENGINE_MAX_BATCH="2"))
    assert "--maxShapes=VOLUME:2x1x64x64x64" in json.loads(plan.read_text(encoding="utf-8"))["argv"]
    cfg = (plan.parent.parent / "config.pbtxt").read_text(encoding="utf-8")
    assert re.search(r"^max_batch_size: 2$", cfg, re.M)
    assert re.search(r"preferred_batch_size: \[ 2 \]", cfg)


def test_entrypoint_never_overwrites_a_hand_built_engine(server_env):
    env, plan, log, cache = server_env
    plan.parent.mkdir(parents=True, exist_ok=True)
    plan.write_bytes(b"engine built by hand")
    r = _run_entrypoint(env)
    assert plan.read_bytes() == b"engine built by hand"
    assert "keeping hand-built engine" in r.stderr and log.exists()
    assert not list(cache.glob("*.plan"))


# --- documentation ---------------------------------------------------------------------------
def test_deployment_docs_state_the_driver_floor_and_drop_the_float_variant():
    text = (ROOT / "docs" / "deployment.md").read_text(encoding="utf-8")
    assert "R560" in text and "forward compatib" in text
    assert "--variant float" not in text and "TYPE_FP32" not in text
    assert "add `--gpu`" not in text  # compose already passes it


def test_docs_state_tensorrt_10s_compute_capability_floor():
    """TensorRT 10.x has no Pascal (6.x): docs admitting 6.0 send users to a dead end."""
    for name in ("deployment.md", "gpu-first-run.md"):
        text = (ROOT / "docs" / name).read_text(encoding="utf-8")
        assert "7.0 or later" in text, name
        assert not re.search(r"capability 6\.\d\+|6\.0 or later|\(compute capability 6", text), name


def test_deployment_docs_replace_onnxruntime_by_the_gpu_build_not_beside_it():
    text = (ROOT / "docs" / "deployment.md").read_text(encoding="utf-8")
    assert "pip uninstall -y onnxruntime && pip install" in text and "never both" in text
    assert "gpu_mem_limit_mib" in text and "on-failure:3" in text
    assert "hardwareCompatibilityLevel=ampere+" in text


def test_gpu_first_run_is_at_most_three_commands_with_expected_output():
    text = (ROOT / "docs" / "gpu-first-run.md").read_text(encoding="utf-8")
    commands = re.findall(r"^\$ (.+)$", text, re.M)
    assert 1 <= len(commands) <= 3, commands
    # The device check is one more command, documented after the three (issue 23).
    assert "python -m benchmarks.gpu_check --out" in text.split("## Device check", 1)[1]
    assert "build-engine-only" in text and "compose" in text and "first_run.py" in text
    assert text.count("Expected output") >= len(commands)


# --- first GPU run: the comparison with the CPU reference ------------------------------------------
def _first_run():
    sys.path.insert(0, str(DOCKER))
    try:
        import first_run
    finally:
        sys.path.remove(str(DOCKER))
    return first_run


def test_first_run_names_the_shipped_model_of_client_core_paths():
    """first_run.py spells the path before the package is importable: the same file."""
    assert _first_run().SHIPPED_ONNX == SHIPPED_ONNX


def test_cpu_reference_grades_every_phantom_right():
    fr = _first_run()
    ref = fr.read_rows(fr.REFERENCE)
    assert {c: r["grade"] for c, r in ref.items()} == {
        f"grade_{g}_{s}": g for s, g in fr.SEEDS.items()
    }
    assert all(r["status"] == "ok" for r in ref.values())


def test_first_run_comparison_passes_equal_rows_and_names_each_mismatch():
    fr = _first_run()
    ref = fr.read_rows(fr.REFERENCE)
    lines, problems = fr.compare(ref, {c: dict(r) for c, r in ref.items()})
    assert problems == [] and len(lines) == 1 + len(ref)
    got = {c: dict(r) for c, r in ref.items()}
    case = sorted(got)[0]
    got[case]["ratio"] = str(float(got[case]["ratio"]) + 0.02)  # within FP16 tolerance
    assert fr.compare(ref, got)[1] == []
    got[case]["ratio"] = str(float(got[case]["ratio"]) + 0.05)
    got[case]["grade"] = "severe" if got[case]["grade"] != "severe" else "normal"
    got[case]["liver_volume_ml"] = str(float(got[case]["liver_volume_ml"]) * 1.1)
    del got[sorted(got)[-1]]
    problems = fr.compare(ref, got)[1]
    assert any("ratio" in p for p in problems) and any("grade" in p for p in problems)
    assert any("liver_volume_ml" in p for p in problems) and any("missing" in p for p in problems)


def test_cpu_reference_was_made_with_the_shipped_model():
    """A new export (training/export.py) needs a new reference: the GPU run compares with it."""
    fr = _first_run()
    meta = fr.reference_meta(fr.REFERENCE)
    assert meta.get("model_onnx_sha256") == fr.model_sha256(), (
        "docker/first_run_reference.csv was made with another model: run "
        "`python docker/first_run.py --make-reference` on a CPU machine and commit both files"
    )
    assert {int(k): v for k, v in meta["seeds"].items()} == fr.SEEDS
    assert tuple(meta["shape"]) == fr.SHAPE


@pytest.mark.slow
@pytest.mark.server
def test_first_run_on_cpu_reproduces_the_reference(tmp_path, capsys):
    """The whole command 3 of docs/gpu-first-run.md, on this CPU (bundled server, NumPy)."""
    fr = _first_run()
    assert fr.main(["--device", "cpu", "--out", str(tmp_path / "first-run")]) == 0
    out = capsys.readouterr().out
    assert "FIRST CPU RUN OK: 4/4 scans match the CPU reference" in out
