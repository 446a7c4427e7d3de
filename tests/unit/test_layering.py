"""The layout's one rule: dependencies between top-level packages point downward (ADR 0002)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Top to bottom, as in ARCHITECTURE.md: a package may import only packages below it.
LAYERS = [
    "server",
    "editor",
    "api",
    "engine",
    "notifiers",
    "devices",
    "pipeline",
    "connectors",
    "storage",
    "model",
]


def _imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names & set(LAYERS)


def layering_violations(root: Path = ROOT) -> list[str]:
    """Every import of a package at the same level or above, as 'file: imports pkg'."""
    found = []
    for index, package in enumerate(LAYERS):
        for path in sorted((root / package).rglob("*.py")) if (root / package).is_dir() else []:
            for imported in sorted(_imported_packages(path)):
                if LAYERS.index(imported) < index:
                    found.append(f"{path.relative_to(root)}: imports {imported}")
    return found


def test_dependencies_point_downward() -> None:
    assert layering_violations() == []


def test_the_check_catches_an_upward_import(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "bad.py").write_text("from api.auth import Principal\n")
    assert layering_violations(tmp_path) == ["model/bad.py: imports api"]
