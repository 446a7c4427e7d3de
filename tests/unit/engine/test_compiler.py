"""Whole rules: Olivia's freezer rule, traces that explain, throttling, restarts, bad rules."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from engine.document import MAX_DEPTH, MAX_NODES
from engine.errors import RuleValidationError
from engine.examples import freezer_rule
from tests.unit.engine._rules import T0, Device, rule

OLIVIA: dict[str, Any] = freezer_rule()


def _run(device: Device, temps: list[float], start_s: int = 0, every_s: int = 10) -> list[Any]:
    decisions = []
    for i, temp in enumerate(temps):
        at = T0 + timedelta(seconds=start_s + i * every_s)
        for wake in _due(decisions, at):
            decisions.append(device.timer(wake))
        decisions.append(device.reading(at, temp=temp))
    return decisions


def _due(decisions: list[Any], at: Any) -> list[Any]:
    pending = [
        d.wake_at for d in decisions[-1:] if d is not None and d.wake_at is not None and d.wake_at <= at
    ]
    return pending


def test_olivias_rule_fires_once_after_five_minutes_and_clears_with_hysteresis() -> None:
    device = Device(rule(**OLIVIA))
    warm = _run(device, [-5.0] * 40)  # a failed compressor: 400 s above -10
    fired = [d for d in warm if d is not None and d.fired]
    assert len(fired) == 1
    assert fired[0].at == T0 + timedelta(seconds=300)
    assert [c.node for c in fired[0].calls] == ["alarm.raise", "notify"]
    assert fired[0].calls[0].options == {"alarm_type": "freezer-warm", "severity": "major", "message": ""}
    # Back to -11: inside the hysteresis band, the alarm stays.
    band = _run(device, [-11.0] * 20, start_s=400)
    assert not any(d is not None and (d.fired or d.cleared) for d in band)
    # Below -12 for two minutes clears it, once.
    cold = _run(device, [-14.0] * 20, start_s=600)
    cleared = [d for d in cold if d is not None and d.cleared]
    assert len(cleared) == 1 and cleared[0].at == T0 + timedelta(seconds=720)
    assert [c.node for c in cleared[0].calls] == ["alarm.clear"]


def test_door_openings_do_not_fire_it() -> None:
    device = Device(rule(**OLIVIA))
    spike = [-18.0] * 5 + [-4.0] * 12 + [-18.0] * 10  # two minutes with the door open
    assert not any(d is not None and d.fired for d in _run(device, spike))


def test_the_trace_says_why_it_did_not_fire() -> None:
    device = Device(rule(**OLIVIA))
    decision = device.reading(T0, temp=-10.2)  # just under the threshold
    assert decision is not None and not decision.fired and decision.result is False
    steps = {s.path: s for s in decision.steps}
    assert steps["when/0"].result is True
    assert steps["if/0/0"].detail == "temp -10.2 > -10 is false"
    assert steps["if/0"].detail.startswith("false for 0s")
    json.dumps([s.as_dict() for s in decision.steps])  # traces are stored as JSON


def test_a_restart_resumes_a_pending_duration_and_fires_exactly_once() -> None:
    before = Device(rule(**OLIVIA))
    _run(before, [-5.0] * 12)  # 110 s into the 5 minutes, then the process dies
    saved = before.persisted()
    after = Device(rule(**OLIVIA), state=saved)  # a new process, the state read back
    after.values = dict(before.values)
    decisions = _run(after, [-5.0] * 30, start_s=120)
    fired = [d for d in decisions if d is not None and d.fired]
    assert len(fired) == 1 and fired[0].at == T0 + timedelta(seconds=300)


def test_throttle_limits_firings_per_device() -> None:
    device = Device(
        rule(
            **{
                "if": [{"type": "telemetry.threshold", "options": {"metric": "temp", "value": 0}}],
                "then": [{"type": "alarm.raise", "options": {"alarm_type": "t"}}],
                "fire": "always",
                "throttle": {"min_interval_s": 60},
            }
        )
    )
    decisions = _run(device, [5.0] * 13)  # 2 minutes of readings every 10 s
    assert [d.at - T0 for d in decisions if d is not None and d.fired] == [
        timedelta(0),
        timedelta(seconds=60),
        timedelta(seconds=120),
    ]
    assert sum(1 for d in decisions if d is not None and d.throttled) == 10


def test_triggers_filter_events() -> None:
    device = Device(rule(**OLIVIA))
    assert device.reading(T0, door_open=True) is None  # no temp: the rule is not even reached


def test_selector() -> None:
    compiled = rule(**OLIVIA)
    assert compiled.selects("fz-1", "freezer", {"region": "north", "store": "s1"})
    assert not compiled.selects("fz-1", "freezer", {"region": "south"})
    assert not compiled.selects("m-1", "power-meter", {"region": "north"})
    assert compiled.metrics == frozenset({"temp"})


@pytest.mark.parametrize(
    ("change", "path", "text"),
    [
        ({"when": [{"type": "telemetry.recieved"}]}, "when/0", "unknown trigger type"),
        ({"then": [{"type": "alarm.raise", "options": {}}]}, "then/0", "Field required"),
        (
            {"then": [{"type": "alarm.raise", "options": {"alarm_type": "x", "colour": "red"}}]},
            "then/0",
            "unknown option",
        ),
        ({"if": [{"type": "duration", "options": {"seconds": 60}}]}, "if/0", "wraps a 'condition'"),
        (
            {"if": [{"type": "aggregate.window", "options": {"metric": "temp", "window_s": 0, "value": 1}}]},
            "if/0",
            "greater than or equal to 1",
        ),
        (
            {
                "if": [
                    {
                        "type": "aggregate.window",
                        "options": {"metric": "temp", "window_s": 31536000, "value": 1},
                    }
                ]
            },
            "if/0",
            "less than or equal to 86400",
        ),
        (
            {"then": [{"type": "webhook", "options": {"url": "http://127.0.0.1:8080/x"}}]},
            "then/0",
            "loopback",
        ),
        ({"then": [{"type": "webhook", "options": {"url": "http://10.1.2.3/x"}}]}, "then/0", "private"),
        (
            {"then": [{"type": "webhook", "options": {"url": "http://localhost/x"}}]},
            "then/0",
            "loopback name",
        ),
        (
            {"then": [{"type": "telemetry.threshold", "options": {}}]},
            "then/0",
            "is a condition, not a action",
        ),
        (
            {"if": [{"type": "telemetry.threshold", "version": 7, "options": {}}]},
            "if/0",
            "newer than this server",
        ),
    ],
)
def test_bad_rules_are_refused_with_the_node_path(change: dict[str, Any], path: str, text: str) -> None:
    with pytest.raises(RuleValidationError) as info:
        rule(**{**OLIVIA, **change})
    problem = info.value.problems[0]
    assert problem.path == path and text in problem.message, problem
    assert info.value.status == 422 and info.value.slug == "invalid-rule"


def test_unknown_type_gets_a_suggestion() -> None:
    with pytest.raises(RuleValidationError) as info:
        rule(**{**OLIVIA, "when": [{"type": "telemetry.recieved"}]})
    assert info.value.problems[0].suggestion == "telemetry.received"


def test_too_many_nodes_and_too_deep() -> None:
    many = [{"type": "telemetry.threshold", "options": {"metric": "temp", "value": 0}}] * 10_000
    with pytest.raises(Exception) as info:  # the document model caps list lengths first
        rule(**{**OLIVIA, "if": many})
    assert "50" in str(info.value) or str(MAX_NODES) in str(info.value)
    deep: dict[str, Any] = {"type": "telemetry.threshold", "options": {"metric": "temp", "value": 0}}
    for _ in range(MAX_DEPTH + 2):
        deep = {"not": deep}
    with pytest.raises(RuleValidationError, match="nest deeper"):
        rule(**{**OLIVIA, "if": [deep]})
    wide = [{"any": [{"type": "telemetry.threshold", "options": {"metric": "temp", "value": 0}}] * 100}] * 3
    with pytest.raises(RuleValidationError, match=f"at most {MAX_NODES}"):
        rule(**{**OLIVIA, "if": wide})
