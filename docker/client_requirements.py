"""Print the client image's pip requirements: the project's dependencies minus the server-only ones.

The client container talks to the server container over gRPC (``--url``): it never
starts the bundled CPU server, so the packages that exist only for that server
(``nvidia-pytriton``: a Triton binary, about 700 MB; ``onnxruntime``: the CPU model)
are left out, and the ``gpu`` extra (CuPy) is added. Read from ``pyproject.toml`` at
image build time so that the pins stay the project's own (tests/test_docker.py runs
this script). Usage: ``python3 docker/client_requirements.py [pyproject.toml]``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

SERVER_ONLY = {"nvidia-pytriton", "onnxruntime"}
EXTRAS = ("gpu",)


def _name(req: str) -> str:
    return re.split(r"[\s\[<>=!~;]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def client_requirements(pyproject: Path) -> list[str]:
    """Requirement strings for the client image, in pyproject order."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    reqs = [r for r in project["dependencies"] if _name(r) not in SERVER_ONLY]
    for extra in EXTRAS:
        reqs += project["optional-dependencies"][extra]
    return reqs


if __name__ == "__main__":
    path = (
        Path(sys.argv[1])
        if len(sys.argv) > 1
        else Path(__file__).resolve().parents[1] / "pyproject.toml"
    )
    print("\n".join(client_requirements(path)))
