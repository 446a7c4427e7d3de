"""Served devices end to end: the simulator's Modbus and OPC-UA servers, polled by a real platform.

The platform (uvicorn on a free port, the whole app) is bound to the simulator's servers through
the bindings API by the simulator itself; the tests only watch what the platform stores.
"""

from __future__ import annotations

import asyncio
import math
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from server.app import create_app
from server.settings import load_settings
from server.simulator.fleet import Scenario
from server.simulator.modbus_server import meter_words
from server.simulator.opcua_server import NAMESPACE_URI, PlcServer, endpoint_url
from server.simulator.runner import MODBUS_ROUTE, OPCUA_ROUTE, Session, SimOptions, Stats
from server.simulator.signals import LineSignal, LineState
from storage.database import Database
from tests.conftest import TenantFactory, TenantHandle
from tests.harness.opcua import PlcWriter
from tests.harness.ports import free_port

WAIT_S = 20.0
METER_METRICS = {"voltage", "current", "energy_kwh"}
PLC_METRICS = {"speed", "temperature", "state"}


@asynccontextmanager
async def _serving(data_dir: Path, database: Database) -> AsyncIterator[str]:
    """A real uvicorn server running the whole platform; yields its base URL."""
    port = free_port()
    app = create_app(load_settings(data_dir=data_dir, port=port), database)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@pytest.fixture
async def api(tmp_path: Path, database: Database) -> AsyncIterator[str]:
    async with _serving(tmp_path / "server", database) as url:
        yield url


@asynccontextmanager
async def _running(options: SimOptions) -> AsyncIterator[tuple[Session, asyncio.Task[Stats]]]:
    """A session running until the block ends (then stopped as by Ctrl-C, and awaited)."""
    session = Session(options)
    stop = asyncio.Event()
    task = asyncio.create_task(session.run(stop))
    try:
        yield session, task
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.shield(task), 30)


async def _until(check: Callable[[], Awaitable[bool]], task: asyncio.Task[Stats] | None = None) -> None:
    """Poll a check until it holds; fail at once if the simulator died meanwhile."""
    async with asyncio.timeout(WAIT_S):
        while not await check():
            if task is not None and task.done():
                task.result()
                raise AssertionError("the simulator stopped before the platform stored anything")
            await asyncio.sleep(0.05)


async def _latest(http: httpx.AsyncClient, t: TenantHandle, device_id: str) -> dict[str, Any]:
    """The device's latest sample per metric; empty while the simulator has not created it yet."""
    r = await http.get(f"/api/v1/devices/{device_id}/telemetry/latest", headers=t.headers)
    if r.status_code == 404:
        return {}
    assert r.status_code == 200, r.text
    metrics: dict[str, Any] = r.json()["metrics"]
    return metrics


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _options(api: str, t: TenantHandle, data_dir: Path, **changes: Any) -> SimOptions:
    base: dict[str, Any] = {
        "api": api,
        "token": t.token,
        "stores": 1,
        "dropouts_per_day": 0.0,
        "data_dir": data_dir,
        "seed": 7,
        "unbind_on_exit": True,  # the database is shared: leave no binding to a closed port behind
    }
    return SimOptions(**{**base, **changes})


async def test_power_meters_are_polled_over_modbus(api: str, tenants: TenantFactory, tmp_path: Path) -> None:
    t = await tenants.create("sim")
    port = free_port()
    async with (
        _running(_options(api, t, tmp_path, modbus_port=port)) as (session, task),
        httpx.AsyncClient(base_url=api, timeout=10) as http,
    ):

        async def polled() -> bool:
            return set(await _latest(http, t, "meter-01")) >= METER_METRICS

        await _until(polled, task)
        latest = await _latest(http, t, "meter-01")
        binding = (await http.get("/api/v1/devices/meter-01/binding", headers=t.headers)).json()
        credentials = (await http.get("/api/v1/devices/meter-01/credentials", headers=t.headers)).json()
        device = (await http.get("/api/v1/devices/meter-01", headers=t.headers)).json()

    # The platform read the simulator's registers: the meter's signal at one of the last whole
    # seconds before the poll (the registers change every second), decoded exactly.
    assert session.fleet is not None
    signal = session.fleet.get("meter-01").signal
    polled_at = _epoch(latest["voltage"]["ts"])
    stored = [latest[m]["value"] for m in ("voltage", "current", "energy_kwh")]
    candidates = [signal.sample(math.floor(polled_at) - k) for k in range(4)]
    words = meter_words(dict(zip(("voltage", "current", "energy_kwh"), stored, strict=True)))
    assert any(words == meter_words(c) for c in candidates), (stored, candidates)
    assert 200 < stored[0] < 260 and stored[1] >= 0 and stored[2] > 0
    assert binding["kind"] == "modbus" and binding["config"]["port"] == port
    assert binding["config"]["unit_id"] == 1 and binding["config"]["host"] == "127.0.0.1"
    assert credentials == [], "a served meter sends nothing itself, so it needs no device credential"
    assert device["status"] == "online"

    stats = task.result()
    assert stats.routes[MODBUS_ROUTE].devices == 1 and stats.routes[MODBUS_ROUTE].messages >= 1
    assert stats.errors == 0, stats.routes
    async with httpx.AsyncClient(base_url=api, timeout=10) as http:
        r = await http.get("/api/v1/devices/meter-01/binding", headers=t.headers)
        assert r.status_code == 404, "--unbind-on-exit removed the binding"


async def test_the_plant_plc_is_subscribed_over_opcua(
    api: str, tenants: TenantFactory, tmp_path: Path
) -> None:
    t = await tenants.create("plant")
    port = free_port()
    options = _options(api, t, tmp_path, scenario=Scenario.PLANT, opcua_port=port)
    async with _running(options) as (session, task), httpx.AsyncClient(base_url=api, timeout=10) as http:

        async def subscribed() -> bool:
            return set(await _latest(http, t, "line1-plc")) >= PLC_METRICS

        await _until(subscribed, task)
        latest = await _latest(http, t, "line1-plc")
        binding = (await http.get("/api/v1/devices/line1-plc/binding", headers=t.headers)).json()

    # Each value carries the instant it was sampled at as its source timestamp: the platform
    # stores exactly what the line's signal says for that instant.
    assert session.fleet is not None
    signal = session.fleet.get("line1-plc").signal
    for metric in PLC_METRICS:
        ts = _epoch(latest[metric]["ts"])
        assert ts == math.floor(ts), "updates fall on whole seconds"
        assert latest[metric]["value"] == signal.sample(ts)[metric], metric
    assert latest["state"]["value"] in {
        LineState.RUNNING,
        LineState.STOPPED,
        LineState.FAULT,
        LineState.CHANGEOVER,
    }
    assert binding["kind"] == "opcua" and binding["config"]["url"] == endpoint_url("127.0.0.1", port)
    assert {n["namespace_uri"] for n in binding["config"]["nodes"]} == {NAMESPACE_URI}

    stats = task.result()
    assert stats.routes[OPCUA_ROUTE].devices == 1 and stats.routes[OPCUA_ROUTE].messages >= 1
    assert set(stats.routes) == {OPCUA_ROUTE}, "the plant has nothing else to send"


async def test_the_command_serves_meters(api: str, tenants: TenantFactory, tmp_path: Path) -> None:
    t = await tenants.create("sim")
    port = free_port()
    env = {**os.environ, "FLATGIGS_DATA_DIR": str(tmp_path), "COLUMNS": "200", "NO_COLOR": "1"}
    env.pop("FLATGIGS_MQTT_URL", None)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server.simulator",
        "--api", api, "--token", t.token, "--stores", "1", "--dropouts", "0", "--no-progress",
        "--modbus-port", str(port), "--unbind-on-exit",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    async with httpx.AsyncClient(base_url=api, timeout=10) as http:

        async def polled() -> bool:
            if process.returncode is not None:
                raise AssertionError(f"the simulator exited with {process.returncode}")
            return set(await _latest(http, t, "meter-01")) >= METER_METRICS

        try:
            await _until(polled)
        finally:
            process.terminate()  # what Ctrl-C does: stop after the messages in flight
            async with asyncio.timeout(30):
                out, err = await process.communicate()
        assert process.returncode == 0, out.decode() + err.decode()
        text = out.decode()
        assert f"serving 1 power meter(s) over Modbus TCP on 127.0.0.1:{port}" in text, text
        assert "modbus " in text and "removed on exit" in text and "bindings removed: 1" in text
        r = await http.get("/api/v1/devices/meter-01/binding", headers=t.headers)
        assert r.status_code == 404


async def test_the_plc_follows_its_signal_counts_parts_and_freezes_in_dropouts() -> None:
    class Silence:
        on = False

        def silent(self, t: float) -> bool:
            return self.on

    line = LineSignal(7)
    t0 = datetime(2026, 11, 27, 9, 0, tzinfo=UTC).timestamp()  # a Friday morning shift
    clock = [t0]
    silence = Silence()
    updates: list[int] = []
    silent: list[None] = []
    plc = PlcServer(
        port=free_port(),
        signal=line,
        dropouts=silence,  # type: ignore[arg-type]
        clock=lambda: clock[0],
        update_s=3600.0,  # no background update: the test calls update() itself
        on_update=updates.append,
        on_silent=lambda: silent.append(None),
    )
    async with plc, PlcWriter(plc.url) as client:
        expected = line.sample(t0)
        assert await client.read("Speed") == expected["speed"]
        assert await client.read("Temperature") == expected["temperature"]
        assert await client.read("State") == expected["state"]
        assert await client.read("Running") is (expected["state"] == LineState.RUNNING)
        assert await client.read("PartsMade") == 0 and updates == [3]

        await plc.update(t0 + 60)
        speed = line.sample(t0 + 60)["speed"]
        assert await client.read("Speed") == speed
        assert await client.read("PartsMade") == int(speed)  # a minute at `speed` parts a minute
        assert isinstance(speed, float) and speed > 0, "the line runs on a Friday morning"

        silence.on = True
        await plc.update(t0 + 120)
        assert await client.read("Speed") == speed, "a dropout freezes the values"
        assert len(silent) == 1 and len(updates) == 2
    assert not plc.running
