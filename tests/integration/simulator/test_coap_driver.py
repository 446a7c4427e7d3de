"""The CoAP driver against a real aiocoap server standing in for the platform's CoAP endpoint."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiocoap  # type: ignore[import-untyped]
import aiocoap.resource  # type: ignore[import-untyped]
import pytest

from server.simulator.drivers import CoapDriver, SendError, encode
from tests.harness.ports import free_port

GOOD = "fgd.acme.c2.secret"


class Telemetry(aiocoap.resource.Resource):  # type: ignore[misc]
    """``POST /telemetry?k=<credential>``: 2.04 for the good credential, 4.01 otherwise."""

    def __init__(self) -> None:
        super().__init__()
        self.received: list[tuple[str, Any, bytes]] = []

    async def render_post(self, request: Any) -> Any:
        query = dict(item.split("=", 1) for item in request.opt.uri_query)
        if query.get("k") != GOOD:
            return aiocoap.Message(code=aiocoap.UNAUTHORIZED, payload=b"unknown credential")
        self.received.append((query["k"], request.opt.content_format, bytes(request.payload)))
        return aiocoap.Message(code=aiocoap.CHANGED)


class Creds:
    def __init__(self) -> None:
        self.tokens = {"battery-01": "fgd.acme.c1.secret"}

    def token(self, device_id: str) -> str:
        return self.tokens[device_id]

    async def refresh(self, device_id: str, stale: str) -> str:
        self.tokens[device_id] = GOOD
        return GOOD


@pytest.fixture
async def endpoint() -> AsyncIterator[tuple[str, Telemetry]]:
    resource = Telemetry()
    site = aiocoap.resource.Site()
    site.add_resource(["telemetry"], resource)
    port = free_port()
    context = await aiocoap.Context.create_server_context(site, bind=("127.0.0.1", port))
    try:
        yield f"coap://127.0.0.1:{port}", resource
    finally:
        await context.shutdown()


async def test_coap_driver_posts_json_with_the_credential_in_the_query(
    endpoint: tuple[str, Telemetry],
) -> None:
    url, resource = endpoint
    creds = Creds()
    driver = CoapDriver(url, creds, timeout=5.0)
    payload = encode([(1764230400.0, {"battery_pct": 87.5, "humidity": 44.1})])
    try:
        await driver.send("battery-01", payload)  # 4.01 first: a new credential, then 2.04
        await driver.send("battery-01", payload)
    finally:
        await driver.close()
    assert creds.tokens["battery-01"] == GOOD
    assert len(resource.received) == 2
    token, content_format, body = resource.received[0]
    assert token == GOOD and int(content_format) == 50
    assert json.loads(body) == {"ts": 1764230400.0, "values": {"battery_pct": 87.5, "humidity": 44.1}}


async def test_coap_driver_reports_refusals_and_silence(endpoint: tuple[str, Telemetry]) -> None:
    url, _ = endpoint

    class Stuck(Creds):
        async def refresh(self, device_id: str, stale: str) -> str:
            return "fgd.acme.c9.still-wrong"

    driver = CoapDriver(url, Stuck(), timeout=5.0)
    with pytest.raises(SendError, match=r"4\.01"):
        await driver.send("battery-01", b"{}")
    await driver.close()
    silent = CoapDriver(f"coap://127.0.0.1:{free_port()}", Creds(), timeout=1.0)
    with pytest.raises(SendError):
        await silent.send("battery-01", b"{}")
    await silent.close()
