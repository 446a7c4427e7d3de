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
* ``all`` / ``any`` / ``not`` of such conditions;
* a rule that is one sliding window: the window takes each reading's sample as the reading is
  checked (``WindowCondition.absorb``), and the rule is evaluated only when its result changes.

The guard reduces the device's latest values to a *signature*: per metric the rule reads, where
the value lies among the levels it is compared with (below, equal to or above each), or the raw
value itself. After each evaluation the engine remembers the signature and whether a count is
running; a later reading with the same signature, no running count and no due timer would
evaluate every condition to what it was, so it would fire, clear, throttle, schedule and trace
nothing new: it is skipped. Rules whose outcome depends on anything else (time of day,
third-party conditions, a window among other conditions; ``fire: always``, which acts on every
true evaluation; ``trace: all``, which records every evaluation) have no guard and are always
evaluated. The first evaluation of a (rule, device), after a restart or a new version, always runs.

A device's guarded rules with one trigger metric are checked together (``LevelGroup``): one
bisection per metric they read finds the rules whose levels the new value crossed, whatever
their number.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from engine.document import FireMode, RuleDocument, TraceMode
from engine.expressions import CompiledExpression, ExpressionRuntimeError
from engine.nodes.base import Action, Condition, Trigger
from engine.nodes.conditions import (
    ConsecutiveCondition,
    DurationCondition,
    ExpressionCondition,
    ThresholdCondition,
    WindowCondition,
)
from engine.nodes.triggers import TelemetryReceived
from model.readings import MetricValue

if TYPE_CHECKING:
    from engine.compiler import CompiledRule  # which imports this module

StateKey = tuple[str, str, str]  # tenant, rule, device
Levels = tuple[float, ...] | None  # the levels a metric is compared with; None: its raw value counts


class Guard:
    """What a rule's outcome can depend on: metrics with their levels, and its running counts."""

    __slots__ = ("_components", "_counters", "_leaves", "_levels", "_metric", "metrics", "trigger", "window")

    def __init__(
        self,
        metrics: Mapping[str, Levels],
        counters: Sequence[str],
        trigger: str | None = None,
        window: WindowCondition | None = None,
        leaves: tuple[Leaf, ...] | None = None,
    ) -> None:
        self.metrics = dict(sorted(metrics.items()))
        self._leaves = leaves
        # A rule that is one sliding window: every reading's sample counts, but the result rarely
        # changes. The window takes the sample as the reading is checked, and the signature is
        # its result (WindowCondition.absorb).
        self.window = window
        # The one metric whose every reading triggers the rule, and nothing else does: a device's
        # rules with the same trigger are checked together (LevelGroup).
        self.trigger = trigger
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

    @property
    def refines(self) -> bool:
        """Whether ``results`` can tell more than ``signature`` (the rule has an expression)."""
        return self._leaves is not None

    def results(self, values: Mapping[str, MetricValue]) -> Any:
        """What each leaf condition tells from these values (None when nothing more than the
        signature): equal results mean equal evaluations, whatever the signature says."""
        return None if self._leaves is None else _results(self._leaves, values)

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
    results: Any = None  # Guard.results of the values, when the guard refines


@dataclass(slots=True)
class Memory:
    """What the engine keeps between readings that guards read: per (tenant, rule, device) the
    last evaluation (``seen``), the pending timer and the nodes' state (engine.core)."""

    seen: dict[StateKey, Seen]
    timers: Mapping[StateKey, datetime]
    states: dict[StateKey, dict[str, Any]]

    def state(self, key: StateKey) -> dict[str, Any]:
        """The nodes' state of a (tenant, rule, device), made empty the first time."""
        state = self.states.get(key)
        if state is None:
            state = self.states[key] = {}
        return state


def remember(
    guard: Guard,
    values: Mapping[str, MetricValue],
    state: Mapping[str, Mapping[str, Any]],
    result: bool | None = None,
) -> Seen:
    """What to remember after evaluating a rule with ``guard`` (``result``: the rule's verdict)."""
    if guard.window is not None:
        return Seen(guard, result, True)
    return Seen(guard, guard.signature(values), guard.settled(state), guard.results(values))


def _same_results(last: Seen, guard: Guard, values: Mapping[str, MetricValue]) -> bool:
    """For a settled rule whose signature moved: whether every leaf still tells what it told at
    the last evaluation, so evaluating again would decide the same. If so, the remembered
    signature moves to these values (the rule is as if evaluated on them)."""
    if not guard.refines or guard.results(values) != last.results:
        return False
    last.signature = guard.signature(values)
    return True


def worth_evaluating(
    rules: list[CompiledRule],
    tenant_id: str,
    device_id: str,
    values: Mapping[str, MetricValue],
    at: datetime,
    memory: Memory,
) -> list[CompiledRule]:
    """The rules a reading of the device at ``at`` must be evaluated for: all but the guarded ones
    whose signature is unchanged, with no count running and no timer due by ``at`` (a new list).
    Window rules take the reading's sample into their state here."""
    seen, timers = memory.seen, memory.timers
    kept = []
    for rule in rules:
        guard = rule.guard
        if guard is None:
            kept.append(rule)
            continue
        key = (tenant_id, rule.rule_id, device_id)
        window = guard.window
        if window is not None:
            signature = window.absorb(memory.state(key), at, values.get(window.options.metric))
        last = seen.get(key)
        if last is None or not last.settled or last.guard is not guard:
            kept.append(rule)
            continue
        if window is None:
            signature = guard.signature(values)
        if signature != last.signature and (window is not None or not _same_results(last, guard, values)):
            kept.append(rule)
            continue
        due = timers.get(key)
        if due is not None and due <= at:
            kept.append(rule)
    return kept


class LevelGroup:
    """The guarded rules that readings of one device with one metric set reach, checked together.

    Its members have one trigger metric each (``Guard.trigger``), and it is in the set, so every
    such reading triggers every member; the engine hands the group each of them (one group per
    metric set: a rule reached by several sets is in several groups). The group keeps ``last``,
    the values of the metrics its rules read as of its previous reading. Invariant: each rule's
    remembered evaluation decides as its signature of ``last`` would. It holds after the first
    reading, which checks every rule one by one. Then a rule can only have moved if one of its
    levels lies between the old and the new value of a metric (one bisection per metric finds
    them, whatever the number of rules), if a metric it reads by value changed, if its count is
    running or if its timer is due. A rule evaluated elsewhere (another group, a timer, a status
    change) on values this group has not seen is checked one by one at its next reading
    (``recheck``). The engine makes a new group when the rules, the device or the remembered
    signatures change otherwise.
    """

    __slots__ = (
        "device_id",
        "last",
        "next_due",
        "recheck",
        "rules",
        "running",
        "tenant_id",
        "timed",
        "watch",
        "windows",
    )

    def __init__(self, tenant_id: str, device_id: str, rules: Iterable[CompiledRule]) -> None:
        self.tenant_id, self.device_id = tenant_id, device_id
        self.rules = {r.rule_id: r for r in rules}
        leveled: dict[str, list[tuple[float, str]]] = {}
        by_value: dict[str, set[str]] = {}
        for rule_id, rule in self.rules.items():
            assert rule.guard is not None
            for metric, levels in rule.guard.metrics.items():
                if levels is None:
                    by_value.setdefault(metric, set()).add(rule_id)
                else:
                    leveled.setdefault(metric, []).extend((level, rule_id) for level in levels)
        # Per metric read: its levels with the rule of each (sorted), the rules with levels on
        # it, and the rules that read its value as such.
        self.watch: tuple[tuple[str, list[float], list[str], frozenset[str], frozenset[str]], ...] = tuple(
            (
                metric,
                [level for level, _ in sorted(leveled.get(metric, ()))],
                [rule_id for _, rule_id in sorted(leveled.get(metric, ()))],
                frozenset(rule_id for _, rule_id in leveled.get(metric, ())),
                frozenset(by_value.get(metric, ())),
            )
            for metric in sorted({*leveled, *by_value})
        )
        # Sliding windows, by rule.
        self.windows = {
            rule_id: _Window(
                rule_id, guard.window, guard.window.options.metric, (tenant_id, rule_id, device_id), guard
            )
            for rule_id, rule in self.rules.items()
            if (guard := rule.guard) is not None and guard.window is not None
        }
        self.last: dict[str, Any] | None = None  # None: the next reading checks every rule
        self.running: set[str] = set()  # consecutive counts in progress
        self.timed: set[str] = set(self.rules)  # may have a timer pending (checked against timers)
        self.next_due: datetime | None = None  # the earliest of their timers (None: look)
        self.recheck: set[str] = set()

    def candidates(
        self,
        values: Mapping[str, MetricValue],
        at: datetime,
        memory: Memory,
    ) -> list[CompiledRule]:
        """The rules of the group a reading of its trigger metric (already in ``values``) must
        evaluate."""
        tenant_id, device_id = self.tenant_id, self.device_id
        seen, timers = memory.seen, memory.timers
        last = self.last
        if last is None:
            self.last = {metric: values.get(metric) for metric, *_ in self.watch}
            rules = list(self.rules.values())
            return worth_evaluating(rules, tenant_id, device_id, values, at, memory)
        picked: set[str] = set()
        for metric, levels, owners, leveled, by_value in self.watch:
            now = values.get(metric)
            before = last[metric]
            if (
                before == now
                and before.__class__ is now.__class__
                and (now or now.__class__ is not float or _same_zero(before, now))
            ):
                continue
            last[metric] = now
            if by_value:
                picked |= by_value
            if leveled:
                if _plain_number(before) and _plain_number(now):
                    a, b = float(before), float(now)  # type: ignore[arg-type]
                    low, high = (a, b) if a < b else (b, a)
                    first, end = bisect.bisect_left(levels, low), bisect.bisect_right(levels, high)
                    if first < end:
                        picked.update(owners[first:end])
                else:
                    picked |= leveled
        if self.running:
            picked |= self.running
        for window in self.windows.values():  # every sample counts: taken on each reading
            state = window.state
            if state is None:  # the first reading: the rule's state and last evaluation, kept
                state = window.state = memory.state(window.key)
                window.seen = seen.get(window.key)
            result = window.condition.absorb(state, at, values.get(window.metric))
            memo = window.seen
            if memo is None or memo.guard is not window.guard or memo.signature != result:
                picked.add(window.rule_id)
        if self.timed and (self.next_due is None or self.next_due <= at):
            earliest = None
            for rule_id in list(self.timed):
                due = timers.get((tenant_id, rule_id, device_id))
                if due is None:
                    self.timed.discard(rule_id)
                    continue
                if due <= at:
                    picked.add(rule_id)
                if earliest is None or due < earliest:
                    earliest = due
            self.next_due = earliest
        if not picked and not self.recheck:
            return []
        found = []
        for rule_id in picked:
            rule = self.rules[rule_id]
            ruled = rule.guard
            if ruled is not None and ruled.refines and rule_id not in self.running:
                key = (tenant_id, rule_id, device_id)
                memo = seen.get(key)
                due = timers.get(key)
                if (
                    memo is not None
                    and memo.settled
                    and memo.guard is ruled
                    and (due is None or due > at)
                    and _same_results(memo, ruled, values)
                ):
                    continue
            found.append(rule)
        if self.recheck:
            again = [self.rules[rule_id] for rule_id in self.recheck - picked]
            self.recheck = set()
            found += worth_evaluating(again, tenant_id, device_id, values, at, memory)
        return found

    def timer(self, rule_id: str, wake_at: datetime) -> None:
        """One of the group's rules asked for a timer."""
        self.timed.add(rule_id)
        if self.next_due is not None and wake_at < self.next_due:
            self.next_due = wake_at

    def note(self, rule_id: str, seen: Seen) -> None:
        """After an evaluation of one of the group's rules."""
        if seen.settled:
            self.running.discard(rule_id)
        else:
            self.running.add(rule_id)
        window = self.windows.get(rule_id)
        if window is not None:
            window.seen = seen
            return  # a window's signature is its result, taken on every reading of the group
        if self.last is not None and seen.guard.signature(self.last) != seen.signature:
            self.recheck.add(rule_id)  # evaluated on values the group has not seen


class _Window:
    """A sliding window in a level group: its rule, condition, metric, state key and guard, and
    (once the group has seen a reading) the rule's state and last evaluation. The engine makes
    a new group whenever a state is dropped, so the state kept here is the engine's."""

    __slots__ = ("condition", "guard", "key", "metric", "rule_id", "seen", "state")

    def __init__(
        self, rule_id: str, condition: WindowCondition, metric: str, key: StateKey, guard: Guard
    ) -> None:
        self.rule_id, self.condition, self.metric, self.key, self.guard = (
            rule_id,
            condition,
            metric,
            key,
            guard,
        )
        self.state: dict[str, Any] | None = None
        self.seen: Seen | None = None


def _same_zero(before: Any, now: Any) -> bool:
    """For two float zeros: not 0.0 against -0.0 (an expression can tell them apart)."""
    return math.copysign(1.0, before) == math.copysign(1.0, now)


def _plain_number(value: Any) -> bool:
    return (value.__class__ is float or value.__class__ is int) and value == value


def guard_for(
    document: RuleDocument,
    conditions: Iterable[Condition],
    triggers: Iterable[Trigger] = (),
    actions: Iterable[Action] = (),
) -> Guard | None:
    """The guard of a compiled rule, or None when every evaluation may matter."""
    if document.fire is not FireMode.ON_CHANGE or document.trace is not TraceMode.CHANGES:
        return None
    conditions, triggers = list(conditions), list(triggers)

    def every_reading_of(metric: str) -> bool:
        """Triggered by every reading of ``metric`` and nothing else, and never fed a reading
        without the rule (a rule does not see the derived metrics it writes)."""
        return (
            bool(triggers)
            and all(type(t) is TelemetryReceived and t.options.metrics == [metric] for t in triggers)
            and not any(a.node_key == "metric.derived" for a in actions)
        )

    if len(conditions) == 1 and type(conditions[0]) is WindowCondition:
        window = conditions[0]
        assert isinstance(window, WindowCondition)
        metric = window.options.metric
        return Guard({}, [], metric, window=window) if every_reading_of(metric) else None
    metrics: dict[str, Levels] = {}
    counters: list[str] = []
    leaves: list[Leaf] = []
    for condition in conditions:
        if not _collect(condition, metrics, counters, leaves):
            return None
    first = triggers[0] if triggers else None
    wanted = first.options.metrics if isinstance(first, TelemetryReceived) else []
    trigger = wanted[0] if len(wanted) == 1 and every_reading_of(wanted[0]) else None
    # With an expression among the leaves, a change of signature may still leave every leaf's
    # result as it was (door_open flipping while "door_open and temp > -14" stays false): the
    # leaves' results are checked before evaluating (Guard.results).
    with_expression = any(not isinstance(leaf, tuple) for leaf in leaves)
    return Guard(metrics, counters, trigger, leaves=tuple(leaves) if with_expression else None)


Leaf = tuple[str, Levels] | CompiledExpression  # a threshold's metric and levels, or an expression


def _collect(
    condition: Condition, metrics: dict[str, Levels], counters: list[str], leaves: list[Leaf]
) -> bool:
    kind = type(condition)
    if kind is ThresholdCondition:
        o = condition.options
        levels = tuple(sorted({float(o.value), *(() if o.clear_at is None else (float(o.clear_at),))}))
        _merge(metrics, o.metric, levels)
        leaves.append((o.metric, levels))
        return True
    if kind is ExpressionCondition:
        assert isinstance(condition, ExpressionCondition)
        for metric, found in condition.compiled.levels.items():
            _merge(metrics, metric, found)
        leaves.append(condition.compiled)
        return True
    if kind is DurationCondition or kind is ConsecutiveCondition:
        if kind is ConsecutiveCondition:
            counters.append(condition.path)
        return condition.child is not None and _collect(condition.child, metrics, counters, leaves)
    if condition.node_key == "group":  # engine.compiler.GroupCondition (which imports this module)
        children: list[Condition] = getattr(condition, "children", [])
        return all(_collect(child, metrics, counters, leaves) for child in children)
    return False  # windows, time of day, third-party conditions: every evaluation may matter


def _results(leaves: tuple[Leaf, ...], values: Mapping[str, MetricValue]) -> tuple[Any, ...]:
    """What each leaf condition can tell from these values: a threshold's position among its
    levels, an expression's result (None when undecided, as ExpressionCondition has it)."""
    out: list[Any] = []
    for leaf in leaves:
        if isinstance(leaf, tuple):
            out.append(_component(values.get(leaf[0]), leaf[1]))
            continue
        inputs = {m: values.get(m) for m in leaf.symbols}
        if any(v is None for v in inputs.values()):
            out.append(None)
            continue
        try:
            out.append(leaf.evaluate(inputs))
        except ExpressionRuntimeError:
            out.append(None)
    return tuple(out)


def _merge(metrics: dict[str, Levels], metric: str, levels: Levels) -> None:
    if levels is None or (metric in metrics and metrics[metric] is None):
        metrics[metric] = None
        return
    metrics[metric] = tuple(sorted(set(metrics.get(metric) or ()) | set(levels)))
