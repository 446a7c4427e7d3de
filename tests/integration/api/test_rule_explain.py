"""Explaining a rule for a device now: the conditions against the latest stored values, no side effect."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
from fastapi import FastAPI

from api.context import ApiContext
from model.readings import Reading, Source
from storage.types import utcnow
from tests.conftest import TenantFactory, TenantHandle

SOURCE = Source("test", "explain")


def threshold_rule(level: float) -> dict[str, Any]:
    return {
        "name": f"above {level}",
        "devices": {"type": "freezer", "labels": {"region": "north"}},
        "when": [{"type": "telemetry.received", "options": {"metrics": ["temp"]}}],
        "if": [
            {"type": "telemetry.threshold", "options": {"metric": "temp", "value": level}},
            {"type": "expression", "options": {"expression": "not door_open"}},
        ],
        "then": [{"type": "alarm.raise", "options": {"alarm_type": "warm"}}],
    }


async def _fleet(client: httpx.AsyncClient, t: TenantHandle) -> None:
    metrics = [{"name": "temp"}, {"name": "door_open", "data_type": "boolean"}]
    r = await client.post(
        "/api/v1/device-types", json={"id": "freezer", "name": "F", "metrics": metrics}, headers=t.headers
    )
    assert r.status_code == 201, r.text
    for device_id, region in (("fz-n", "north"), ("fz-s", "south")):
        body = {"id": device_id, "type_id": "freezer", "labels": {"region": region}}
        assert (await client.post("/api/v1/devices", json=body, headers=t.headers)).status_code == 201


async def _rule(client: httpx.AsyncClient, t: TenantHandle, level: float) -> str:
    r = await client.post("/api/v1/rules", json={"document": threshold_rule(level)}, headers=t.headers)
    assert r.status_code == 201, r.text
    rule_id = str(r.json()["id"])
    assert (
        await client.post(f"/api/v1/rules/{rule_id}/publish", json={}, headers=t.headers)
    ).status_code == 200
    return rule_id


async def test_explain_says_which_condition_holds_a_rule_back(
    app: FastAPI, client: httpx.AsyncClient, tenants: TenantFactory
) -> None:
    t = await tenants.create()
    await _fleet(client, t)
    rule_id = await _rule(client, t, -10)
    context: ApiContext = app.state.api_context
    now = utcnow()
    await context.require_telemetry().write(
        [Reading(t.id, "fz-n", now - timedelta(seconds=5), {"temp": -9.5, "door_open": True}, SOURCE)]
    )
    r = await client.get(f"/api/v1/rules/{rule_id}/explain/fz-n", headers=t.headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["selected"] is True and body["result"] is False and body["active"] is False
    assert body["values"] == {"temp": -9.5, "door_open": True}
    steps = {s["path"]: s for s in body["steps"]}
    assert steps["if/0"]["result"] is True and steps["if/0"]["detail"] == "temp -9.5 > -10 is true"
    assert steps["if/1"]["result"] is False and steps["if/1"]["inputs"] == {"door_open": True}
    # Nothing was written: no state, no trace, no alarm.
    traces = await client.get(f"/api/v1/rules/{rule_id}/traces", headers=t.headers)
    assert traces.json() == []
    assert (await client.get("/api/v1/alarms", headers=t.headers)).json()["items"] == []


async def test_explain_without_values_or_outside_the_selector(
    client: httpx.AsyncClient, tenants: TenantFactory
) -> None:
    t = await tenants.create()
    await _fleet(client, t)
    rule_id = await _rule(client, t, -10)
    r = await client.get(f"/api/v1/rules/{rule_id}/explain/fz-n", headers=t.headers)
    assert r.status_code == 200 and r.json()["result"] is None
    assert "no stored values" in r.json()["summary"]
    r = await client.get(f"/api/v1/rules/{rule_id}/explain/fz-s", headers=t.headers)
    assert r.status_code == 200 and r.json()["selected"] is False and r.json()["steps"] == []


async def test_explain_answers_404_for_another_tenants_rule_or_device(
    client: httpx.AsyncClient, tenants: TenantFactory
) -> None:
    mine, theirs = await tenants.create(), await tenants.create()
    await _fleet(client, mine)
    await _fleet(client, theirs)
    my_rule, their_rule = await _rule(client, mine, -10), await _rule(client, theirs, -10)
    r = await client.get(f"/api/v1/rules/{their_rule}/explain/fz-n", headers=mine.headers)
    assert r.status_code == 404
    # A device id that exists only in the other tenant.
    r = await client.post(
        "/api/v1/devices", json={"id": "theirs-only", "type_id": "freezer"}, headers=theirs.headers
    )
    assert r.status_code == 201
    r = await client.get(f"/api/v1/rules/{my_rule}/explain/theirs-only", headers=mine.headers)
    assert r.status_code == 404
