"""Deterministic, realistic signal models: every value is a pure function of (seed, simulated time).

No model keeps state between samples: random events (door openings, compressor failures, line
faults, dropouts) are drawn per time bucket from a ``random.Random`` seeded by (device seed,
bucket), and per-sample noise comes from a counter-based hash of (seed, timestamp). So the same
seed gives the same series whatever the order, spacing or number of samples asked for: a live run,
a backfill and a test all see the same freezer.

Times are epoch seconds (UTC). Local time (store hours, daily load shapes) uses a fixed UTC offset.
Each model's ``sample(t)`` returns the metrics a device of that type reports at ``t``.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

Value = float | bool | str
Metrics = dict[str, Value]

MINUTE = 60.0
HOUR = 3600.0
DAY = 86400.0
_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_STREAM = 0xD1B54A32D192ED03
_T = TypeVar("_T")


class Signal(Protocol):
    """What every model offers: the metrics reported at simulated time ``t``."""

    def sample(self, t: float) -> Metrics:
        """The metrics of the device at epoch second ``t``."""
        ...


# --- deterministic randomness ---------------------------------------------------------------------


def derive_seed(*parts: object) -> int:
    """A 64-bit seed from any parts, stable across processes (unlike ``hash()``)."""
    text = "\x1f".join(str(p) for p in parts)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def _mix(x: int) -> int:
    """The splitmix64 finaliser: a cheap, well-spread 64-bit hash."""
    x = (x + _GOLDEN) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def _hash(seed: int, t: float, channel: int) -> int:
    """A splitmix64 output for (seed, ``t`` to the millisecond, channel)."""
    return _mix((seed + round(t * 1000) * _GOLDEN + channel * _STREAM) & _MASK)


def uniform_at(seed: int, t: float, channel: int = 0) -> float:
    """A uniform number in (0, 1) depending only on (seed, ``t`` to the millisecond, channel)."""
    return ((_hash(seed, t, channel) >> 11) + 0.5) / 2**53


@functools.cache
def _normals() -> tuple[float, ...]:
    """65,536 standard normal numbers, drawn once: per-sample noise picks one by hash (fast, pure)."""
    rng = random.Random(0x5EED)
    return tuple(rng.gauss(0.0, 1.0) for _ in range(1 << 16))


def gauss_at(seed: int, t: float, channel: int = 0) -> float:
    """A standard normal number depending only on (seed, ``t`` to the millisecond, channel)."""
    return _normals()[_hash(seed, t, channel + 0x5EED) >> 48]


def poisson_at(seed: int, t: float, lam: float, channel: int = 0) -> int:
    """A Poisson count with mean ``lam`` depending only on (seed, ``t``, channel) (inverse transform)."""
    if lam <= 0:
        return 0
    if lam > 30:
        return max(0, round(lam + math.sqrt(lam) * gauss_at(seed, t, channel)))
    u = uniform_at(seed, t, channel)
    p = math.exp(-lam)
    cdf, k = p, 0
    while u > cdf and k < 1000:
        k += 1
        p *= lam / k
        cdf += p
    return k


@functools.lru_cache(maxsize=65536)
def _knot(seed: int, k: int, channel: int) -> float:
    return gauss_at(seed, k, channel + 1000)


def smooth_noise(seed: int, t: float, period: float, channel: int = 0) -> float:
    """Slowly wandering noise (about unit scale): Gaussian knots every ``period`` s, smoothly joined."""
    x = t / period
    k = math.floor(x)
    f = x - k
    a = _knot(seed, k, channel)
    b = _knot(seed, k + 1, channel)
    return a + (b - a) * f * f * (3.0 - 2.0 * f)


def poisson(rng: random.Random, lam: float) -> int:
    """A Poisson-distributed count with mean ``lam``."""
    if lam <= 0:
        return 0
    if lam > 30:
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def local_hour(t: float, utc_offset_h: float) -> float:
    """Hour of the day (0 <= h < 24) in local time."""
    return ((t + utc_offset_h * HOUR) % DAY) / HOUR


def local_weekday(t: float, utc_offset_h: float) -> int:
    """Day of the week in local time, Monday = 0 (1970-01-01 was a Thursday)."""
    return (math.floor((t + utc_offset_h * HOUR) / DAY) + 3) % 7


class _Buckets(Generic[_T]):
    """A small cache of per-bucket random draws (the draws themselves are pure)."""

    def __init__(self, make: Callable[[int], _T], size: int = 256) -> None:
        self._make = make
        self._size = size
        self._items: dict[int, _T] = {}

    def __call__(self, key: int) -> _T:
        try:
            return self._items[key]
        except KeyError:
            pass
        item = self._make(key)
        if len(self._items) >= self._size:
            del self._items[next(iter(self._items))]
        self._items[key] = item
        return item


def _clamp(value: float, low: float, high: float) -> float:
    return min(high, max(low, value))


# --- dropouts ------------------------------------------------------------------------------------


class Dropouts:
    """A device going silent now and then: ``per_day`` silences of ``min_s``..``max_s`` on average."""

    BUCKET = 6 * HOUR

    def __init__(
        self, seed: int, *, per_day: float = 0.25, min_s: float = 2 * MINUTE, max_s: float = 20 * MINUTE
    ) -> None:
        if not 0 <= per_day <= 4:
            raise ValueError("dropouts per day must be between 0 and 4")
        if not 0 < min_s <= max_s <= self.BUCKET:
            raise ValueError("dropout lengths must satisfy 0 < min_s <= max_s <= 6 h")
        self.seed = seed
        self.per_day = per_day
        self.min_s = min_s
        self.max_s = max_s
        self._bucket = _Buckets(self._draw)

    def _draw(self, k: int) -> tuple[float, float] | None:
        rng = random.Random(derive_seed(self.seed, "dropout", k))
        if rng.random() >= self.per_day * self.BUCKET / DAY:
            return None
        start = k * self.BUCKET + rng.uniform(0, self.BUCKET)
        return start, start + rng.uniform(self.min_s, self.max_s)

    def silences(self, start: float, end: float) -> list[tuple[float, float]]:
        """The silent periods overlapping [start, end)."""
        found = []
        for k in range(math.floor(start / self.BUCKET) - 1, math.floor(end / self.BUCKET) + 1):
            period = self._bucket(k)
            if period is not None and period[0] < end and period[1] > start:
                found.append(period)
        return found

    def silent(self, t: float) -> bool:
        """Whether the device sends nothing at ``t``."""
        if self.per_day == 0:
            return False
        k = math.floor(t / self.BUCKET)
        for bucket in (k - 1, k):
            period = self._bucket(bucket)
            if period is not None and period[0] <= t < period[1]:
                return True
        return False


# --- freezer -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DoorOpening:
    """One opening of a freezer door and the temperature spike it causes."""

    start: float
    duration: float
    peak: float
    tau: float

    @property
    def end(self) -> float:
        """When the door closes again."""
        return self.start + self.duration

    def excess(self, t: float) -> float:
        """Degrees above the undisturbed temperature at ``t``: rising while open, then decaying."""
        if t < self.start:
            return 0.0
        if t < self.end:
            x = (t - self.start) / self.duration
            return self.peak * (1.0 - math.exp(-3.0 * x)) / (1.0 - math.exp(-3.0))
        return self.peak * math.exp(-(t - self.end) / self.tau)


@dataclass(frozen=True, slots=True)
class Failure:
    """A compressor failure: the cabinet warms from ``start`` until repaired at ``end``."""

    start: float
    end: float = math.inf


class FreezerSignal:
    """A freezer controller: ``temp`` (°C), ``door_open`` and ``compressor_on``.

    - the compressor cycles (period 20-40 min), holding ``setpoint`` within ``±cycle_amplitude``;
    - door openings are a Poisson process (``day_rate``/h in store hours, ``night_rate``/h else):
      the door stays open 20-90 s, the temperature rises by 4-8 °C (longer opening, higher spike)
      and falls back with a 20-40 s time constant, so it is back within 1-2 minutes. A few
      openings (``restock_share``) are restocking: 3-4 min open, +11-13 °C, so the cabinet stays
      above -10 °C for 2-4 minutes (what a 2-minute rule window catches and a 5-minute one does not);
    - a failed compressor stops; the cabinet warms by ``drift_per_s`` (1 °C per 10 min) up to
      ``warm_limit``; after the repair it pulls down again (time constant ``recovery_tau``).
      Random failures happen ``failures_per_day`` times a day on average (2-8 h to repair);
      ``fail_at`` forces one (lasting ``fail_for`` seconds, or for good).
    """

    DOOR_LOOKBACK = 10 * MINUTE
    STORE_AIR = 20.0

    def __init__(
        self,
        seed: int,
        *,
        setpoint: float = -18.0,
        noise: float = 0.15,
        cycle_amplitude: float = 0.8,
        day_rate: float = 5.0,
        night_rate: float = 0.3,
        store_hours: tuple[float, float] = (7.0, 21.0),
        restock_share: float = 0.0003,
        failures_per_day: float = 1 / 90,
        fail_at: float | None = None,
        fail_for: float | None = None,
        drift_per_s: float = 1 / 600,
        warm_limit: float = 10.0,
        recovery_tau: float = 30 * MINUTE,
        utc_offset_h: float = 1.0,
    ) -> None:
        self.seed = seed
        self.setpoint = setpoint
        self.noise = noise
        self.cycle_amplitude = cycle_amplitude
        self.day_rate = day_rate
        self.night_rate = night_rate
        self.store_hours = store_hours
        self.restock_share = restock_share
        self.failures_per_day = failures_per_day
        self.fail_at = fail_at
        self.fail_for = fail_for
        self.drift_per_s = drift_per_s
        self.warm_limit = warm_limit
        self.recovery_tau = recovery_tau
        self.utc_offset_h = utc_offset_h
        rng = random.Random(derive_seed(seed, "cycle"))
        self.cycle_period = rng.uniform(20 * MINUTE, 40 * MINUTE)
        self.cycle_phase = rng.uniform(0, self.cycle_period)
        self._doors = _Buckets(self._draw_doors)
        self._failures = _Buckets(self._draw_failure, size=16)

    # events

    def _draw_doors(self, k: int) -> tuple[DoorOpening, ...]:
        rng = random.Random(derive_seed(self.seed, "door", k))
        opening, closing = self.store_hours
        hour = local_hour(k * HOUR + HOUR / 2, self.utc_offset_h)
        rate = self.day_rate if opening <= hour < closing else self.night_rate
        starts = sorted(rng.uniform(k * HOUR, (k + 1) * HOUR) for _ in range(poisson(rng, rate)))
        events: list[DoorOpening] = []
        for start in starts:
            if rng.random() < self.restock_share:  # the door held open to restock: rare, longer, warmer
                duration, peak, tau = (
                    rng.uniform(180.0, 260.0),
                    rng.uniform(11.0, 13.0),
                    rng.uniform(60.0, 80.0),
                )
            else:
                duration = rng.uniform(20.0, 90.0)
                peak = _clamp(4.0 + 4.0 * (duration - 20.0) / 70.0 + rng.gauss(0.0, 0.6), 4.0, 8.0)
                tau = rng.uniform(20.0, 40.0)
            if events and start < events[-1].end + 15.0:
                continue  # one opening at a time
            events.append(DoorOpening(start, duration, peak, tau))
        return tuple(events)

    def _draw_failure(self, day: int) -> Failure | None:
        rng = random.Random(derive_seed(self.seed, "failure", day))
        if rng.random() >= self.failures_per_day:
            return None
        start = day * DAY + rng.uniform(0, DAY)
        return Failure(start, start + rng.uniform(2 * HOUR, 8 * HOUR))

    def door_openings(self, start: float, end: float) -> list[DoorOpening]:
        """Door openings that start in [start, end)."""
        return [
            e
            for k in range(math.floor(start / HOUR), math.floor(end / HOUR) + 1)
            for e in self._doors(k)
            if start <= e.start < end
        ]

    def failures(self, start: float, end: float) -> list[Failure]:
        """Compressor failures (forced and random) active at some point of [start, end)."""
        found = [
            f
            for day in range(math.floor(start / DAY) - 1, math.floor(end / DAY) + 1)
            if (f := self._failures(day)) is not None
        ]
        if self.fail_at is not None:
            found.append(self._forced())
        return sorted((f for f in found if f.start < end and f.end > start), key=lambda f: f.start)

    def _forced(self) -> Failure:
        assert self.fail_at is not None
        return Failure(self.fail_at, self.fail_at + self.fail_for if self.fail_for else math.inf)

    # values

    def _cycle(self, t: float) -> tuple[float, bool]:
        """Offset from the setpoint and compressor state of the normal on/off cycle."""
        p = ((t + self.cycle_phase) % self.cycle_period) / self.cycle_period
        if p < 0.5:  # compressor on: cooling from +A to -A
            return self.cycle_amplitude * (1.0 - 4.0 * p), True
        return self.cycle_amplitude * (-1.0 + 4.0 * (p - 0.5)), False

    def _warm(self, failure: Failure, t: float) -> float:
        """Temperature of a cabinet whose compressor failed at ``failure.start``, at ``t``."""
        base = self.setpoint + self._cycle(failure.start)[0]
        return min(base + self.drift_per_s * (t - failure.start), max(base, self.warm_limit))

    def undisturbed(self, t: float) -> tuple[float, bool]:
        """Temperature (noise-free, no door effect) and compressor state at ``t``."""
        offset, compressor = self._cycle(t)
        temp = self.setpoint + offset
        recovering = 0.0
        failures = list(self._relevant_failures(t))
        active = [f for f in failures if t < f.end]
        if active:  # the cabinet has been warming since the earliest failure still going on
            return self._warm(min(active, key=lambda f: f.start), t), False
        for failure in failures:
            peak = self._warm(failure, failure.end) - self.setpoint
            recovering = max(recovering, peak * math.exp(-(t - failure.end) / self.recovery_tau))
        if recovering > 0.5:
            compressor = True
        return temp + recovering, compressor

    def _relevant_failures(self, t: float) -> Iterator[Failure]:
        day = math.floor(t / DAY)
        for d in (day - 1, day):
            f = self._failures(d)
            if f is not None and f.start <= t:
                yield f
        if self.fail_at is not None and self.fail_at <= t:
            yield self._forced()

    def _door_state(self, t: float) -> tuple[float, bool]:
        excess, is_open = 0.0, False
        for k in range(math.floor((t - self.DOOR_LOOKBACK) / HOUR), math.floor(t / HOUR) + 1):
            for e in self._doors(k):
                if e.start <= t:
                    excess = max(excess, e.excess(t))
                    is_open = is_open or t < e.end
        return excess, is_open

    def sample(self, t: float) -> Metrics:
        """``temp``, ``door_open`` and ``compressor_on`` at ``t``."""
        temp, compressor = self.undisturbed(t)
        excess, door_open = self._door_state(t)
        if excess > 0:
            # The warmer the cabinet already is, the less the store air warms it.
            temp += excess * max(0.0, self.STORE_AIR - temp) / (self.STORE_AIR - self.setpoint)
            if excess > 1.0 and self._compressor_works(t):
                compressor = True
        temp += self.noise * gauss_at(self.seed, t)
        return {
            "temp": round(_clamp(temp, -40.0, 20.0), 2),
            "door_open": door_open,
            "compressor_on": compressor,
        }

    def _compressor_works(self, t: float) -> bool:
        return not any(t < f.end for f in self._relevant_failures(t))


# --- power meter ---------------------------------------------------------------------------------

# Fraction of the peak current over a local day (hour, fraction), piecewise linear.
_OPEN_DAY = ((0.0, 0.35), (6.0, 0.35), (7.5, 0.9), (12.5, 1.0), (19.5, 0.95), (21.5, 0.4), (24.0, 0.35))
_CLOSED_DAY = ((0.0, 0.35), (24.0, 0.35))
_ENERGY_ORIGIN = 1_577_836_800.0  # 2020-01-01T00:00:00Z: the meters' installation


def _profile_at(profile: tuple[tuple[float, float], ...], hour: float) -> float:
    for (h0, v0), (h1, v1) in itertools.pairwise(profile):
        if h0 <= hour <= h1:
            return v0 + (v1 - v0) * (hour - h0) / (h1 - h0)
    return profile[-1][1]


def _profile_integral(profile: tuple[tuple[float, float], ...], hour: float) -> float:
    """Integral of the profile from 0 to ``hour``, in fraction-hours."""
    total = 0.0
    for (h0, v0), (h1, v1) in itertools.pairwise(profile):
        if hour <= h0:
            break
        top = min(hour, h1)
        vt = v0 + (v1 - v0) * (top - h0) / (h1 - h0)
        total += (v0 + vt) / 2.0 * (top - h0)
    return total


class PowerMeterSignal:
    """A store's three-phase power meter: ``voltage`` (V), ``current`` (A per phase), ``energy_kwh``.

    Current follows a daily load shape (refrigeration at night, lights and HVAC in store hours,
    Sundays closed); energy is the exact integral of the load shape since 2020, so it never
    decreases, rounded to 0.01 kWh as the meter's uint32 register (scale 0.01) holds it.
    """

    PHASES = 3
    POWER_FACTOR = 0.95

    def __init__(
        self, seed: int, *, nominal_v: float = 230.0, peak_a: float = 120.0, utc_offset_h: float = 1.0
    ) -> None:
        rng = random.Random(derive_seed(seed, "meter"))
        self.seed = seed
        self.nominal_v = nominal_v
        self.peak_a = peak_a * rng.uniform(0.8, 1.2)
        self.utc_offset_h = utc_offset_h
        self.initial_kwh = rng.uniform(0.0, 200_000.0)
        self._day_integrals = [_profile_integral(self._profile(wd), 24.0) for wd in range(7)]
        # Fraction-hours of the first i days of a week that starts on a Thursday (like the epoch).
        self._week_prefix = [0.0]
        for i in range(7):
            self._week_prefix.append(self._week_prefix[-1] + self._day_integrals[(i + 3) % 7])
        self._origin = self._fraction_hours(_ENERGY_ORIGIN)

    @staticmethod
    def _profile(weekday: int) -> tuple[tuple[float, float], ...]:
        return _CLOSED_DAY if weekday == 6 else _OPEN_DAY

    def load_current(self, t: float) -> float:
        """The noise-free current (A per phase) of the daily load shape at ``t``."""
        profile = self._profile(local_weekday(t, self.utc_offset_h))
        return self.peak_a * _profile_at(profile, local_hour(t, self.utc_offset_h))

    def _fraction_hours(self, t: float) -> float:
        local = t + self.utc_offset_h * HOUR
        days = math.floor(local / DAY)
        weeks, day_of_week = divmod(days, 7)
        hour = (local - days * DAY) / HOUR
        partial = _profile_integral(self._profile((days + 3) % 7), hour)
        return weeks * self._week_prefix[7] + self._week_prefix[day_of_week] + partial

    def energy_kwh(self, t: float) -> float:
        """The meter reading at ``t`` (kWh, never decreasing)."""
        kw_per_fraction = self.PHASES * self.nominal_v * self.peak_a * self.POWER_FACTOR / 1000.0
        since = max(0.0, self._fraction_hours(t) - self._origin)
        return round(self.initial_kwh + kw_per_fraction * since, 2)

    def sample(self, t: float) -> Metrics:
        """``voltage``, ``current`` and ``energy_kwh`` at ``t``."""
        load = self.load_current(t)
        current = load * (1.0 + 0.03 * smooth_noise(self.seed, t, 300.0)) + 0.4 * gauss_at(self.seed, t)
        voltage = (
            self.nominal_v
            - 4.0 * load / self.peak_a
            + 1.5 * smooth_noise(self.seed, t, 1200.0, 1)
            + 0.3 * gauss_at(self.seed, t, 1)
        )
        return {
            "voltage": round(voltage, 2),
            "current": round(max(0.0, current), 2),
            "energy_kwh": self.energy_kwh(t),
        }


# --- battery sensor ------------------------------------------------------------------------------


class BatterySignal:
    """A battery-powered sensor: ``battery_pct`` draining slowly (replaced at 5 %), ``humidity`` (%)."""

    def __init__(
        self,
        seed: int,
        *,
        drain_per_day: float = 0.25,
        replace_at: float = 5.0,
        humidity: float = 50.0,
        utc_offset_h: float = 1.0,
    ) -> None:
        rng = random.Random(derive_seed(seed, "battery"))
        self.seed = seed
        self.drain_per_day = drain_per_day
        self.replace_at = replace_at
        self.humidity = humidity + rng.uniform(-8.0, 8.0)
        self.utc_offset_h = utc_offset_h
        self.life_s = (100.0 - replace_at) / drain_per_day * DAY
        self.phase = rng.uniform(0.0, self.life_s)

    def battery_pct(self, t: float) -> float:
        """Charge at ``t``, in half-percent steps: never rising except when the battery is replaced."""
        used = ((t + self.phase) % self.life_s) / DAY * self.drain_per_day
        return math.floor((100.0 - used) * 2.0) / 2.0

    def sample(self, t: float) -> Metrics:
        """``battery_pct`` and ``humidity`` at ``t``."""
        daily = math.sin(2.0 * math.pi * (local_hour(t, self.utc_offset_h) - 9.0) / 24.0)
        humidity = (
            self.humidity
            + 6.0 * daily
            + 3.0 * smooth_noise(self.seed, t, 1800.0)
            + 0.5 * gauss_at(self.seed, t)
        )
        return {"battery_pct": self.battery_pct(t), "humidity": round(_clamp(humidity, 0.0, 100.0), 1)}


# --- door counter (gateway) ----------------------------------------------------------------------


class DoorCounterSignal:
    """A store gateway's door counter: ``door_count`` = customers through the door in the last window.

    Customers arrive as a Poisson process shaped by the day (lunch and evening peaks), closed at
    night and on Sundays, busier on Saturdays.
    """

    def __init__(
        self,
        seed: int,
        *,
        window_s: float = MINUTE,
        peak_per_min: float = 5.0,
        store_hours: tuple[float, float] = (7.0, 21.0),
        utc_offset_h: float = 1.0,
    ) -> None:
        rng = random.Random(derive_seed(seed, "door-counter"))
        self.seed = seed
        self.window_s = window_s
        self.peak_per_min = peak_per_min * rng.uniform(0.7, 1.3)
        self.store_hours = store_hours
        self.utc_offset_h = utc_offset_h

    def rate_per_min(self, t: float) -> float:
        """Expected customers per minute at ``t``."""
        weekday = local_weekday(t, self.utc_offset_h)
        hour = local_hour(t, self.utc_offset_h)
        opening, closing = self.store_hours
        if weekday == 6 or not opening <= hour < closing:
            return 0.0
        peaks = max(math.exp(-(((hour - 12.5) / 1.5) ** 2)), math.exp(-(((hour - 17.5) / 1.5) ** 2)))
        return self.peak_per_min * (0.3 + 0.7 * peaks) * (1.3 if weekday == 5 else 1.0)

    def sample(self, t: float) -> Metrics:
        """``door_count`` for the window ending at ``t``."""
        lam = self.rate_per_min(t - self.window_s / 2) * self.window_s / MINUTE
        return {"door_count": poisson_at(self.seed, math.floor(t / self.window_s), lam)}


# --- production line (PLC) -----------------------------------------------------------------------


class LineState:
    """The states of ``Line1/State``."""

    STOPPED = "stopped"
    RUNNING = "running"
    FAULT = "fault"
    CHANGEOVER = "changeover"


class LineSignal:
    """A production line PLC: ``speed`` (units/min), ``temperature`` (°C) and ``state``.

    Two shifts (06:00-22:00 local, Monday to Friday) with a changeover around 14:00 and random
    faults (3-20 min); the line ramps up over two minutes after each start; the temperature heats
    towards ``hot`` while running and cools towards ``ambient`` otherwise.
    """

    LOOKBACK = 6 * HOUR
    RAMP_S = 120.0

    def __init__(
        self,
        seed: int,
        *,
        nominal_speed: float = 120.0,
        ambient: float = 24.0,
        hot: float = 68.0,
        heat_tau: float = 15 * MINUTE,
        cool_tau: float = 40 * MINUTE,
        faults_per_hour: float = 0.25,
        shift: tuple[float, float] = (6.0, 22.0),
        utc_offset_h: float = 1.0,
    ) -> None:
        self.seed = seed
        self.nominal_speed = nominal_speed
        self.ambient = ambient
        self.hot = hot
        self.heat_tau = heat_tau
        self.cool_tau = cool_tau
        self.faults_per_hour = faults_per_hour
        self.shift = shift
        self.utc_offset_h = utc_offset_h
        self._faults = _Buckets(self._draw_faults)
        self._changeovers = _Buckets(self._draw_changeover, size=16)

    def _draw_faults(self, k: int) -> tuple[tuple[float, float], ...]:
        rng = random.Random(derive_seed(self.seed, "fault", k))
        starts = sorted(
            rng.uniform(k * HOUR, (k + 1) * HOUR) for _ in range(poisson(rng, self.faults_per_hour))
        )
        return tuple((s, s + rng.uniform(3 * MINUTE, 20 * MINUTE)) for s in starts)

    def _draw_changeover(self, day: int) -> tuple[float, float]:
        rng = random.Random(derive_seed(self.seed, "changeover", day))
        start = day * DAY + (14.0 - self.utc_offset_h) * HOUR + rng.uniform(-30 * MINUTE, 30 * MINUTE)
        return start, start + rng.uniform(15 * MINUTE, 40 * MINUTE)

    def _producing(self, t: float) -> bool:
        hour = local_hour(t, self.utc_offset_h)
        return local_weekday(t, self.utc_offset_h) < 5 and self.shift[0] <= hour < self.shift[1]

    def state(self, t: float) -> str:
        """The line state at ``t``."""
        if not self._producing(t):
            return LineState.STOPPED
        k = math.floor(t / HOUR)
        if any(s <= t < e for b in (k - 1, k) for s, e in self._faults(b)):
            return LineState.FAULT
        start, end = self._changeovers(math.floor(t / DAY))
        if start <= t < end:
            return LineState.CHANGEOVER
        return LineState.RUNNING

    def _boundaries(self, start: float, end: float) -> list[float]:
        """Every instant in (start, end) where the state may change."""
        points: set[float] = set()
        for day in range(math.floor(start / DAY) - 1, math.floor(end / DAY) + 2):
            for hour in self.shift:
                points.add(day * DAY + (hour - self.utc_offset_h) * HOUR)
            points.update(self._changeovers(day))
        for k in range(math.floor(start / HOUR) - 1, math.floor(end / HOUR) + 1):
            for s, e in self._faults(k):
                points.update((s, e))
        return sorted(p for p in points if start < p < end)

    def _physics(self, t: float) -> tuple[float, float | None]:
        """Temperature at ``t`` and when the current run started (None when not running)."""
        begin = t - self.LOOKBACK
        edges = [begin, *self._boundaries(begin, t), t]
        state = self.state(begin)
        temp = self.hot if state == LineState.RUNNING else self.ambient
        run_start: float | None = None
        for a, b in itertools.pairwise(edges):
            state = self.state((a + b) / 2)
            running = state == LineState.RUNNING
            target, tau = (self.hot, self.heat_tau) if running else (self.ambient, self.cool_tau)
            temp = target + (temp - target) * math.exp(-(b - a) / tau)
            run_start = (a if run_start is None else run_start) if running else None
        return temp, run_start

    def sample(self, t: float) -> Metrics:
        """``speed``, ``temperature`` and ``state`` at ``t``."""
        state = self.state(t)
        temp, run_start = self._physics(t)
        speed = 0.0
        if state == LineState.RUNNING and run_start is not None:
            ramp = min(1.0, (t - run_start) / self.RAMP_S)
            speed = max(0.0, ramp * self.nominal_speed + 1.5 * gauss_at(self.seed, t))
        temp += 0.2 * gauss_at(self.seed, t, 1)
        return {"speed": round(speed, 1), "temperature": round(temp, 2), "state": state}
