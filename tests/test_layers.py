"""The layers of ``client/`` (docs/architecture.md "Layers"): no module imports a layer
above its own, each sub-package says what it owns and may import, and ``postprocess``
sees only the foundation.

Imports are read with ``ast`` (every ``import`` statement, including the lazy ones
inside functions), so a violation fails here before it becomes a circle at run time.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Lower number = lower layer; equal numbers are siblings that must not import each other.
RANK = {
    "core": 0,
    "reading": 1,
    "serving": 2,
    "outputs": 2,
    "pipeline": 3,
    "scaleout": 4,
    "node": 5,
    "cli": 6,
}
# Entry modules above every layer: the lazy public-name map and the documented
# ``python -m client.batch`` / ``python -m client`` entries.
ENTRIES = {"client", "client.batch", "client.__main__"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, module: str):
    """(line, imported dotted name) for every import in ``path`` (relative ones resolved)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield node.lineno, target
            for a in node.names:  # ``from client.x import y``: y may be a module
                yield node.lineno, f"{target}.{a.name}"


def _layer(dotted: str) -> str | None:
    parts = dotted.split(".")
    if parts[0] != "client" or len(parts) < 2:
        return None
    return parts[1] if parts[1] in RANK else None


def client_modules():
    for path in sorted((ROOT / "client").rglob("*.py")):
        if "model_repository" in path.parts:
            continue
        yield path, _module_name(path)


def test_every_client_module_sits_in_a_layer():
    loose = [m for _, m in client_modules() if m not in ENTRIES and _layer(m) is None]
    assert not loose, f"modules outside the layers (put them in a sub-package): {loose}"


def test_no_module_imports_a_layer_above_its_own():
    wrong = []
    for path, module in client_modules():
        me = _layer(module)
        if me is None:
            continue
        for line, target in _imports(path, module):
            other = _layer(target)
            if other is None or other == me:
                continue
            if RANK[other] >= RANK[me]:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {me} imports {other} ({target})")
    assert not wrong, "imports against the layer order:\n" + "\n".join(sorted(set(wrong)))


@pytest.mark.parametrize("package", sorted(RANK))
def test_each_layer_says_what_it_owns_and_may_import(package):
    doc = ast.get_docstring(ast.parse((ROOT / "client" / package / "__init__.py").read_text()))
    assert doc and "May import:" in doc, f"client/{package}/__init__.py: say what it may import"


def test_postprocess_and_training_see_only_the_foundation_and_reading():
    """The measurement and the trainers may use the contract, errors and the model's
    preprocessing (client.core, client.reading), never the transport or the pipeline."""
    wrong = []
    for pkg in ("postprocess", "training"):
        for path in sorted((ROOT / pkg).glob("*.py")):
            for line, target in _imports(path, _module_name(path)):
                layer = _layer(target)
                if layer is not None and RANK[layer] > RANK["reading"]:
                    wrong.append(f"{path.relative_to(ROOT)}:{line}: {target}")
    assert not wrong, "\n".join(wrong)


def test_the_check_itself_sees_a_wrong_import(tmp_path):
    """The parser resolves relative and lazy imports (the test cannot pass vacuously)."""
    src = "def f():\n    from ..pipeline import screen\n    import client.cli.batch\n"
    probe = tmp_path / "probe.py"
    probe.write_text(src)
    found = [t for _, t in _imports(probe, "client.reading.probe")]
    assert "client.pipeline" in found and "client.pipeline.screen" in found
    assert "client.cli.batch" in found
    assert [_layer(t) for t in found] == ["pipeline", "pipeline", "cli"]
