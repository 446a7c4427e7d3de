"""Backtests: the replay decides what the live engine decides, and reports it without side effects."""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import pytest

from engine.backtest import (
    DeviceReplay,
    backtest,
    main_metric,
    merge_samples,
    replay,
    rule_metrics,
)
from engine.compiler import CompiledRule, Decision
from engine.evaluation import DeviceView, EventKind
from model.errors import InvalidInputError
from model.readings import MetricValue, Reading, Source
from storage.telemetry.port import Aggregate, Sample
from tests.unit.engine._rules import DEVICE, T0, Device, rule
from tests.unit.engine.test_compiler import OLIVIA, _run

SOURCE = Source("test", "backtest")
S = timedelta(seconds=1)


def readings(
    temps: Sequence[float], *, start_s: float = 0, every_s: float = 10, device: str = DEVICE.id
) -> list[Reading]:
    """A temperature reading every ``every_s`` seconds from T0 + ``start_s``."""
    return [
        Reading("acme", device, T0 + (start_s + i * every_s) * S, {"temp": t}, SOURCE)
        for i, t in enumerate(temps)
    ]


def olivia() -> CompiledRule:
    return rule(**OLIVIA)


def test_door_openings_of_two_minutes_never_fire() -> None:
    day = ([-18.0] * 30 + [-4.0] * 12) * 20 + [-18.0] * 30  # twenty 2-minute door openings
    report = replay(olivia(), [(DEVICE, readings(day))])
    assert report.fired == 0 and report.alarms == [] and report.notifications == 0
    timers = report.device(DEVICE.id).timer_evaluations
    assert report.readings == len(day) == report.evaluations - timers + report.unchanged
    # Only the first reading and the crossings of -10 and -12 are evaluated (engine.guards).
    assert report.evaluations - timers == 1 + 2 * 20


@pytest.mark.parametrize("every_s", [10, 70])
def test_a_compressor_failure_fires_once_at_exactly_five_minutes(every_s: int) -> None:
    cold = readings([-18.0] * (600 // every_s), every_s=every_s)
    warm_from = cold[-1].ts + every_s * S
    warm = readings([-5.0] * (3600 // every_s), start_s=(warm_from - T0) / S, every_s=every_s)
    report = replay(olivia(), [(DEVICE, cold + warm)])
    assert report.fired == 1
    firing = report.firings[0]
    assert firing.at == warm_from + 300 * S
    assert firing.device_id == DEVICE.id and firing.calls == ("alarm.raise", "notify")
    # The timer fires at that instant: on a 70 s grid there is no reading then, and on a 10 s
    # grid the timer comes before the reading of the same instant.
    assert firing.event is EventKind.TIMER
    assert "if/0: true for 300s of 300s" in firing.summary
    assert [(a.alarm_type, a.severity, a.raised_at, a.cleared_at) for a in report.alarms] == [
        ("freezer-warm", "major", firing.at, None)
    ]
    assert report.notifications == 1 and report.device(DEVICE.id).timer_evaluations >= 1


def test_the_clear_comes_two_minutes_below_minus_12_and_closes_the_alarm() -> None:
    temps = [-18.0] * 10 + [-5.0] * 40 + [-11.0] * 30 + [-14.0] * 30
    report = replay(olivia(), [(DEVICE, readings(temps, every_s=10))])
    first_cold = T0 + (10 + 40 + 30) * 10 * S
    assert [c.at for c in report.clears] == [first_cold + 120 * S]
    assert report.clears[0].calls == ("alarm.clear",)
    [alarm] = report.alarms
    assert alarm.raised_at == T0 + (100 + 300) * S and alarm.cleared_at == first_cold + 120 * S
    assert report.notifications == 1  # the clear only runs alarm.clear


def test_notifications_are_counted_after_throttling() -> None:
    compiled = rule(
        **{
            "if": [{"type": "telemetry.threshold", "options": {"metric": "temp", "value": 0}}],
            "then": [
                {"type": "alarm.raise", "options": {"alarm_type": "hot"}},
                {"type": "notify", "options": {"channels": ["ops"]}},
            ],
            "fire": "always",
            "throttle": {"min_interval_s": 60},
        }
    )
    report = replay(compiled, [(DEVICE, readings([5.0] * 13))])  # 2 minutes, every 10 s
    assert report.fired == 3 and report.throttled == 10
    assert report.notifications == 3
    assert len(report.alarms) == 1  # raised three times, one active alarm per rule, device, type


def _random_temps(seed: int, n: int) -> list[float]:
    rng = random.Random(seed)
    temps, level = [], -18.0
    for _ in range(n):
        if rng.random() < 0.01:
            level = rng.choice([-18.0, -11.0, -5.0, -13.0])
        spike = 12.0 if rng.random() < 0.05 else 0.0
        temps.append(round(level + spike + rng.gauss(0, 0.3), 2))
    return temps


def _runner_loop(compiled: CompiledRule, temps: Sequence[float]) -> list[Decision]:
    """engine.runner.RuleEngine's timer policy in miniature, over the compiler tests' Device.

    One pending timer per (rule, device): the one the last decision asked for (a decision asking
    for none cancels it); before each reading, the timer due at or before it fires.
    """
    device, decisions, pending = Device(compiled), [], None
    for i, temp in enumerate(temps):
        at = T0 + i * 10 * S
        while pending is not None and pending <= at:
            due, pending = pending, None
            fired = device.timer(due)
            if fired is not None:
                decisions.append(fired)
                pending = fired.wake_at if fired.wake_at and fired.wake_at > due else None
        decision = device.reading(at, temp=temp)
        if decision is not None:
            decisions.append(decision)
            pending = decision.wake_at
    return decisions


@pytest.mark.parametrize("seed", range(5))
def test_replay_decides_what_the_live_loop_decides(seed: int) -> None:
    temps = _random_temps(seed, 3000)

    def replay_all(compiled: CompiledRule) -> list[Decision]:
        device, decided = DeviceReplay(compiled, DEVICE), []
        for reading in readings(temps):
            decided.extend(device.feed(reading))
        return decided

    def key(d: Decision) -> tuple[Any, ...]:
        return d.at, d.event, d.outcome, [c.node for c in d.calls], [s.detail for s in d.steps]

    def changes(decisions: list[Decision]) -> list[tuple[Any, ...]]:
        """The decisions that act, or whose result differs from the previous one's."""
        results = [None, *(d.result_word for d in decisions)]
        return [
            key(d)
            for d, before in zip(decisions, results, strict=False)
            if d.fired or d.cleared or d.throttled or d.result_word != before
        ]

    live = _runner_loop(olivia(), temps)
    # Without its guard, the replay evaluates every reading and decides exactly as the loop.
    assert [key(d) for d in replay_all(dataclasses.replace(olivia(), guard=None))] == [key(d) for d in live]
    # With it (as live), it skips the readings that could not change anything: the same firings,
    # clears and changes of result, with the same explanations, from far fewer evaluations.
    replayed = replay_all(olivia())
    assert changes(replayed) == changes(live)
    assert len(replayed) < len(live) / 5
    assert any(d.fired for d in live) and any(d.cleared for d in live)
    # A duration that stops before its timer is due cancels the timer (the pending timer is the
    # one the last decision asked for, as persisted): every timer that fires decides something.
    timers = [d for d in live if d.event is EventKind.TIMER]
    assert timers and all(d.fired or d.cleared or d.throttled for d in timers)
    # The compiler tests' own loop (it drops a timer a later decision did not ask for) agrees on
    # every firing and clear.
    compiler_loop = [d for d in _run(Device(olivia()), temps) if d is not None and (d.fired or d.cleared)]
    assert [key(d) for d in replayed if d.fired or d.cleared] == [key(d) for d in compiler_loop]


def test_a_device_that_goes_silent_still_fires_when_its_timer_is_due() -> None:
    warm = readings([-18.0, -5.0, -5.0])  # then nothing: the freezer's connection dropped
    assert replay(olivia(), [(DEVICE, warm)]).fired == 0  # no end: nothing after the last reading
    report = replay(olivia(), [(DEVICE, warm)], end=T0 + 3600 * S)
    assert [(f.at, f.event) for f in report.firings] == [(T0 + 310 * S, EventKind.TIMER)]
    early = replay(olivia(), [(DEVICE, warm)], end=T0 + 310 * S)  # the end is exclusive
    assert early.fired == 0


def test_devices_get_fresh_state_and_interleaving_changes_nothing() -> None:
    other = DeviceView("fz-2", "freezer", {"region": "north"}, DEVICE.timezone)
    warm = readings([-5.0] * 60, device="fz-2")
    cold = readings([-18.0] * 30 + [-5.0] * 10 + [-18.0] * 20)
    south = DeviceView("fz-3", "freezer", {"region": "south"}, DEVICE.timezone)
    report = replay(olivia(), [(DEVICE, cold), (other, warm), (south, readings([-5.0] * 60, device="fz-3"))])
    assert [(f.device_id, f.at) for f in report.firings] == [("fz-2", T0 + 300 * S)]
    assert report.skipped == ["fz-3"]  # the rule selects region north: live, it never sees fz-3
    # Live, the readings of both arrive interleaved; each device has its own state.
    replays = {DEVICE.id: DeviceReplay(olivia(), DEVICE), "fz-2": DeviceReplay(olivia(), other)}
    for reading in sorted(cold + warm, key=lambda r: r.ts):
        replays[reading.device_id].feed(reading)
    assert [f for r in replays.values() for f in r.finish().firings] == report.firings


def test_readings_out_of_order_or_of_another_device_are_refused() -> None:
    device = DeviceReplay(olivia(), DEVICE)
    device.feed(readings([-18.0], start_s=10)[0])
    with pytest.raises(ValueError, match="time order"):
        device.feed(readings([-18.0])[0])
    with pytest.raises(ValueError, match="fed to the replay"):
        device.feed(readings([-18.0], start_s=20, device="fz-9")[0])


def test_samples_of_one_instant_form_one_reading() -> None:
    series = {
        "temp": [Sample(T0, -18.0), Sample(T0 + 10 * S, -17.5)],
        "door_open": [Sample(T0 + 5 * S, True), Sample(T0 + 10 * S, False)],
    }
    merged = merge_samples("acme", "fz-1", series, SOURCE)
    assert [(r.ts - T0, dict(r.metrics)) for r in merged] == [
        (timedelta(0), {"temp": -18.0}),
        (5 * S, {"door_open": True}),
        (10 * S, {"temp": -17.5, "door_open": False}),
    ]


def test_the_series_keeps_each_buckets_extremes() -> None:
    temps = [-18.0, -4.0, -17.0, -18.5, -18.0, -18.0]
    report = replay(
        olivia(), [(DEVICE, readings(temps))], start=T0, series_metric="temp", series_every=30 * S
    )
    assert [(p[0] - T0, p[1]) for p in report.devices[0].series] == [
        (0 * S, -18.0),
        (10 * S, -4.0),
        (30 * S, -18.5),
        (40 * S, -18.0),
    ]
    raw = replay(olivia(), [(DEVICE, readings(temps))], series_metric="temp")
    assert [v for _, v in raw.devices[0].series] == temps


def test_what_a_rule_reads() -> None:
    compiled = rule(
        **{
            "if": [
                {"type": "expression", "options": {"expression": "temp > -10 and not door_open"}},
                {
                    "type": "duration",
                    "options": {"seconds": 60},
                    "condition": {
                        "all": [
                            {"type": "telemetry.threshold", "options": {"metric": "temp", "value": -12}},
                        ]
                    },
                },
            ],
        }
    )
    assert rule_metrics(compiled) == frozenset({"temp", "door_open"})
    assert main_metric(compiled) == "temp"
    anything = rule(**{"when": [{"type": "telemetry.received", "options": {}}]})
    assert rule_metrics(anything) is None and main_metric(anything) is None


# --- backtest() over a store ------------------------------------------------------------------------


class MemoryStore:
    """A TelemetryStore over a list, recording the queries it answers."""

    def __init__(self, stored: Sequence[Reading]) -> None:
        self.samples: dict[tuple[str, str, str], list[Sample]] = {}
        for reading in stored:
            for metric, value in reading.metrics.items():
                key = (reading.tenant_id, reading.device_id, metric)
                self.samples.setdefault(key, []).append(Sample(reading.ts, value))
        self.queries: list[tuple[str, str, datetime, datetime]] = []

    async def write(self, readings: Sequence[Reading]) -> None:
        raise AssertionError("a backtest never writes")

    async def latest(
        self, tenant_id: str, device_id: str, metrics: Sequence[str] | None = None
    ) -> dict[str, Sample]:
        return {
            m: s[-1]
            for (t, d, m), s in self.samples.items()
            if t == tenant_id and d == device_id and (metrics is None or m in metrics)
        }

    async def query(
        self,
        tenant_id: str,
        device_id: str,
        metric: str,
        start: datetime,
        end: datetime,
        *,
        every: timedelta | None = None,
        aggregate: Aggregate = Aggregate.MEAN,
    ) -> list[Sample]:
        assert every is None
        self.queries.append((device_id, metric, start, end))
        found = self.samples.get((tenant_id, device_id, metric), [])
        return sorted((s for s in found if start <= s.ts < end), key=lambda s: s.ts)

    async def close(self) -> None:
        pass


def _stored(device: str, temps: Sequence[float], every_s: float, **extra: MetricValue) -> list[Reading]:
    return [
        Reading("acme", device, T0 + i * every_s * S, {"temp": t, **extra}, SOURCE)
        for i, t in enumerate(temps)
    ]


async def test_backtest_streams_slices_and_matches_the_replay() -> None:
    south = DeviceView("fz-south", "freezer", {"region": "south"}, DEVICE.timezone)
    other = DeviceView("fz-2", "freezer", {"region": "north"}, DEVICE.timezone)
    temps = [-18.0] * 100 + [-5.0] * 200 + [-14.0] * 100 + [-18.0] * 100
    stored = _stored(DEVICE.id, temps, 70, door_open=False, compressor_on=True)
    stored += _stored("fz-2", [-18.0] * 500, 70) + _stored("fz-south", [-5.0] * 500, 70)
    store = MemoryStore(stored)
    end = T0 + 500 * 70 * S
    # Slices of 17 minutes: the 5-minute timer of a slice's last reading fires in the next one.
    done: list[tuple[str, datetime]] = []
    report = await backtest(
        olivia(),
        store,
        [DEVICE, other, south],
        T0,
        end,
        slice_length=1020 * S,
        series_points=100,
        progress=lambda device, at: done.append((device, at)),
    )
    assert done[-1] == ("fz-2", end) and len(done) == len(store.queries)  # one query (temp) a slice
    assert report.skipped == ["fz-south"]  # the rule selects region north
    assert {q[1] for q in store.queries} == {"temp"}  # only what the rule reads
    assert all(b - a <= 1020 * S for _, _, a, b in store.queries)
    expected = replay(olivia(), [(DEVICE, stored[:500]), (other, stored[500:1000])], end=end)
    assert report.firings == expected.firings and report.clears == expected.clears
    assert report.fired == 1 and report.cleared == 1
    assert report.firings[0].at == T0 + (100 * 70 + 300) * S
    assert (report.readings, report.evaluations) == (expected.readings, expected.evaluations)
    series = report.device(DEVICE.id).series
    assert 0 < len(series) <= 100 and max(v for _, v in series) == -5.0
    json.dumps(report.as_dict())  # what the API serves


async def test_backtest_range_is_half_open_and_checked() -> None:
    store = MemoryStore(_stored(DEVICE.id, [-5.0] * 40, 10))
    report = await backtest(olivia(), store, [DEVICE], T0 + 10 * S, T0 + 310 * S)
    assert report.readings == 30 and report.fired == 0  # due at exactly T0 + 310 s: excluded
    report = await backtest(olivia(), store, [DEVICE], T0 + 10 * S, T0 + 311 * S)
    assert [f.at for f in report.firings] == [T0 + 310 * S]
    with pytest.raises(InvalidInputError):
        await backtest(olivia(), store, [DEVICE], T0, T0)
    with pytest.raises(InvalidInputError):
        await backtest(olivia(), store, [DEVICE], T0.replace(tzinfo=None), T0 + S)


async def test_backtest_of_an_any_reading_rule_loads_every_metric_of_the_device() -> None:
    compiled = rule(
        **{
            "when": [{"type": "telemetry.received", "options": {}}],
            "if": [{"type": "expression", "options": {"expression": "door_open"}}],
            "then": [{"type": "notify", "options": {"channels": ["ops"]}}],
        }
    )
    stored = [
        Reading("acme", DEVICE.id, T0, {"temp": -18.0}, SOURCE),
        Reading("acme", DEVICE.id, T0 + 5 * S, {"door_open": True}, SOURCE),
        Reading("acme", DEVICE.id, T0 + 10 * S, {"temp": -17.0}, SOURCE),
    ]
    store = MemoryStore(stored)
    report = await backtest(compiled, store, [DEVICE], T0, T0 + 60 * S)
    assert {q[1] for q in store.queries} == {"temp", "door_open"}
    assert report.readings == 3 and report.notifications == 1
    assert [f.at for f in report.firings] == [T0 + 5 * S]
    restricted = await backtest(compiled, MemoryStore(stored), [DEVICE], T0, T0 + 60 * S, metrics={"temp"})
    assert restricted.readings == 2 and restricted.fired == 0
