"""Signal models: deterministic per seed, plausible, and showing the events the scenarios need."""

from __future__ import annotations

import itertools
import random
import statistics
from datetime import UTC, datetime

import pytest

from server.simulator.signals import (
    DAY,
    HOUR,
    MINUTE,
    BatterySignal,
    DoorCounterSignal,
    Dropouts,
    FreezerSignal,
    LineSignal,
    LineState,
    Metrics,
    PowerMeterSignal,
    Signal,
    gauss_at,
    local_weekday,
    poisson_at,
    uniform_at,
)

MONDAY = datetime(2026, 11, 23, tzinfo=UTC).timestamp()  # local (UTC+1) Monday 01:00
SUNDAY = MONDAY + 6 * DAY


def _models(seed: int) -> list[tuple[Signal, float]]:
    """Every model with its device interval."""
    return [
        (FreezerSignal(seed), 10.0),
        (PowerMeterSignal(seed), 5.0),
        (BatterySignal(seed), 60.0),
        (DoorCounterSignal(seed), 60.0),
        (LineSignal(seed), 5.0),
    ]


def _series(signal: Signal, start: float, end: float, step: float) -> list[tuple[float, Metrics]]:
    out = []
    t = start
    while t < end:
        out.append((t, signal.sample(t)))
        t += step
    return out


# --- determinism ---------------------------------------------------------------------------------


def test_same_seed_same_series_whatever_the_order() -> None:
    times = [MONDAY + 8 * HOUR + i * 30.0 for i in range(400)]
    shuffled = times[:]
    random.Random(1).shuffle(shuffled)
    for (a, _), (b, _) in zip(_models(42), _models(42), strict=True):
        first = {t: a.sample(t) for t in times}
        second = {t: b.sample(t) for t in shuffled}  # a fresh instance, asked in another order
        assert first == second, type(a).__name__


def test_different_seeds_differ() -> None:
    times = [MONDAY + 9 * HOUR + i * 60.0 for i in range(120)]
    for (a, _), (b, _) in zip(_models(1), _models(2), strict=True):
        assert [a.sample(t) for t in times] != [b.sample(t) for t in times], type(a).__name__


def test_noise_helpers_are_pure_and_well_spread() -> None:
    assert gauss_at(5, MONDAY) == gauss_at(5, MONDAY)
    assert gauss_at(5, MONDAY) != gauss_at(6, MONDAY) != gauss_at(5, MONDAY, 1)
    normals = [gauss_at(3, MONDAY + i * 10.0) for i in range(20_000)]
    assert abs(statistics.mean(normals)) < 0.05 and 0.95 < statistics.stdev(normals) < 1.05
    uniforms = [uniform_at(3, MONDAY + i) for i in range(20_000)]
    assert min(uniforms) > 0 and max(uniforms) < 1 and abs(statistics.mean(uniforms) - 0.5) < 0.01
    counts = [poisson_at(9, i, 4.0) for i in range(20_000)]
    assert abs(statistics.mean(counts) - 4.0) < 0.1 and abs(statistics.variance(counts) - 4.0) < 0.3


# --- plausible ranges ----------------------------------------------------------------------------


def test_freezer_holds_its_setpoint_between_events() -> None:
    freezer = FreezerSignal(7, failures_per_day=0, restock_share=0)
    samples = [m for _, m in _series(freezer, MONDAY, MONDAY + DAY, 10.0)]
    temps = [float(m["temp"]) for m in samples]
    assert min(temps) > -21.0 and max(temps) < -8.0
    assert -18.6 < statistics.median(temps) < -17.4
    assert all(isinstance(m["door_open"], bool) and isinstance(m["compressor_on"], bool) for m in samples)
    on = sum(1 for m in samples if m["compressor_on"]) / len(samples)
    assert 0.4 < on < 0.7, "the compressor cycles"
    opened = sum(1 for m in samples if m["door_open"]) / len(samples)
    assert 0.005 < opened < 0.1


def test_other_models_report_plausible_values() -> None:
    week = (MONDAY, MONDAY + 7 * DAY)
    for seed in range(3):
        for _, m in _series(PowerMeterSignal(seed), *week, 300.0):
            assert 215.0 < float(m["voltage"]) < 240.0
            assert 0.0 <= float(m["current"]) < 200.0
        for _, m in _series(BatterySignal(seed), *week, 600.0):
            assert 5.0 <= float(m["battery_pct"]) <= 100.0
            assert 20.0 < float(m["humidity"]) < 80.0
        for _, m in _series(DoorCounterSignal(seed), *week, 60.0):
            assert isinstance(m["door_count"], int) and 0 <= m["door_count"] < 40
        for _, m in _series(LineSignal(seed), *week, 600.0):
            assert m["state"] in {LineState.RUNNING, LineState.STOPPED, LineState.FAULT, LineState.CHANGEOVER}
            assert 0.0 <= float(m["speed"]) < 130.0
            assert 20.0 < float(m["temperature"]) < 72.0


# --- the events of the scenarios -----------------------------------------------------------------


def test_a_door_opening_spikes_the_temperature_which_returns_to_the_setpoint() -> None:
    freezer = FreezerSignal(11, failures_per_day=0, restock_share=0)
    openings = freezer.door_openings(MONDAY + 8 * HOUR, MONDAY + 20 * HOUR)
    assert len(openings) > 20, "store hours have several openings an hour"
    isolated = [
        e
        for e in openings
        if all(o is e or abs(o.start - e.start) > 10 * MINUTE for o in openings) and e.duration > 45
    ]
    assert isolated
    for door in isolated[:5]:
        assert 20.0 <= door.duration <= 90.0 and 4.0 <= door.peak <= 8.0
        before, _ = freezer.undisturbed(door.start - 1)
        assert abs(float(freezer.sample(door.start - 1)["temp"]) - before) < 0.8
        assert freezer.sample(door.start + 5)["door_open"] is True
        at_close = float(freezer.sample(door.end - 0.5)["temp"])
        assert at_close - freezer.undisturbed(door.end - 0.5)[0] > 3.0, "a spike of several degrees"
        assert freezer.sample(door.end + 1)["door_open"] is False
        later = door.end + 3 * MINUTE
        back = float(freezer.sample(later)["temp"])
        assert abs(back - freezer.undisturbed(later)[0]) < 0.8, "back within a few minutes"
        assert abs(back - freezer.setpoint) < 1.6


def test_a_restocking_opening_stays_above_minus_10_between_2_and_5_minutes() -> None:
    freezer = FreezerSignal(3, failures_per_day=0, restock_share=1.0)
    openings = freezer.door_openings(MONDAY + 8 * HOUR, MONDAY + 20 * HOUR)
    isolated = [e for e in openings if all(o is e or abs(o.start - e.start) > 15 * MINUTE for o in openings)]
    assert len(isolated) >= 3
    for door in isolated[:3]:
        assert door.duration > 90
        temps = [float(freezer.sample(door.start + i * 10)["temp"]) for i in range(-30, 100)]
        assert 2 * MINUTE < 10 * sum(1 for t in temps if t > -10) < 5 * MINUTE


def _first_lasting_crossing(freezer: FreezerSignal, start: float, threshold: float, hold: float) -> float:
    """The first time from which temp stays above ``threshold`` for ``hold`` seconds (10 s samples)."""
    t = start
    while t < start + DAY:
        if all(float(freezer.sample(t + k)["temp"]) > threshold for k in range(0, int(hold), 10)):
            return t
        t += 10.0
    raise AssertionError("never crossed")


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_forced_compressor_failure_crosses_minus_10_after_about_80_minutes(seed: int) -> None:
    fail_at = MONDAY + 2 * HOUR + 120.0  # night: few door openings
    freezer = FreezerSignal(seed, failures_per_day=0, fail_at=fail_at)
    assert float(freezer.sample(fail_at - 10)["temp"]) < -15
    crossing = _first_lasting_crossing(freezer, fail_at, -10.0, 30 * MINUTE)
    # 1 °C per 10 minutes from -18 ± 0.8 (the compressor cycle): -10 after 72..88 minutes.
    assert 70 * MINUTE <= crossing - fail_at <= 90 * MINUTE
    assert all(freezer.sample(fail_at + k * 60.0)["compressor_on"] is False for k in range(1, 300))
    warm = float(freezer.sample(fail_at + 6 * HOUR)["temp"])
    assert 8.0 < warm <= 11.0, "it keeps warming for hours, up to the warm limit"


def test_a_repaired_compressor_pulls_the_temperature_down_again() -> None:
    fail_at = MONDAY + 2 * HOUR
    freezer = FreezerSignal(
        4, failures_per_day=0, fail_at=fail_at, fail_for=2 * HOUR, day_rate=0, night_rate=0
    )
    assert float(freezer.sample(fail_at + 2 * HOUR - 10)["temp"]) > -7
    assert freezer.sample(fail_at + 2 * HOUR + 60)["compressor_on"] is True
    assert abs(float(freezer.sample(fail_at + 5 * HOUR)["temp"]) + 18.0) < 1.5


def test_random_failures_happen_now_and_then() -> None:
    failures = [f for seed in range(300) for f in FreezerSignal(seed).failures(MONDAY, MONDAY + 30 * DAY)]
    assert 40 < len(failures) < 180  # 300 freezers x 30 days / 90
    assert all(2 * HOUR <= f.end - f.start <= 8 * HOUR for f in failures)


def test_energy_never_decreases_and_follows_the_load() -> None:
    meter = PowerMeterSignal(5)
    coarse = [float(m["energy_kwh"]) for _, m in _series(meter, MONDAY, MONDAY + 8 * DAY, 60.0)]
    fine = [float(m["energy_kwh"]) for _, m in _series(meter, MONDAY + 10 * HOUR, MONDAY + 11 * HOUR, 5.0)]
    for series in (coarse, fine):
        assert all(b >= a for a, b in itertools.pairwise(series))
    assert fine[-1] > fine[0]
    assert all(round(v, 2) == v for v in fine), "0.01 kWh resolution (uint32 scaled by 0.01)"
    weekday = meter.energy_kwh(MONDAY + DAY) - meter.energy_kwh(MONDAY)
    sunday = meter.energy_kwh(SUNDAY + DAY) - meter.energy_kwh(SUNDAY)
    assert 500.0 < sunday < weekday < 3000.0
    assert meter.load_current(MONDAY + 12 * HOUR) > 2 * meter.load_current(MONDAY + 2 * HOUR)


def test_battery_drains_slowly() -> None:
    battery = BatterySignal(8)
    levels = [battery.battery_pct(MONDAY + i * HOUR) for i in range(24 * 30)]
    drops = [b - a for a, b in itertools.pairwise(levels)]
    assert all(d <= 0 or d > 50 for d in drops), "only a new battery raises the charge"
    assert sum(1 for d in drops if d > 50) <= 1
    assert 0 < levels[0] - levels[24 * 10] < 5 or levels[24 * 10] > levels[0]


def test_door_counter_follows_opening_hours() -> None:
    counter = DoorCounterSignal(2)

    def hour(start: float) -> list[float]:
        return [float(counter.sample(start + i * 60)["door_count"]) for i in range(60)]

    monday_noon, night, sunday = hour(MONDAY + 11 * HOUR), hour(MONDAY + HOUR), hour(SUNDAY + 11 * HOUR)
    assert sum(monday_noon) > 60
    assert local_weekday(SUNDAY + 11 * HOUR, 1.0) == 6
    assert sum(night) == 0 and sum(sunday) == 0


def test_line_runs_in_shifts_with_faults_and_heats_up() -> None:
    line = LineSignal(6, faults_per_hour=1.0)
    week = _series(line, MONDAY, MONDAY + 7 * DAY, 60.0)
    states = [m["state"] for _, m in week]
    assert {LineState.RUNNING, LineState.STOPPED, LineState.FAULT, LineState.CHANGEOVER} <= set(states)
    assert all(m["state"] == LineState.STOPPED for t, m in week if t >= MONDAY + 5 * DAY)
    running = [float(m["temperature"]) for _, m in week if m["state"] == LineState.RUNNING]
    stopped = [float(m["temperature"]) for t, m in week if t > MONDAY + 6 * DAY]
    assert statistics.median(running) > 60 and statistics.median(stopped) < 26
    assert all(m["speed"] == 0.0 for _, m in week if m["state"] != LineState.RUNNING)


def test_dropouts_silence_a_device_now_and_then() -> None:
    dropouts = Dropouts(4, per_day=1.0)
    silences = dropouts.silences(MONDAY, MONDAY + 60 * DAY)
    assert 30 < len(silences) < 90
    assert all(2 * MINUTE <= e - s <= 20 * MINUTE for s, e in silences)
    s, e = silences[0]
    assert dropouts.silent((s + e) / 2) and not dropouts.silent(s - 1) and not dropouts.silent(e + 1)
    assert not Dropouts(4, per_day=0).silent((s + e) / 2)
    with pytest.raises(ValueError):
        Dropouts(1, per_day=-1)
