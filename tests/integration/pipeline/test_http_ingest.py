"""HTTP ingestion through the running pipeline into the store, the API and the dead-letter list."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from server.app import create_app
from server.settings import load_settings
from storage.database import Database
from tests.conftest import TenantFactory, TenantHandle, bearer


async def _until(predicate: object, limit: float = 10.0) -> None:
    """Poll an async predicate until it is true (a wait for a condition, not a sleep)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not await predicate():  # type: ignore[operator]
        if loop.time() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.02)


@pytest.fixture
async def running(tmp_path: Path, database: Database) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    settings = load_settings(data_dir=tmp_path, ingest_queue_size=50)
    app = create_app(settings, database)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            yield app, client


async def _freezer(client: httpx.AsyncClient, tenants: TenantFactory) -> tuple[TenantHandle, str]:
    t = await tenants.create()
    metrics = [
        {"name": "temp", "data_type": "number", "min": -40, "max": 20},
        {"name": "door_open", "data_type": "boolean"},
        {"name": "mode", "data_type": "string"},
    ]
    r = await client.post(
        "/api/v1/device-types", json={"id": "freezer", "name": "F", "metrics": metrics}, headers=t.headers
    )
    assert r.status_code == 201, r.text
    r = await client.post("/api/v1/devices", json={"id": "fz-1", "type_id": "freezer"}, headers=t.headers)
    assert r.status_code == 201
    r = await client.post("/api/v1/devices/fz-1/credentials", headers=t.headers)
    assert r.status_code == 201, r.text
    return t, r.json()["token"]


async def test_reading_goes_in_and_comes_out(
    running: tuple[FastAPI, httpx.AsyncClient], tenants: TenantFactory
) -> None:
    _, client = running
    t, device_token = await _freezer(client, tenants)
    ts = "2026-11-27T08:00:00.123456+00:00"
    r = await client.post(
        "/api/v1/ingest",
        json={"ts": ts, "values": {"temp": -18.5, "door_open": False, "mode": "eco"}},
        headers=bearer(device_token),
    )
    assert r.status_code == 202, r.text
    assert r.json() == {"device_id": "fz-1", "accepted": 1}

    async def stored() -> bool:
        r = await client.get("/api/v1/devices/fz-1/telemetry/latest", headers=t.headers)
        return r.status_code == 200 and "temp" in r.json()["metrics"]

    await _until(stored)
    latest = (await client.get("/api/v1/devices/fz-1/telemetry/latest", headers=t.headers)).json()["metrics"]
    assert latest["temp"]["value"] == -18.5 and latest["door_open"]["value"] is False
    assert latest["mode"]["value"] == "eco"
    assert datetime.fromisoformat(latest["temp"]["ts"].replace("Z", "+00:00")) == datetime.fromisoformat(ts)
    series = await client.get(
        "/api/v1/devices/fz-1/telemetry",
        params={"metric": "temp", "start": "2026-11-27T07:00:00Z", "end": "2026-11-27T09:00:00Z"},
        headers=t.headers,
    )
    assert [s["value"] for s in series.json()["samples"]] == [-18.5]
    device = (await client.get("/api/v1/devices/fz-1", headers=t.headers)).json()
    assert device["status"] == "online" and device["last_seen_at"] is not None


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"not json", "malformed"),
        (b'{"temp": NaN}', "not_finite"),
        (b'{"temp": Infinity}', "not_finite"),
        (b"[" * 10_000 + b"]" * 10_000, "too_deep"),
        (b'{"ts": -1, "values": {"temp": 1}}', "bad_timestamp"),
        (b'{"ts": 99999999999999, "values": {"temp": 1}}', "bad_timestamp"),
        (b'{"te mp": 1}', "bad_metric_name"),
        (b'{"temp": "x\\" 1\\ntelemetry,device=evil temp=666"}', "wrong_type"),
        (b'{"humidity": 40}', "unknown_metric"),
    ],
)
async def test_bad_payloads_are_dead_lettered(
    running: tuple[FastAPI, httpx.AsyncClient], tenants: TenantFactory, payload: bytes, reason: str
) -> None:
    app, client = running
    t, device_token = await _freezer(client, tenants)
    headers = {**bearer(device_token), "content-type": "application/json"}
    r = await client.post("/api/v1/ingest", content=payload, headers=headers)
    # Decoding problems are refused synchronously; catalogue problems are found by ingestion.
    assert r.status_code in (202, 422), r.text
    good = await client.post("/api/v1/ingest", json={"temp": -20.0}, headers=bearer(device_token))
    assert good.status_code == 202

    async def lettered() -> bool:
        await app.state.runtime.recorder.flush()
        r = await client.get("/api/v1/dead-letters", headers=t.headers)
        return any(item["reason"] == reason for item in r.json()["items"])

    await _until(lettered)
    item = (await client.get("/api/v1/dead-letters", params={"reason": reason}, headers=t.headers)).json()[
        "items"
    ][0]
    assert item["device_id"] == "fz-1" and item["source"] == "http:api"
    assert len(item["payload_excerpt"]) <= 512

    async def good_stored() -> bool:
        r = await client.get("/api/v1/devices/fz-1/telemetry/latest", headers=t.headers)
        return r.json()["metrics"].get("temp", {}).get("value") == -20.0

    await _until(good_stored)
    text = (await client.get("/metrics")).text
    assert f'flatgigs_ingest_rejected_total{{reason="{reason}",source="http"}}' in text


async def test_device_credentials(running: tuple[FastAPI, httpx.AsyncClient], tenants: TenantFactory) -> None:
    _, client = running
    t, device_token = await _freezer(client, tenants)
    assert (await client.post("/api/v1/ingest", json={"temp": 1.0})).status_code == 401
    forged = device_token.rsplit(".", 1)[0] + ".forged"
    assert (
        await client.post("/api/v1/ingest", json={"temp": 1.0}, headers=bearer(forged))
    ).status_code == 401
    assert (await client.post("/api/v1/ingest", json={"temp": 1.0}, headers=t.headers)).status_code == 401
    listed = (await client.get("/api/v1/devices/fz-1/credentials", headers=t.headers)).json()
    assert len(listed) == 1 and "token" not in listed[0]
    r = await client.delete(f"/api/v1/devices/fz-1/credentials/{listed[0]['id']}", headers=t.headers)
    assert r.status_code == 200 and r.json()["revoked_at"]
    r = await client.post("/api/v1/ingest", json={"temp": 1.0}, headers=bearer(device_token))
    assert r.status_code == 401


async def test_backpressure_answers_503_with_retry_after(
    tmp_path: Path, database: Database, tenants: TenantFactory
) -> None:
    # Without its lifespan the app ingests nothing, so the bounded queue fills deterministically.
    app = create_app(load_settings(data_dir=tmp_path, ingest_queue_size=10), database)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        _t, device_token = await _freezer(client, tenants)
        statuses = []
        for i in range(15):
            r = await client.post("/api/v1/ingest", json={"temp": float(i)}, headers=bearer(device_token))
            statuses.append(r.status_code)
        assert statuses == [202] * 10 + [503] * 5
        assert r.headers["retry-after"] == "1"
        assert r.json()["type"] == "urn:flatgigs:problem:backpressure"
        assert app.state.runtime.bus.depth == 10
    await app.state.runtime.telemetry.close()
