"""The rule engine in a running service: MQTT readings in, alarm raised and cleared, traces that explain."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from fastapi import FastAPI

from devices.catalogue import RegistryCatalogue
from engine.alarms import AlarmService
from engine.runner import RuleEngine
from model.readings import Reading, Source
from server.app import create_app
from server.settings import load_settings
from storage.database import Database
from tests.conftest import TenantFactory, TenantHandle
from tests.harness.mosquitto import MosquittoServer
from tests.harness.receivers import HttpReceiver, SmtpReceiver

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=50)


def rule_document(value: float = -10, **extra: Any) -> dict[str, Any]:
    return {
        **extra,
        "name": "Freezer too warm",
        "devices": {"type": "freezer", "labels": {"region": "north"}},
        "when": [{"type": "telemetry.received", "options": {"metrics": ["temp"]}}],
        "if": [
            {
                "type": "duration",
                "options": {"seconds": 300, "clear_seconds": 120},
                "condition": {
                    "type": "telemetry.threshold",
                    "options": {"metric": "temp", "value": value, "clear_at": -12},
                },
            }
        ],
        "then": [
            {"type": "alarm.raise", "options": {"alarm_type": "freezer-warm", "severity": "major"}},
            {
                "type": "notify",
                "options": {
                    "channels": ["night-shift", "regional"],
                    "title": "{{ device.id }} too warm",
                    "body": "{{ device.id }} reads {{ values.temp }} °C; alarm {{ alarm.severity }}",
                },
            },
        ],
        "else": [{"type": "alarm.clear", "options": {"alarm_type": "freezer-warm"}}],
    }


@dataclass
class Receivers:
    """The night shift reads email; the regional team gets a JSON webhook (real servers)."""

    smtp: SmtpReceiver
    http: HttpReceiver

    @property
    def channels(self) -> dict[str, str]:
        return {
            "night-shift": self.smtp.url("night-shift@store-12.example.com"),
            "regional": self.http.url("/regional", headers={"X-Team": "north"}),
        }


@pytest.fixture
def receivers() -> Iterator[Receivers]:
    with SmtpReceiver() as smtp, HttpReceiver() as http:
        yield Receivers(smtp, http)


async def _setup(
    http: httpx.AsyncClient,
    tenants: TenantFactory,
    value: float = -10,
    channels: dict[str, str] | None = None,
    **extra: Any,
) -> tuple[TenantHandle, str]:
    t = await tenants.create()
    h = t.headers
    await http.post(
        "/api/v1/device-types", json={"id": "freezer", "name": "F", "metrics": [{"name": "temp"}]}, headers=h
    )
    r = await http.post(
        "/api/v1/devices", json={"id": "fz-1", "type_id": "freezer", "labels": {"region": "north"}}, headers=h
    )
    assert r.status_code == 201
    for name, url in (
        channels or {"night-shift": "json://hooks.example.com/a", "regional": "json://hooks.example.com/b"}
    ).items():
        r = await http.post("/api/v1/notifications/channels", json={"name": name, "urls": [url]}, headers=h)
        assert r.status_code == 201, r.text
    rule = (
        await http.post("/api/v1/rules", json={"document": rule_document(value, **extra)}, headers=h)
    ).json()
    assert (await http.post(f"/api/v1/rules/{rule['id']}/publish", json={}, headers=h)).status_code == 200
    return t, rule["id"]


@pytest.fixture
async def app(
    tmp_path: Path, database: Database, mosquitto_server: MosquittoServer
) -> AsyncIterator[FastAPI]:
    settings = load_settings(
        data_dir=tmp_path,
        mqtt_url=f"mqtt://127.0.0.1:{mosquitto_server.port}",
        mqtt_client_id=f"engine-{secrets.token_hex(4)}",
        allow_private_webhooks=True,
    )
    application = create_app(settings, database)
    async with application.router.lifespan_context(application):
        connector = application.state.runtime.supervisor.connectors[0]
        async with asyncio.timeout(15):
            while not connector.details().get("subscribed"):
                await asyncio.sleep(0.02)
        yield application


def publish(port: int, tenant: str, samples: list[tuple[datetime, float]]) -> None:
    client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    payload = [{"ts": ts.isoformat(), "values": {"temp": v}} for ts, v in samples]
    client.publish(f"fg/{tenant}/fz-1/telemetry", json.dumps(payload), qos=1).wait_for_publish(10)
    client.loop_stop()
    client.disconnect()


async def _alarms(http: httpx.AsyncClient, t: TenantHandle) -> list[dict[str, Any]]:
    r = await http.get("/api/v1/alarms", headers=t.headers)
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


async def _traces(http: httpx.AsyncClient, t: TenantHandle, rule_id: str, outcome: str) -> list[Any]:
    """The rule's traces with this outcome, once there is at least one (they are written behind)."""
    found: list[Any] = []

    async def written() -> bool:
        r = await http.get(f"/api/v1/rules/{rule_id}/traces", params={"outcome": outcome}, headers=t.headers)
        assert r.status_code == 200, r.text
        found[:] = r.json()
        return bool(found)

    await _wait(written)
    return found


async def _wait(predicate: Any, limit: float = 20) -> None:
    async with asyncio.timeout(limit):
        while not await predicate():
            await asyncio.sleep(0.05)


async def test_rule_fires_raises_clears_and_explains(
    app: FastAPI, tenants: TenantFactory, mosquitto_server: MosquittoServer, receivers: Receivers
) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        t, rule_id = await _setup(http, tenants, channels=receivers.channels)
        warm = [(T0 + timedelta(seconds=10 * i), -5.0) for i in range(40)]  # 400 s above -10
        await asyncio.to_thread(publish, mosquitto_server.port, t.id, warm)

        async def raised() -> bool:
            return any(a["alarm_type"] == "freezer-warm" for a in await _alarms(http, t))

        await _wait(raised)
        [alarm] = await _alarms(http, t)
        assert alarm["device_id"] == "fz-1" and alarm["severity"] == "major" and alarm["rule_id"] == rule_id
        # Traces are written behind (ADR 0023): the alarm, written by the action, can be seen first.
        fired = await _traces(http, t, rule_id, "fired")
        assert len(fired) == 1
        trace = fired[0]
        assert trace["at"].startswith((T0 + timedelta(seconds=300)).isoformat()[:19])
        steps = {s["path"]: s for s in trace["steps"]}
        # The threshold has been crossed for five minutes: it now watches its clear level.
        assert steps["if/0/0"]["detail"] == "temp -5 < -12 (clear level) is false"
        assert steps["if/0/0"]["result"] is True
        assert steps["if/0"]["detail"] == "true for 300s of 300s"
        actions = {a["node"]: a["status"] for a in trace["actions"]}
        assert actions == {"alarm.raise": "done", "notify": "done"}

        # The notification reaches both channels, rendered with the reading's value.
        [mail] = await receivers.smtp.wait_for(1)
        assert list(mail.rcpt_tos) == ["night-shift@store-12.example.com"]
        assert mail.subject == "fz-1 too warm"
        assert "fz-1 reads -5.0 °C; alarm major" in mail.text
        [hook] = await receivers.http.wait_for(1, path="/regional")
        assert hook.headers["X-Team"] == "north"
        assert hook.json()["title"] == "fz-1 too warm"
        assert "fz-1 reads -5.0 °C; alarm major" in hook.json()["message"]

        cold = [(T0 + timedelta(seconds=400 + 10 * i), -14.0) for i in range(20)]
        await asyncio.to_thread(publish, mosquitto_server.port, t.id, cold)

        async def cleared() -> bool:
            return all(a["state"].startswith("cleared") for a in await _alarms(http, t))

        await _wait(cleared)
        cleared_traces = await _traces(http, t, rule_id, "cleared")
        assert len(cleared_traces) == 1
        assert cleared_traces[0]["at"].startswith((T0 + timedelta(seconds=520)).isoformat()[:19])


async def test_just_under_the_threshold_the_trace_says_why_not(
    app: FastAPI, tenants: TenantFactory, mosquitto_server: MosquittoServer
) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        t, rule_id = await _setup(http, tenants)
        samples = [(T0 + timedelta(seconds=10 * i), -10.2) for i in range(40)]
        await asyncio.to_thread(publish, mosquitto_server.port, t.id, samples)

        engine = app.state.runtime.engine

        async def evaluated() -> bool:
            return engine.core.evaluations + engine.core.skipped >= 40

        await _wait(evaluated)
        # The first reading is evaluated; the 39 others could not change anything (a guard).
        assert (engine.core.evaluations, engine.core.skipped) == (1, 39)
        await engine.flush()
        traces = (
            await http.get(f"/api/v1/rules/{rule_id}/traces", params={"limit": 500}, headers=t.headers)
        ).json()
        # One trace: the outcome never changed (trace mode "changes"), and it says why.
        assert [tr["outcome"] for tr in traces] == ["false"]
        step = next(s for s in traces[0]["steps"] if s["path"] == "if/0/0")
        assert step["detail"] == "temp -10.2 > -10 is false" and step["result"] is False
        assert await _alarms(http, t) == []


async def test_trace_mode_all_keeps_every_evaluation(
    app: FastAPI, tenants: TenantFactory, mosquitto_server: MosquittoServer
) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        t, rule_id = await _setup(http, tenants, trace="all")
        samples = [(T0 + timedelta(seconds=10 * i), -10.2) for i in range(40)]
        await asyncio.to_thread(publish, mosquitto_server.port, t.id, samples)

        async def evaluated() -> bool:
            r = await http.get(f"/api/v1/rules/{rule_id}/traces", params={"limit": 500}, headers=t.headers)
            return len(r.json()) == 40

        await _wait(evaluated)


async def test_restart_resumes_a_pending_duration_and_fires_exactly_once(
    database: Database, tenants: TenantFactory, tmp_path: Path
) -> None:
    application = create_app(load_settings(data_dir=tmp_path), database)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://t") as http:
        t, _rule_id = await _setup(http, tenants)
    await application.state.runtime.telemetry.close()
    source = Source("test", "restart")

    def engine() -> RuleEngine:
        return RuleEngine(database, RegistryCatalogue(database), alarms=AlarmService(database))

    before = engine()
    await before.load()
    for i in range(12):  # 110 s of "for 5 minutes", then the process dies
        await before.on_reading(Reading(t.id, "fz-1", T0 + timedelta(seconds=10 * i), {"temp": -5.0}, source))
    del before

    after = engine()  # a new process: rules and timers come back from the database
    await after.load()
    assert await after.fire_due_timers(T0 + timedelta(seconds=299)) == []
    due = await after.fire_due_timers(T0 + timedelta(seconds=300))
    assert [d.fired for d in due] == [True] and due[0].at == T0 + timedelta(seconds=300)
    later = [
        await after.on_reading(
            Reading(t.id, "fz-1", T0 + timedelta(seconds=300 + 10 * i), {"temp": -5.0}, source)
        )
        for i in range(1, 10)
    ]
    assert not any(d.fired for decisions in later for d in decisions)
    alarms = await AlarmService(database).list(t.id)
    assert len(alarms.items if hasattr(alarms, "items") else alarms) == 1


async def test_one_timer_per_device_however_many_readings(
    database: Database, tenants: TenantFactory, tmp_path: Path
) -> None:
    application = create_app(load_settings(data_dir=tmp_path), database)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://t") as http:
        t, _rule_id = await _setup(http, tenants)
    await application.state.runtime.telemetry.close()
    engine = RuleEngine(database, RegistryCatalogue(database), alarms=AlarmService(database))
    await engine.load()
    source = Source("test", "timers")
    for i in range(12):
        await engine.on_reading(Reading(t.id, "fz-1", T0 + timedelta(seconds=10 * i), {"temp": -5.0}, source))
    due = await engine.fire_due_timers(T0 + timedelta(seconds=300))
    assert len(due) == 1 and due[0].fired


async def test_values_from_readings_that_trigger_nothing_are_still_remembered(
    database: Database, tenants: TenantFactory, tmp_path: Path
) -> None:
    application = create_app(load_settings(data_dir=tmp_path), database)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://t") as http:
        t = await tenants.create()
        h = t.headers
        metrics = [{"name": "temp"}, {"name": "door_open", "data_type": "boolean"}]
        await http.post(
            "/api/v1/device-types", json={"id": "freezer", "name": "F", "metrics": metrics}, headers=h
        )
        await http.post("/api/v1/devices", json={"id": "fz-1", "type_id": "freezer"}, headers=h)
        document = {
            "name": "warm with the door closed",
            "when": [{"type": "telemetry.received", "options": {"metrics": ["temp"]}}],
            "if": [{"type": "expression", "options": {"expression": "temp > -10 and not door_open"}}],
            "then": [{"type": "alarm.raise", "options": {"alarm_type": "warm"}}],
        }
        rule = (await http.post("/api/v1/rules", json={"document": document}, headers=h)).json()
        await http.post(f"/api/v1/rules/{rule['id']}/publish", json={}, headers=h)
    await application.state.runtime.telemetry.close()
    engine = RuleEngine(database, RegistryCatalogue(database), alarms=AlarmService(database))
    await engine.load()
    source = Source("test", "values")
    # door_open alone triggers no rule, but the rule triggered by temp must see it.
    assert await engine.on_reading(Reading(t.id, "fz-1", T0, {"door_open": False}, source)) == []
    [decision] = await engine.on_reading(
        Reading(t.id, "fz-1", T0 + timedelta(seconds=1), {"temp": -5.0}, source)
    )
    assert decision.result is True and decision.fired
