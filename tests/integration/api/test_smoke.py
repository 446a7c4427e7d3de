"""A first round trip through the API on both backends."""

from __future__ import annotations

import httpx

from tests.conftest import TenantFactory


async def test_device_round_trip(client: httpx.AsyncClient, tenants: TenantFactory) -> None:
    t = await tenants.create()
    r = await client.post(
        "/api/v1/device-types",
        json={"id": "freezer", "name": "Freezer", "metrics": [{"name": "temp", "unit": "°C"}]},
        headers=t.headers,
    )
    assert r.status_code == 201, r.text
    r = await client.post(
        "/api/v1/devices",
        json={"id": "f-1", "type_id": "freezer", "labels": {"region": "north"}},
        headers=t.headers,
    )
    assert r.status_code == 201, r.text
    r = await client.get("/api/v1/devices/f-1", headers=t.headers)
    assert r.status_code == 200
    assert r.json()["labels"] == {"region": "north"}
