"""What every benchmark records: the machine it ran on, and its JSON result file."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path


def machine_info(**versions) -> dict:
    """Platform, processor and core count, plus the package ``versions`` given."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        **versions,
    }


def save_result(res: dict, out_dir: Path, name: str) -> Path:
    """Write ``res`` as ``out_dir/name`` (JSON) and print it."""
    text = json.dumps(res, indent=2)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / name
    path.write_text(text)
    print(text)
    return path
