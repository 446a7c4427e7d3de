"""Bad input gets a clear problem+json error and changes nothing else."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from tests.conftest import TenantFactory, TenantHandle

PROBLEM = "application/problem+json"


@pytest.fixture
async def tenant(client: httpx.AsyncClient, tenants: TenantFactory) -> TenantHandle:
    t = await tenants.create()
    r = await client.post(
        "/api/v1/device-types", json={"id": "freezer", "name": "Freezer"}, headers=t.headers
    )
    assert r.status_code == 201
    r = await client.post("/api/v1/devices", json={"id": "f-1", "type_id": "freezer"}, headers=t.headers)
    assert r.status_code == 201
    return t


def _problem(r: httpx.Response, status: int, slug: str) -> dict[str, object]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    body: dict[str, object] = r.json()
    assert body["type"] == f"urn:flatgigs:problem:{slug}"
    assert body["status"] == status
    assert body["title"] and body["detail"]
    return body


async def _still_one_device(client: httpx.AsyncClient, t: TenantHandle) -> None:
    r = await client.get("/api/v1/devices", headers=t.headers)
    assert r.status_code == 200
    assert [d["id"] for d in r.json()["items"]] == ["f-1"]


async def test_oversized_body_declared(client: httpx.AsyncClient, tenant: TenantHandle) -> None:
    big = {"id": "f-2", "type_id": "freezer", "attributes": {"blob": "x" * (70 * 1024)}}
    r = await client.post("/api/v1/devices", json=big, headers=tenant.headers)
    body = _problem(r, 413, "payload-too-large")
    assert body["limit"] == 64 * 1024 or "limit" in str(body["detail"])
    await _still_one_device(client, tenant)


async def test_oversized_body_streamed_without_length(
    client: httpx.AsyncClient, tenant: TenantHandle
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"id": "f-3", "type_id": "freezer", "name": "'
        for _ in range(80):
            yield b"y" * 1024
        yield b'"}'

    r = await client.post(
        "/api/v1/devices",
        content=chunks(),
        headers={**tenant.headers, "content-type": "application/json"},
    )
    _problem(r, 413, "payload-too-large")
    await _still_one_device(client, tenant)


async def test_unknown_field(client: httpx.AsyncClient, tenant: TenantHandle) -> None:
    r = await client.post(
        "/api/v1/devices",
        json={"id": "f-2", "type_id": "freezer", "colour": "blue"},
        headers=tenant.headers,
    )
    body = _problem(r, 422, "invalid-input")
    assert body["errors"] == [
        {"loc": ["colour"], "msg": "unknown field (not accepted here)", "type": "extra_forbidden"}
    ]
    await _still_one_device(client, tenant)


async def test_tenant_id_in_body_is_refused_not_applied(
    client: httpx.AsyncClient, tenants: TenantFactory, tenant: TenantHandle
) -> None:
    other = await tenants.create()
    await client.post("/api/v1/device-types", json={"id": "freezer", "name": "F"}, headers=other.headers)
    r = await client.post(
        "/api/v1/devices",
        json={"id": "f-9", "type_id": "freezer", "tenant_id": other.id},
        headers=tenant.headers,
    )
    body = _problem(r, 422, "invalid-input")
    assert ["tenant_id"] in [e["loc"] for e in body["errors"]]  # type: ignore[union-attr]
    r = await client.get("/api/v1/devices/f-9", headers=other.headers)
    assert r.status_code == 404
    await _still_one_device(client, tenant)


@pytest.mark.parametrize("raw", [b'{"id": ', b"not json", b'{"id": "a",}', b"\xff\xfe"])
async def test_malformed_json(client: httpx.AsyncClient, tenant: TenantHandle, raw: bytes) -> None:
    r = await client.post(
        "/api/v1/devices",
        content=raw,
        headers={**tenant.headers, "content-type": "application/json"},
    )
    assert r.status_code in (400, 422), r.text
    _problem(r, r.status_code, "malformed-json" if r.status_code == 400 else "invalid-input")
    await _still_one_device(client, tenant)


@pytest.mark.parametrize("cursor", ["zzz", "eyJ2IjogOX0", "%00", "a" * 400])
async def test_invalid_cursor(client: httpx.AsyncClient, tenant: TenantHandle, cursor: str) -> None:
    r = await client.get("/api/v1/devices", params={"cursor": cursor}, headers=tenant.headers)
    _problem(r, 400, "invalid-cursor")


async def test_invalid_label_filter(client: httpx.AsyncClient, tenant: TenantHandle) -> None:
    r = await client.get("/api/v1/devices", params={"label": "region"}, headers=tenant.headers)
    _problem(r, 400, "malformed-request")


async def test_duplicate_device_id(client: httpx.AsyncClient, tenant: TenantHandle) -> None:
    r = await client.post(
        "/api/v1/devices", json={"id": "f-1", "type_id": "freezer", "name": "again"}, headers=tenant.headers
    )
    _problem(r, 409, "conflict")
    r = await client.get("/api/v1/devices/f-1", headers=tenant.headers)
    assert r.json()["name"] == "f-1"  # the original is untouched


async def test_unknown_device_type(client: httpx.AsyncClient, tenant: TenantHandle) -> None:
    r = await client.post("/api/v1/devices", json={"id": "f-2", "type_id": "toaster"}, headers=tenant.headers)
    body = _problem(r, 422, "invalid-input")
    assert "toaster" in str(body["detail"])
    await _still_one_device(client, tenant)


@pytest.mark.parametrize(
    "device_id", ["has space", "a/b", "+", "#", "", "x" * 129, "-leading-dash", "ctrl\nchar"]
)
async def test_invalid_device_ids(client: httpx.AsyncClient, tenant: TenantHandle, device_id: str) -> None:
    r = await client.post(
        "/api/v1/devices", json={"id": device_id, "type_id": "freezer"}, headers=tenant.headers
    )
    _problem(r, 422, "invalid-input")


async def test_unknown_route_and_method(client: httpx.AsyncClient, tenant: TenantHandle) -> None:
    _problem(await client.get("/api/v1/nothing-here", headers=tenant.headers), 404, "not-found")
    _problem(await client.put("/api/v1/devices", headers=tenant.headers), 405, "method-not-allowed")


async def test_bad_metric_catalogue(client: httpx.AsyncClient, tenant: TenantHandle) -> None:
    r = await client.post(
        "/api/v1/device-types",
        json={
            "id": "meter",
            "name": "Meter",
            "metrics": [{"name": "v", "min": 10, "max": 1}, {"name": "bad name"}],
        },
        headers=tenant.headers,
    )
    body = _problem(r, 422, "invalid-input")
    assert len(body["errors"]) == 2  # type: ignore[arg-type]
    r = await client.post(
        "/api/v1/device-types",
        json={"id": "meter", "name": "Meter", "metrics": [{"name": "v"}, {"name": "v"}]},
        headers=tenant.headers,
    )
    _problem(r, 422, "invalid-input")
