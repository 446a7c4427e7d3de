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


def test_for_device_hands_out_exactly_the_rules_that_select_the_device() -> None:
    import random
    from zoneinfo import ZoneInfo

    from engine.evaluation import DeviceView

    rng = random.Random(7)
    stores, regions = [f"s{i}" for i in range(6)], ["north", "south"]
    devices = [
        DeviceView(
            f"d{i}",
            rng.choice(["freezer", "meter"]),
            {"store": rng.choice(stores), "region": rng.choice(regions)},
            ZoneInfo("UTC"),
        )
        for i in range(30)
    ]
    index = RuleIndex()
    for n in range(200):
        selector: dict[str, object] = {}
        if rng.random() < 0.3:
            selector["ids"] = rng.sample([d.id for d in devices], rng.randint(1, 3))
        if rng.random() < 0.6:
            selector["type"] = rng.choice(["freezer", "meter"])
        if rng.random() < 0.7:
            picks = rng.sample(
                [("store", rng.choice(stores)), ("region", rng.choice(regions))], rng.randint(1, 2)
            )
            selector["labels"] = dict(picks)
        metrics = rng.choice([["temp"], ["door_open"], ["temp", "door_open"], []])
        when = [{"type": "telemetry.received", "options": {"metrics": metrics}}]
        document = RuleDocument.model_validate({"name": f"r{n}", "devices": selector, "when": when})
        index.put(compile_rule(document, CompileContext("acme", FREEZER), rule_id=f"r{n}", version=1))
    for n in range(0, 200, 7):  # a removed rule leaves no trace in any bucket
        index.remove("acme", f"r{n}")
    for device in devices:
        for metrics in ({"temp": 1.0}, {"door_open": True}, {"temp": 1.0, "door_open": False}, {"mode": "x"}):
            expected = {
                r.rule_id
                for r in index.for_reading("acme", metrics)
                if r.selects(device.id, device.type_id, device.labels)
            }
            found = [r.rule_id for r in index.for_device("acme", device, metrics)]
            assert sorted(found) == sorted(expected) and len(found) == len(set(found))
    assert index.for_device("globex", devices[0], {"temp": 1.0}) == []
