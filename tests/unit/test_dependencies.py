"""Every third-party module the product or its tests import is declared in pyproject.toml.

A package that happens to be installed on a developer's machine but is not declared breaks the
fresh install CI does; this catches it before CI does.
"""

from __future__ import annotations

import ast
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = [
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
LOCAL = {*PRODUCT, "tests", "bench"}


def _imports(paths: list[Path]) -> set[str]:
    found: set[str] = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return {name for name in found if name not in LOCAL and name not in sys.stdlib_module_names}


def _declared(extra: str | None = None) -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    if extra:
        requirements += project["optional-dependencies"][extra]
    names = set()
    for requirement in requirements:
        name = requirement.split(";")[0]
        for sep in "<>=!~[ ":
            name = name.split(sep)[0]
        names.add(name.strip().lower().replace("_", "-"))
    return names


def _undeclared(paths: list[Path], declared: set[str]) -> list[str]:
    distributions = packages_distributions()
    missing = []
    for module in sorted(_imports(paths)):
        dists = {d.lower().replace("_", "-") for d in distributions.get(module, [module])}
        if not dists & declared:
            missing.append(f"{module} (from {sorted(dists)})")
    return missing


def test_product_imports_are_declared() -> None:
    paths = [p for package in PRODUCT if (ROOT / package).is_dir() for p in (ROOT / package).rglob("*.py")]
    assert _undeclared(paths, _declared()) == []


def test_test_imports_are_declared() -> None:
    paths = list((ROOT / "tests").rglob("*.py")) + list((ROOT / "bench").rglob("*.py"))
    assert _undeclared(paths, _declared("test")) == []
