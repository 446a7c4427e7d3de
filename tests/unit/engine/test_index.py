"""The index hands a reading only to the rules of its tenant that trigger on its metrics."""

from __future__ import annotations

from engine.compiler import compile_rule
from engine.document import RuleDocument
from engine.evaluation import EventKind
from engine.index import RuleIndex
from engine.nodes.base import CompileContext
from tests.unit.engine._rules import FREEZER


def _rule(tenant: str, rule_id: str, when: list[dict[str, object]]) -> object:
    document = RuleDocument.model_validate({"name": rule_id, "when": when})
    return compile_rule(document, CompileContext(tenant, FREEZER), rule_id=rule_id, version=1)


def test_lookup_by_tenant_metric_and_kind() -> None:
    index = RuleIndex()
    temp = _rule("acme", "temp", [{"type": "telemetry.received", "options": {"metrics": ["temp"]}}])
    anything = _rule("acme", "any", [{"type": "telemetry.received", "options": {}}])
    offline = _rule("acme", "offline", [{"type": "device.status", "options": {"to": ["offline"]}}])
    foreign = _rule("globex", "temp", [{"type": "telemetry.received", "options": {"metrics": ["temp"]}}])
    for rule in (temp, anything, offline, foreign):
        index.put(rule)  # type: ignore[arg-type]
    assert {r.rule_id for r in index.for_reading("acme", {"temp": 1})} == {"temp", "any"}
    assert {r.rule_id for r in index.for_reading("acme", {"door_open": True})} == {"any"}
    assert [r.tenant_id for r in index.for_reading("globex", {"temp": 1})] == ["globex"]
    assert [r.rule_id for r in index.for_event("acme", EventKind.STATUS)] == ["offline"]
    index.remove("acme", "temp")
    assert {r.rule_id for r in index.for_reading("acme", {"temp": 1})} == {"any"}
    index.put(temp)  # type: ignore[arg-type]
    index.put(temp)  # a new version replaces, never duplicates
    assert len(index.for_reading("acme", {"temp": 1})) == 2 and len(index) == 4
