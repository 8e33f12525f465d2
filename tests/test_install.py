"""``pip install .`` (not editable) into a fresh virtual environment works outside the checkout.

The package is built from a copy of the project's sources and installed with
``--no-deps --no-build-isolation`` into a new venv whose only link to the test
environment is a ``.pth`` line naming its site-packages (the dependencies: numpy,
SimpleITK, tritonclient, pytriton, ...). Nothing of the checkout is importable there
(the editable install's hook is not processed through a plain path line), so the
commands below run the installed wheel's own modules and model repository.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "client", "postprocess", "training", "model_repository")


def _run(cmd, cwd, env, timeout=300):
    return subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, encoding="utf-8", timeout=timeout
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    base = tmp_path_factory.mktemp("install")
    src = base / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in SOURCES:
        p = ROOT / name
        if p.is_dir():
            shutil.copytree(p, src / name, ignore=ignore)
        else:
            shutil.copyfile(p, src / name)
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    purelib = _run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                   base, os.environ).stdout.strip()  # fmt: skip
    deps = [p for p in site.getsitepackages() if Path(p).is_dir()]
    deps.append(sysconfig.get_paths()["purelib"])
    (Path(purelib) / "deps_from_test_env.pth").write_text("\n".join(dict.fromkeys(deps)) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    out = _run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps",
         "--no-build-isolation", "--no-index", str(src)],
        base, env,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    shutil.rmtree(src)  # the installed tool must not need its sources
    work = base / "work"
    work.mkdir()
    return venv, Path(purelib), work, env


def test_installed_modules_and_model_come_from_the_venv(installed):
    venv, purelib, work, env = installed
    out = _run([str(venv / "bin" / "python"), "-c", "import client; print(client.__file__)"],
               work, env)  # fmt: skip
    assert out.returncode == 0 and Path(out.stdout.strip()).is_relative_to(purelib), out
    out = _run([str(venv / "bin" / "hepascreen"), "--version"], work, env)
    assert out.returncode == 0 and out.stdout.startswith("hepascreen ")
    out = _run([str(venv / "bin" / "hepascreen"), "version"], work, env)
    info = dict(line.split(": ", 1) for line in out.stdout.splitlines())
    assert Path(info["model_repository"]).is_relative_to(purelib)
    assert len(info["model_sha256"]) == 64


def test_installed_command_screens_with_masks_and_refuses_a_missing_repository(
    installed, shared_data
):
    venv, _, work, env = installed
    ct = shared_data / "totalseg_example" / "ct.nii.gz"
    masks = work / "masks"
    masks.mkdir()
    shutil.copyfile(shared_data / "totalseg_example" / "labels.nii.gz", masks / "ct.nii.gz")
    hs = str(venv / "bin" / "hepascreen")
    out = _run([hs, "screen", str(ct), "-o", "o1", "--masks", "masks", "--quiet"], work, env)
    assert out.returncode == 0, out.stderr[-2000:]
    row = json.loads((work / "o1" / "results.jsonl").read_text(encoding="utf-8"))
    assert row["grade"] == "normal" and row["tool_version"]
    bad = {**env, "HEPASCREEN_MODEL_REPOSITORY": str(work / "nowhere")}
    out = _run([hs, "screen", str(ct), "-o", "o2", "--quiet"], work, bad)
    assert out.returncode == 2 and "HEPASCREEN_MODEL_REPOSITORY" in out.stderr


@pytest.mark.server
@pytest.mark.slow
def test_installed_command_runs_the_bundled_server_from_package_data(installed, shared_data):
    venv, purelib, work, env = installed
    ct = shared_data / "totalseg_example" / "ct.nii.gz"
    out = _run([str(venv / "bin" / "hepascreen"), "screen", str(ct), "-o", "o3", "--quiet"],
               work, env)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    run = json.loads((work / "o3" / "run.json").read_text(encoding="utf-8"))
    assert Path(run["model"]["repository"]).is_relative_to(purelib)
    assert run["status"] == "finished" and run["n_ok"] + run["n_flagged"] == 1
    row = json.loads((work / "o3" / "results.jsonl").read_text(encoding="utf-8"))
    assert row["model_sha256"] == run["model"]["model_sha256"] and row["segmenter"] == "triton"
