"""The scheduler, the backfill and a whole session against an in-memory API."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from server.simulator.drivers import SendError
from server.simulator.fleet import Fleet, build_fleet
from server.simulator.runner import (
    BACKFILL_ROUTE,
    Session,
    SimClock,
    SimOptions,
    Simulation,
    SimulationError,
    Stats,
    backfill,
    grid_points,
    live_start,
)
from server.simulator.signals import Metrics
from tests.unit.simulator.fake_api import API_TOKEN, FakeApi

T0 = datetime(2026, 11, 27, 8, tzinfo=UTC).timestamp()


class Recorder:
    """A driver that keeps what it is given; optionally slow or failing for some devices."""

    def __init__(
        self, name: str = "http", *, delay: float = 0.0, failing: frozenset[str] = frozenset()
    ) -> None:
        self.name = name
        self.delay = delay
        self.failing = failing
        self.messages: list[tuple[str, bytes]] = []

    async def start(self) -> None:
        pass

    async def send(self, device_id: str, payload: bytes) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)
        if device_id in self.failing:
            raise SendError("refused")
        self.messages.append((device_id, payload))

    async def close(self) -> None:
        pass

    def samples(self, device_id: str) -> list[tuple[float, Metrics]]:
        out: list[tuple[float, Metrics]] = []
        for device, payload in self.messages:
            if device == device_id:
                data = json.loads(payload)
                for item in data if isinstance(data, list) else [data]:
                    out.append((item["ts"], item["values"]))
        return out


def _expected(fleet: Fleet, device_id: str, start: float, end: float) -> list[tuple[float, Metrics]]:
    device = fleet.get(device_id)
    return [(round(t, 3), device.signal.sample(t)) for t in device.sample_times(start, end + 1e-6)]


def test_live_window_never_runs_ahead_of_now() -> None:
    assert live_start(T0, 1.0, None) == T0
    assert live_start(T0, 0.5, 60) == T0
    assert live_start(T0, 10.0, 60) == T0 - 540
    with pytest.raises(SimulationError, match="needs --duration"):
        live_start(T0, 10.0, None)


async def test_every_sample_of_the_window_is_sent_once_in_order() -> None:
    fleet = build_fleet(stores=1, dropouts_per_day=0)
    driver = Recorder()
    stats = Stats()
    clock = SimClock(T0, 1200.0)
    end = T0 + 600.0  # half a second of wall time
    simulation = Simulation(fleet, {d.id: driver for d in fleet.devices}, stats, clock, begin=T0, end=end)
    async with asyncio.timeout(10):
        await simulation.run(asyncio.Event())
    for device in fleet.devices:
        assert driver.samples(device.id) == _expected(fleet, device.id, T0, end), device.id
    gateway = [json.loads(p) for d, p in driver.messages if d == "gw-01"]
    assert [len(m) for m in gateway] == [5, 5], "the gateway sends batches of 5 door counts"
    assert stats.routes["http"].readings == sum(len(_expected(fleet, d.id, T0, end)) for d in fleet.devices)
    assert stats.errors == 0 and stats.sim_time == end


async def test_a_slow_platform_gets_batches_and_nothing_is_lost() -> None:
    fleet = build_fleet(stores=1, dropouts_per_day=0)
    driver = Recorder(delay=0.05)
    clock = SimClock(T0, 600.0)
    end = T0 + 300.0
    simulation = Simulation(
        fleet, {d.id: driver for d in fleet.devices}, Stats(), clock, begin=T0, end=end, concurrency=2
    )
    async with asyncio.timeout(20):
        await simulation.run(asyncio.Event())
    freezer = [json.loads(p) for d, p in driver.messages if d == "freezer-01-1"]
    assert any(isinstance(m, list) and len(m) > 1 for m in freezer), "late samples leave together"
    for device in fleet.devices:
        assert driver.samples(device.id) == _expected(fleet, device.id, T0, end)


async def test_stop_ends_the_run_and_failures_are_counted() -> None:
    fleet = build_fleet(stores=1, dropouts_per_day=0)
    driver = Recorder(failing=frozenset({"meter-01"}))
    stats = Stats()
    simulation = Simulation(fleet, {d.id: driver for d in fleet.devices}, stats, SimClock(T0, 50.0), begin=T0)
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.4, stop.set)
    async with asyncio.timeout(10):
        await simulation.run(stop)
    assert stats.errors > 0 and stats.routes["http"].last_error == "meter-01: refused"
    assert stats.messages > 0 and not driver.samples("meter-01")


async def test_backfill_writes_the_whole_window_in_bounded_batches() -> None:
    fleet = build_fleet(stores=1, dropouts_per_day=1.0)
    driver = Recorder()
    stats = Stats()
    start, end = T0 - 6 * 3600, T0
    await backfill(fleet, driver, stats, start=start, end=end, stop=asyncio.Event(), max_bytes=8000)
    assert stats.backfill_total == sum(grid_points(d, start, end) for d in fleet.devices)
    assert stats.backfill_done == stats.backfill_total
    assert stats.routes[BACKFILL_ROUTE].readings + stats.silent == stats.backfill_total
    assert all(len(p) <= 8000 for _, p in driver.messages)
    for device in fleet.devices:
        expected = [(round(t, 3), m) for t, m in device.samples(start, end)]
        assert driver.samples(device.id) == expected


async def test_backfill_gives_up_when_nothing_gets_through() -> None:
    fleet = build_fleet(stores=1)
    driver = Recorder(failing=frozenset(d.id for d in fleet.devices))
    with pytest.raises(SimulationError, match="failures in a row"):
        await backfill(fleet, driver, Stats(), start=T0 - 86400, end=T0, stop=asyncio.Event(), max_bytes=2000)


def _options(tmp_path: Path, **changes: object) -> SimOptions:
    defaults: dict[str, object] = {
        "api": "http://api",
        "token": API_TOKEN,
        "stores": 1,
        "dropouts_per_day": 0.0,
        "data_dir": tmp_path,
    }
    return SimOptions(**{**defaults, **changes})  # type: ignore[arg-type]


async def test_a_session_provisions_backfills_and_runs(tmp_path: Path) -> None:
    api = FakeApi()
    notes: list[str] = []
    options = _options(
        tmp_path, speed=300.0, duration=0.5, backfill=1800.0, failures=(("freezer-01-2", 0.0),)
    )
    session = Session(options, transport=api.transport(), wall_clock=lambda: T0, on_note=notes.append)
    async with asyncio.timeout(30):
        stats = await session.run(asyncio.Event())
    assert stats.phase == "done" and stats.errors == 0
    assert session.t0 == T0 - 299 * 0.5
    assert set(api.devices) == {d.id for d in build_fleet(stores=1).devices}
    assert stats.routes[BACKFILL_ROUTE].readings > 0 and stats.routes["http"].readings > 0
    freezer = sorted(api.ingested["freezer-01-1"])
    assert freezer[0][0] < session.t0 - 1700 and freezer[-1][0] > session.t0 + 100
    failing = sorted(api.ingested["freezer-01-2"])
    assert all(m["compressor_on"] is False for t, m in failing if t > session.t0)
    assert any("9 created" in n for n in notes) and any("9 issued" in n for n in notes)

    # A rerun reuses the cached credentials.
    rerun = Session(_options(tmp_path, duration=0.3), transport=api.transport(), wall_clock=lambda: T0 + 3600)
    await rerun.run(asyncio.Event())
    assert all(api.issued_for(d) == 1 for d in api.devices)


async def test_a_session_refuses_impossible_options(tmp_path: Path) -> None:
    with pytest.raises(SimulationError, match="nothing to do"):
        Session(_options(tmp_path, duration=0.0))
    session = Session(_options(tmp_path, failures=(("freezer-07-1", 0.0),)), transport=FakeApi().transport())
    with pytest.raises(SimulationError, match="freezer-07-1"):
        await session.run(asyncio.Event())
    session = Session(
        _options(tmp_path, token="fg.acme-test.tok_1.wrong", duration=1.0), transport=FakeApi().transport()
    )
    with pytest.raises(SimulationError, match="API token was refused"):
        await session.run(asyncio.Event())
