"""Each condition node on its own."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from random import Random

import pytest

from engine.errors import RuleValidationError
from engine.nodes import conditions
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


def _window(function: str, **options: object) -> dict[str, object]:
    return {
        "type": "aggregate.window",
        "options": {"metric": "temp", "function": function, "window_s": 60, "value": 0, **options},
    }


@pytest.mark.parametrize(
    ("function", "aggregate", "expected"),
    [
        ("mean", -15.0, "false"),
        ("min", -18.0, "false"),
        ("max", -12.0, "false"),
        ("count", 3.0, "true"),
        ("rate", 0.15, "true"),  # 6 degrees in 40 s
    ],
)
def test_window_state_written_with_iso_timestamps_is_converted(
    function: str, aggregate: float, expected: str
) -> None:
    # As stored before samples were epoch floats: at T0+60 s the first falls out of the window.
    old = [[(T0 + timedelta(seconds=20 * i)).isoformat(), t] for i, t in enumerate([-30.0, -18.0, -15.0])]
    d = Device(rule(**{"if": [_window(function)]}), state={"if/0": {"samples": old}})
    decision = d.reading(T0 + timedelta(seconds=60), temp=-12)
    assert decision is not None
    step = next(s for s in decision.steps if s.path == "if/0")
    assert step.inputs == {"aggregate": aggregate, "samples": 3}
    assert step.detail == f"{function}(temp, 60s) {aggregate:.4g} > 0 is {expected}"
    assert d.persisted()["if/0"]["samples"] == [
        [(T0 + timedelta(seconds=s)).timestamp(), t] for s, t in [(20, -18.0), (40, -15.0), (60, -12.0)]
    ]


def test_window_samples_are_kept_in_place_as_epoch_floats() -> None:
    d = _when(_window("mean"))
    d.reading(T0, temp=-20)
    samples = d.state["if/0"]["samples"]
    d.reading(T0 + timedelta(seconds=30, microseconds=250_000), temp=-10.5)
    assert d.state["if/0"]["samples"] is samples
    assert samples == [[T0.timestamp(), -20.0], [T0.timestamp() + 30.25, -10.5]]
    assert all(type(x) is float for sample in samples for x in sample)
    # A timer (no new sample) still lets the old ones go, from the same list.
    expired = d.timer(T0 + timedelta(seconds=60))
    assert expired is not None and d.state["if/0"]["samples"] is samples and len(samples) == 1
    empty = d.timer(T0 + timedelta(seconds=90, microseconds=250_000))
    assert empty is not None and empty.result is None and samples == []
    step = next(s for s in empty.steps if s.path == "if/0")
    assert step.detail == "no temp in the last 60s" and step.inputs == {}


def test_window_rate_needs_two_samples_and_a_time_span() -> None:
    d = _when(_window("rate"))
    decision = d.reading(T0, temp=1)
    assert decision is not None
    step = next(s for s in decision.steps if s.path == "if/0")
    assert step.result is None and step.detail == "rate of temp needs more samples"
    assert step.inputs == {"samples": 1}
    assert d.reading(T0, temp=2).result is None  # type: ignore[union-attr]  two samples, no span
    # First and last samples: from 1 at T0 to 2.5 at T0+2.5 s, 1.5 / 2.5 s = 0.6 per second.
    later = d.reading(T0 + timedelta(seconds=2, microseconds=500_000), temp=2.5)
    assert later is not None
    assert next(s for s in later.steps if s.path == "if/0").inputs == {"aggregate": 0.6, "samples": 3}


def _reference(
    function: str, history: list[tuple[datetime, float]], now: datetime, window_s: float, cap: int
) -> tuple[float | None, int]:
    """The aggregate recomputed from every sample inside the window (the latest ``cap`` of them)."""
    horizon = now - timedelta(seconds=window_s)
    inside = [(t, v) for t, v in history if t > horizon][-cap:]
    values = [v for _, v in inside]
    if not values:
        return None, 0
    if function == "rate":
        if len(inside) < 2:
            return None, len(inside)
        span = (inside[-1][0] - inside[0][0]).total_seconds()
        return ((values[-1] - values[0]) / span if span > 0 else None), len(inside)
    aggregates = {"mean": math.fsum(values) / len(values), "min": min(values), "max": max(values)}
    return aggregates.get(function, float(len(values))), len(values)


@pytest.mark.parametrize("cap", [None, 16])
@pytest.mark.parametrize("function", ["mean", "min", "max", "count", "rate"])
def test_window_agrees_with_recomputing_over_the_window(
    function: str, cap: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if cap is not None:
        monkeypatch.setattr(conditions, "MAX_WINDOW_SAMPLES", cap)
    windows = [(45.123457, "above", -5.0), (1, "below", 0.0), (600, "above", -10.0)]
    d = Device(
        rule(
            when=[{"type": "telemetry.received", "options": {"metrics": ["temp", "door_open"]}}],
            **{"if": [_window(function, window_s=w, operator=op, value=v) for w, op, v in windows]},
        )
    )
    random = Random(f"window-{function}-{cap}")
    history: list[tuple[datetime, float]] = []
    at = T0
    for i in range(3000):
        at += random.choice(
            [
                timedelta(0),
                timedelta(seconds=1),  # exactly the shortest window: that sample just expires
                timedelta(microseconds=45_123_457),
                timedelta(microseconds=random.randrange(1, 3_000_000)),
                timedelta(microseconds=random.randrange(1, 100_000_000)),
            ]
        )
        kind = random.random()
        if kind < 0.1:
            decision = d.timer(at)
        elif kind < 0.2:
            decision = d.reading(at, door_open=random.random() < 0.5)
        else:
            temp: float = random.choice([random.randrange(-30, 10), round(random.uniform(-30, 10), 6)])
            history.append((at, float(temp)))
            decision = d.reading(at, temp=temp)
        assert decision is not None
        if i % 500 == 0:
            d.state = d.persisted()  # as if read back from the database
        for path, (window_s, operator, level) in zip(("if/0", "if/1", "if/2"), windows, strict=True):
            step = next(s for s in decision.steps if s.path == path)
            aggregate, n = _reference(function, history, at, window_s, cap or conditions.MAX_WINDOW_SAMPLES)
            if n == 0:
                assert (step.result, step.inputs) == (None, {}), (i, path)
                assert step.detail == f"no temp in the last {window_s:g}s"
            elif aggregate is None:
                assert (step.result, step.inputs) == (None, {"samples": n}), (i, path)
            else:
                assert step.inputs == {"aggregate": aggregate, "samples": n}, (i, path)
                assert step.result is (aggregate > level if operator == "above" else aggregate < level)
                assert step.detail.startswith(f"{function}(temp, {window_s:g}s) {aggregate:.4g} ")


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


@pytest.mark.parametrize("seed", range(3))
def test_an_absorbed_mean_decides_as_the_exact_mean_even_at_the_level(seed: int) -> None:
    """absorb() decides a mean from a running sum when it is clearly away from the level; near
    or at the level (here, exactly at it half of the time), math.fsum decides, as evaluation."""
    rng = Random(seed)
    compiled = rule(**{"if": [_window("mean", window_s=60, value=0.0)]})
    window = compiled.conditions[0]
    assert isinstance(window, conditions.WindowCondition)
    state: dict[str, dict[str, object]] = {}
    kept: list[tuple[float, float]] = []
    near = 0
    for i in range(4000):
        at = T0 + timedelta(seconds=7 * i)
        value = rng.choice([0.1, 0.2, 0.3, 1e-9, -0.7, 123.456, rng.uniform(-5, 5)])
        kept = [(t, v) for t, v in kept if t > (at - timedelta(seconds=60)).timestamp()]
        kept.append((at.timestamp(), value))
        exact = math.fsum(v for _, v in kept) / len(kept)
        # The level: the exact mean itself, a float next to it, or somewhere else.
        level = rng.choice([exact, math.nextafter(exact, math.inf), math.nextafter(exact, -math.inf), 0.3])
        near += level != 0.3
        operator = rng.choice(["above", "below"])
        window = rule(**{"if": [_window("mean", window_s=60, value=level, operator=operator)]}).conditions[0]
        assert isinstance(window, conditions.WindowCondition)
        expected = exact > level if operator == "above" else exact < level
        assert window.absorb(state, at, value) is expected, (i, exact, level, operator)
    assert near > 2500


def test_the_window_horizon_from_the_epoch_float_is_the_one_worked_out_as_a_datetime() -> None:
    """For whole seconds, the horizon is ``at - window_s`` (a float subtraction) instead of a
    datetime subtraction and a conversion: it must be the very same float, or samples at the
    edge of the window would expire a reading early or late. Checked at random microseconds,
    at the edges of the range where it is used, and beyond them (where it is not)."""
    rng = Random(7)
    edges = [2.0**30 + 1, 2.0**31 - 1]
    instants = [rng.uniform(1.1e9, 2.1e9) for _ in range(20_000)]
    instants += [edge + rng.uniform(-3e5, 3e5) for edge in edges for _ in range(2_000)]
    instants += [rng.uniform(0, 4e9) for _ in range(2_000)]  # 1970 to 2096: some need the datetime
    fast = 0
    for window_s in [1, 60, 600, 86400, 59.5, 1.000001]:
        window = rule(**{"if": [_window("mean", window_s=window_s)]}).conditions[0]
        assert isinstance(window, conditions.WindowCondition)
        span = timedelta(seconds=window_s)
        for instant in instants:
            now = datetime.fromtimestamp(round(instant, 6), UTC)
            at = now.timestamp()
            horizon = window._horizon(now, at)
            assert horizon == (now - span).timestamp(), (window_s, now)
            fast += float(window_s).is_integer() and horizon == at - window_s
    assert fast > 4 * 20_000  # the subtraction was used for most whole windows
