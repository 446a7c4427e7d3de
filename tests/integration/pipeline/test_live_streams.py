"""SSE and WebSocket streams from a real server: readings arrive live, per tenant, filtered."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import uvicorn
import websockets

from server.app import create_app
from server.settings import load_settings
from storage.database import Database
from tests.conftest import TenantFactory, TenantHandle, bearer
from tests.harness.ports import free_port


@pytest.fixture
async def server(tmp_path: Path, database: Database) -> AsyncIterator[str]:
    """A real uvicorn server (streams need a real HTTP connection) on a free port."""
    port = free_port()
    app = create_app(load_settings(data_dir=tmp_path, port=port), database)
    app.state.api_context.live_heartbeat_s = 0.2  # fast re-checks of the token
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    srv = uvicorn.Server(config)
    task = asyncio.create_task(srv.serve())
    while not srv.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        await task


async def _device(http: httpx.AsyncClient, t: TenantHandle, device: str) -> str:
    metrics = [{"name": "temp"}, {"name": "humidity"}]
    await http.post(
        "/api/v1/device-types", json={"id": "fz", "name": "F", "metrics": metrics}, headers=t.headers
    )
    r = await http.post("/api/v1/devices", json={"id": device, "type_id": "fz"}, headers=t.headers)
    assert r.status_code == 201
    r = await http.post(f"/api/v1/devices/{device}/credentials", headers=t.headers)
    token: str = r.json()["token"]
    return token


async def _sse_events(response: httpx.Response) -> AsyncIterator[tuple[str, dict[str, object]]]:
    kind = None
    async for line in response.aiter_lines():
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: ") and kind:
            yield kind, json.loads(line[6:])


async def test_sse_streams_readings_and_status_per_tenant(server: str, tenants: TenantFactory) -> None:
    acme, globex = await tenants.create("acme"), await tenants.create("globex")
    async with httpx.AsyncClient(base_url=f"http://{server}", timeout=10) as http:
        acme_dev = await _device(http, acme, "fz-1")
        globex_dev = await _device(http, globex, "fz-1")  # same id, other tenant
        params = {"device": "fz-1", "metric": "temp"}
        async with http.stream("GET", "/api/v1/live/sse", params=params, headers=acme.headers) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            await http.post("/api/v1/ingest", json={"temp": 99.0}, headers=bearer(globex_dev))
            await http.post("/api/v1/ingest", json={"humidity": 50.0}, headers=bearer(acme_dev))
            await http.post("/api/v1/ingest", json={"temp": -18.5}, headers=bearer(acme_dev))
            seen: list[tuple[str, dict[str, object]]] = []
            async with asyncio.timeout(10):
                async for kind, data in _sse_events(stream):
                    seen.append((kind, data))
                    if kind == "reading":
                        break
        readings = [d for k, d in seen if k == "reading"]
        assert readings == [
            {
                "tenant_id": acme.id,
                "device_id": "fz-1",
                "ts": readings[0]["ts"],
                "metrics": {"temp": -18.5},
                "source": {"kind": "http", "instance": "api"},
                "quality": "good",
            }
        ]
        assert any(k == "status" and d["status"] == "online" for k, d in seen)


async def test_sse_refuses_bad_tokens(server: str, tenants: TenantFactory) -> None:
    t = await tenants.create()
    limited = await tenants.token(t.id, ["devices:read"])
    async with httpx.AsyncClient(base_url=f"http://{server}", timeout=10) as http:
        assert (await http.get("/api/v1/live/sse")).status_code == 401
        r = await http.get("/api/v1/live/sse", params={"access_token": "fg.x.y.z"})
        assert r.status_code == 401 and r.headers["content-type"].startswith("application/problem+json")
        assert (await http.get("/api/v1/live/sse", headers=bearer(limited))).status_code == 403


async def test_websocket_streams_readings(server: str, tenants: TenantFactory) -> None:
    t = await tenants.create()
    async with httpx.AsyncClient(base_url=f"http://{server}", timeout=10) as http:
        device_token = await _device(http, t, "fz-9")
        url = f"ws://{server}/api/v1/live/ws?device=fz-9&access_token={t.token}"
        async with websockets.connect(url) as ws:
            await http.post(
                "/api/v1/ingest", json={"temp": -20.25, "humidity": 41.0}, headers=bearer(device_token)
            )
            async with asyncio.timeout(10):
                while True:
                    message = json.loads(await ws.recv())
                    if message["type"] == "reading":
                        break
        assert message["data"]["metrics"] == {"temp": -20.25, "humidity": 41.0}
        with pytest.raises(websockets.exceptions.InvalidStatus):
            async with websockets.connect(f"ws://{server}/api/v1/live/ws?access_token=nope"):
                pass


async def test_revoking_the_token_ends_an_open_stream(server: str, tenants: TenantFactory) -> None:
    t = await tenants.create()
    async with httpx.AsyncClient(base_url=f"http://{server}", timeout=10) as http:
        r = await http.post(
            "/api/v1/tokens", json={"name": "dash", "scopes": ["telemetry:read"]}, headers=t.headers
        )
        token, token_id = r.json()["token"], r.json()["id"]
        async with http.stream("GET", "/api/v1/live/sse", params={"access_token": token}) as stream:
            lines = stream.aiter_lines()
            assert await anext(lines) == ": connected"
            await http.delete(f"/api/v1/tokens/{token_id}", headers=t.headers)
            async with asyncio.timeout(10):
                rest = [line async for line in lines]  # ends when the server closes the stream
        assert all(not line.startswith("event: reading") for line in rest)


async def test_access_tokens_are_redacted_from_access_logs() -> None:
    import logging

    from server.logs import RedactSecrets

    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", "/api/v1/live/sse?device=a&access_token=fg.t.k.s3cret", "1.1", 200),
        None,
    )
    assert RedactSecrets().filter(record)
    assert "s3cret" not in record.getMessage() and "access_token=REDACTED" in record.getMessage()


async def test_sse_streams_alarms_and_traces_of_the_rule_engine(server: str, tenants: TenantFactory) -> None:
    t = await tenants.create()
    async with httpx.AsyncClient(base_url=f"http://{server}", timeout=10) as http:
        device_token = await _device(http, t, "fz-1")
        document = {
            "name": "too warm",
            "devices": {"type": "fz"},
            "when": [{"type": "telemetry.received", "options": {"metrics": ["temp"]}}],
            "if": [{"type": "telemetry.threshold", "options": {"metric": "temp", "value": -10}}],
            "then": [
                {"type": "alarm.raise", "options": {"alarm_type": "warm", "message": "{{ values.temp }}"}}
            ],
        }
        rule = (await http.post("/api/v1/rules", json={"document": document}, headers=t.headers)).json()
        r = await http.post(f"/api/v1/rules/{rule['id']}/publish", json={}, headers=t.headers)
        assert r.status_code == 200, r.text
        params = {"kind": ["alarm", "trace"]}
        async with http.stream("GET", "/api/v1/live/sse", params=params, headers=t.headers) as stream:
            await http.post("/api/v1/ingest", json={"temp": -4.5}, headers=bearer(device_token))
            events = _sse_events(stream)
            seen: dict[str, dict[str, object]] = {}
            async with asyncio.timeout(10):
                while len(seen) < 2:
                    kind, data = await anext(events)
                    assert kind in ("alarm", "trace"), kind  # no readings or statuses: not asked for
                    seen.setdefault(kind, data)
            alarm = seen["alarm"]
            assert alarm["device_id"] == "fz-1" and alarm["state"] == "active_unack"
            assert alarm["message"] == "-4.5" and alarm["rule_id"] == rule["id"]
            # Acknowledging through the API goes out on the stream too.
            r = await http.post(f"/api/v1/alarms/{alarm['id']}/acknowledge", json={}, headers=t.headers)
            assert r.status_code == 200, r.text
            async with asyncio.timeout(10):
                kind, data = await anext(events)
            assert kind == "alarm" and data["state"] == "active_ack"
        trace = seen["trace"]
        assert trace["outcome"] == "fired" and trace["rule_id"] == rule["id"]
        r = await http.get("/api/v1/live/sse", params={"kind": "everything"}, headers=t.headers)
        assert r.status_code == 422
