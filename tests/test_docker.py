"""docker/ files, checked by parsing (no Docker engine on this machine)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"


def _copy_sources(dockerfile: Path) -> list[str]:
    out = []
    for line in dockerfile.read_text().splitlines():
        m = re.match(r"\s*COPY\s+(?!--from)(.+)", line)
        if m:
            parts = m.group(1).split()
            out += parts[:-1]
    return out


@pytest.mark.parametrize("name", ["Dockerfile.server", "Dockerfile.client"])
def test_every_copied_path_exists(name):
    srcs = _copy_sources(DOCKER / name)
    assert srcs
    missing = [s for s in srcs if not (ROOT / s).exists()]
    assert not missing, missing


def test_server_image_builds_the_engine_and_uses_the_gpu_repository():
    text = (DOCKER / "Dockerfile.server").read_text()
    assert re.search(r"FROM nvcr.io/nvidia/tritonserver:\$\{TRITON_VERSION\}-py3", text)
    entry = (DOCKER / "entrypoint-server.sh").read_text()
    assert "training.build_engine" in entry and "--model-repository=/models" in entry
    assert "model_repository/gpu /models" in text


def test_compose_wiring_and_health_checks():
    c = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    server, client = c["services"]["server"], c["services"]["client"]
    assert "v2/health/ready" in " ".join(server["healthcheck"]["test"])
    assert client["depends_on"]["server"]["condition"] == "service_healthy"
    assert all(
        p.startswith("127.0.0.1:") for p in server["ports"]
    )  # loopback unless told otherwise
    assert "--url" in client["command"] and "server:8001" in client["command"]
    for svc in (server, client):
        assert (ROOT / "docker" / svc["build"]["context"] / svc["build"]["dockerfile"]).exists()
        assert svc["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


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
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
