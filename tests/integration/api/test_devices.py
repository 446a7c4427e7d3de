"""The device registry through the API: filters, keyset pages, changes, deletion."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.conftest import TenantFactory, TenantHandle


@pytest.fixture
async def fleet(client: httpx.AsyncClient, tenants: TenantFactory) -> TenantHandle:
    """A tenant with 3 stores of 4 freezers and one meter each."""
    t = await tenants.create()
    for type_id in ("freezer", "meter"):
        r = await client.post(
            "/api/v1/device-types", json={"id": type_id, "name": type_id}, headers=t.headers
        )
        assert r.status_code == 201
    for store in (1, 2, 3):
        labels = {"store": f"s{store}", "region": "north" if store < 3 else "south"}
        for n in range(4):
            r = await client.post(
                "/api/v1/devices",
                json={
                    "id": f"fz-{store}-{n}",
                    "type_id": "freezer",
                    "labels": labels,
                    "name": f"Freezer {n}",
                },
                headers=t.headers,
            )
            assert r.status_code == 201, r.text
        await client.post(
            "/api/v1/devices",
            json={"id": f"m-{store}", "type_id": "meter", "labels": labels},
            headers=t.headers,
        )
    return t


async def _ids(client: httpx.AsyncClient, t: TenantHandle, **params: object) -> list[str]:
    ids: list[str] = []
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        r = await client.get("/api/v1/devices", params=query, headers=t.headers)
        assert r.status_code == 200, r.text
        page = r.json()
        ids += [d["id"] for d in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return ids


async def test_keyset_pages_cover_everything_once(client: httpx.AsyncClient, fleet: TenantHandle) -> None:
    ids = await _ids(client, fleet, limit=5)
    assert len(ids) == 15
    assert ids == sorted(set(ids))


async def test_filters(client: httpx.AsyncClient, fleet: TenantHandle) -> None:
    assert await _ids(client, fleet, type="meter") == ["m-1", "m-2", "m-3"]
    assert len(await _ids(client, fleet, label="region=north", limit=3)) == 10
    assert await _ids(client, fleet, label=["region=north", "store=s2"], type="meter") == ["m-2"]
    assert await _ids(client, fleet, label="store=s3", limit=2) == [f"fz-3-{n}" for n in range(4)] + ["m-3"]
    assert await _ids(client, fleet, q="FZ-2") == [f"fz-2-{n}" for n in range(4)]
    assert await _ids(client, fleet, q="freezer 3") == [f"fz-{s}-3" for s in (1, 2, 3)]
    assert await _ids(client, fleet, q="100%_") == []
    assert len(await _ids(client, fleet, status="unknown")) == 15
    assert await _ids(client, fleet, status="online") == []


async def test_patch_replaces_labels_and_the_index_follows(
    client: httpx.AsyncClient, fleet: TenantHandle
) -> None:
    r = await client.patch(
        "/api/v1/devices/fz-1-0",
        json={"labels": {"store": "s9"}, "attributes": {"model": "X200", "capacity_l": 400}},
        headers=fleet.headers,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["labels"] == {"store": "s9"}
    assert body["attributes"] == {"model": "X200", "capacity_l": 400}
    assert body["updated_at"] >= body["created_at"]
    assert await _ids(client, fleet, label="store=s9") == ["fz-1-0"]
    assert "fz-1-0" not in await _ids(client, fleet, label="region=north")


async def test_change_type_must_exist(client: httpx.AsyncClient, fleet: TenantHandle) -> None:
    r = await client.patch("/api/v1/devices/m-1", json={"type_id": "toaster"}, headers=fleet.headers)
    assert r.status_code == 422
    r = await client.patch("/api/v1/devices/m-1", json={"type_id": "freezer"}, headers=fleet.headers)
    assert r.status_code == 200 and r.json()["type_id"] == "freezer"


async def test_delete_device_and_type(client: httpx.AsyncClient, fleet: TenantHandle) -> None:
    r = await client.delete("/api/v1/device-types/meter", headers=fleet.headers)
    assert r.status_code == 409  # still used
    for store in (1, 2, 3):
        r = await client.delete(f"/api/v1/devices/m-{store}", headers=fleet.headers)
        assert r.status_code == 204
    assert (await client.get("/api/v1/devices/m-1", headers=fleet.headers)).status_code == 404
    assert (await client.delete("/api/v1/devices/m-1", headers=fleet.headers)).status_code == 404
    assert (await client.delete("/api/v1/device-types/meter", headers=fleet.headers)).status_code == 204
    assert await _ids(client, fleet, label="store=s1") == [f"fz-1-{n}" for n in range(4)]


async def test_device_type_catalogue(client: httpx.AsyncClient, fleet: TenantHandle) -> None:
    metrics = [
        {"name": "temp", "data_type": "number", "unit": "°C", "min": -40, "max": 20},
        {"name": "door_open", "data_type": "boolean"},
    ]
    r = await client.patch(
        "/api/v1/device-types/freezer",
        json={"metrics": metrics, "inactivity_timeout_s": 300},
        headers=fleet.headers,
    )
    assert r.status_code == 200, r.text
    r = await client.get("/api/v1/device-types/freezer", headers=fleet.headers)
    body = r.json()
    assert [m["name"] for m in body["metrics"]] == ["temp", "door_open"]
    assert body["metrics"][0]["unit"] == "°C" and body["inactivity_timeout_s"] == 300
    listed = (await client.get("/api/v1/device-types", headers=fleet.headers)).json()
    assert [t["id"] for t in listed] == ["freezer", "meter"]


async def test_concurrent_writes_all_succeed(client: httpx.AsyncClient, tenants: TenantFactory) -> None:
    # SQLite has one writer: concurrent transactions must queue, not fail with "database is locked".
    t = await tenants.create()
    await client.post("/api/v1/device-types", json={"id": "fz", "name": "F"}, headers=t.headers)

    async def create(n: int) -> int:
        r = await client.post(
            "/api/v1/devices", json={"id": f"c-{n:03d}", "type_id": "fz"}, headers=t.headers
        )
        if r.status_code == 201:
            r = await client.post(f"/api/v1/devices/c-{n:03d}/credentials", headers=t.headers)
        return r.status_code

    statuses = await asyncio.gather(*(create(n) for n in range(40)))
    assert statuses == [201] * 40
