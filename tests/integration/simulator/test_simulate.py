"""The simulator against a real flatgigs server (uvicorn on a free port): HTTP, MQTT, backfill, CLI."""

from __future__ import annotations

import asyncio
import itertools
import os
import secrets
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from server.app import create_app
from server.settings import load_settings
from server.simulator.fleet import build_fleet
from server.simulator.runner import BACKFILL_ROUTE, Session, SimOptions
from storage.database import Database
from tests.conftest import TenantFactory, TenantHandle
from tests.harness.mosquitto import MosquittoServer
from tests.harness.ports import free_port

WAIT_S = 20.0


@asynccontextmanager
async def _serving(data_dir: Path, database: Database, **settings: Any) -> AsyncIterator[str]:
    """A real uvicorn server running the whole platform; yields its base URL."""
    port = free_port()
    app = create_app(load_settings(data_dir=data_dir, port=port, **settings), database)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
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


async def _until(check: Callable[[], Any], limit: float = WAIT_S) -> None:
    """Poll an async check until it returns true (the pipeline stores asynchronously)."""
    deadline = asyncio.get_running_loop().time() + limit
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out waiting for the platform to store the readings")
        await asyncio.sleep(0.1)


async def _latest(http: httpx.AsyncClient, t: TenantHandle, device_id: str) -> dict[str, Any]:
    r = await http.get(f"/api/v1/devices/{device_id}/telemetry/latest", headers=t.headers)
    assert r.status_code == 200, r.text
    metrics: dict[str, Any] = r.json()["metrics"]
    return metrics


async def _all_reported(http: httpx.AsyncClient, t: TenantHandle, devices: dict[str, set[str]]) -> bool:
    for device_id, metrics in devices.items():
        if set(await _latest(http, t, device_id)) != metrics:
            return False
    return True


def _metrics_by_device(stores: int) -> dict[str, set[str]]:
    fleet = build_fleet(stores=stores)
    return {d.id: {m.name for m in fleet.types[d.type_id].metrics} for d in fleet.devices}


def _options(api: str, t: TenantHandle, data_dir: Path, **changes: Any) -> SimOptions:
    base: dict[str, Any] = {
        "api": api,
        "token": t.token,
        "stores": 1,
        "dropouts_per_day": 0.0,
        "data_dir": data_dir,
        "seed": 7,
    }
    return SimOptions(**{**base, **changes})


async def test_http_fleet_reaches_the_platform(api: str, tenants: TenantFactory, tmp_path: Path) -> None:
    t = await tenants.create("sim")
    options = _options(api, t, tmp_path, stores=2, speed=30.0, duration=3.0)
    session = Session(options)
    async with asyncio.timeout(60):
        stats = await session.run(asyncio.Event())
    assert stats.errors == 0, stats.routes
    assert stats.routes["http"].devices == 18 and stats.routes["http"].messages > 18
    expected = _metrics_by_device(2)
    async with httpx.AsyncClient(base_url=api, timeout=10) as http:
        await _until(lambda: _all_reported(http, t, expected))
        latest = await _latest(http, t, "freezer-02-3")
        assert -30 < latest["temp"]["value"] < 0 and isinstance(latest["door_open"]["value"], bool)
        stamp = datetime.fromisoformat(latest["temp"]["ts"].replace("Z", "+00:00"))
        assert timedelta(0) <= datetime.now(UTC) - stamp < timedelta(minutes=2), "a 90 s window ending now"
        device = (await http.get("/api/v1/devices/gw-01", headers=t.headers)).json()
        assert device["status"] == "online" and device["labels"] == {"store": "store-01", "region": "north"}

        # A second run reuses the cached device credentials.
        again = Session(_options(api, t, tmp_path, stores=2, speed=10.0, duration=1.0))
        stats = await again.run(asyncio.Event())
        assert stats.messages > 0 and stats.errors == 0
        for device_id in ("freezer-01-1", "meter-02", "gw-02"):
            r = await http.get(f"/api/v1/devices/{device_id}/credentials", headers=t.headers)
            assert len(r.json()) == 1, device_id


async def test_forced_failure_shows_on_the_platform(api: str, tenants: TenantFactory, tmp_path: Path) -> None:
    t = await tenants.create("sim")
    # 100 simulated minutes in 5 s; the compressor of freezer-01-2 fails at once.
    options = _options(api, t, tmp_path, speed=1200.0, duration=5.0, failures=(("freezer-01-2", 0.0),))
    session = Session(options)
    stats = await session.run(asyncio.Event())
    assert stats.errors == 0
    # What the platform stored is exactly what the model says for that instant.
    model = build_fleet(stores=1, seed=7, failures={"freezer-01-2": session.t0}, dropouts_per_day=0)
    async with httpx.AsyncClient(base_url=api, timeout=10) as http:

        async def failed() -> bool:
            latest = await _latest(http, t, "freezer-01-2")
            return "temp" in latest and latest["temp"]["value"] > -10

        await _until(failed)
        for device_id in ("freezer-01-2", "freezer-01-1"):
            latest = await _latest(http, t, device_id)
            ts = datetime.fromisoformat(latest["temp"]["ts"].replace("Z", "+00:00")).timestamp()
            expected = model.get(device_id).signal.sample(ts)
            assert latest["temp"]["value"] == pytest.approx(expected["temp"], abs=0.011)
            assert latest["compressor_on"]["value"] is expected["compressor_on"]
        assert (await _latest(http, t, "freezer-01-2"))["compressor_on"]["value"] is False


async def test_backfill_writes_a_window_the_api_aggregates(
    api: str, tenants: TenantFactory, tmp_path: Path
) -> None:
    t = await tenants.create("sim")
    options = _options(api, t, tmp_path, backfill=2 * 3600.0, duration=0.0)
    session = Session(options)
    async with asyncio.timeout(120):
        stats = await session.run(asyncio.Event())
    assert stats.errors == 0 and stats.backfill_done == stats.backfill_total > 0
    assert set(stats.routes) == {BACKFILL_ROUTE}
    start = datetime.fromtimestamp(session.t0 - 2 * 3600, UTC)
    end = datetime.fromtimestamp(session.t0, UTC)
    params: dict[str, Any] = {
        "every": 60,
        "aggregate": "mean",
        "start": start.isoformat(),
        "end": end.isoformat(),
    }
    async with httpx.AsyncClient(base_url=api, timeout=30) as http:

        async def windows(device_id: str, metric: str) -> list[dict[str, Any]]:
            r = await http.get(
                f"/api/v1/devices/{device_id}/telemetry",
                params={**params, "metric": metric},
                headers=t.headers,
            )
            assert r.status_code == 200, r.text
            samples: list[dict[str, Any]] = r.json()["samples"]
            return samples

        async def complete() -> bool:
            return (
                len(await windows("freezer-01-1", "temp")) >= 119
                and len(await windows("meter-01", "energy_kwh")) >= 119
            )

        await _until(complete, limit=60)
        temps = [s["value"] for s in await windows("freezer-01-1", "temp")]
        assert len(temps) in (120, 121) and -20 < sorted(temps)[len(temps) // 2] < -16
        energy = [s["value"] for s in await windows("meter-01", "energy_kwh")]
        assert all(b >= a for a, b in itertools.pairwise(energy)) and energy[-1] > energy[0]
        counts = await windows("gw-01", "door_count")
        assert len(counts) >= 119
        raw = await http.get(
            "/api/v1/devices/freezer-01-1/telemetry",
            params={"metric": "temp", "start": start.isoformat(), "end": end.isoformat()},
            headers=t.headers,
        )
        assert len(raw.json()["samples"]) == 720, "every 10 s for two hours"


async def test_mqtt_freezers_go_through_the_broker(
    tmp_path: Path, database: Database, tenants: TenantFactory, mosquitto_server: MosquittoServer
) -> None:
    client_id = f"fg-sim-test-{secrets.token_hex(4)}"
    async with _serving(
        tmp_path / "server", database, mqtt_url=mosquitto_server.url, mqtt_client_id=client_id
    ) as api:
        t = await tenants.create("sim")
        options = _options(api, t, tmp_path, mqtt=mosquitto_server.url, speed=20.0, duration=3.0)
        stats = await Session(options).run(asyncio.Event())
        assert stats.errors == 0, stats.routes
        assert stats.routes["mqtt"].devices == 6 and stats.routes["mqtt"].messages >= 6
        assert stats.routes["http"].devices == 3
        async with httpx.AsyncClient(base_url=api, timeout=10) as http:
            await _until(lambda: _all_reported(http, t, _metrics_by_device(1)))
            # Freezers over MQTT need no device credential.
            r = await http.get("/api/v1/devices/freezer-01-4/credentials", headers=t.headers)
            assert r.json() == []


async def test_battery_sensors_post_over_coap(
    tmp_path: Path, database: Database, tenants: TenantFactory
) -> None:
    port = free_port()
    async with _serving(tmp_path / "server", database, coap_port=port, coap_host="127.0.0.1") as api:
        t = await tenants.create("sim")
        options = _options(api, t, tmp_path, coap=f"coap://127.0.0.1:{port}", speed=120.0, duration=3.0)
        stats = await Session(options).run(asyncio.Event())
        assert stats.errors == 0, stats.routes
        assert stats.routes["coap"].devices == 1 and stats.routes["coap"].messages >= 3
        async with httpx.AsyncClient(base_url=api, timeout=10) as http:
            await _until(lambda: _all_reported(http, t, _metrics_by_device(1)))
            battery = await _latest(http, t, "battery-01")
            assert 5 <= battery["battery_pct"]["value"] <= 100


async def _cli(*args: str, data_dir: Path) -> tuple[int, str, str]:
    env = {**os.environ, "FLATGIGS_DATA_DIR": str(data_dir), "COLUMNS": "200", "NO_COLOR": "1"}
    env.pop("FLATGIGS_MQTT_URL", None)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "server.simulator",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(90):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_the_command_runs_and_exits(api: str, tenants: TenantFactory, tmp_path: Path) -> None:
    t = await tenants.create("sim")
    code, out, err = await _cli(
        "--api", api, "--token", t.token, "--stores", "1", "--speed", "10", "--duration", "2",
        "--dropouts", "0", "--fail", "freezer-01-3@30", "--no-progress",
        data_dir=tmp_path,
    )  # fmt: skip
    assert code == 0, out + err
    assert "9 devices for tenant" in out and "sent " in out and "http" in out
    assert (tmp_path / "simulator-credentials.json").exists()

    code, out, err = await _cli(
        "--api", f"http://127.0.0.1:{free_port()}", "--token", t.token, "--duration", "1", "--no-progress",
        data_dir=tmp_path,
    )  # fmt: skip
    assert code == 1 and "cannot reach the API" in err
