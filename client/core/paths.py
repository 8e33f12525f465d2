"""Where the bundled model repository is: one documented rule.

1. ``--model-repository DIR`` (or the ``model_repository=`` argument);
2. the environment variable ``HEPASCREEN_MODEL_REPOSITORY``;
3. the copy installed with the package (``pip install .`` puts the project's
   ``model_repository/`` into ``client/model_repository/``);
4. ``model_repository/`` of the source checkout (``python -m client.batch`` from it,
   or an editable install).

The bundled server serves the ``cpu`` repository (Python backend + ONNX Runtime) on
either device; ``--device gpu`` selects its ``configs/gpu.pbtxt``.
"""

from __future__ import annotations

import os
from pathlib import Path

from client.core import contract
from client.core.errors import ConfigError

ENV_VAR = "HEPASCREEN_MODEL_REPOSITORY"
CLIENT_DIR = Path(__file__).resolve().parents[1]  # the ``client`` package
PROJECT_ROOT = CLIENT_DIR.parent  # the source checkout (or site-packages when installed)
#: The source checkout's repositories: ``cpu`` (ONNX Runtime, bundled) and ``gpu`` (TensorRT).
SOURCE_REPOSITORY = PROJECT_ROOT / "model_repository" / "cpu"
SOURCE_GPU_REPOSITORY = PROJECT_ROOT / "model_repository" / "gpu"


def model_file(repository: Path | str, name: str = "model.onnx") -> Path:
    """``<repository>/hepascreen_vnet/1/<name>``: where a repository keeps the model's file."""
    return Path(repository) / contract.MODEL_NAME / "1" / name


#: The shipped ONNX of the source checkout (benchmarks, training tools, tests).
SHIPPED_ONNX = model_file(SOURCE_REPOSITORY)


def candidate_repositories() -> list[Path]:
    """Steps 3 and 4 of the rule, in order."""
    return [CLIENT_DIR / "model_repository" / "cpu", SOURCE_REPOSITORY]


def model_repository(explicit: str | Path | None = None) -> Path:
    """The model repository the bundled server should load (see the module docstring).

    Raises
    ------
    ConfigError
        When no candidate holds ``hepascreen_vnet/config.pbtxt`` (usage error, exit 2).
    """
    if explicit is not None:
        tried = [("--model-repository", Path(explicit))]
    elif os.environ.get(ENV_VAR):
        tried = [(ENV_VAR, Path(os.environ[ENV_VAR]))]
    else:
        tried = [("installed package", p) for p in candidate_repositories()]
    for _, path in tried:
        if (path / contract.MODEL_NAME / "config.pbtxt").is_file():
            return path.resolve()
    where = "; ".join(f"{how}: {p}" for how, p in tried)
    raise ConfigError(
        f"no model repository with {contract.MODEL_NAME}/config.pbtxt found ({where}); "
        f"pass --model-repository DIR, set {ENV_VAR}, or use --url HOST:PORT / --masks DIR"
    )
