"""Third-party rule nodes: installed packages register through the ``flatgigs.nodes`` entry points
when an app starts, and a key that is already taken stops the start-up.

Each test installs a real distribution the way pip leaves one in site-packages (a module next to
a ``<name>.dist-info`` directory with ``METADATA`` and ``entry_points.txt``) in a temporary
directory put on ``sys.path``, where ``importlib.metadata`` finds it. The process-wide registry
is restored after each test.
"""

from __future__ import annotations

import importlib
import logging
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from engine.registry import REGISTRY, DuplicateNodeError, NodePackageError
from server.app import create_app
from server.settings import Settings
from storage.database import Database
from tests.conftest import TenantFactory

PARITY_NODE = '''
"""Rule nodes of the ACME company."""

from typing import Any

from pydantic import Field

from engine.evaluation import EvalContext
from engine.nodes.base import Condition, Options
from engine.registry import NodeKind, NodeRegistry


class ParityOptions(Options):
    """Which metric must be even."""

    metric: str = Field(min_length=1, max_length=63, json_schema_extra={"widget": "metric"})


class EvenCondition(Condition):
    """True when the metric's latest value is an even whole number."""

    def _check(self, ctx: EvalContext) -> tuple[bool | None, str, dict[str, Any]]:
        value = ctx.values.get(self.options.metric)
        if not isinstance(value, int | float):
            return None, "no number yet", {}
        return value % 2 == 0, f"{value} is even", {"value": value}

    def metrics(self) -> frozenset[str]:
        return frozenset({self.options.metric})


def register(registry: NodeRegistry) -> None:
    registry.register(
        "{key}", NodeKind.CONDITION, options=ParityOptions, title="Even value", examples=({"metric": "temp"},)
    )(EvenCondition)
'''


class Site:
    """A directory on ``sys.path`` holding installed distributions."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root = root
        self._monkeypatch = monkeypatch
        monkeypatch.syspath_prepend(str(root))

    def install(self, dist: str, entry_points: dict[str, str], modules: dict[str, str]) -> None:
        """Install distribution ``dist`` 1.0 with ``flatgigs.nodes`` entry points and modules."""
        for module, source in modules.items():
            (self.root / f"{module}.py").write_text(textwrap.dedent(source))
            self._monkeypatch.delitem(sys.modules, module, raising=False)  # forgotten afterwards
        info = self.root / f"{dist.replace('-', '_')}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
        (info / "entry_points.txt").write_text(f"[flatgigs.nodes]\n{lines}")
        importlib.invalidate_caches()


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    """A site directory for the test; the registry and the imported modules are restored after it."""
    # Copies, put back by monkeypatch whatever the test registered.
    monkeypatch.setattr(REGISTRY, "_types", dict(REGISTRY._types))
    monkeypatch.setattr(REGISTRY, "_entry_points", set(REGISTRY._entry_points))
    root = tmp_path / "site-packages"
    root.mkdir()
    yield Site(root, monkeypatch)


def _parity(key: str) -> str:
    return PARITY_NODE.replace("{key}", key)


async def test_an_installed_node_package_is_served_and_compiles(
    site: Site,
    settings: Settings,
    database: Database,
    tenants: TenantFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    site.install(
        "acme-rule-nodes", {"acme": "acme_rule_nodes:register"}, {"acme_rule_nodes": _parity("acme.even")}
    )
    assert REGISTRY.get("acme.even") is None
    with caplog.at_level(logging.INFO):
        app = create_app(settings, database)
    assert "acme.even" in caplog.text and "acme-rule-nodes 1.0" in caplog.text
    create_app(settings, database)  # a second app of the same process: nothing registers twice

    tenant = await tenants.create()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        nodes = (await http.get("/api/v1/rule-nodes", headers=tenant.headers)).json()
        [even] = [n for n in nodes if n["key"] == "acme.even"]
        assert even["kind"] == "condition" and even["version"] == 1 and even["title"] == "Even value"
        assert even["description"] == "True when the metric's latest value is an even whole number."
        assert even["options_schema"]["properties"]["metric"]["widget"] == "metric"
        assert even["examples"] == [{"metric": "temp"}]
        rule = {
            "name": "Even temperatures",
            "when": [{"type": "telemetry.received", "options": {"metrics": ["temp"]}}],
            "if": [{"type": "acme.even", "options": {"metric": "temp"}}],
        }
        valid = await http.post("/api/v1/rules/validate", json={"document": rule}, headers=tenant.headers)
        assert valid.status_code == 200, valid.text
        rule["if"] = [{"type": "acme.even", "options": {}}]  # its options model validates it
        invalid = await http.post("/api/v1/rules/validate", json={"document": rule}, headers=tenant.headers)
        assert invalid.status_code == 422
        [error] = invalid.json()["errors"]
        assert (error["path"], error["field"]) == ("if/0", "options.metric")


def test_a_package_taking_a_built_in_key_stops_the_start_up(site: Site, settings: Settings) -> None:
    builtin = REGISTRY.get("telemetry.threshold")
    assert builtin is not None
    site.install(
        "shadow-nodes", {"shadow": "shadow_nodes:register"}, {"shadow_nodes": _parity("telemetry.threshold")}
    )
    with pytest.raises(DuplicateNodeError) as raised:
        create_app(settings)
    message = str(raised.value)
    assert "'telemetry.threshold'" in message and "shadow_nodes:register" in message
    assert "shadow-nodes 1.0" in message and "engine.nodes.conditions.ThresholdCondition" in message
    assert REGISTRY.get("telemetry.threshold") is builtin
    with pytest.raises(DuplicateNodeError):  # refused again at the next attempt, not half-loaded
        create_app(settings)


def test_two_packages_with_one_key_stop_the_start_up_and_register_nothing_of_the_second(
    site: Site, settings: Settings
) -> None:
    both = '''
        from engine.registry import NodeRegistry
        from {first} import register as register_even
        from {first} import ParityOptions, EvenCondition
        from engine.registry import NodeKind

        class OddCondition(EvenCondition):
            """True when the metric is odd."""

        def register(registry: NodeRegistry) -> None:
            odd = registry.register("beta.odd", NodeKind.CONDITION, options=ParityOptions, title="Odd")
            odd(OddCondition)
            register_even(registry)
    '''
    site.install("alpha-nodes", {"alpha": "alpha_nodes:register"}, {"alpha_nodes": _parity("shared.even")})
    site.install(
        "beta-nodes", {"beta": "beta_nodes:register"}, {"beta_nodes": both.replace("{first}", "alpha_nodes")}
    )
    with pytest.raises(
        DuplicateNodeError, match=r"'beta = beta_nodes:register' of beta-nodes 1\.0 .*'shared\.even'"
    ):
        create_app(settings)
    assert REGISTRY.get("shared.even") is not None  # alpha, loaded first (entry points by name)
    assert REGISTRY.get("beta.odd") is None  # beta is taken whole or not at all


def test_a_package_that_fails_to_load_stops_the_start_up(site: Site, settings: Settings) -> None:
    site.install(
        "broken-nodes",
        {"broken": "broken_nodes:register"},
        {"broken_nodes": "import not_installed_anywhere\n"},
    )
    with pytest.raises(
        NodePackageError, match=r"'broken = broken_nodes:register' of broken-nodes 1\.0 .*not_installed"
    ):
        create_app(settings)
