"""Guards: skip the evaluations of a rule that cannot change anything (ADR 0026).

Most evaluations decide what the previous one decided. A rule "temp above -10 for 5 minutes"
evaluated on every freezer reading changes its mind only when the temperature crosses -10 (the
duration starts or stops), when its timer comes due, or never. Threshold banks (engine/banks.py)
already skip single thresholds; a guard does the same for any rule built from:

* thresholds (their levels, hysteresis included) and expressions (the literals each metric is
  compared with, or the metric's raw value when it is used any other way);
* durations around them: between two crossings the only change is the timer coming due, which
  the engine evaluates as a timer event, and any reading at or after a due timer is evaluated;
* consecutive counts around them: evaluated on every reading while a count runs toward a change
  (true but not yet active, or false but still active), skipped once it has settled;
* ``all`` / ``any`` / ``not`` of such conditions.

The guard reduces the device's latest values to a *signature*: per metric the rule reads, where
the value lies among the levels it is compared with (below, equal to or above each), or the raw
value itself. After each evaluation the engine remembers the signature and whether a count is
running; a later reading with the same signature, no running count and no due timer would
evaluate every condition to what it was, so it would fire, clear, throttle, schedule and trace
nothing new: it is skipped. Rules whose outcome depends on anything else (windows, where every
sample counts; time of day; third-party conditions; ``fire: always``, which acts on every true
evaluation; ``trace: all``, which records every evaluation) have no guard and are always
evaluated. The first evaluation of a (rule, device), after a restart or a new version, always runs.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from engine.document import FireMode, RuleDocument, TraceMode
from engine.nodes.base import Condition
from engine.nodes.conditions import (
    ConsecutiveCondition,
    DurationCondition,
    ExpressionCondition,
    ThresholdCondition,
)
from model.readings import MetricValue

if TYPE_CHECKING:
    from engine.compiler import CompiledRule  # which imports this module

Levels = tuple[float, ...] | None  # the levels a metric is compared with; None: its raw value counts


class Guard:
    """What a rule's outcome can depend on: metrics with their levels, and its running counts."""

    __slots__ = ("_components", "_counters", "_levels", "_metric", "metrics")

    def __init__(self, metrics: Mapping[str, Levels], counters: Sequence[str]) -> None:
        self.metrics = dict(sorted(metrics.items()))
        self._components = tuple(self.metrics.items())
        self._counters = tuple(counters)
        # Most rules read one metric: its signature is one component, computed inline.
        self._metric, self._levels = self._components[0] if len(self._components) == 1 else ("", None)

    def signature(self, values: Mapping[str, MetricValue]) -> Any:
        """Where each value lies among its metric's levels (or the value itself)."""
        if not self._metric:
            return tuple([_component(values.get(metric), levels) for metric, levels in self._components])
        value = values.get(self._metric)
        levels = self._levels
        if levels is not None and (value.__class__ is float or value.__class__ is int) and value == value:
            at = bisect.bisect_left(levels, value)
            return 2 * at + (1 if at < len(levels) and levels[at] == value else 0)
        return _component(value, levels)

    def settled(self, state: Mapping[str, Mapping[str, Any]]) -> bool:
        """Whether no consecutive count is running toward a change (hits while inactive, misses
        while active)."""
        for path in self._counters:
            node = state.get(path)
            if node and int(node.get("misses" if node.get("active") else "hits", 0)) > 0:
                return False
        return True


def _component(value: MetricValue | None, levels: Levels) -> Any:
    if value is None:
        return None
    if levels is None or isinstance(value, bool) or not isinstance(value, int | float):
        if value.__class__ is float:  # -0.0 == 0.0, but an expression can tell them apart (to_str)
            return (float, value, math.copysign(1.0, value))
        return (value.__class__, value)  # a tuple: never equal to a position below
    if value != value:  # NaN compares false with everything: a state of its own
        return ("nan",)
    at = bisect.bisect_left(levels, value)
    return 2 * at + (1 if at < len(levels) and levels[at] == value else 0)


@dataclass(slots=True)
class Seen:
    """What the engine remembers of a (rule, device) after an evaluation."""

    guard: Guard
    signature: Any
    settled: bool

    def unchanged(self, guard: Guard | None, values: Mapping[str, MetricValue]) -> bool:
        """Whether evaluating ``guard``'s rule again with these values would change nothing
        (a due timer aside, which the caller checks)."""
        return guard is self.guard and self.settled and guard.signature(values) == self.signature


def remember(guard: Guard, values: Mapping[str, MetricValue], state: Mapping[str, Mapping[str, Any]]) -> Seen:
    """What to remember after evaluating a rule with ``guard``."""
    return Seen(guard, guard.signature(values), guard.settled(state))


def worth_evaluating(
    rules: list[CompiledRule],
    tenant_id: str,
    device_id: str,
    values: Mapping[str, MetricValue],
    at: datetime,
    seen: Mapping[tuple[str, str, str], Seen],
    timers: Mapping[tuple[str, str, str], datetime],
) -> list[CompiledRule]:
    """The rules a reading of the device at ``at`` must be evaluated for: all but the guarded ones
    whose signature is unchanged, with no count running and no timer (``timers``) due by ``at``."""
    if not seen:
        return rules
    kept = []
    for rule in rules:
        key = (tenant_id, rule.rule_id, device_id)
        last = seen.get(key)
        if (
            last is not None
            and last.settled
            and last.guard is rule.guard
            and last.guard.signature(values) == last.signature
        ):
            due = timers.get(key)
            if due is None or due > at:
                continue
        kept.append(rule)
    return kept


def guard_for(document: RuleDocument, conditions: Iterable[Condition]) -> Guard | None:
    """The guard of a compiled rule, or None when every evaluation may matter."""
    if document.fire is not FireMode.ON_CHANGE or document.trace is not TraceMode.CHANGES:
        return None
    metrics: dict[str, Levels] = {}
    counters: list[str] = []
    for condition in conditions:
        if not _collect(condition, metrics, counters):
            return None
    return Guard(metrics, counters)


def _collect(condition: Condition, metrics: dict[str, Levels], counters: list[str]) -> bool:
    kind = type(condition)
    if kind is ThresholdCondition:
        o = condition.options
        levels = (o.value,) if o.clear_at is None else (o.value, o.clear_at)
        _merge(metrics, o.metric, tuple(float(level) for level in levels))
        return True
    if kind is ExpressionCondition:
        assert isinstance(condition, ExpressionCondition)
        for metric, found in condition.compiled.levels.items():
            _merge(metrics, metric, found)
        return True
    if kind is DurationCondition or kind is ConsecutiveCondition:
        if kind is ConsecutiveCondition:
            counters.append(condition.path)
        return condition.child is not None and _collect(condition.child, metrics, counters)
    if condition.node_key == "group":  # engine.compiler.GroupCondition (which imports this module)
        children: list[Condition] = getattr(condition, "children", [])
        return all(_collect(child, metrics, counters) for child in children)
    return False  # windows, time of day, third-party conditions: every evaluation may matter


def _merge(metrics: dict[str, Levels], metric: str, levels: Levels) -> None:
    if levels is None or (metric in metrics and metrics[metric] is None):
        metrics[metric] = None
        return
    metrics[metric] = tuple(sorted(set(metrics.get(metric) or ()) | set(levels)))
