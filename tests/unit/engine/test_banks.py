"""Threshold banks decide exactly what evaluating every rule on every reading decides."""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from engine.banks import bankable
from engine.compiler import CompiledRule, compile_rule
from engine.document import RuleDocument
from engine.evaluation import DeviceView, Event, EventKind
from engine.index import RuleIndex
from model.readings import MetricValue, Reading, Source
from tests.unit.engine._rules import CONTEXT, T0

DEVICES = [DeviceView(f"fz-{n}", "freezer", {"store": f"s{n % 3}"}, ZoneInfo("UTC")) for n in range(6)]


def threshold_rule(n: int, rng: random.Random, **extra: Any) -> CompiledRule:
    operator = rng.choice(["above", "below"])
    level = round(rng.uniform(-20, 0), 1)
    options: dict[str, Any] = {"metric": "temp", "operator": operator, "value": level}
    if rng.random() < 0.5:
        gap = round(rng.uniform(0.1, 3), 1)
        options["clear_at"] = level - gap if operator == "above" else level + gap
    selector: dict[str, Any] = {"type": "freezer"}
    if rng.random() < 0.3:
        selector["labels"] = {"store": f"s{rng.randrange(3)}"}
    document = {
        "name": f"r{n}",
        "devices": selector,
        "when": [{"type": "telemetry.received", "options": {"metrics": ["temp"]}}],
        "if": [{"type": "telemetry.threshold", "options": options}],
        "then": [{"type": "alarm.raise", "options": {"alarm_type": f"a{n}"}}],
        "else": [{"type": "alarm.clear", "options": {"alarm_type": f"a{n}"}}],
        **extra,
    }
    return compile_rule(RuleDocument.model_validate(document), CONTEXT, rule_id=f"r{n:03d}", version=1)


def _run(rules: list[CompiledRule], stream: list[tuple[int, MetricValue]], *, banked: bool) -> list[Any]:
    index = RuleIndex()
    for rule in rules:
        index.put(rule)
    states: dict[tuple[str, str], dict[str, Any]] = {}
    values: dict[str, dict[str, MetricValue]] = {}
    decided = []
    evaluations = 0
    for i, (d, value) in enumerate(stream):
        device = DEVICES[d]
        at = T0 + timedelta(seconds=i)
        reading = Reading("acme", device.id, at, {"temp": value}, Source("test", "bank"))
        values.setdefault(device.id, {})["temp"] = value
        event = Event(EventKind.READING, "acme", device.id, at, reading)
        chosen = (
            index.for_values("acme", device, reading.metrics, lambda rule_id: (rule_id, device.id) in states)
            if banked
            else [r for r in rules if r.selects(device.id, device.type_id, device.labels)]
        )
        for rule in chosen:
            state = states.setdefault((rule.rule_id, device.id), {})
            decision = rule.evaluate(event, device, values[device.id], {}, state)
            evaluations += 1
            index.banks.observe(rule, device.id, state)
            if decision is not None and (decision.fired or decision.cleared):
                decided.append((i, rule.rule_id, device.id, decision.outcome))
    return [sorted(decided), evaluations]


@pytest.mark.parametrize("seed", range(8))
def test_banked_rules_fire_and_clear_exactly_as_evaluating_every_rule(seed: int) -> None:
    rng = random.Random(seed)
    rules = [threshold_rule(n, rng) for n in range(60)]
    assert all(bankable(r) for r in rules)
    # A random walk per device crossing many levels both ways, with now and then a value that
    # is not a number (undecided).
    level = {d: rng.uniform(-20, 0) for d in range(len(DEVICES))}
    stream: list[tuple[int, MetricValue]] = []
    for _ in range(3000):
        d = rng.randrange(len(DEVICES))
        level[d] = min(5.0, max(-25.0, level[d] + rng.gauss(0, 1.5)))
        stream.append((d, "n/a" if rng.random() < 0.01 else round(level[d], 1)))
    full, full_evaluations = _run(rules, stream, banked=False)
    banked, banked_evaluations = _run(rules, stream, banked=True)
    assert full and banked == full
    assert banked_evaluations < full_evaluations / 3  # and most evaluations were skipped


def test_only_rules_a_value_can_flip_are_returned() -> None:
    rng = random.Random(1)
    index = RuleIndex()
    rules = [threshold_rule(n, rng) for n in range(200)]
    for rule in rules:
        index.put(rule)
    device = DEVICES[0]
    # A device seen for the first time, with a state for every rule (as after a restart): every
    # rule that selects it is evaluated once, to learn which are active.
    primed = index.for_values("acme", device, {"temp": -100.0})
    assert {r.rule_id for r in primed} == {
        r.rule_id for r in rules if r.selects(device.id, device.type_id, device.labels)
    }
    for rule in primed:
        state: dict[str, Any] = {}
        reading = Reading("acme", device.id, T0, {"temp": -100.0}, Source("test", "bank"))
        event = Event(EventKind.READING, "acme", device.id, T0, reading)
        assert rule.evaluate(event, device, {"temp": -100.0}, {}, state) is not None
        index.banks.observe(rule, device.id, state)
    # At -100 every "below" rule is active and no "above" rule is: -99 flips nothing.
    assert index.for_values("acme", device, {"temp": -99.0}) == []
    # +10 crosses every "above" level and every "below" rule's clear level.
    assert {r.rule_id for r in index.for_values("acme", device, {"temp": 10.0})} == {
        r.rule_id for r in primed
    }


def test_rules_the_bank_cannot_take_stay_in_the_ordinary_index() -> None:
    rng = random.Random(2)
    always = threshold_rule(1, rng, fire="always")
    traced = threshold_rule(2, rng, trace="all")
    assert bankable(always) is None and bankable(traced) is None
    index = RuleIndex()
    index.put(always)
    index.put(traced)
    assert len(index.for_values("acme", DEVICES[0], {"temp": -100.0})) == 2
    assert len(index.for_values("acme", DEVICES[0], {"temp": -99.0})) == 2


def test_a_new_device_evaluates_only_the_rules_its_first_value_crosses() -> None:
    rng = random.Random(3)
    index = RuleIndex()
    rules = [threshold_rule(n, rng) for n in range(200)]
    for rule in rules:
        index.put(rule)
    device = DEVICES[1]
    first = index.for_values("acme", device, {"temp": -10.0}, lambda _rule_id: False)
    expected = [
        r
        for r in rules
        if r.selects(device.id, device.type_id, device.labels)
        and (
            r.conditions[0].options.value < -10.0
            if r.conditions[0].options.operator == "above"
            else r.conditions[0].options.value > -10.0
        )
    ]
    assert expected and sorted(r.rule_id for r in first) == sorted(r.rule_id for r in expected)


def test_rules_added_replaced_and_removed_mid_stream_decide_as_without_banks() -> None:
    rng = random.Random(11)
    rules = [threshold_rule(n, rng) for n in range(40)]
    debug = {r.rule_id: threshold_rule(int(r.rule_id[1:]), random.Random(0), trace="all") for r in rules}
    level = {d: rng.uniform(-20, 0) for d in range(len(DEVICES))}
    stream = []
    for _ in range(4000):
        d = rng.randrange(len(DEVICES))
        level[d] = min(5.0, max(-25.0, level[d] + rng.gauss(0, 1.5)))
        stream.append((d, round(level[d], 1)))
    # Rules come in over time; some are republished unbankable (trace "all") and back, some go.
    changes: dict[int, list[tuple[str, CompiledRule | str]]] = {}
    for n, rule in enumerate(rules):
        changes.setdefault(0 if n < 10 else rng.randrange(1, 3000), []).append(("put", rule))
    for rule in rng.sample(rules[:10], 5):
        at = rng.randrange(500, 3500)
        changes.setdefault(at, []).append(("put", debug[rule.rule_id]))
        changes.setdefault(at + rng.randrange(1, 400), []).append(("put", rule))
    for rule in rng.sample(rules[10:], 5):
        changes.setdefault(rng.randrange(3000, 4000), []).append(("remove", rule.rule_id))

    def run(banked: bool) -> list[Any]:
        index = RuleIndex()
        live: dict[str, CompiledRule] = {}
        states: dict[tuple[str, str], dict[str, Any]] = {}
        values: dict[str, dict[str, MetricValue]] = {}
        decided = []
        for i, (d, value) in enumerate(stream):
            for op, arg in changes.get(i, []):
                if op == "put":
                    assert isinstance(arg, CompiledRule)
                    index.put(arg)
                    live[arg.rule_id] = arg
                else:
                    assert isinstance(arg, str)
                    index.remove("acme", arg)
                    live.pop(arg)
            device = DEVICES[d]
            at = T0 + timedelta(seconds=i)
            reading = Reading("acme", device.id, at, {"temp": value}, Source("test", "bank"))
            values.setdefault(device.id, {})["temp"] = value
            event = Event(EventKind.READING, "acme", device.id, at, reading)
            if banked:
                chosen = index.for_values(
                    "acme", device, reading.metrics, lambda rid, dev=device.id: (rid, dev) in states
                )
            else:
                chosen = [r for r in live.values() if r.selects(device.id, device.type_id, device.labels)]
            for rule in chosen:
                state = states.setdefault((rule.rule_id, device.id), {})
                decision = rule.evaluate(event, device, values[device.id], {}, state)
                index.banks.observe(rule, device.id, state)
                if decision is not None and (decision.fired or decision.cleared):
                    decided.append((i, rule.rule_id, device.id, decision.outcome))
        return sorted(decided)

    assert run(banked=True) == run(banked=False) != []


def test_banks_are_filed_by_selector_so_other_devices_rules_are_not_scanned() -> None:
    index = RuleIndex()
    rng = random.Random(5)
    for n in range(300):
        rule = threshold_rule(n, rng)
        store = f"s{n % 3}"
        document = rule.document.model_copy(
            update={"devices": rule.document.devices.model_copy(update={"labels": {"store": store}})}
        )
        index.put(compile_rule(document, CONTEXT, rule_id=f"r{n:03d}", version=1))
    device = DEVICES[0]  # store s0: only a third of the rules can select it
    primed = index.for_values("acme", device, {"temp": 100.0}, lambda _rid: False)
    assert primed and all(r.document.devices.labels == {"store": "s0"} for r in primed)


def test_the_quiet_band_is_found_along_the_sorted_levels_not_over_every_rule(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """1,000 "above" rules on every freezer: a device whose value stays below them all gets its
    band from the nearest level, asking one rule whether it selects the device, not 1,000 (a first
    version asked them all, and walked them all after each banked evaluation)."""
    index = RuleIndex()
    for n in range(1000):
        document = {
            "name": f"r{n}",
            "devices": {"type": "freezer"},
            "when": [{"type": "telemetry.received", "options": {"metrics": ["temp"]}}],
            "if": [{"type": "telemetry.threshold", "options": {"metric": "temp", "value": n / 10}}],
            "then": [{"type": "alarm.raise", "options": {"alarm_type": "warm"}}],
        }
        index.put(
            compile_rule(RuleDocument.model_validate(document), CONTEXT, rule_id=f"r{n:04d}", version=1)
        )
    asked: list[str] = []
    selects = CompiledRule.selects

    def counted(rule: CompiledRule, device_id: str, type_id: str, labels: Any) -> bool:
        asked.append(rule.rule_id)
        return selects(rule, device_id, type_id, labels)

    monkeypatch.setattr(CompiledRule, "selects", counted)
    device = DEVICES[0]
    for value in (-5.0, -4.0, -1.0, -0.5):  # below every level: nothing to evaluate
        assert index.banked("acme", device, {"temp": value}, lambda _rule_id: False) == []
    assert asked == ["r0000"]  # the nearest level bounds the band, asked once
    # 12.34 crosses 124 levels: those rules are evaluated; their selector is asked once each.
    crossed = index.banked("acme", device, {"temp": 12.34}, lambda _rule_id: False)
    assert [r.rule_id for r in crossed] == [f"r{n:04d}" for n in range(124)]
    assert len(asked) == 124
