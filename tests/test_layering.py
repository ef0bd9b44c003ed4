"""The layers import one way (data_prep <- trainables <- search_spaces <- platform), and only the entry point
imports the command modules, so command code never turns into library code other modules lean on."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAYERS = ["data_prep", "trainables", "search_spaces", "platform"]  # each may import those before it
ENTRY_POINT = REPO / "platform" / "cli.py"


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every ``celltune.*`` module imported by ``path`` (at any depth: lazy imports count too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            found.extend((node.lineno, name) for name in names if name.startswith("celltune."))
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names if alias.name.startswith("celltune."))
    return found


def _modules() -> list[tuple[str, Path]]:
    return [(layer, path) for layer in LAYERS for path in sorted((REPO / layer).rglob("*.py"))]


def test_layers_import_only_downwards():
    wrong = []
    for layer, path in _modules():
        allowed = LAYERS[: LAYERS.index(layer) + 1]
        for line, name in _imports(path):
            target = name.split(".")[1]
            if target in LAYERS and target not in allowed:
                wrong.append(f"{path.relative_to(REPO)}:{line} ({layer}) imports {name}")
    assert not wrong, "\n".join(wrong)


def test_only_the_entry_point_imports_command_modules():
    wrong = []
    for _, path in _modules():
        if path == ENTRY_POINT:
            continue
        for line, name in _imports(path):
            parts = name.split(".")
            if len(parts) > 2 and parts[1] == "platform" and parts[2].startswith("cli_"):
                wrong.append(f"{path.relative_to(REPO)}:{line} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_the_checks_see_the_tree():
    """Guard against a walk that finds nothing (and so passes vacuously)."""
    modules = _modules()
    assert {layer for layer, _ in modules} == set(LAYERS) and len(modules) > 60
    assert ("celltune.platform.cli_train" in {name for _, name in _imports(ENTRY_POINT)}
            or any("cli_train" in name for _, name in _imports(ENTRY_POINT)))
