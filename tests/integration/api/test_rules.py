"""Rules through the API: versions, conflicts, publish, diff, restore, validation errors with paths."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from engine.examples import freezer_rule
from tests.conftest import TenantFactory, TenantHandle


def olivia(value: float = -10) -> dict[str, Any]:
    return freezer_rule(value=value, channels=())


@pytest.fixture
async def tenant(client: httpx.AsyncClient, tenants: TenantFactory) -> TenantHandle:
    t = await tenants.create()
    metrics = [{"name": "temp"}, {"name": "door_open", "data_type": "boolean"}]
    r = await client.post(
        "/api/v1/device-types", json={"id": "freezer", "name": "F", "metrics": metrics}, headers=t.headers
    )
    assert r.status_code == 201
    return t


async def test_versions_publish_diff_restore(client: httpx.AsyncClient, tenant: TenantHandle) -> None:
    h = tenant.headers
    r = await client.post("/api/v1/rules", json={"document": olivia(), "comment": "first"}, headers=h)
    assert r.status_code == 201, r.text
    rule = r.json()
    assert rule["status"] == "draft" and rule["latest_version"] == 1 and rule["published_version"] is None
    rid = rule["id"]
    published = await client.post(f"/api/v1/rules/{rid}/publish", json={}, headers=h)
    assert published.status_code == 200 and published.json()["status"] == "published"
    saved = await client.put(
        f"/api/v1/rules/{rid}", json={"document": olivia(-8), "base_version": 1}, headers=h
    )
    assert saved.status_code == 200 and saved.json()["latest_version"] == 2
    stale = await client.put(
        f"/api/v1/rules/{rid}", json={"document": olivia(-7), "base_version": 1}, headers=h
    )
    assert stale.status_code == 409 and stale.json()["latest_version"] == 2  # no lost update
    diff = (await client.get(f"/api/v1/rules/{rid}/diff", headers=h)).json()
    assert diff["from_version"] == 1 and diff["to_version"] == 2
    assert diff["changes"] == [
        {"path": "if/0/condition/options/value", "op": "changed", "old": -10.0, "new": -8.0}
    ]
    versions = (await client.get(f"/api/v1/rules/{rid}/versions", headers=h)).json()
    assert [v["version"] for v in versions] == [2, 1] and versions[1]["comment"] == "first"
    restored = await client.post(f"/api/v1/rules/{rid}/restore", json={"version": 1}, headers=h)
    assert restored.status_code == 200 and restored.json()["latest_version"] == 3
    assert restored.json()["document"]["if"][0]["condition"]["options"]["value"] == -10
    v1 = (await client.get(f"/api/v1/rules/{rid}/versions/1", headers=h)).json()
    assert v1["document"]["if"][0]["condition"]["options"]["value"] == -10  # history untouched
    disabled = await client.post(f"/api/v1/rules/{rid}/disable", headers=h)
    assert disabled.json()["status"] == "disabled"
    listed = (await client.get("/api/v1/rules", params={"status": "disabled"}, headers=h)).json()
    assert [x["id"] for x in listed] == [rid]
    assert (await client.delete(f"/api/v1/rules/{rid}", headers=h)).status_code == 204
    assert (await client.get(f"/api/v1/rules/{rid}", headers=h)).status_code == 404


@pytest.mark.parametrize(
    ("change", "path", "field"),
    [
        ({"when": [{"type": "telemetry.recieved"}]}, "when/0", "type"),
        (
            {"if": [{"type": "expression", "options": {"expression": "tmp > -10"}}]},
            "if/0",
            "options.expression",
        ),
        ({"devices": {"type": "toaster"}}, "devices", "type"),
        ({"devices": {"ids": ["no-such-device"]}}, "devices", "ids.0"),
        ({"then": [{"type": "webhook", "options": {"url": "http://127.0.0.1/x"}}]}, "then/0", "options.url"),
    ],
)
async def test_bad_rules_answer_422_with_the_node_path(
    client: httpx.AsyncClient, tenant: TenantHandle, change: dict[str, Any], path: str, field: str
) -> None:
    document = {**olivia(), **change}
    for url in ("/api/v1/rules", "/api/v1/rules/validate"):
        r = await client.post(url, json={"document": document}, headers=tenant.headers)
        assert r.status_code == 422, r.text
        body = r.json()
        assert body["type"] == "urn:flatgigs:problem:invalid-rule"
        assert body["errors"][0]["path"] == path and body["errors"][0]["field"] == field
    assert (await client.get("/api/v1/rules", headers=tenant.headers)).json() == []


async def test_suggestion_for_a_misspelt_metric(client: httpx.AsyncClient, tenant: TenantHandle) -> None:
    document = {**olivia(), "if": [{"type": "expression", "options": {"expression": "tmep > -10"}}]}
    r = await client.post("/api/v1/rules/validate", json={"document": document}, headers=tenant.headers)
    assert r.json()["errors"][0]["suggestion"] == "temp"
    ok = await client.post("/api/v1/rules/validate", json={"document": olivia()}, headers=tenant.headers)
    assert ok.status_code == 200 and ok.json() == {"valid": True, "metrics": ["temp"]}


async def test_another_tenants_device_cannot_be_named(
    client: httpx.AsyncClient, tenants: TenantFactory, tenant: TenantHandle
) -> None:
    other = await tenants.create()
    await client.post("/api/v1/device-types", json={"id": "freezer", "name": "F"}, headers=other.headers)
    await client.post("/api/v1/devices", json={"id": "theirs", "type_id": "freezer"}, headers=other.headers)
    document = {**olivia(), "devices": {"ids": ["theirs"]}}
    r = await client.post("/api/v1/rules", json={"document": document}, headers=tenant.headers)
    assert r.status_code == 422 and "unknown device 'theirs'" in r.json()["detail"]


async def test_node_types_and_schema(client: httpx.AsyncClient, tenant: TenantHandle) -> None:
    nodes = (await client.get("/api/v1/rule-nodes", headers=tenant.headers)).json()
    threshold = next(n for n in nodes if n["key"] == "telemetry.threshold")
    assert threshold["kind"] == "condition" and "clear_at" in threshold["options_schema"]["properties"]
    schema = (await client.get("/api/v1/rules/schema", headers=tenant.headers)).json()
    assert {"when", "if", "then", "else"} <= set(schema["properties"])
