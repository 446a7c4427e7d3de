"""Payload encoding, rate limiting and the drivers' error handling (without a platform)."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from datetime import UTC, datetime

import httpx
import pytest

from connectors.payload import decode
from server.simulator.drivers import (
    CoapDriver,
    DriverUnavailable,
    HttpDriver,
    MqttDriver,
    RateLimiter,
    SendError,
    encode,
    encode_batches,
)
from server.simulator.signals import Metrics
from tests.harness.ports import free_port

T0 = datetime(2026, 11, 27, 8, tzinfo=UTC).timestamp()
NOW = datetime(2026, 11, 28, 8, tzinfo=UTC)


def _samples(n: int) -> list[tuple[float, Metrics]]:
    return [(T0 + 10.0 * i + 0.25, {"temp": -18.0 + i / 100, "door_open": i % 2 == 0}) for i in range(n)]


def test_payloads_are_what_the_platform_decodes() -> None:
    one = encode(_samples(1))
    assert json.loads(one) == {"ts": T0 + 0.25, "values": {"temp": -18.0, "door_open": True}}
    many = encode(_samples(3))
    assert isinstance(json.loads(many), list)
    decoded = decode(many, max_bytes=65536, now=NOW)
    assert [(s.ts.timestamp(), dict(s.metrics)) for s in decoded] == _samples(3)
    with pytest.raises(ValueError):
        encode([])


def test_batches_respect_size_and_count_limits() -> None:
    samples = _samples(2500)
    batches = list(encode_batches(samples, max_bytes=20_000))
    assert all(len(payload) <= 20_000 for payload, _ in batches)
    assert sum(n for _, n in batches) == 2500
    again = [
        (s.ts.timestamp(), dict(s.metrics)) for p, _ in batches for s in decode(p, max_bytes=65536, now=NOW)
    ]
    assert again == samples
    by_count = list(encode_batches(samples, max_bytes=10**7, max_samples=1000))
    assert [n for _, n in by_count] == [1000, 1000, 500]
    assert list(encode_batches([])) == []


async def test_rate_limiter_spaces_messages() -> None:
    limiter = RateLimiter(100.0)
    started = time.perf_counter()
    for _ in range(6):
        await limiter.acquire()
    assert time.perf_counter() - started >= 0.045
    with pytest.raises(ValueError):
        RateLimiter(0)


class Creds:
    """Credentials that hand out numbered tokens."""

    def __init__(self) -> None:
        self.tokens = {"fz-1": "fgd.t.c1.s"}
        self.refreshed: list[str] = []

    def token(self, device_id: str) -> str:
        return self.tokens[device_id]

    async def refresh(self, device_id: str, stale: str) -> str:
        self.refreshed.append(stale)
        self.tokens[device_id] = f"fgd.t.c{len(self.refreshed) + 1}.s"
        return self.tokens[device_id]


def _http(handler: object, creds: Creds | None = None) -> HttpDriver:
    return HttpDriver(
        "http://api",
        creds or Creds(),
        transport=httpx.MockTransport(handler),  # type: ignore[arg-type]
        retries=2,
        max_busy_s=0.5,
    )


async def test_http_driver_posts_with_the_device_credential() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202, json={"accepted": 1})

    driver = _http(handler)
    await driver.send("fz-1", encode(_samples(1)))
    await driver.close()
    assert seen[0].url.path == "/api/v1/ingest"
    assert seen[0].headers["authorization"] == "Bearer fgd.t.c1.s"
    assert seen[0].headers["content-type"] == "application/json"


async def test_http_driver_renews_a_refused_credential_once() -> None:
    creds = Creds()

    def handler(request: httpx.Request) -> httpx.Response:
        ok = request.headers["authorization"] == "Bearer fgd.t.c2.s"
        return httpx.Response(202 if ok else 401, json={"detail": "revoked"})

    driver = _http(handler, creds)
    await driver.send("fz-1", b"{}")
    assert creds.refreshed == ["fgd.t.c1.s"]

    never = _http(lambda r: httpx.Response(401, json={"detail": "the device credential is unknown"}))
    with pytest.raises(SendError, match="401: the device credential is unknown"):
        await never.send("fz-1", b"{}")
    with pytest.raises(SendError, match="no device credential"):
        await never.send("fz-9", b"{}")


async def test_http_driver_waits_for_a_busy_platform_then_gives_up() -> None:
    answers = iter([503, 429, 503, 502, 503, 202])

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(next(answers), headers={"Retry-After": "0.1"}, json={})

    await _http(handler).send("fz-1", b"{}")
    calls = 0

    def busy(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(503, headers={"Retry-After": "0.1"}, json={"detail": "ingestion is full"})

    with pytest.raises(SendError, match="HTTP 503: ingestion is full"):
        await _http(busy).send("fz-1", b"{}")
    assert 5 <= calls <= 7, "waits about max_busy_s, following Retry-After"
    with pytest.raises(SendError, match="HTTP 422: bad payload"):
        await _http(lambda r: httpx.Response(422, json={"detail": "bad payload"})).send("fz-1", b"{}")


async def test_http_driver_reports_an_unreachable_api() -> None:
    driver = HttpDriver(f"http://127.0.0.1:{free_port()}", Creds(), retries=1, timeout=2.0)
    with pytest.raises(SendError, match="ConnectError"):
        await driver.send("fz-1", b"{}")
    await driver.close()


async def test_coap_driver_says_when_aiocoap_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "aiocoap", None)  # what Python does for a missing package
    driver = CoapDriver("coap://127.0.0.1:5683", Creds())
    with pytest.raises(DriverUnavailable, match="pip install aiocoap"):
        await driver.start()


def test_coap_and_mqtt_urls_are_checked() -> None:
    with pytest.raises(DriverUnavailable):
        CoapDriver("http://127.0.0.1", Creds())
    with pytest.raises(DriverUnavailable):
        MqttDriver("tcp://broker", "acme")
    coap = CoapDriver("coap://[::1]:5699", Creds())
    assert coap.uri("fgd.acme.c1.s/x") == "coap://[::1]:5699/telemetry?k=fgd.acme.c1.s%2Fx"
    mqtt = MqttDriver("mqtt://user:pw@broker:1884", "acme-retail")
    assert (mqtt.host, mqtt.port, mqtt.username, mqtt.password) == ("broker", 1884, "user", "pw")
    assert mqtt.topic("freezer-01-1") == "fg/acme-retail/freezer-01-1/telemetry"


async def test_mqtt_driver_reports_an_unreachable_broker() -> None:
    driver = MqttDriver(f"mqtt://127.0.0.1:{free_port()}", "acme", timeout=2.0, retry_s=30.0)
    with pytest.raises(SendError, match="cannot connect to the MQTT broker"):
        await driver.start()
    started = asyncio.get_running_loop().time()
    with pytest.raises(SendError, match="unreachable"):  # no new attempt before retry_s
        await driver.send("fz-1", b"{}")
    assert asyncio.get_running_loop().time() - started < 1.0
    await driver.close()
