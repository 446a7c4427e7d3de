"""Polled and subscribed devices end to end: a binding made through the API starts the flow."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from pipeline.live import LiveEvent, Subscription
from server.app import create_app
from server.settings import load_settings
from storage.database import Database
from tests.conftest import TenantFactory, TenantHandle
from tests.harness.modbus import ModbusSpec, RegisterBlock, UnitSpec, start_modbus_server
from tests.harness.opcua import NAMESPACE_URI, OpcUaServer, PlcWriter, start_opcua_server


@pytest.fixture(scope="module")
def plc(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[OpcUaServer]:
    server = start_opcua_server(tmp_path_factory.mktemp("plc"))
    yield server
    server.stop()


@pytest.fixture
async def app(tmp_path: Path, database: Database) -> AsyncIterator[FastAPI]:
    application = create_app(load_settings(data_dir=tmp_path), database)
    async with application.router.lifespan_context(application):
        yield application


async def _latest(http: httpx.AsyncClient, t: TenantHandle, device: str, metric: str) -> dict[str, object]:
    async with asyncio.timeout(20):
        while True:
            r = await http.get(f"/api/v1/devices/{device}/telemetry/latest", headers=t.headers)
            sample: dict[str, object] | None = r.json()["metrics"].get(metric)
            if sample is not None:
                return sample
            await asyncio.sleep(0.05)


async def _live_reading(sub: Subscription) -> LiveEvent:
    """The next reading on a live subscription (the same stream SSE and WebSocket serve)."""
    async with asyncio.timeout(20):
        while True:
            event = await sub.get(1.0)
            if event is not None and event.kind == "reading":
                return event


async def test_opcua_binding(app: FastAPI, plc: OpcUaServer, tenants: TenantFactory) -> None:
    t = await tenants.create("globex")
    metrics = [{"name": "speed"}, {"name": "temperature"}, {"name": "state", "data_type": "string"}]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        await http.post(
            "/api/v1/device-types", json={"id": "plc", "name": "PLC", "metrics": metrics}, headers=t.headers
        )
        await http.post("/api/v1/devices", json={"id": "line1", "type_id": "plc"}, headers=t.headers)
        nodes = [
            {"metric": m, "node_id": f"nsu={NAMESPACE_URI};s=Line1/{n}"}
            for m, n in (("speed", "Speed"), ("temperature", "Temperature"), ("state", "State"))
        ]
        bad = await http.put(
            "/api/v1/devices/line1/binding",
            json={"kind": "opcua", "config": {"url": "http://not-opc", "nodes": nodes}},
            headers=t.headers,
        )
        assert bad.status_code == 422 and bad.json()["errors"][0]["loc"][:2] == ["config", "url"]
        smuggled = await http.put(
            "/api/v1/devices/line1/binding",
            json={"kind": "opcua", "config": {"url": plc.url, "nodes": nodes, "tenant_id": "acme"}},
            headers=t.headers,
        )
        assert smuggled.status_code == 422
        r = await http.put(
            "/api/v1/devices/line1/binding",
            json={"kind": "opcua", "config": {"url": plc.url, "nodes": nodes, "publishing_interval_ms": 50}},
            headers=t.headers,
        )
        assert r.status_code == 200, r.text
        assert "tenant_id" not in r.json()["config"]
        ts = datetime(2026, 11, 27, 9, 30, tzinfo=UTC)
        live = app.state.runtime.hub.subscribe(t.id, devices=["line1"], metrics=["speed"])
        async with PlcWriter(plc.url) as writer:
            await writer.write("Speed", 1.75, source_ts=ts)
            await writer.write("State", "running", source_ts=ts)
        event = await _live_reading(live)
        app.state.runtime.hub.unsubscribe(live)
        assert event.data["metrics"] == {"speed": 1.75} and event.data["source"]["kind"] == "opcua"
        assert event.data["ts"] == ts.isoformat()
        speed = await _latest(http, t, "line1", "speed")
        state = await _latest(http, t, "line1", "state")
        assert speed == {"ts": "2026-11-27T09:30:00Z", "value": 1.75}
        assert state["value"] == "running"
        runtime = app.state.runtime
        # Other tests' tenants may have bindings in the shared database: look at OPC-UA only.
        [opcua] = [c for c in runtime.supervisor.connectors if c.kind == "opcua"]
        assert f"{t.id}/line1" in opcua.details()["endpoints"]
        assert (await http.delete("/api/v1/devices/line1/binding", headers=t.headers)).status_code == 204
        served = [c.details()["endpoints"] for c in runtime.supervisor.connectors if c.kind == "opcua"]
        assert all(f"{t.id}/line1" not in endpoints for endpoints in served)
        assert (await http.get("/api/v1/devices/line1/binding", headers=t.headers)).status_code == 404


async def test_modbus_binding(app: FastAPI, tenants: TenantFactory, tmp_path: Path) -> None:
    spec = ModbusSpec(
        [
            UnitSpec(
                unit_id=1,
                holding=[RegisterBlock(0, "float32", [230.5, 12.75]), RegisterBlock(4, "uint32", [1234567])],
            )
        ]
    )
    meter = await asyncio.to_thread(start_modbus_server, spec, tmp_path / "modbus")
    try:
        t = await tenants.create("acme")
        metrics = [{"name": "voltage"}, {"name": "current"}, {"name": "energy_kwh"}]
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
            await http.post(
                "/api/v1/device-types",
                json={"id": "meter", "name": "M", "metrics": metrics},
                headers=t.headers,
            )
            await http.post("/api/v1/devices", json={"id": "meter-17", "type_id": "meter"}, headers=t.headers)
            config = {
                "host": "127.0.0.1",
                "port": meter.port,
                "poll_interval_s": 0.2,
                "registers": [
                    {"metric": "voltage", "address": 0, "kind": "holding", "data_type": "float32"},
                    {"metric": "current", "address": 2, "kind": "holding", "data_type": "float32"},
                    {
                        "metric": "energy_kwh",
                        "address": 4,
                        "kind": "holding",
                        "data_type": "uint32",
                        "scale": 0.01,
                    },
                ],
            }
            bad = {**config, "registers": [{**config["registers"][0], "kind": "coil"}]}  # type: ignore[index]
            r = await http.put(
                "/api/v1/devices/meter-17/binding", json={"kind": "modbus", "config": bad}, headers=t.headers
            )
            assert r.status_code == 422
            live = app.state.runtime.hub.subscribe(t.id, devices=["meter-17"])
            r = await http.put(
                "/api/v1/devices/meter-17/binding",
                json={"kind": "modbus", "config": config},
                headers=t.headers,
            )
            assert r.status_code == 200, r.text
            event = await _live_reading(live)
            app.state.runtime.hub.unsubscribe(live)
            assert event.data["metrics"] == {"voltage": 230.5, "current": 12.75, "energy_kwh": 12345.67}
            assert event.data["source"]["kind"] == "modbus" and event.data["tenant_id"] == t.id
            energy = await _latest(http, t, "meter-17", "energy_kwh")
            voltage = await _latest(http, t, "meter-17", "voltage")
            assert energy["value"] == 12345.67 and voltage["value"] == 230.5
            device = (await http.get("/api/v1/devices/meter-17", headers=t.headers)).json()
            assert device["status"] == "online"

            await asyncio.to_thread(meter.kill)

            async def offline() -> bool:
                d = (await http.get("/api/v1/devices/meter-17", headers=t.headers)).json()
                return bool(d["status"] == "offline")

            async with asyncio.timeout(20):
                while not await offline():
                    await asyncio.sleep(0.05)
    finally:
        await asyncio.to_thread(meter.stop)
