"""Round trips through each private test server, proving the harness gives working servers."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import httpx
import paho.mqtt.client as mqtt
import pytest
from influxdb_client.client.write.point import Point
from influxdb_client.domain.write_precision import WritePrecision
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from tests.harness.influxdb import InfluxDBServer, quote_identifier, quote_string
from tests.harness.mosquitto import MosquittoServer, start_mosquitto
from tests.harness.ports import port_accepts
from tests.harness.postgres import PostgresServer, run_sync

TIMEOUT_S = 10.0


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: existence check only, nothing is sent
    except ProcessLookupError:
        return False
    return True


class Subscriber:
    """Collects the messages of one MQTT client, so tests can wait on an Event."""

    def __init__(self) -> None:
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.received = threading.Event()
        self.messages: list[mqtt.MQTTMessage] = []
        self.connect_reason: ReasonCode | None = None

    def on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        self.connect_reason = reason
        self.connected.set()

    def on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[ReasonCode], props: Any
    ) -> None:
        self.subscribed.set()

    def on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self.messages.append(message)
        self.received.set()


@contextmanager
def mqtt_client(server: MosquittoServer, client_id: str) -> Iterator[tuple[mqtt.Client, Subscriber]]:
    """A connected paho 2.x MQTTv5 client with its network loop running in a thread."""
    events = Subscriber()
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5,
    )
    client.on_connect = events.on_connect
    client.on_subscribe = events.on_subscribe
    client.on_message = events.on_message
    client.connect(server.host, server.port, keepalive=30)
    client.loop_start()
    try:
        assert events.connected.wait(TIMEOUT_S), "no CONNACK from the broker"
        assert events.connect_reason is not None and not events.connect_reason.is_failure
        yield client, events
    finally:
        client.disconnect()
        client.loop_stop()


def _publish_qos1(client: mqtt.Client, topic: str, payload: bytes, retain: bool = False) -> None:
    info = client.publish(topic, payload, qos=1, retain=retain)
    info.wait_for_publish(TIMEOUT_S)  # returns once the broker's PUBACK arrived
    assert info.is_published()


def _receive_one(server: MosquittoServer, topic: str, client_id: str) -> mqtt.MQTTMessage:
    """Subscribe with QoS 1 and wait for the first message (e.g. a retained one)."""
    with mqtt_client(server, client_id) as (client, events):
        client.subscribe(topic, qos=1)
        assert events.received.wait(TIMEOUT_S), f"no message on {topic!r}"
        return events.messages[0]


@pytest.mark.mosquitto
def test_mqtt_publish_qos1_is_received(mosquitto_server: MosquittoServer) -> None:
    topic = f"flatgigs/test/{uuid.uuid4().hex}/temperature"
    payload = b'{"celsius": 21.5}'

    with mqtt_client(mosquitto_server, f"sub-{uuid.uuid4().hex[:8]}") as (sub, events):
        sub.subscribe(topic, qos=1)
        assert events.subscribed.wait(TIMEOUT_S), "no SUBACK"
        with mqtt_client(mosquitto_server, f"pub-{uuid.uuid4().hex[:8]}") as (pub, _):
            _publish_qos1(pub, topic, payload)
        assert events.received.wait(TIMEOUT_S), "subscriber got nothing"

    [message] = events.messages
    assert message.topic == topic
    assert message.payload == payload
    assert message.qos == 1


@pytest.mark.mosquitto
def test_stop_ends_the_broker_and_restart_keeps_persisted_messages(tmp_path: Path) -> None:
    # A broker of its own: stopping the session broker would break other tests.
    server = start_mosquitto(tmp_path)
    try:
        topic = f"flatgigs/test/{uuid.uuid4().hex}/retained"
        with mqtt_client(server, "retainer") as (client, _):
            _publish_qos1(client, topic, b"survives restarts", retain=True)

        pid, port = server.process.pid, server.port
        assert pid is not None and _pid_exists(pid)
        exit_code = server.stop()

        assert exit_code == 0, server.process.log_tail()
        assert not _pid_exists(pid)
        assert not port_accepts(server.host, port)
        assert server.persistence_path.stat().st_size > 0  # written on clean shutdown

        server.restart()
        assert server.port == port
        assert server.process.pid != pid
        message = _receive_one(server, topic, "after-restart")
        assert message.payload == b"survives restarts"
        assert message.retain
    finally:
        server.stop()


@pytest.mark.mosquitto
def test_pause_freezes_the_broker_until_resume(tmp_path: Path) -> None:
    server = start_mosquitto(tmp_path)
    try:
        server.process.pause()
        # The kernel still completes the TCP handshake (backlog), but a frozen broker
        # never answers: the MQTT CONNECT must go unanswered.
        with socket.create_connection((server.host, server.port), timeout=TIMEOUT_S) as sock:
            sock.sendall(bytes([0x10, 12, 0, 4]) + b"MQTT" + bytes([4, 2, 0, 30, 0, 0]))
            sock.settimeout(0.5)
            with pytest.raises(TimeoutError):
                sock.recv(4)
            server.process.resume()
            sock.settimeout(TIMEOUT_S)
            connack = sock.recv(4)
        assert connack[0] == 0x20  # CONNACK once the broker runs again
    finally:
        server.stop()


@pytest.mark.influxdb
def test_influxdb_line_protocol_round_trip(influxdb_server: InfluxDBServer) -> None:
    database = f"flatgigs_test_{uuid.uuid4().hex[:8]}"
    measurement = 'room temp, "east" wing'
    tag_key, tag_value = "sensor id", 'probe "A", slot=3, o\'clock'
    note = 'says "hi", then \\ leaves'
    timestamp_ns = time.time_ns()
    point = (
        Point(measurement)  # type: ignore[no-untyped-call]
        .tag(tag_key, tag_value)
        .field("celsius", 21.5)
        .field("samples", 3)
        .field("note", note)
        .field("ok", True)
        .time(timestamp_ns, WritePrecision.NS)
    )
    line = point.to_line_protocol()

    with httpx.Client(base_url=influxdb_server.url, timeout=TIMEOUT_S) as http:
        created = http.post("/query", data={"q": f"CREATE DATABASE {quote_identifier(database)}"})
        assert created.status_code == 200, created.text
        assert "error" not in created.json()["results"][0]

        written = http.post("/write", params={"db": database, "precision": "ns"}, content=line)
        assert written.status_code == 204, f"{written.status_code} {written.text} for {line!r}"

        answer = http.post(
            "/query",
            data={
                "db": database,
                "epoch": "ns",
                "q": f"SELECT * FROM {quote_identifier(measurement)} "
                f"WHERE {quote_identifier(tag_key)} = {quote_string(tag_value)}",
            },
        )
    assert answer.status_code == 200, answer.text
    [result] = answer.json()["results"]
    assert "error" not in result, result
    [series] = result["series"]
    assert series["name"] == measurement
    row = dict(zip(series["columns"], series["values"][0], strict=True))
    assert row == {
        "time": timestamp_ns,
        "celsius": 21.5,
        "samples": 3,
        "note": note,
        "ok": True,
        tag_key: tag_value,
    }


@pytest.mark.postgres
def test_postgres_query_as_non_superuser(postgres_server: PostgresServer) -> None:
    suffix = uuid.uuid4().hex[:8]
    # Hyphens and a capital force the identifier quoting in the helpers.
    role, password, database = f"App-{suffix}", "s3cret 'quoted'", f"flatgigs-test-{suffix}"
    postgres_server.create_role(role, password=password)
    postgres_server.create_database(database, owner=role)

    async def as_role() -> tuple[str, str, bool, list[str]]:
        conn = await asyncpg.connect(postgres_server.dsn(database, role, password), timeout=TIMEOUT_S)
        try:
            await conn.execute("CREATE TABLE reading (device text PRIMARY KEY, celsius real)")
            await conn.executemany(
                "INSERT INTO reading VALUES ($1, $2)", [("kitchen", 21.5), ("attic", 30.0)]
            )
            user, db, is_super = await conn.fetchrow(
                "SELECT current_user, current_database(), "
                "(SELECT rolsuper FROM pg_roles WHERE rolname = current_user)"
            )
            devices = [r["device"] for r in await conn.fetch("SELECT device FROM reading ORDER BY celsius")]
            return user, db, is_super, devices
        finally:
            await conn.close()

    user, db, is_super, devices = run_sync(as_role)
    assert (user, db, is_super) == (role, database, False)
    assert devices == ["kitchen", "attic"]

    # Not a superuser: reading another role's private data must fail.
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        run_sync(lambda: _fetch_as(postgres_server.dsn(database, role, password), "SELECT * FROM pg_authid"))


async def _fetch_as(dsn: str, sql: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn, timeout=TIMEOUT_S)
    try:
        rows: list[asyncpg.Record] = await conn.fetch(sql)
        return rows
    finally:
        await conn.close()
