"""Backtests: a compiled rule replayed over stored telemetry, with no side effect at all.

The replay is the live engine's loop for one rule and one device, driven by recorded readings
instead of the bus: every reading updates the device's latest values and is evaluated as a
READING event; when a decision asks to be woken (``wake_at``, e.g. "for 5 minutes") a TIMER event
is evaluated at exactly that instant if it comes at or before the next reading (a reading at the
same instant comes after the timer), so durations fire when they would live. The timer policy is
``engine.runner.RuleEngine``'s: one pending timer per (rule, device), replaced by a decision asking
for another instant and kept (it fires, and evaluates to nothing new) when a decision asks for
none. Evaluation reads only the event time, never the wall clock, and the rule state is the JSON
dict the live engine persists, fresh for each device.

Actions are never executed, only counted. ``alarm.raise``/``alarm.clear`` calls become alarm spans
(one alarm per rule, device and alarm type active at a time) and ``notify`` calls are counted
after the rule's own throttling (the notifiers' delivery policy may merge some further).

:func:`replay` is pure (readings in, report out) and serves both :func:`backtest` and the tests
that check a backtest against the same readings fed one by one as they arrive live;
:class:`DeviceReplay` is its incremental form. :func:`backtest` streams one device at a time in
time slices, so memory holds one slice of one device whatever the range.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from engine.compiler import CompiledRule, Decision, GroupCondition
from engine.evaluation import DeviceView, Event, EventKind, TraceStep
from engine.guards import Seen, remember
from engine.nodes.actions import DerivedMetric
from engine.nodes.base import Condition
from engine.nodes.conditions import ThresholdCondition, WindowCondition
from model.errors import InvalidInputError
from model.readings import MetricValue, Reading, Source
from storage.telemetry.port import Sample, TelemetryStore

SOURCE_KIND = "backtest"
DEFAULT_SLICE = timedelta(hours=6)
DEFAULT_SERIES_POINTS = 1000
DEFAULT_KEEP = 1000

ALARM_RAISE = "alarm.raise"
ALARM_CLEAR = "alarm.clear"
NOTIFY = "notify"

_US = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class Transition:
    """A firing or a clear: when, for which device, on what event, and why."""

    at: datetime
    device_id: str
    event: EventKind
    summary: str
    calls: tuple[str, ...]
    steps: tuple[TraceStep, ...]

    def as_dict(self) -> dict[str, Any]:
        """The transition as served to the editor."""
        return {
            "at": self.at.isoformat(),
            "device_id": self.device_id,
            "event": self.event.value,
            "summary": self.summary,
            "calls": list(self.calls),
            "steps": [s.as_dict() for s in self.steps],
        }


@dataclass(slots=True)
class AlarmSpan:
    """An alarm the rule would have raised, and when it would have been cleared (None: still active)."""

    device_id: str
    alarm_type: str
    severity: str
    raised_at: datetime
    cleared_at: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        """The alarm as served to the editor."""
        return {
            "device_id": self.device_id,
            "alarm_type": self.alarm_type,
            "severity": self.severity,
            "raised_at": self.raised_at.isoformat(),
            "cleared_at": self.cleared_at.isoformat() if self.cleared_at else None,
        }


SeriesPoint = tuple[datetime, float]
Progress = Callable[[str, datetime], None]  # (device id, end of the slice just replayed)


@dataclass(slots=True)
class DeviceReport:
    """What the rule would have done for one device.

    ``fired`` and ``cleared`` count every transition; ``firings`` and ``clears`` keep the first
    ``keep`` of them (a rule firing on every reading must not exhaust memory).
    """

    device_id: str
    readings: int = 0
    evaluations: int = 0
    timer_evaluations: int = 0
    unchanged: int = 0  # readings a guard skipped: they could not change anything (engine.guards)
    fired: int = 0
    cleared: int = 0
    throttled: int = 0
    notifications: int = 0
    firings: list[Transition] = field(default_factory=list)
    clears: list[Transition] = field(default_factory=list)
    alarms: list[AlarmSpan] = field(default_factory=list)
    series: list[SeriesPoint] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The device's part of the report, JSON-able."""
        return {
            "device_id": self.device_id,
            "readings": self.readings,
            "evaluations": self.evaluations,
            "timer_evaluations": self.timer_evaluations,
            "unchanged": self.unchanged,
            "fired": self.fired,
            "cleared": self.cleared,
            "throttled": self.throttled,
            "notifications": self.notifications,
            "firings": [t.as_dict() for t in self.firings],
            "clears": [t.as_dict() for t in self.clears],
            "alarms": [a.as_dict() for a in self.alarms],
            "series": [[ts.isoformat(), v] for ts, v in self.series],
        }


@dataclass(slots=True)
class BacktestReport:
    """What the rule would have done over the replayed readings, per device and in total."""

    rule_id: str
    rule_version: int
    tenant_id: str
    start: datetime | None = None
    end: datetime | None = None
    metric: str | None = None
    devices: list[DeviceReport] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def readings(self) -> int:
        """Readings replayed, all devices."""
        return sum(d.readings for d in self.devices)

    @property
    def evaluations(self) -> int:
        """Evaluations of the rule (reading and timer events a trigger matched), all devices."""
        return sum(d.evaluations for d in self.devices)

    @property
    def unchanged(self) -> int:
        """Readings whose evaluation could not change anything, skipped (engine.guards), all devices."""
        return sum(d.unchanged for d in self.devices)

    @property
    def fired(self) -> int:
        """Firings, all devices."""
        return sum(d.fired for d in self.devices)

    @property
    def cleared(self) -> int:
        """Clears, all devices."""
        return sum(d.cleared for d in self.devices)

    @property
    def throttled(self) -> int:
        """Firings the rule's throttle suppressed, all devices."""
        return sum(d.throttled for d in self.devices)

    @property
    def notifications(self) -> int:
        """Notifications that would have been sent (``notify`` calls after throttling)."""
        return sum(d.notifications for d in self.devices)

    @property
    def firings(self) -> list[Transition]:
        """The kept firings of every device, in time order."""
        return sorted((t for d in self.devices for t in d.firings), key=lambda t: (t.at, t.device_id))

    @property
    def clears(self) -> list[Transition]:
        """The kept clears of every device, in time order."""
        return sorted((t for d in self.devices for t in d.clears), key=lambda t: (t.at, t.device_id))

    @property
    def alarms(self) -> list[AlarmSpan]:
        """Every alarm that would have been raised, in time order."""
        return sorted((a for d in self.devices for a in d.alarms), key=lambda a: (a.raised_at, a.device_id))

    def device(self, device_id: str) -> DeviceReport:
        """The report of one device; KeyError if it was not replayed."""
        for report in self.devices:
            if report.device_id == device_id:
                return report
        raise KeyError(device_id)

    def as_dict(self) -> dict[str, Any]:
        """The whole report, JSON-able (what the API serves to the editor)."""
        alarms = self.alarms
        return {
            "rule_id": self.rule_id,
            "rule_version": self.rule_version,
            "start": self.start.isoformat() if self.start else None,
            "end": self.end.isoformat() if self.end else None,
            "metric": self.metric,
            "totals": {
                "devices": len(self.devices),
                "readings": self.readings,
                "evaluations": self.evaluations,
                "unchanged": self.unchanged,
                "fired": self.fired,
                "cleared": self.cleared,
                "throttled": self.throttled,
                "alarms_raised": len(alarms),
                "alarms_cleared": sum(1 for a in alarms if a.cleared_at is not None),
                "notifications": self.notifications,
            },
            "devices": [d.as_dict() for d in self.devices],
            "skipped": list(self.skipped),
        }


# --- what a rule reads -----------------------------------------------------------------------------


def _walk(conditions: Iterable[Condition]) -> Iterator[Condition]:
    for condition in conditions:
        yield condition
        if isinstance(condition, GroupCondition):
            yield from _walk(condition.children)
        elif condition.child is not None:
            yield from _walk([condition.child])


def rule_metrics(rule: CompiledRule) -> frozenset[str] | None:
    """The metrics a replay must load for the rule to see what it would see live.

    None when a trigger fires on any reading: then every metric of the device matters, since
    each one makes a reading that evaluates the rule.
    """
    triggers = rule.metrics
    if triggers is None:
        return None
    found = set(triggers)
    for condition in rule.conditions:
        found |= condition.metrics()
    for action in (*rule.then, *rule.otherwise):
        if isinstance(action, DerivedMetric):
            found |= action.compiled.symbols
    return frozenset(found)


def main_metric(rule: CompiledRule) -> str | None:
    """The metric worth charting next to the firings: the first threshold's or window's, else any."""
    for condition in _walk(rule.conditions):
        if isinstance(condition, ThresholdCondition | WindowCondition):
            metric: str = condition.options.metric
            return metric
    for names in (rule.metrics, rule_metrics(rule)):
        if names:
            return min(names)
    return None


# --- the series for the chart ----------------------------------------------------------------------


class _Downsampler:
    """The lowest and the highest point of each ``every``-wide bucket (spikes stay visible)."""

    __slots__ = ("_every_us", "_high", "_key", "_low", "_origin", "points")

    def __init__(self, origin: datetime | None, every: timedelta | None) -> None:
        self.points: list[SeriesPoint] = []
        self._origin = origin
        self._every_us = every // _US if every else 0
        self._key: int | None = None
        self._low: SeriesPoint | None = None
        self._high: SeriesPoint | None = None

    def add(self, ts: datetime, value: float) -> None:
        if not self._every_us:
            self.points.append((ts, value))
            return
        if self._origin is None:
            self._origin = ts
        key = ((ts - self._origin) // _US) // self._every_us
        if key != self._key or self._low is None or self._high is None:
            self._flush()
            self._key = key
            self._low = self._high = (ts, value)
            return
        if value < self._low[1]:
            self._low = (ts, value)
        if value > self._high[1]:
            self._high = (ts, value)

    def _flush(self) -> None:
        if self._low is not None and self._high is not None:
            if self._low is self._high:
                self.points.append(self._low)
            else:
                self.points.extend(sorted((self._low, self._high)))
        self._low = self._high = None

    def finish(self) -> list[SeriesPoint]:
        self._flush()
        return self.points


# --- the replay ------------------------------------------------------------------------------------


def summarize(steps: Sequence[TraceStep]) -> str:
    """One line saying why: each condition's verdict in document order (and the throttle's)."""
    return "; ".join(f"{s.path}: {s.detail}" for s in steps if not s.path.startswith("when/"))


class DeviceReplay:
    """One rule for one device, evaluated as the live engine would: feed it readings in time order.

    It does not check the rule's device selector (:func:`replay` and :func:`backtest` do).

    The pending timer (the ``wake_at`` of the last decision that asked for one) fires before the
    next reading when it is due at or before it; :meth:`advance` fires it when due before a time
    with no reading (a device that went silent still gets its "for 5 minutes" firing).
    """

    def __init__(
        self,
        rule: CompiledRule,
        device: DeviceView,
        *,
        series_metric: str | None = None,
        series_origin: datetime | None = None,
        series_every: timedelta | None = None,
        keep: int = DEFAULT_KEEP,
        state: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.rule = rule
        self.device = device
        self.values: dict[str, MetricValue] = {}
        self.value_times: dict[str, datetime] = {}
        self.state: dict[str, dict[str, Any]] = state if state is not None else {}
        self.report = DeviceReport(device.id)
        self.wake_at: datetime | None = None
        self._keep = keep
        self._active_alarms: dict[str, AlarmSpan] = {}
        self._series_metric = series_metric
        self._series = _Downsampler(series_origin, series_every)
        self._last: datetime | None = None
        self._seen: Seen | None = None  # what the guard saw at the last evaluation, as live

    def feed(self, reading: Reading) -> list[Decision]:
        """Evaluate one reading (after any timer due at or before it); the decisions made."""
        if reading.tenant_id != self.rule.tenant_id or reading.device_id != self.device.id:
            raise ValueError(
                f"a reading of {reading.tenant_id}/{reading.device_id} fed to the replay of "
                f"{self.rule.tenant_id}/{self.device.id}"
            )
        ts = reading.ts
        if self._last is not None and ts < self._last:
            raise ValueError(f"readings must come in time order ({ts} came after {self._last})")
        self._last = ts
        decisions = self._timers(ts, inclusive=True) if self.wake_at is not None else []
        self.report.readings += 1
        metrics = reading.metrics
        self.values.update(metrics)
        times = self.value_times
        for name in metrics:
            times[name] = ts
        if self._series_metric is not None:
            value = metrics.get(self._series_metric)
            if isinstance(value, int | float):
                self._series.add(ts, float(value))
        seen, guard = self._seen, self.rule.guard
        if (
            seen is not None
            and seen.settled
            and seen.guard is guard
            and guard is not None
            and guard.window is None  # a window takes every sample: evaluated (live, it is absorbed)
            and guard.signature(self.values) == seen.signature
        ):
            # As live (engine.core): nothing this reading could change; due timers fired above.
            self.report.unchanged += 1
            return decisions
        event = Event(EventKind.READING, reading.tenant_id, reading.device_id, ts, reading)
        decision = self.rule.evaluate(event, self.device, self.values, times, self.state)
        if decision is not None:
            self._take(decision)
            decisions.append(decision)
        return decisions

    def advance(self, until: datetime) -> list[Decision]:
        """Fire the timers due before ``until`` (exclusive), as time passes with no reading."""
        if self.wake_at is None:
            return []
        return self._timers(until, inclusive=False)

    def finish(self, until: datetime | None = None) -> DeviceReport:
        """Fire the timers due before ``until`` (when given) and close the report."""
        if until is not None:
            self.advance(until)
        self.report.series = self._series.finish()
        return self.report

    def _timers(self, until: datetime, *, inclusive: bool) -> list[Decision]:
        decisions: list[Decision] = []
        while (at := self.wake_at) is not None and (at <= until if inclusive else at < until):
            self.wake_at = None
            event = Event(EventKind.TIMER, self.rule.tenant_id, self.device.id, at)
            decision = self.rule.evaluate(event, self.device, self.values, self.value_times, self.state)
            if decision is None:
                continue
            self._take(decision)
            decisions.append(decision)
            if self.wake_at is not None and self.wake_at <= at:
                self.wake_at = None  # a node asking to be woken "now" again would loop forever
        return decisions

    def _take(self, decision: Decision) -> None:
        if self.rule.guard is not None:
            self._seen = remember(self.rule.guard, self.values, self.state, decision.result)
        report = self.report
        report.evaluations += 1
        if decision.event is EventKind.TIMER:
            report.timer_evaluations += 1
        self.wake_at = decision.wake_at  # as EngineCore.evaluate: the one the last decision asked for
        if decision.throttled:
            report.throttled += 1
        if decision.fired or decision.cleared:
            transition = Transition(
                decision.at,
                decision.device_id,
                decision.event,
                summarize(decision.steps),
                tuple(c.node for c in decision.calls),
                tuple(decision.steps),
            )
            if decision.fired:
                report.fired += 1
                if len(report.firings) < self._keep:
                    report.firings.append(transition)
            else:
                report.cleared += 1
                if len(report.clears) < self._keep:
                    report.clears.append(transition)
        for call in decision.calls:
            if call.node == NOTIFY:
                report.notifications += 1
            elif call.node == ALARM_RAISE:
                alarm_type = str(call.options["alarm_type"])
                if alarm_type not in self._active_alarms:  # one active alarm per rule, device, type
                    severity = str(call.options.get("severity", ""))
                    span = AlarmSpan(decision.device_id, alarm_type, severity, decision.at)
                    self._active_alarms[alarm_type] = span
                    report.alarms.append(span)
            elif call.node == ALARM_CLEAR:
                active = self._active_alarms.pop(str(call.options["alarm_type"]), None)
                if active is not None:
                    active.cleared_at = decision.at


def replay(
    rule: CompiledRule,
    readings_by_device: Iterable[tuple[DeviceView, Iterable[Reading]]],
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    series_metric: str | None = None,
    series_every: timedelta | None = None,
    keep: int = DEFAULT_KEEP,
) -> BacktestReport:
    """Replay each device's readings (in time order) through the rule, with fresh state per device.

    Pure: nothing but the report comes out. Devices the rule's selector does not pick are skipped
    (listed in the report), as the live engine never evaluates the rule for them. Devices are
    independent (rule state is keyed by rule and device), so replaying them one after the other
    decides exactly what a live engine receiving the same readings interleaved decides. With
    ``end``, timers due before it fire even after a device's last reading. ``series_metric``
    collects that metric for a chart, reduced to the lowest and highest point of each
    ``series_every`` bucket when that is given.
    """
    report = BacktestReport(rule.rule_id, rule.version, rule.tenant_id, start, end, series_metric)
    for device, readings in readings_by_device:
        if not rule.selects(device.id, device.type_id, device.labels):
            report.skipped.append(device.id)  # live, the rule never sees this device
            continue
        device_replay = DeviceReplay(
            rule,
            device,
            series_metric=series_metric,
            series_origin=start,
            series_every=series_every,
            keep=keep,
        )
        for reading in readings:
            device_replay.feed(reading)
        report.devices.append(device_replay.finish(end))
    return report


# --- the backtest over a telemetry store -----------------------------------------------------------


def merge_samples(
    tenant_id: str, device_id: str, series: Mapping[str, Sequence[Sample]], source: Source
) -> list[Reading]:
    """Per-metric samples merged into time-ordered readings (the samples of one instant: one reading)."""
    by_ts: dict[datetime, dict[str, MetricValue]] = {}
    for metric, samples in series.items():
        for sample in samples:
            metrics = by_ts.get(sample.ts)
            if metrics is None:
                by_ts[sample.ts] = {metric: sample.value}
            else:
                metrics[metric] = sample.value
    return [Reading(tenant_id, device_id, ts, by_ts[ts], source) for ts in sorted(by_ts)]


async def backtest(
    rule: CompiledRule,
    store: TelemetryStore,
    devices: Sequence[DeviceView],
    start: datetime,
    end: datetime,
    *,
    metrics: set[str] | None = None,
    slice_length: timedelta = DEFAULT_SLICE,
    series_points: int = DEFAULT_SERIES_POINTS,
    keep: int = DEFAULT_KEEP,
    progress: Progress | None = None,
) -> BacktestReport:
    """Replay the stored telemetry of ``devices`` over [start, end) through ``rule``; no side effect.

    Devices the rule's selector does not pick are skipped (and listed as such). The metrics loaded
    are ``metrics`` when given, else those the rule reads (every metric of the device when a
    trigger fires on any reading). Each device streams in ``slice_length`` slices (memory holds
    one slice of one device) and the event loop gets control back between slices, where the task
    can be cancelled; ``progress(device_id, slice_end)`` is called after each slice (for a progress
    bar). ``series_points`` bounds the chart series of each device (0: no series).
    """
    if start.tzinfo is None or end.tzinfo is None:
        raise InvalidInputError("a backtest's start and end must be timezone-aware")
    if end <= start:
        raise InvalidInputError(f"a backtest must end after it starts ({start} .. {end})")
    if slice_length <= timedelta(0):
        raise InvalidInputError("the backtest slice length must be positive")
    tenant_id = rule.tenant_id
    wanted = frozenset(metrics) if metrics is not None else rule_metrics(rule)
    series_metric = main_metric(rule) if series_points > 0 else None
    if wanted is not None and series_metric is not None and series_metric not in wanted:
        series_metric = None
    every = (end - start) / max(1, math.ceil(series_points / 2))
    report = BacktestReport(rule.rule_id, rule.version, tenant_id, start, end, series_metric)
    source = Source(SOURCE_KIND, rule.rule_id)
    for device in devices:
        if not rule.selects(device.id, device.type_id, device.labels):
            report.skipped.append(device.id)
            continue
        names = sorted(wanted if wanted is not None else await store.latest(tenant_id, device.id))
        device_replay = DeviceReplay(
            rule, device, series_metric=series_metric, series_origin=start, series_every=every, keep=keep
        )
        if names:
            await _stream(device_replay, store, names, _slices(start, end, slice_length), source, progress)
        report.devices.append(device_replay.finish(end))
    return report


async def _load(
    store: TelemetryStore,
    tenant_id: str,
    device_id: str,
    metrics: Sequence[str],
    start: datetime,
    end: datetime,
    source: Source,
) -> list[Reading]:
    series = {m: await store.query(tenant_id, device_id, m, start, end) for m in metrics}
    return merge_samples(tenant_id, device_id, series, source)


async def _stream(
    device_replay: DeviceReplay,
    store: TelemetryStore,
    metrics: Sequence[str],
    slices: Iterable[tuple[datetime, datetime]],
    source: Source,
    progress: Progress | None,
) -> None:
    """Feed one device's stored readings slice by slice, giving the event loop a turn in between.

    Loading the next slice while this one is evaluated was measured and dropped: the store's rows
    become Python objects under the GIL either way, so on two cores it only added contention.
    """
    tenant_id, device_id = device_replay.rule.tenant_id, device_replay.device.id
    for a, b in slices:
        for reading in await _load(store, tenant_id, device_id, metrics, a, b, source):
            device_replay.feed(reading)
        if progress is not None:
            progress(device_id, b)
        await asyncio.sleep(0)


def _slices(start: datetime, end: datetime, length: timedelta) -> Iterator[tuple[datetime, datetime]]:
    a = start
    while a < end:
        b = min(end, a + length)
        yield a, b
        a = b
