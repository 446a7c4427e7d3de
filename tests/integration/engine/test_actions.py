"""Rule actions carried out for real: webhooks to a live receiver, MQTT through Mosquitto, derived
metrics back into the engine, run modes, schedules, alarm-triggered rules and written-behind state.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest

from devices.catalogue import RegistryCatalogue
from engine.alarms import AlarmService
from engine.executors import ActionExecutor, topic_problem
from engine.runner import RuleEngine
from engine.store import RuleStateRepository, TraceRepository
from model.readings import Reading, Source
from pipeline.bus import ReadingBus
from server.app import create_app
from server.settings import load_settings
from storage.database import Database
from tests.conftest import TenantFactory, TenantHandle
from tests.harness.mosquitto import MosquittoServer
from tests.harness.receivers import HttpReceiver

T0 = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)
SOURCE = Source("test", "actions")


@pytest.fixture
def receiver() -> Iterator[HttpReceiver]:
    with HttpReceiver() as r:
        yield r


def bodies(receiver: HttpReceiver) -> list[Any]:
    return [hit.json() for hit in receiver.ok_hits("/hook")]


async def _wait(predicate: Any, limit: float = 15) -> None:
    async with asyncio.timeout(limit):
        while not predicate():
            await asyncio.sleep(0.02)


@pytest.fixture
async def setup(database: Database, tenants: TenantFactory, tmp_path: Path) -> AsyncIterator[Any]:
    """A tenant with a freezer type and device, and a function that publishes a rule through the API."""
    application = create_app(load_settings(data_dir=tmp_path, allow_private_webhooks=True), database)
    t = await tenants.create()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://t") as http:
        h = t.headers
        metrics = [{"name": "temp"}, {"name": "door_open", "data_type": "boolean"}]
        r = await http.post(
            "/api/v1/device-types", json={"id": "freezer", "name": "F", "metrics": metrics}, headers=h
        )
        assert r.status_code == 201, r.text
        for device in ("fz-1", "fz-2"):
            r = await http.post("/api/v1/devices", json={"id": device, "type_id": "freezer"}, headers=h)
            assert r.status_code == 201, r.text

        async def publish(document: dict[str, Any]) -> str:
            document.setdefault("name", "test rule")
            document.setdefault("devices", {"type": "freezer"})
            r = await http.post("/api/v1/rules", json={"document": document}, headers=h)
            assert r.status_code == 201, r.text
            rule_id: str = r.json()["id"]
            r = await http.post(f"/api/v1/rules/{rule_id}/publish", json={}, headers=h)
            assert r.status_code == 200, r.text
            return rule_id

        yield t, publish, http
    await application.state.runtime.telemetry.close()


def _engine(database: Database, **ports: Any) -> RuleEngine:
    executor = ActionExecutor(
        alarms=AlarmService(database), allow_private_webhooks=True, backoff_s=0.01, **ports
    )
    return RuleEngine(database, RegistryCatalogue(database), executor=executor, allow_private_webhooks=True)


def _warm_rule(then: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "when": [{"type": "telemetry.received", "options": {"metrics": ["temp"]}}],
        "if": [{"type": "telemetry.threshold", "options": {"metric": "temp", "value": -10, "clear_at": -12}}],
        "then": then,
        **extra,
    }


async def _traces(database: Database, t: TenantHandle, rule_id: str) -> list[dict[str, Any]]:
    async with database.tenant(t.id) as scope:
        return await TraceRepository(scope).list(rule_id, limit=500)


async def test_webhook_posts_the_rendered_body_and_retries(
    database: Database, setup: Any, receiver: HttpReceiver
) -> None:
    t, publish, _http = setup
    body = '{"device": "{{ device.id }}", "temp": {{ values.temp }}, "rule": "{{ rule.name }}"}'
    rule_id = await publish(
        _warm_rule([{"type": "webhook", "options": {"url": receiver.url(scheme="http"), "body": body}}])
    )
    engine = _engine(database)
    await engine.load()
    receiver.behaviour.fail_next = 2  # two 500s, then success: three attempts
    [decision] = await engine.on_reading(Reading(t.id, "fz-1", T0, {"temp": -3.5}, SOURCE))
    assert decision.fired
    await engine.drain()
    await engine.executor.close()  # its HTTP client keeps connections alive
    assert bodies(receiver) == [{"device": "fz-1", "temp": -3.5, "rule": "test rule"}]
    assert receiver.ok_hits()[0].headers["X-Flatgigs-Rule"] == rule_id
    [trace] = await _traces(database, t, rule_id)
    [action] = trace["actions"]
    assert action["status"] == "done" and "after 3 attempt(s)" in action["detail"]


async def test_a_webhook_that_always_fails_is_traced_as_failed_and_others_keep_running(
    database: Database, setup: Any, receiver: HttpReceiver
) -> None:
    t, publish, _http = setup
    dead = "http://127.0.0.1:9/nothing-listens-here"
    rule_id = await publish(
        _warm_rule(
            [
                {"type": "webhook", "options": {"url": dead, "retries": 1, "timeout_s": 2}},
                {"type": "webhook", "options": {"url": receiver.url(scheme="http")}},
            ]
        )
    )
    engine = _engine(database)
    await engine.load()
    await engine.on_reading(Reading(t.id, "fz-1", T0, {"temp": -3.5}, SOURCE))
    await engine.drain()
    await engine.executor.close()  # its HTTP client keeps connections alive
    [trace] = await _traces(database, t, rule_id)
    statuses = [a["status"] for a in trace["actions"]]
    assert statuses == ["failed", "done"] and "2 attempt(s)" in trace["actions"][0]["detail"]
    assert bodies(receiver) == [{}]


async def test_webhook_to_a_name_resolving_to_a_private_address_is_refused_when_not_allowed(
    database: Database, setup: Any, receiver: HttpReceiver
) -> None:
    t, publish, _http = setup
    rule_id = await publish(
        _warm_rule([{"type": "webhook", "options": {"url": "http://hooks.example.com/x"}}])
    )

    async def resolver(host: str) -> list[str]:
        return ["10.1.2.3"]

    executor = ActionExecutor(alarms=AlarmService(database), resolver=resolver)
    engine = RuleEngine(database, RegistryCatalogue(database), executor=executor)
    await engine.load()
    await engine.on_reading(Reading(t.id, "fz-1", T0, {"temp": -3.5}, SOURCE))
    await engine.drain()
    [trace] = await _traces(database, t, rule_id)
    [action] = trace["actions"]
    assert action["status"] == "failed" and "private address 10.1.2.3" in action["detail"]


async def test_mqtt_publish_reaches_the_broker_inside_the_tenant_namespace(
    database: Database, setup: Any, mosquitto_server: MosquittoServer
) -> None:
    from connectors.mqtt_publish import MqttPublisher

    t, publish, _http = setup
    topic = f"fg/{t.id}/{{{{ device.id }}}}/commands"
    await publish(
        _warm_rule(
            [
                {
                    "type": "mqtt.publish",
                    "options": {"topic": topic, "payload": '{"defrost": {{ values.temp }}}'},
                }
            ]
        )
    )
    received: list[tuple[str, bytes]] = []
    subscribed = threading.Event()
    client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2)
    client.on_message = lambda _c, _u, m: received.append((m.topic, m.payload))
    client.on_subscribe = lambda *_a: subscribed.set()
    client.connect("127.0.0.1", mosquitto_server.port)
    client.loop_start()
    client.subscribe(f"fg/{t.id}/#", qos=1)
    assert await asyncio.to_thread(subscribed.wait, 10)
    publisher = MqttPublisher("127.0.0.1", mosquitto_server.port, client_id="rules-test")
    try:
        engine = _engine(database, publisher=publisher)
        await engine.load()
        await engine.on_reading(Reading(t.id, "fz-2", T0, {"temp": -4.0}, SOURCE))
        await engine.drain()
        await _wait(lambda: received)
        assert received == [(f"fg/{t.id}/fz-2/commands", b'{"defrost": -4.0}')]
    finally:
        await publisher.close()
        client.loop_stop()
        client.disconnect()


def test_rules_publish_only_inside_their_namespace_and_never_to_ingestion_topics() -> None:
    assert topic_problem("fg/acme/fz-1/commands", "acme") is None
    assert "outside the tenant's namespace" in (topic_problem("fg/other/fz-1/commands", "acme") or "")
    assert "ingestion topic" in (topic_problem("fg/acme/fz-1/telemetry", "acme") or "")
    assert "wildcards" in (topic_problem("fg/acme/+/x", "acme") or "")
    assert "wildcards" in (topic_problem("fg/acme//x", "acme") or "")


async def test_derived_metric_goes_back_into_the_pipeline_and_never_loops(
    database: Database, setup: Any
) -> None:
    t, publish, _http = setup
    derive = {"type": "metric.derived", "options": {"metric": "too_warm", "expression": "temp > -10"}}
    rule_id = await publish(
        {
            "when": [{"type": "telemetry.received", "options": {"metrics": []}}],
            "if": [{"type": "expression", "options": {"expression": "temp > -100"}}],
            "then": [derive],
            "fire": "always",
        }
    )
    bus = ReadingBus(100, lambda _r: None)
    engine = _engine(database, sink=bus)
    await engine.load()
    await engine.on_reading(Reading(t.id, "fz-1", T0, {"temp": -3.0}, SOURCE))
    await engine.drain()
    [derived] = await bus.next_batch(10, 1.0)
    assert derived.metrics == {"too_warm": True} and derived.ts == T0
    assert derived.source == Source("rule", rule_id)
    # The rule that wrote it triggers on any reading, yet does not run for its own output.
    assert await engine.on_reading(derived) == []


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("single", ["done", "skipped"]),
        ("queued", ["done", "done"]),
        ("parallel", ["done", "done"]),
        ("restart", ["cancelled", "done"]),
    ],
)
async def test_run_modes_decide_what_a_second_firing_does_while_actions_run(
    database: Database, setup: Any, receiver: HttpReceiver, mode: str, expected: list[str]
) -> None:
    t, publish, _http = setup
    rule_id = await publish(
        _warm_rule(
            [
                {
                    "type": "webhook",
                    "options": {"url": receiver.url(scheme="http"), "body": '{"n": "{{ values.temp }}"}'},
                }
            ],
            fire="always",
            run_mode=mode,
        )
    )
    engine = _engine(database)
    await engine.load()
    receiver.behaviour.delay_s = 10  # the receiver stalls: the first firing's webhook is still running
    await engine.on_reading(Reading(t.id, "fz-1", T0, {"temp": -3.0}, SOURCE))
    await _wait(lambda: bool(engine._running))
    await engine.on_reading(Reading(t.id, "fz-1", T0 + timedelta(seconds=1), {"temp": -2.0}, SOURCE))
    receiver.release()
    await engine.drain()
    await engine.executor.close()  # its HTTP client keeps connections alive
    traces = sorted(await _traces(database, t, rule_id), key=lambda tr: tr["at"])
    assert [tr["actions"][0]["status"] for tr in traces] == expected
    delivered = [b["n"] for b in bodies(receiver)]
    if mode == "queued":
        assert delivered == ["-3.0", "-2.0"]  # in firing order
    elif mode == "single":
        assert delivered == ["-3.0"]
    elif mode == "restart":
        assert "-2.0" in delivered
    else:
        assert sorted(delivered) == ["-2.0", "-3.0"]


async def test_a_schedule_evaluates_every_selected_device_at_its_cron_time(
    database: Database, setup: Any
) -> None:
    t, publish, _http = setup
    clock = [datetime(2026, 11, 27, 6, 59, tzinfo=UTC)]
    rule_id = await publish(
        {
            "when": [{"type": "schedule", "options": {"cron": "0 7 * * *", "timezone": "UTC"}}],
            "if": [{"type": "expression", "options": {"expression": "temp > -10"}}],
            "then": [{"type": "alarm.raise", "options": {"alarm_type": "morning-check"}}],
            "fire": "always",
        }
    )
    engine = RuleEngine(
        database, RegistryCatalogue(database), alarms=AlarmService(database), clock=lambda: clock[0]
    )
    await engine.load()
    await engine.on_reading(Reading(t.id, "fz-1", clock[0], {"temp": -4.0}, SOURCE))
    await engine.on_reading(Reading(t.id, "fz-2", clock[0], {"temp": -20.0}, SOURCE))
    assert engine.next_wakeup() == datetime(2026, 11, 27, 7, 0, tzinfo=UTC)
    assert await engine.fire_due_timers(datetime(2026, 11, 27, 6, 59, 59, tzinfo=UTC)) == []
    decisions = await engine.fire_due_timers(datetime(2026, 11, 27, 7, 0, tzinfo=UTC))
    assert {(d.device_id, d.fired) for d in decisions} == {("fz-1", True), ("fz-2", False)}
    assert engine.next_wakeup() == datetime(2026, 11, 28, 7, 0, tzinfo=UTC)
    alarms = await AlarmService(database).list(t.id)
    items = alarms.items if hasattr(alarms, "items") else alarms
    assert [(a.device_id, a.rule_id) for a in items] == [("fz-1", rule_id)]


async def test_a_raised_alarm_triggers_the_rules_listening_for_it(database: Database, setup: Any) -> None:
    t, publish, _http = setup
    await publish(_warm_rule([{"type": "alarm.raise", "options": {"alarm_type": "warm"}}]))
    follower = await publish(
        {
            "when": [{"type": "alarm.changed", "options": {"alarm_types": ["warm"], "states": ["raised"]}}],
            "if": [],
            "then": [{"type": "alarm.raise", "options": {"alarm_type": "escalated", "severity": "critical"}}],
            "fire": "always",
        }
    )
    engine = _engine(database)
    await engine.load()
    await engine.on_reading(Reading(t.id, "fz-1", T0, {"temp": -3.0}, SOURCE))
    await engine.drain()
    alarms = await AlarmService(database).list(t.id)
    items = alarms.items if hasattr(alarms, "items") else alarms
    assert sorted((a.alarm_type, a.severity) for a in items) == [("escalated", "critical"), ("warm", "major")]
    [trace] = await _traces(database, t, follower)
    assert trace["event"] == "alarm" and trace["outcome"] == "fired"


async def test_state_and_traces_are_written_behind_and_actions_wait_for_their_state(
    database: Database, setup: Any
) -> None:
    t, publish, _http = setup
    rule_id = await publish(_warm_rule([{"type": "alarm.raise", "options": {"alarm_type": "warm"}}]))
    engine = _engine(database)
    await engine.load()
    for i in range(5):  # cold: evaluated, nothing decided
        await engine.on_reading(Reading(t.id, "fz-1", T0 + timedelta(seconds=i), {"temp": -20.0}, SOURCE))
    assert await _traces(database, t, rule_id) == []  # buffered, not yet written
    [decision] = await engine.on_reading(
        Reading(t.id, "fz-1", T0 + timedelta(seconds=5), {"temp": -3.0}, SOURCE)
    )
    assert decision.fired
    # The state that made it fire was written before the alarm was raised.
    async with database.tenant(t.id) as scope:
        state = await RuleStateRepository(scope).get(rule_id, "fz-1")
    assert state["rule"]["active"] is True
    await engine.flush()
    traces = await _traces(database, t, rule_id)
    # A threshold rule sits in a bank: the cold readings of a device with no state for it
    # cannot flip it and are not even evaluated (GET /rules/{id}/explain/{device} answers "why
    # not" for them); the warm one is, and its firing is traced.
    assert [tr["outcome"] for tr in traces] == ["fired"]
    assert engine.core.evaluations == 1
    # A new process reads the state back: the still-warm device does not fire a second time.
    again = _engine(database)
    await again.load()
    [later] = await again.on_reading(Reading(t.id, "fz-1", T0 + timedelta(seconds=6), {"temp": -3.0}, SOURCE))
    assert later.result is True and not later.fired


async def test_decommissioning_a_device_clears_its_alarms_and_drops_its_rule_state(
    database: Database, setup: Any
) -> None:
    t, publish, http = setup
    rule_id = await publish(_warm_rule([{"type": "alarm.raise", "options": {"alarm_type": "warm"}}]))
    engine = _engine(database)
    await engine.load()
    [decision] = await engine.on_reading(Reading(t.id, "fz-1", T0, {"temp": -3.0}, SOURCE))
    assert decision.fired
    await engine.flush()
    r = await http.delete("/api/v1/devices/fz-1", headers=t.headers)
    assert r.status_code == 204, r.text
    [alarm] = (await http.get("/api/v1/alarms", headers=t.headers)).json()["items"]
    assert alarm["device_id"] == "fz-1" and alarm["state"] == "cleared_unack" and alarm["cleared_by"]
    async with database.tenant(t.id) as scope:
        assert await RuleStateRepository(scope).get(rule_id, "fz-1") == {}
    await engine.forget_device(t.id, "fz-1")
    assert not any(key[2] == "fz-1" for key in engine.core.states)
