"""InfluxDB goes away mid-stream: readings wait in a bounded buffer, then backpressure; none is lost."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from server.app import create_app
from server.settings import load_settings
from storage.database import Database
from storage.telemetry.influx import InfluxTelemetryStore
from tests.conftest import TenantFactory, bearer
from tests.harness.influxdb import InfluxDBServer, start_influxdb

QUEUE = 20


@pytest.fixture
async def influx(tmp_path: Path) -> AsyncIterator[InfluxDBServer]:
    server = await asyncio.to_thread(start_influxdb, tmp_path / "influx")
    try:
        yield server
    finally:
        await asyncio.to_thread(server.stop)


@pytest.fixture
async def app(tmp_path: Path, database: Database, influx: InfluxDBServer) -> AsyncIterator[FastAPI]:
    settings = load_settings(data_dir=tmp_path, ingest_queue_size=QUEUE, ingest_batch_size=5)
    store = InfluxTelemetryStore(influx.url, database_prefix="outage_", timeout=1.0)
    application = create_app(settings, database, telemetry=store)
    application.state.runtime.ingestor.max_retry_delay = 0.2
    async with application.router.lifespan_context(application):
        yield application


async def test_outage_buffers_then_pushes_back_and_loses_nothing(
    app: FastAPI, influx: InfluxDBServer, tenants: TenantFactory
) -> None:
    t = await tenants.create()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        await http.post(
            "/api/v1/device-types",
            json={"id": "fz", "name": "F", "metrics": [{"name": "n"}]},
            headers=t.headers,
        )
        await http.post("/api/v1/devices", json={"id": "fz-1", "type_id": "fz"}, headers=t.headers)
        token = (await http.post("/api/v1/devices/fz-1/credentials", headers=t.headers)).json()["token"]

        async def send(n: int) -> int:
            r = await http.post(
                "/api/v1/ingest",
                json={"ts": 1_764_230_400 + n, "values": {"n": float(n)}},
                headers=bearer(token),
            )
            return r.status_code

        assert [await send(n) for n in range(10)] == [202] * 10
        await asyncio.to_thread(influx.stop)
        statuses = {n: await send(n) for n in range(10, 10 + QUEUE + 30)}
        accepted = [n for n, s in statuses.items() if s == 202]
        refused = [n for n, s in statuses.items() if s == 503]
        assert len(refused) >= 20, statuses  # the bound holds: the buffer did not grow past it
        assert len(accepted) <= QUEUE + 5 + 10  # queue + one batch held by the ingestor (+ slack)
        await asyncio.to_thread(influx.start)

        expected = list(range(10)) + accepted

        async def all_stored() -> bool:
            r = await http.get(
                "/api/v1/devices/fz-1/telemetry",
                params={"metric": "n", "start": "2025-11-27T00:00:00Z", "end": "2025-11-28T00:00:00Z"},
                headers=t.headers,
            )
            return r.status_code == 200 and len(r.json()["samples"]) == len(expected)

        async with asyncio.timeout(30):
            while not await all_stored():
                await asyncio.sleep(0.05)
        r = await http.get(
            "/api/v1/devices/fz-1/telemetry",
            params={"metric": "n", "start": "2025-11-27T00:00:00Z", "end": "2025-11-28T00:00:00Z"},
            headers=t.headers,
        )
        assert sorted(int(s["value"]) for s in r.json()["samples"]) == expected
        metrics = (await http.get("/metrics")).text
        retries = [
            line for line in metrics.splitlines() if line.startswith("flatgigs_ingest_store_retries_total")
        ]
        assert retries and float(retries[0].split()[-1]) > 0
        assert 'route="/api/v1/ingest",status="503"' in metrics
