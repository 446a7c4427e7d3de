"""Each protocol end to end: a reading goes in and comes out of the store and the live stream."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import aiocoap
import httpx
import paho.mqtt.client as mqtt
import pytest
from fastapi import FastAPI

from pipeline.live import LiveEvent
from server.app import create_app
from server.settings import Settings, load_settings
from storage.database import Database
from tests.conftest import TenantFactory, TenantHandle, bearer
from tests.harness.mosquitto import MosquittoServer
from tests.harness.ports import free_port

TS = datetime(2026, 11, 27, 8, 0, 0, 250000, tzinfo=UTC)


async def _running(settings: Settings, database: Database) -> AsyncIterator[FastAPI]:
    app = create_app(settings, database)
    async with app.router.lifespan_context(app):
        yield app


async def _setup(app: FastAPI, tenants: TenantFactory) -> tuple[TenantHandle, httpx.AsyncClient]:
    t = await tenants.create()
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
    metrics = [{"name": "temp"}, {"name": "door_open", "data_type": "boolean"}]
    await http.post(
        "/api/v1/device-types", json={"id": "fz", "name": "F", "metrics": metrics}, headers=t.headers
    )
    r = await http.post("/api/v1/devices", json={"id": "fz-1", "type_id": "fz"}, headers=t.headers)
    assert r.status_code == 201
    return t, http


async def _goes_through(
    app: FastAPI, http: httpx.AsyncClient, t: TenantHandle, send: Callable[[], Awaitable[None]], source: str
) -> None:
    """Send once; the reading must reach the live stream and the store with exact values."""
    sub = app.state.runtime.hub.subscribe(t.id, devices=["fz-1"])
    try:
        await send()
        async with asyncio.timeout(15):
            async for event in sub:
                if event.kind == "reading":
                    break
    finally:
        app.state.runtime.hub.unsubscribe(sub)
    assert isinstance(event, LiveEvent)
    assert event.data["tenant_id"] == t.id and event.data["device_id"] == "fz-1"
    assert event.data["ts"] == TS.isoformat()
    assert event.data["metrics"] == {"temp": -17.75, "door_open": True}
    assert event.data["source"]["kind"] == source
    async with asyncio.timeout(15):
        while True:
            r = await http.get("/api/v1/devices/fz-1/telemetry/latest", headers=t.headers)
            latest = r.json()["metrics"]
            if "temp" in latest:
                break
            await asyncio.sleep(0.02)
    assert latest["temp"]["value"] == -17.75 and latest["door_open"]["value"] is True
    assert datetime.fromisoformat(latest["temp"]["ts"].replace("Z", "+00:00")) == TS


PAYLOAD = json.dumps({"ts": TS.isoformat(), "values": {"temp": -17.75, "door_open": True}}).encode()


@pytest.fixture
async def mqtt_app(
    tmp_path: Path, database: Database, mosquitto_server: MosquittoServer
) -> AsyncIterator[FastAPI]:
    settings = load_settings(
        data_dir=tmp_path,
        mqtt_url=f"mqtt://127.0.0.1:{mosquitto_server.port}",
        mqtt_client_id=f"e2e-{secrets.token_hex(4)}",
    )
    async for app in _running(settings, database):
        yield app


async def test_mqtt(mqtt_app: FastAPI, tenants: TenantFactory, mosquitto_server: MosquittoServer) -> None:
    t, http = await _setup(mqtt_app, tenants)
    connector = mqtt_app.state.runtime.supervisor.connectors[0]
    async with asyncio.timeout(15):
        while not connector.details().get("subscribed"):
            await asyncio.sleep(0.02)

    async def send() -> None:
        def publish() -> None:
            client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
            client.connect("127.0.0.1", mosquitto_server.port)
            client.loop_start()
            client.publish(f"fg/{t.id}/fz-1/telemetry", PAYLOAD, qos=1).wait_for_publish(10)
            client.loop_stop()
            client.disconnect()

        await asyncio.to_thread(publish)

    await _goes_through(mqtt_app, http, t, send, "mqtt")
    await http.aclose()


@pytest.fixture
async def coap_app(tmp_path: Path, database: Database) -> AsyncIterator[FastAPI]:
    settings = load_settings(data_dir=tmp_path, coap_port=free_port(), coap_host="127.0.0.1")
    async for app in _running(settings, database):
        yield app


async def test_coap(coap_app: FastAPI, tenants: TenantFactory) -> None:
    t, http = await _setup(coap_app, tenants)
    token = (await http.post("/api/v1/devices/fz-1/credentials", headers=t.headers)).json()["token"]
    port = coap_app.state.runtime.settings.coap_port

    async def send() -> None:
        context = await aiocoap.Context.create_client_context()
        try:
            request = aiocoap.Message(
                code=aiocoap.POST, uri=f"coap://127.0.0.1:{port}/telemetry?k={token}", payload=PAYLOAD
            )
            response = await context.request(request).response
            assert response.code == aiocoap.CHANGED, response.payload
        finally:
            await context.shutdown()

    await _goes_through(coap_app, http, t, send, "coap")
    await http.aclose()


@pytest.fixture
async def http_app(tmp_path: Path, database: Database) -> AsyncIterator[FastAPI]:
    async for app in _running(load_settings(data_dir=tmp_path), database):
        yield app


async def test_http(http_app: FastAPI, tenants: TenantFactory) -> None:
    t, http = await _setup(http_app, tenants)
    token = (await http.post("/api/v1/devices/fz-1/credentials", headers=t.headers)).json()["token"]

    async def send() -> None:
        r = await http.post(
            "/api/v1/ingest", content=PAYLOAD, headers={**bearer(token), "content-type": "application/json"}
        )
        assert r.status_code == 202

    await _goes_through(http_app, http, t, send, "http")
    await http.aclose()
