"""Each condition node on its own."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from engine.errors import RuleValidationError
from tests.unit.engine._rules import T0, Device, rule


def _when(condition: dict[str, object]) -> Device:
    return Device(rule(**{"if": [condition]}))


def test_threshold_with_hysteresis() -> None:
    d = _when({"type": "telemetry.threshold", "options": {"metric": "temp", "value": -10, "clear_at": -12}})
    results = [
        d.reading(T0 + timedelta(seconds=i), temp=t).result
        for i, t in enumerate([-15, -9, -11, -11.9, -12.5, -11])
    ]  # type: ignore[union-attr]
    assert results == [False, True, True, True, False, False]


def test_threshold_below_and_trace_detail() -> None:
    d = _when(
        {"type": "telemetry.threshold", "options": {"metric": "temp", "operator": "below", "value": -30}}
    )
    decision = d.reading(T0, temp=-29.8)
    assert decision is not None and decision.result is False
    step = next(s for s in decision.steps if s.path == "if/0")
    assert step.detail == "temp -29.8 < -30 is false" and step.inputs == {"temp": -29.8}


def test_threshold_options_are_checked() -> None:
    with pytest.raises(RuleValidationError) as info:
        _when({"type": "telemetry.threshold", "options": {"metric": "temp", "value": -10, "clear_at": -5}})
    assert info.value.problems[0].path == "if/0"


def test_duration_fires_on_time_and_clears_after_its_own_delay() -> None:
    d = _when(
        {
            "type": "duration",
            "options": {"seconds": 300, "clear_seconds": 120},
            "condition": {"type": "telemetry.threshold", "options": {"metric": "temp", "value": -10}},
        }
    )
    first = d.reading(T0, temp=-5)
    assert first is not None and first.result is False and first.wake_at == T0 + timedelta(seconds=300)
    assert d.reading(T0 + timedelta(seconds=200), temp=-6).result is False  # type: ignore[union-attr]
    due = d.timer(T0 + timedelta(seconds=300))
    assert due is not None and due.result is True and due.fired
    back = d.reading(T0 + timedelta(seconds=400), temp=-20)
    assert back is not None and back.result is True and back.wake_at == T0 + timedelta(seconds=520)
    cleared = d.timer(T0 + timedelta(seconds=520))
    assert cleared is not None and cleared.result is False and cleared.cleared


def test_duration_resets_when_the_condition_breaks() -> None:
    d = _when(
        {
            "type": "duration",
            "options": {"seconds": 300},
            "condition": {"type": "telemetry.threshold", "options": {"metric": "temp", "value": -10}},
        }
    )
    d.reading(T0, temp=-5)
    d.reading(T0 + timedelta(seconds=120), temp=-15)  # a door closed: the clock restarts
    d.reading(T0 + timedelta(seconds=130), temp=-5)
    assert d.timer(T0 + timedelta(seconds=300)).result is False  # type: ignore[union-attr]
    assert d.timer(T0 + timedelta(seconds=430)).result is True  # type: ignore[union-attr]


def test_consecutive() -> None:
    d = _when(
        {
            "type": "consecutive",
            "options": {"count": 3, "clear_count": 2},
            "condition": {"type": "telemetry.threshold", "options": {"metric": "temp", "value": 0}},
        }
    )
    values = [1, 2, -1, 1, 2, 3, -1, 1, -1, -1]
    results = [d.reading(T0 + timedelta(seconds=i), temp=v).result for i, v in enumerate(values)]  # type: ignore[union-attr]
    assert results == [False, False, False, False, False, True, True, True, True, False]


@pytest.mark.parametrize(
    ("function", "value", "expected"),
    [
        ("mean", -16, True),
        ("max", -13, True),
        ("max", -11, False),
        ("min", -19, True),
        ("count", 2, True),
        ("count", 3, False),
        ("rate", 0.1, True),
        ("rate", 0.2, False),
    ],
)
def test_window_aggregates(function: str, value: float, expected: bool) -> None:
    d = _when(
        {
            "type": "aggregate.window",
            "options": {
                "metric": "temp",
                "function": function,
                "window_s": 60,
                "operator": "above",
                "value": value,
            },
        }
    )
    for i, t in enumerate([-30, -18, -15, -12]):  # at t=60 s the first falls out of the window
        decision = d.reading(T0 + timedelta(seconds=20 * i), temp=t)
    assert decision is not None and decision.result is expected, decision.steps


def test_time_window_in_the_tenant_time_zone_across_midnight() -> None:
    d = _when({"type": "time.window", "options": {"days": ["fri"], "start": "22:00", "end": "06:00"}})
    # 2026-11-27 is a Friday; the device's zone is Europe/Berlin (UTC+1 in November).
    at = lambda h, m=0: datetime(2026, 11, 27, h, m, tzinfo=UTC)  # noqa: E731
    assert d.reading(at(21, 30), temp=1).result is True  # type: ignore[union-attr]   22:30 Friday
    assert d.reading(at(20, 30), temp=1).result is False  # type: ignore[union-attr]  21:30 Friday
    assert d.reading(at(23, 30) + timedelta(hours=4), temp=1).result is True  # type: ignore[union-attr]  Sat 04:30, Friday's night
    assert d.reading(at(5, 30), temp=1).result is False  # type: ignore[union-attr]  Fri 06:30


def test_expression() -> None:
    d = _when({"type": "expression", "options": {"expression": "temp > -10 and not door_open"}})
    assert d.reading(T0, temp=-5).result is None  # type: ignore[union-attr]  door_open unknown yet
    assert d.reading(T0, temp=-5, door_open=False).result is True  # type: ignore[union-attr]
    assert d.reading(T0, temp=-5, door_open=True).result is False  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("expression", "message", "suggestion"),
    [
        ("tmp > -10", "unknown metric 'tmp'", "temp"),
        ("temp > 'cold'", "mismatch", None),
        ("temp +", "syntax error", None),
        ("temp", "must be true or false", None),
        ("mode =~ '(a+)+$'", "regular-expression", None),
        ("temp ** 2 > 1", "exponentiation", None),
        ("$now > 1", "built-in symbols", None),
    ],
)
def test_bad_expressions_are_refused_with_the_path(
    expression: str, message: str, suggestion: str | None
) -> None:
    with pytest.raises(RuleValidationError) as info:
        _when(
            {
                "any": [
                    {"type": "telemetry.threshold", "options": {"metric": "temp", "value": 0}},
                    {"type": "expression", "options": {"expression": expression}},
                ]
            }
        )
    problem = info.value.problems[0]
    assert problem.path == "if/0/1" and problem.field == "options.expression"
    assert message in problem.message and problem.suggestion == suggestion


def test_groups_use_three_valued_logic() -> None:
    d = _when(
        {
            "any": [
                {"type": "telemetry.threshold", "options": {"metric": "temp", "value": 0}},
                {"not": {"type": "expression", "options": {"expression": "door_open"}}},
            ]
        }
    )
    assert d.reading(T0, temp=-5).result is None  # type: ignore[union-attr]  false or undecided
    assert d.reading(T0, temp=5).result is True  # type: ignore[union-attr]
    assert d.reading(T0, temp=-5, door_open=False).result is True  # type: ignore[union-attr]


def test_an_expression_failing_for_some_values_is_undecided_not_fatal() -> None:
    d = _when({"type": "expression", "options": {"expression": "10 / temp > 1"}})
    decision = d.reading(T0, temp=0.0)
    assert decision is not None and decision.result is None
    assert "could not be evaluated" in next(s.detail for s in decision.steps if s.path == "if/0")
    assert d.reading(T0, temp=5.0).result is True  # type: ignore[union-attr]
