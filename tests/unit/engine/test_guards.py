"""Guards skip only evaluations that could not change anything: the engine decides as without them."""

from __future__ import annotations

import dataclasses
import random
from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from engine.compiler import CompiledRule, compile_rule
from engine.core import EngineCore
from engine.document import RuleDocument
from engine.evaluation import DeviceView, Event, EventKind
from engine.guards import guard_for
from model.readings import MetricValue, Reading, Source
from tests.unit.engine._rules import CONTEXT, T0, rule

DEVICES = [DeviceView(f"fz-{n}", "freezer", {"store": f"s{n % 3}"}, ZoneInfo("UTC")) for n in range(5)]
THRESHOLD = {"type": "telemetry.threshold", "options": {"metric": "temp", "value": -10, "clear_at": -12}}


def _condition(rng: random.Random) -> dict[str, Any]:
    level = round(rng.uniform(-16, -4), 1)
    threshold = {"type": "telemetry.threshold", "options": {"metric": "temp", "value": level}}
    if rng.random() < 0.5:
        threshold["options"]["clear_at"] = round(level - rng.uniform(0.5, 3), 1)
    expression = {
        "type": "expression",
        "options": {
            "expression": rng.choice(
                [
                    f"temp > {level} and not door_open",
                    f"temp < {level} or door_open",
                    f"temp > {level} and temp < {level + 4}",
                    f"mode == 'defrost' and temp > {level}",
                    f"temp + 1 > {level}",  # arithmetic: the raw value counts
                ]
            )
        },
    }
    inner = rng.choice([threshold, expression])
    shape = rng.randrange(6)
    if shape == 5:  # a sliding window: every sample counts
        function = rng.choice(["mean", "min", "max", "count", "rate"])
        value = {"count": rng.choice([3, 5, 8]), "rate": rng.choice([-0.02, 0.0, 0.02])}.get(function, level)
        window_s = rng.choice([30, 60, 200])
        options = {"metric": "temp", "function": function, "window_s": window_s, "value": value}
        return {
            "type": "aggregate.window",
            "options": {**options, "operator": rng.choice(["above", "below"])},
        }
    if shape == 0:
        return inner
    if shape == 1:
        clear = rng.choice([0, 20, 60])
        return {
            "type": "duration",
            "options": {"seconds": rng.choice([30, 60, 120]), "clear_seconds": clear},
            "condition": inner,
        }
    if shape == 2:
        return {
            "type": "consecutive",
            "options": {"count": rng.randint(1, 5), "clear_count": rng.randint(1, 3)},
            "condition": inner,
        }
    if shape == 3:
        return {"all": [inner, threshold if inner is expression else expression]}
    return {"not": inner}


def random_rule(n: int, rng: random.Random) -> CompiledRule:
    document = {
        "name": f"r{n}",
        "devices": {"type": "freezer", **({"labels": {"store": f"s{n % 3}"}} if n % 4 == 0 else {})},
        "when": [{"type": "telemetry.received", "options": {"metrics": ["temp"]}}],
        "if": [_condition(rng)],
        "then": [{"type": "alarm.raise", "options": {"alarm_type": f"a{n}"}}],
        "else": [{"type": "alarm.clear", "options": {"alarm_type": f"a{n}"}}],
        "throttle": {"min_interval_s": rng.choice([0, 0, 90])},
    }
    return compile_rule(RuleDocument.model_validate(document), CONTEXT, rule_id=f"r{n:03d}", version=1)


def _stream(rng: random.Random, count: int) -> list[tuple[int, dict[str, MetricValue]]]:
    """Per device a random walk of temp crossing the levels, with the door and mode now and then
    changing in readings that trigger nothing (no temp), and some readings carrying temp and the
    door together (the same rules reached through two metric sets)."""
    level = {d: rng.uniform(-16, -4) for d in range(len(DEVICES))}
    out: list[tuple[int, dict[str, MetricValue]]] = []
    for _ in range(count):
        d = rng.randrange(len(DEVICES))
        roll = rng.random()
        if roll < 0.06:
            out.append((d, {"door_open": rng.random() < 0.5}))
        elif roll < 0.08:
            out.append((d, {"mode": rng.choice(["normal", "defrost"])}))
        else:
            level[d] = min(0.0, max(-20.0, level[d] + rng.gauss(0, 0.8)))
            reading: dict[str, MetricValue] = {"temp": "n/a" if rng.random() < 0.005 else round(level[d], 1)}
            if roll > 0.7:  # the same rules through another metric set (another level group)
                reading["door_open"] = rng.random() < 0.3
            out.append((d, reading))
    return out


def _run(
    rules: list[CompiledRule], stream: list[tuple[int, dict[str, MetricValue]]]
) -> tuple[list[Any], int]:
    """Readings every 7 s through an EngineCore, timers fired before each reading (as the runner)."""
    core = EngineCore()
    core.index.replace_all(rules)
    decided: list[Any] = []
    evaluations = 0
    for i, (d, metrics) in enumerate(stream):
        device = DEVICES[d]
        at = T0 + timedelta(seconds=7 * i)
        for key, due in list(core.due(at)):
            compiled = core.index.get("acme", key[1])
            assert compiled is not None
            decision = core.evaluate(
                compiled, Event(EventKind.TIMER, "acme", key[2], due), DEVICES[int(key[2][3:])]
            )
            if decision is not None:
                evaluations += 1
                if decision.wake_at is not None and decision.wake_at > due:
                    core.schedule(key, decision.wake_at)
                if decision.fired or decision.cleared or decision.throttled or decision.traced:
                    decided.append((i, "timer", key[1], key[2], decision.outcome))
        reading = Reading("acme", device.id, at, metrics, Source("test", "guards"))
        if not core.take(reading):
            continue
        event = Event(EventKind.READING, "acme", device.id, at, reading)
        for compiled in core.rules_for(reading, device):
            decision = core.evaluate(compiled, event, device)
            if decision is None:
                continue
            evaluations += 1
            if decision.wake_at is not None:
                core.schedule(("acme", compiled.rule_id, device.id), decision.wake_at)
            if decision.fired or decision.cleared or decision.throttled or decision.traced:
                decided.append((i, "reading", compiled.rule_id, device.id, decision.outcome))
    return decided, evaluations


@pytest.mark.parametrize("seed", range(4))
def test_guarded_rules_decide_and_trace_exactly_as_evaluating_every_reading(seed: int) -> None:
    rng = random.Random(seed)
    rules = [random_rule(n, rng) for n in range(40)]
    assert sum(r.guard is not None for r in rules) == len(rules)
    stream = _stream(rng, 4000)
    reference, all_evaluations = _run([dataclasses.replace(r, guard=None) for r in rules], stream)
    guarded, evaluations = _run(rules, stream)
    # Every firing, clear and throttle, and every trace (a change of result), at the same reading.
    assert sorted(guarded) == sorted(reference)
    assert sum(1 for *_, outcome in reference if outcome == "fired") > 20
    assert evaluations < all_evaluations / 3  # and most evaluations were skipped


def test_what_a_guard_watches() -> None:
    threshold = rule(**{"if": [THRESHOLD]})
    assert threshold.guard is not None and threshold.guard.metrics == {"temp": (-12.0, -10.0)}
    mixed = rule(
        **{
            "if": [
                {"type": "duration", "options": {"seconds": 300}, "condition": THRESHOLD},
                {"type": "expression", "options": {"expression": "temp > -5 and not door_open"}},
            ]
        }
    )
    assert mixed.guard is not None and mixed.guard.metrics == {
        "temp": (-12.0, -10.0, -5.0),
        "door_open": None,
    }
    arithmetic = rule(
        **{"if": [THRESHOLD, {"type": "expression", "options": {"expression": "temp + 1 > 0"}}]}
    )
    assert arithmetic.guard is not None and arithmetic.guard.metrics == {"temp": None}


@pytest.mark.parametrize(
    "extra",
    [
        {
            "if": [
                {"type": "aggregate.window", "options": {"metric": "temp", "window_s": 60, "value": -10}},
                THRESHOLD,
            ]
        },
        {"if": [THRESHOLD, {"type": "time.window", "options": {"start": "22:00", "end": "06:00"}}]},
        {"if": [THRESHOLD], "fire": "always"},
        {"if": [THRESHOLD], "trace": "all"},
    ],
    ids=["window-and-more", "time-of-day", "fire-always", "trace-all"],
)
def test_rules_whose_every_evaluation_may_matter_have_no_guard(extra: dict[str, Any]) -> None:
    compiled = rule(**extra)
    assert compiled.guard is None
    assert guard_for(compiled.document, compiled.conditions) is None


def test_a_signature_tells_levels_equality_and_values_that_are_not_numbers_apart() -> None:
    guard = rule(**{"if": [THRESHOLD]}).guard
    assert guard is not None
    sig = guard.signature
    assert sig({"temp": -20.0}) == sig({"temp": -13}) != sig({"temp": -12.0}) != sig({"temp": -11.0})
    assert sig({"temp": -11.0}) == sig({"temp": -10.5}) != sig({"temp": -10.0}) != sig({"temp": 3.0})
    assert len({sig({"temp": v}) for v in (True, 1, "1", None, float("nan"), 1.0)}) == 5  # 1 == 1.0


def test_a_running_count_is_evaluated_on_every_reading_until_it_settles() -> None:
    compiled = rule(
        **{"if": [{"type": "consecutive", "options": {"count": 3, "clear_count": 2}, "condition": THRESHOLD}]}
    )
    core = EngineCore()
    core.index.put(compiled)
    device = DEVICES[0]
    evaluated = []
    for i, temp in enumerate([-15.0, -15.0, -5.0, -5.0, -5.0, -5.0, -5.0, -15.0, -15.0, -15.0, -15.0]):
        at = T0 + timedelta(seconds=10 * i)
        reading = Reading("acme", device.id, at, {"temp": temp}, Source("test", "guards"))
        core.take(reading)
        for found in core.rules_for(reading, device):
            decision = core.evaluate(found, Event(EventKind.READING, "acme", device.id, at, reading), device)
            assert decision is not None
            evaluated.append((i, decision.outcome))
    # The first reading; the count toward 3 from the crossing; the count toward 2 misses.
    assert evaluated == [(0, "false"), (2, "false"), (3, "false"), (4, "fired"), (7, "true"), (8, "cleared")]


def _duration_core() -> tuple[EngineCore, CompiledRule]:
    """A core with one rule: temp above -10 (THRESHOLD) for a minute."""
    compiled = rule(**{"if": [{"type": "duration", "options": {"seconds": 60}, "condition": THRESHOLD}]})
    core = EngineCore()
    core.index.put(compiled)
    return core, compiled


def _feed(core: EngineCore, seconds: int, temp: float) -> list[str]:
    """A reading of the first device as the runner handles it: the outcomes of the rules evaluated."""
    device = DEVICES[0]
    at = T0 + timedelta(seconds=seconds)
    reading = Reading("acme", device.id, at, {"temp": temp}, Source("test", "guards"))
    core.take(reading)
    out = []
    for found in core.rules_for(reading, device):
        decision = core.evaluate(found, Event(EventKind.READING, "acme", device.id, at, reading), device)
        assert decision is not None
        if decision.wake_at is not None:
            core.schedule(("acme", found.rule_id, device.id), decision.wake_at)
        out.append(decision.outcome)
    return out


def test_a_due_timer_makes_a_reading_evaluate() -> None:
    core, _ = _duration_core()
    assert _feed(core, 0, -5.0) == ["false"]  # the crossing starts the minute
    assert _feed(core, 30, -5.0) == []  # nothing can change before the timer is due
    assert core.skipped == 1
    assert _feed(core, 61, -5.0) == [
        "fired"
    ]  # the timer (due at 60 s) was not fired yet: the reading decides


def test_a_duration_that_stops_before_its_timer_cancels_the_timer() -> None:
    """The pending timer is the one the last evaluation asked for (as the runner persists it): a
    freezer back below the level before its minute is up needs no evaluation at the minute."""
    core, compiled = _duration_core()
    key = ("acme", compiled.rule_id, DEVICES[0].id)
    assert _feed(core, 0, -5.0) == ["false"] and core.scheduled[key] == T0 + timedelta(seconds=60)
    assert _feed(core, 20, -15.0) == ["false"]  # back below: the minute stops
    assert key not in core.scheduled
    assert list(core.due(T0 + timedelta(seconds=90))) == []  # nothing fires at the minute
    assert _feed(core, 100, -5.0) == ["false"] and core.scheduled[key] == T0 + timedelta(seconds=160)
