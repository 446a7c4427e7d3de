"""Conditions: thresholds with hysteresis, expressions, durations, consecutive counts, windows, time."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime, time, timedelta
from operator import itemgetter
from typing import Any, Literal, Self

from pydantic import Field, model_validator

from engine.evaluation import EvalContext
from engine.expressions import CompiledExpression, ExpressionRuntimeError, compile_expression
from engine.nodes.base import CompileContext, Condition, Options
from engine.nodes.triggers import MetricName
from engine.registry import REGISTRY, NodeKind
from model.readings import MetricValue

Comparison = Literal["above", "below"]


def _number(value: MetricValue | None) -> float | None:
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


class ThresholdOptions(Options):
    """Raise above (or below) a level; with ``clear_at``, clear only past a second level."""

    metric: MetricName = Field(json_schema_extra={"widget": "metric"})
    operator: Comparison = "above"
    value: float = Field(allow_inf_nan=False)
    clear_at: float | None = Field(
        default=None, allow_inf_nan=False, description="Hysteresis: the level that clears it."
    )

    @model_validator(mode="after")
    def _clear_on_the_right_side(self) -> Self:
        if self.clear_at is None:
            return self
        if self.operator == "above" and self.clear_at > self.value:
            raise ValueError("with 'above', clear_at must be at or below value")
        if self.operator == "below" and self.clear_at < self.value:
            raise ValueError("with 'below', clear_at must be at or above value")
        return self


@REGISTRY.register(
    "telemetry.threshold",
    NodeKind.CONDITION,
    options=ThresholdOptions,
    title="Threshold",
    examples=({"metric": "temp", "operator": "above", "value": -10, "clear_at": -12},),
)
class ThresholdCondition(Condition):
    """True when the metric crosses the level.

    With hysteresis (``clear_at``) it stays true until the metric crosses back past that level.
    """

    options: ThresholdOptions

    def metrics(self) -> frozenset[str]:
        return frozenset({self.options.metric})

    def _check(self, ctx: EvalContext) -> tuple[bool | None, str, dict[str, Any]]:
        o = self.options
        value = _number(ctx.values.get(o.metric))
        state = ctx.node_state(self.path)
        was = bool(state.get("active", False))
        if value is None:
            return (was if "active" in state else None), f"no numeric value of {o.metric} yet", {}
        sign = ">" if o.operator == "above" else "<"
        crosses = value > o.value if o.operator == "above" else value < o.value
        if o.clear_at is None or not was:
            active = crosses
            detail = f"{o.metric} {value:g} {sign} {o.value:g} is {str(crosses).lower()}"
        else:
            back = value < o.clear_at if o.operator == "above" else value > o.clear_at
            active = not back
            back_sign = "<" if o.operator == "above" else ">"
            detail = f"{o.metric} {value:g} {back_sign} {o.clear_at:g} (clear level) is {str(back).lower()}"
        state["active"] = active
        return active, detail, {o.metric: value}


class ExpressionOptions(Options):
    """A test written as an expression over the device's metrics, e.g. ``temp > -10 and not door_open``."""

    expression: str = Field(min_length=1, max_length=500, json_schema_extra={"widget": "expression"})


@REGISTRY.register(
    "expression",
    NodeKind.CONDITION,
    options=ExpressionOptions,
    title="Expression",
    examples=({"expression": "temp > -10 and not door_open"},),
)
class ExpressionCondition(Condition):
    """True when the expression holds; metric names are typed from the device type's catalogue."""

    options: ExpressionOptions

    def __init__(self, path: str, options: Any, context: CompileContext, child: Condition | None) -> None:
        super().__init__(path, options, context, child)
        self.compiled: CompiledExpression = compile_expression(self.options.expression, context.metrics, path)

    def metrics(self) -> frozenset[str]:
        return self.compiled.symbols

    def _check(self, ctx: EvalContext) -> tuple[bool | None, str, dict[str, Any]]:
        inputs = {m: ctx.values.get(m) for m in sorted(self.compiled.symbols)}
        missing = [m for m, v in inputs.items() if v is None]
        if missing:
            return None, f"no value yet for {', '.join(missing)}", inputs
        try:
            result = self.compiled.evaluate(inputs)
        except ExpressionRuntimeError as exc:
            # Data-dependent (a division by zero for these values): undecided for this event,
            # explained in the trace; the rule keeps running for every other device and event.
            return None, f"{self.options.expression} could not be evaluated: {exc}", inputs
        return result, f"{self.options.expression} is {str(result).lower()}", inputs


class DurationOptions(Options):
    """How long the wrapped condition must hold (and, optionally, stay false to clear)."""

    seconds: float = Field(gt=0, le=7 * 86400, json_schema_extra={"widget": "duration"})
    clear_seconds: float = Field(default=0, ge=0, le=7 * 86400, json_schema_extra={"widget": "duration"})


@REGISTRY.register(
    "duration",
    NodeKind.CONDITION,
    options=DurationOptions,
    title="For a duration",
    wraps=True,
    examples=({"seconds": 300, "clear_seconds": 120},),
)
class DurationCondition(Condition):
    """True once the wrapped condition has held for ``seconds``.

    It turns false again once the wrapped condition has failed for ``clear_seconds``.
    """

    options: DurationOptions

    def metrics(self) -> frozenset[str]:
        return self.child.metrics() if self.child else frozenset()

    def _check(self, ctx: EvalContext) -> tuple[bool | None, str, dict[str, Any]]:
        assert self.child is not None
        inner = self.child.check(ctx)
        state = ctx.node_state(self.path)
        active = bool(state.get("active", False))
        now = ctx.now
        if inner is None:
            return active, "the wrapped condition is undecided; keeping the last state", {}
        if inner:
            state.pop("false_since", None)
            since = _time(state.setdefault("true_since", now.isoformat()))
            due = since + timedelta(seconds=self.options.seconds)
            if not active and now >= due:
                active = True
            elif not active:
                ctx.wake(due)
            held = (now - since).total_seconds()
            detail = f"true for {held:g}s of {self.options.seconds:g}s"
        else:
            state.pop("true_since", None)
            since = _time(state.setdefault("false_since", now.isoformat()))
            due = since + timedelta(seconds=self.options.clear_seconds)
            if active and now >= due:
                active = False
            elif active:
                ctx.wake(due)
            held = (now - since).total_seconds()
            detail = f"false for {held:g}s of {self.options.clear_seconds:g}s needed to clear"
        state["active"] = active
        return active, detail, {}


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value)


class ConsecutiveOptions(Options):
    """How many readings in a row must satisfy the wrapped condition (and fail it to clear)."""

    count: int = Field(ge=1, le=10_000)
    clear_count: int = Field(default=1, ge=1, le=10_000)


@REGISTRY.register(
    "consecutive",
    NodeKind.CONDITION,
    options=ConsecutiveOptions,
    title="Consecutive readings",
    wraps=True,
    examples=({"count": 3, "clear_count": 2},),
)
class ConsecutiveCondition(Condition):
    """True after ``count`` evaluations in a row where the wrapped condition held."""

    options: ConsecutiveOptions

    def metrics(self) -> frozenset[str]:
        return self.child.metrics() if self.child else frozenset()

    def _check(self, ctx: EvalContext) -> tuple[bool | None, str, dict[str, Any]]:
        assert self.child is not None
        inner = self.child.check(ctx)
        state = ctx.node_state(self.path)
        active = bool(state.get("active", False))
        if inner is None:
            return active, "the wrapped condition is undecided; keeping the count", {}
        key, other = ("hits", "misses") if inner else ("misses", "hits")
        state[key] = int(state.get(key, 0)) + 1
        state[other] = 0
        if inner and state["hits"] >= self.options.count:
            active = True
        if not inner and state["misses"] >= self.options.clear_count:
            active = False
        state["active"] = active
        return active, f"{state['hits']} in a row true, {state['misses']} false", {}


class WindowOptions(Options):
    """An aggregate of a metric over a sliding time window, compared with a level."""

    metric: MetricName = Field(json_schema_extra={"widget": "metric"})
    function: Literal["mean", "min", "max", "count", "rate"] = "mean"
    window_s: float = Field(ge=1, le=86400, json_schema_extra={"widget": "duration"})
    operator: Comparison = "above"
    value: float = Field(allow_inf_nan=False)


MAX_WINDOW_SAMPLES = 10_000


@REGISTRY.register(
    "aggregate.window",
    NodeKind.CONDITION,
    options=WindowOptions,
    title="Aggregate over a window",
    examples=({"metric": "temp", "function": "mean", "window_s": 600, "operator": "above", "value": -15},),
)
class WindowCondition(Condition):
    """True when an aggregate of the metric over the last ``window_s`` crosses the level.

    ``rate`` is the change per second between the window's first and last samples.
    """

    options: WindowOptions

    def __init__(self, path: str, options: Any, context: CompileContext, child: Condition | None) -> None:
        super().__init__(path, options, context, child)
        self._window = timedelta(seconds=self.options.window_s)
        # A whole number of seconds: the horizon can be worked out from the epoch float (_horizon).
        self._whole_s = float(self.options.window_s) if float(self.options.window_s).is_integer() else None
        self._mean = self.options.function == "mean"
        self._level = float(self.options.value)
        self._above = self.options.operator == "above"

    def metrics(self) -> frozenset[str]:
        return frozenset({self.options.metric})

    def absorb(
        self, state: dict[str, dict[str, Any]], now: datetime, value: MetricValue | None
    ) -> bool | None:
        """Take a reading's sample before (or instead of) evaluating the rule; the window's result.

        Used by the engine's guards (engine.guards): a reading that leaves the result as it was
        changes nothing but the samples, so the rule need not be evaluated. An evaluation for the
        same reading that follows does not take the sample a second time.
        """
        node = state.get(self.path)
        if node is None:
            node = state[self.path] = {}
        at = now.timestamp()
        samples = node.get("samples")
        if self._mean and samples and samples[0][0].__class__ is float and len(samples) < MAX_WINDOW_SAMPLES:
            total, err = node.get("sum"), node.get("err")
            if total is not None and err is not None:
                # The common case, inline: what _advance does for a mean decided by its running sum.
                kind = value.__class__
                if kind is float or kind is int:  # not bool, whose class is bool
                    number = float(value)  # type: ignore[arg-type]
                    samples.append([at, number])
                    total += number
                    err += _U * abs(total)
                    value = None  # taken
                horizon = self._horizon(now, at)
                if samples[0][0] <= horizon:
                    n, expired = len(samples), 0
                    while expired < n and samples[expired][0] <= horizon:
                        total -= samples[expired][1]
                        err += _U * abs(total)
                        expired += 1
                    del samples[:expired]
                node["sum"], node["err"], node["taken"] = total, err, at
                n = len(samples)
                if n:
                    mean: float = total / n
                    if abs(mean - self._level) > 1.01 * (err + 3.4e-16 * (abs(total) + err)) / n + 1e-300:
                        return mean > self._level if self._above else mean < self._level
        result = self._advance(node, now, at, _number(value), exact=False)[0]
        node["taken"] = at
        return result

    def _horizon(self, now: datetime, at: float) -> float:
        """The epoch float of ``now`` minus the window (``at``: that of ``now``): samples at or
        before it have expired.

        It is worked out as a datetime (whole microseconds, like every sample's time) and then
        made a float, so samples expire exactly as they did when their times were datetimes. For
        a whole number of seconds between 2004 and 2038 the float subtraction is that same value,
        and cheaper: there, floats are the multiples of 2**-22, a whole number of seconds is one,
        and rounding to that grid commutes with subtracting it (ties to even included: it is an
        even number of steps).
        """
        whole = self._whole_s
        if whole is not None and at <= _GRID_HIGH:
            horizon = at - whole
            if horizon >= _GRID_LOW:
                return horizon
        return (now - self._window).timestamp()

    def _check(self, ctx: EvalContext) -> tuple[bool | None, str, dict[str, Any]]:
        o = self.options
        state = ctx.node_state(self.path)
        now = ctx.now
        value = (
            _number(ctx.values.get(o.metric))
            if ctx.event.reading and o.metric in ctx.event.reading.metrics
            else None
        )
        at = now.timestamp()
        if state.pop("taken", None) == at:
            value = None  # absorbed already (see absorb)
        result, aggregate, n = self._advance(state, now, at, value)
        if not n:
            return None, f"no {o.metric} in the last {o.window_s:g}s", {}
        if aggregate is None:
            return None, f"{o.function} of {o.metric} needs more samples", {"samples": n}
        sign = ">" if o.operator == "above" else "<"
        label = f"{o.function}({o.metric}, {o.window_s:g}s)"
        detail = f"{label} {aggregate:.4g} {sign} {o.value:g} is {str(result).lower()}"
        return result, detail, {"aggregate": aggregate, "samples": n}

    def _advance(
        self, state: dict[str, Any], now: datetime, at: float, value: float | None, *, exact: bool = True
    ) -> tuple[bool | None, float | None, int]:
        """Add the sample (if any) taken at ``now`` (``at``: its epoch seconds), drop the expired
        ones: (result, aggregate, samples kept). Not ``exact``: the aggregate may be None when
        the result is known without it."""
        o = self.options
        samples = _window_samples(state)
        # For a mean, a running sum with a bound on its rounding error (``err``) decides most
        # comparisons without a pass over the samples; math.fsum decides the rest, and resets it.
        running = o.function == "mean"
        total = err = 0.0
        if running:
            stored, bound = state.get("sum"), state.get("err")
            if stored is None or bound is None:
                stored = math.fsum(map(_value, samples))
                bound = _U * abs(stored)
            total, err = float(stored), float(bound)
        if value is not None:
            samples.append([at, value])
            if running:
                total += value
                err += _U * abs(total)
        # Epoch floats of distinct microseconds are distinct and ordered (until 2242): samples
        # expire exactly as they did when their times were datetimes (see _horizon).
        horizon = self._horizon(now, at)
        n = len(samples)
        expired = 0
        while expired < n and samples[expired][0] <= horizon:
            expired += 1
        expired = max(expired, n - MAX_WINDOW_SAMPLES)  # the oldest go first when too many
        if expired:
            if running:
                for _, old in samples[:expired]:
                    total -= old
                    err += _U * abs(total)
            del samples[:expired]
            n -= expired
        if running:
            if not exact and n:
                # |total - exact sum| <= err; fsum's mean differs from total / n by at most
                # (err + 3u (|total| + err)) / n (its own rounding and the two divisions'). Beyond
                # that distance from the level the comparison cannot differ. NaN and infinities
                # fail the test and go to fsum.
                mean = total / n
                slack = 1.01 * (err + 3.4e-16 * (abs(total) + err)) / n + 1e-300
                if abs(mean - o.value) > slack:
                    state["sum"], state["err"] = total, err
                    return (mean > o.value if o.operator == "above" else mean < o.value), None, n
            exact_total = math.fsum(map(_value, samples))
            state["sum"], state["err"] = exact_total, _U * abs(exact_total)
        if not n:
            return None, None, 0
        # The mean as _aggregate works it out, from the fsum already taken.
        aggregate = exact_total / n if running else _aggregate(o.function, samples)
        if aggregate is None:
            return None, None, n
        return (aggregate > o.value if o.operator == "above" else aggregate < o.value), aggregate, n


def _window_samples(state: dict[str, Any]) -> list[list[float]]:
    """The window's ``[epoch_seconds, value]`` samples, oldest first: the state's own list.

    State written before samples were floats held ISO timestamps; it is converted once.
    """
    samples: list[list[Any]] = state.setdefault("samples", [])
    if samples and isinstance(samples[0][0], str):
        samples[:] = [[_time(t).timestamp() if isinstance(t, str) else t, v] for t, v in samples]
    return samples


def _aggregate(function: str, samples: list[list[float]]) -> float | None:
    if function == "mean":
        return math.fsum(map(_value, samples)) / len(samples)
    if function == "min":
        return min(map(_value, samples))
    if function == "max":
        return max(map(_value, samples))
    if function == "count":
        return float(len(samples))
    if len(samples) < 2:
        return None
    # Times are whole microseconds; their floats' difference is off by less than half a microsecond
    # (until 2106), so rounding to microseconds gives the span exactly as datetime subtraction did.
    span = round((samples[-1][0] - samples[0][0]) * 1_000_000) / 1_000_000
    return (samples[-1][1] - samples[0][1]) / span if span > 0 else None


_value: Callable[[list[float]], float] = itemgetter(1)
_U = 1.12e-16  # a little over the unit roundoff of a float, 2**-53: the error bound of one addition
# Where epoch floats are the multiples of 2**-22 (2004-01-10 to 2038-01-19), kept one second inside.
_GRID_LOW, _GRID_HIGH = 2.0**30 + 1, 2.0**31 - 1


Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


def _every_day() -> list[Day]:
    return ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


class TimeWindowOptions(Options):
    """Days of the week and a time range, in the tenant's time zone."""

    days: list[Day] = Field(default_factory=_every_day, min_length=1)
    start: time = Field(default=time(0, 0), json_schema_extra={"widget": "time"})
    end: time = Field(default=time(23, 59, 59), json_schema_extra={"widget": "time"})


_DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


@REGISTRY.register(
    "time.window",
    NodeKind.CONDITION,
    options=TimeWindowOptions,
    title="Time of day and day of week",
    examples=({"days": ["mon", "tue", "wed", "thu", "fri"], "start": "22:00", "end": "06:00"},),
)
class TimeWindowCondition(Condition):
    """True during the given hours on the given days (a range past midnight wraps to the next day)."""

    options: TimeWindowOptions

    def _check(self, ctx: EvalContext) -> tuple[bool | None, str, dict[str, Any]]:
        o = self.options
        local = ctx.now.astimezone(ctx.device.timezone)
        clock = local.time().replace(tzinfo=None)
        if o.start <= o.end:
            inside = o.start <= clock <= o.end
            day = _DAYS[local.weekday()]
        else:  # wraps midnight: the early-morning part belongs to the previous day's window
            inside = clock >= o.start or clock <= o.end
            day = _DAYS[(local.weekday() - (1 if clock <= o.end else 0)) % 7]
        result = inside and day in o.days
        return (
            result,
            f"{day} {clock.strftime('%H:%M')} local is {'inside' if result else 'outside'} the window",
            {},
        )
