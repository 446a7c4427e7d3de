"""Health, readiness and metrics endpoints."""

from __future__ import annotations

import httpx

from server.app import create_app
from server.settings import Settings
from storage.database import Database
from tests.conftest import TenantFactory


async def test_healthz(client: httpx.AsyncClient) -> None:
    r = await client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


async def test_readyz_checks_the_database(client: httpx.AsyncClient) -> None:
    r = await client.get("/readyz")
    assert r.status_code == 200 and r.json()["checks"] == {"database": "ok"}
    assert r.json()["connectors"] == {}
    assert r.json()["ingest_queue"]["capacity"] > 0


async def test_readyz_fails_when_the_database_is_unreachable(settings: Settings) -> None:
    unreachable = Database("postgresql+asyncpg://nobody@127.0.0.1:1/none")
    app = create_app(settings, unreachable)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        r = await http.get("/readyz")
    await unreachable.dispose()
    assert r.status_code == 503
    assert r.json()["type"] == "urn:flatgigs:problem:not-ready"


async def test_metrics_count_requests_by_route_template(
    client: httpx.AsyncClient, tenants: TenantFactory
) -> None:
    t = await tenants.create()
    await client.get("/api/v1/devices/some-unknown-id", headers=t.headers)
    text = (await client.get("/metrics")).text
    assert 'route="/api/v1/devices/{device_id}",status="404"' in text
    assert "some-unknown-id" not in text
    assert "flatgigs_http_request_duration_seconds_bucket" in text
