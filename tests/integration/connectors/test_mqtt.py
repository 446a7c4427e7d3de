"""The MQTT connector against a real Mosquitto: decoding, rejections, backpressure, restarts, sharing."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from connectors.base import ConnectorError, HealthState
from connectors.mqtt import MqttConnector
from connectors.supervisor import ConnectorSupervisor
from model.readings import Reading, Source
from model.rejections import PAYLOAD_EXCERPT_BYTES, Rejection, RejectReason
from tests.harness.mosquitto import MosquittoServer, start_mosquitto
from tests.harness.ports import free_port

NOW = datetime(2026, 11, 27, 8, 0, 0, tzinfo=UTC)
WAIT_S = 20.0


def fixed_clock() -> datetime:
    return NOW


class CollectingSink:
    """A real ReadingSink: keeps what it is given; ``close()`` makes ``submit`` wait like a full bus."""

    def __init__(self) -> None:
        self.readings: list[Reading] = []
        self.rejections: list[Rejection] = []
        self.waiting = 0
        self._open = asyncio.Event()
        self._open.set()
        self._changed = asyncio.Event()

    def close(self) -> None:
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    async def submit(self, reading: Reading) -> None:
        if not self._open.is_set():
            self.waiting += 1
            self._notify()
            try:
                await self._open.wait()
            finally:
                self.waiting -= 1
        self.readings.append(reading)
        self._notify()

    def offer(self, reading: Reading) -> None:
        self.readings.append(reading)
        self._notify()

    def reject(self, rejection: Rejection) -> None:
        self.rejections.append(rejection)
        self._notify()

    def _notify(self) -> None:
        self._changed.set()

    async def until(self, predicate: Callable[[], bool], within: float = WAIT_S, what: str = "") -> None:
        """Wait until ``predicate()`` holds, re-checking whenever the sink changes."""
        try:
            async with asyncio.timeout(within):
                while not predicate():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(
                f"timed out after {within}s waiting for {what or predicate}: "
                f"{len(self.readings)} readings, {len(self.rejections)} rejections"
            ) from None

    def message_ids(self) -> list[int]:
        return [int(r.metrics["n"]) for r in self.readings]


async def until(predicate: Callable[[], bool], within: float = WAIT_S, what: str = "") -> None:
    """Poll a condition that no event announces (connector state, files) until it holds."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what or predicate}")
        await asyncio.sleep(0.02)


def persistent_properties(expiry_s: int = 3600) -> Properties:
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = expiry_s
    return props


@asynccontextmanager
async def publisher(
    broker: MosquittoServer, client_id: str | None = None, *, persistent: bool = False
) -> AsyncIterator[aiomqtt.Client]:
    """A device-side client; ``persistent`` gives it its own session that survives disconnects."""
    async with aiomqtt.Client(
        broker.host,
        broker.port,
        identifier=client_id or f"pub-{secrets.token_hex(4)}",
        protocol=aiomqtt.ProtocolVersion.V5,
        clean_start=not persistent,
        properties=persistent_properties() if persistent else None,
    ) as client:
        client.pending_calls_threshold = 10_000  # windows of concurrent publishes are intended
        yield client


async def publish_all(
    client: aiomqtt.Client, messages: Iterable[tuple[str, bytes]], *, qos: int = 1, window: int = 100
) -> None:
    """Publish in windows of concurrent publishes; each returns once the broker acknowledged it."""
    pending: list[tuple[str, bytes]] = []
    for item in messages:
        pending.append(item)
        if len(pending) == window:
            await asyncio.gather(*(client.publish(t, p, qos=qos) for t, p in pending))
            pending.clear()
    await asyncio.gather(*(client.publish(t, p, qos=qos) for t, p in pending))


def numbered(topic: str, ids: Iterable[int]) -> list[tuple[str, bytes]]:
    return [(topic, json.dumps({"n": i, "temp": 20.5}).encode()) for i in ids]


def prefix() -> str:
    return f"t{secrets.token_hex(4)}"


def make_connector(
    broker: MosquittoServer, sink: CollectingSink, topic_prefix: str, **kwargs: Any
) -> MqttConnector:
    kwargs.setdefault("client_id", f"platform-{secrets.token_hex(4)}")
    kwargs.setdefault("session_expiry_s", 600)
    return MqttConnector(
        kwargs.pop("name", "mqtt-test"),
        sink,
        host=broker.host,
        port=broker.port,
        topic_prefix=topic_prefix,
        clock=fixed_clock,
        **kwargs,
    )


@asynccontextmanager
async def running(*connectors: MqttConnector) -> AsyncIterator[list[asyncio.Task[None]]]:
    """Run connectors until the block ends; wait until each has connected and subscribed."""
    tasks = [asyncio.create_task(c.run(), name=f"test:{c.name}") for c in connectors]
    try:
        for connector, task in zip(connectors, tasks, strict=True):

            def ready(c: MqttConnector = connector, t: asyncio.Task[None] = task) -> bool:
                return bool(c.details()["subscribed"]) or t.done()

            await until(ready, what="subscribe")
            if task.done():
                task.result()  # raise what made it fail
        yield tasks
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterable[MosquittoServer]:
    """A private broker that may be killed: autosave every second, room for a long outage."""
    broker = start_mosquitto(
        tmp_path,
        extra_config=["autosave_interval 1", "max_queued_messages 100000", "max_queued_bytes 0"],
    )
    try:
        yield broker
    finally:
        broker.stop()


async def wait_for_autosave(broker: MosquittoServer, since_ns: int) -> None:
    """Wait until the broker wrote its persistence file after ``since_ns`` (wall clock)."""

    def saved() -> bool:
        path = broker.persistence_path
        return path.exists() and path.stat().st_mtime_ns > since_ns

    await until(saved, within=10, what="mosquitto autosave")


# 1. Payload shapes become exact Readings ---------------------------------------------------------


async def test_flat_timestamped_and_batch_payloads_become_readings(mosquitto_server: MosquittoServer) -> None:
    sink = CollectingSink()
    p = prefix()
    connector = make_connector(mosquitto_server, sink, p, name="mqtt-shapes")
    batch = [
        {"ts": 1795766400, "values": {"temp": 1}},  # seconds: NOW
        {"ts": 1795766401500, "values": {"temp": 2.5}},  # milliseconds
        {"ts": "2026-11-27T09:30:00+01:00", "values": {"label": "ok"}},  # ISO 8601 with zone
    ]
    async with running(connector), publisher(mosquitto_server) as pub:
        await publish_all(
            pub,
            [
                (f"{p}/acme/fridge-1/telemetry", b'{"temp": -18.2, "door_open": false}'),
                (
                    f"{p}/acme/fridge-1/telemetry",
                    b'{"ts": "2026-11-27T07:59:58.250Z", "values": {"temp": -18}}',
                ),
                (f"{p}/other-co/SN:0042@plant.A/telemetry", json.dumps(batch).encode()),
            ],
            window=1,
        )
        await sink.until(lambda: len(sink.readings) == 5, what="5 readings")

    source = Source("mqtt", "mqtt-shapes")
    assert sink.readings == [
        Reading("acme", "fridge-1", NOW, {"temp": -18.2, "door_open": False}, source),
        Reading(
            "acme", "fridge-1", datetime(2026, 11, 27, 7, 59, 58, 250000, tzinfo=UTC), {"temp": -18}, source
        ),
        Reading("other-co", "SN:0042@plant.A", NOW, {"temp": 1}, source),
        Reading(
            "other-co",
            "SN:0042@plant.A",
            datetime(2026, 11, 27, 8, 0, 1, 500000, tzinfo=UTC),
            {"temp": 2.5},
            source,
        ),
        Reading(
            "other-co", "SN:0042@plant.A", datetime(2026, 11, 27, 8, 30, tzinfo=UTC), {"label": "ok"}, source
        ),
    ]
    assert all(r.ts.utcoffset() == timedelta(0) for r in sink.readings)
    assert sink.rejections == []
    details = connector.details()
    assert details["messages_received"] == 3
    assert details["readings_submitted"] == 5
    assert details["rejected"] == 0
    assert details["connected"] is False  # stopped


# 2. Bad input is rejected with a reason; good messages keep flowing --------------------------------


async def test_bad_messages_are_rejected_with_reasons_and_good_ones_keep_flowing(
    mosquitto_server: MosquittoServer,
) -> None:
    sink = CollectingSink()
    p = prefix()
    topic = f"{p}/acme/fridge-1/telemetry"
    future = int((NOW + timedelta(hours=2)).timestamp())
    bad: list[tuple[str, bytes, RejectReason, str | None, str | None]] = [
        (topic, b"temp=3", RejectReason.MALFORMED, "acme", "fridge-1"),
        (topic, b'{"temp": NaN}', RejectReason.NOT_FINITE, "acme", "fridge-1"),
        (topic, b'{"temp": -Infinity}', RejectReason.NOT_FINITE, "acme", "fridge-1"),
        (topic, b"[" * 10_000 + b"]" * 10_000, RejectReason.TOO_DEEP, "acme", "fridge-1"),
        (topic, b'{"temp": "' + b"x" * 70_000 + b'"}', RejectReason.TOO_LARGE, "acme", "fridge-1"),
        (topic, b'{"ts": -1, "values": {"temp": 1}}', RejectReason.BAD_TIMESTAMP, "acme", "fridge-1"),
        (
            topic,
            b'{"ts": "1969-12-31T23:59:59Z", "values": {"t": 1}}',
            RejectReason.BAD_TIMESTAMP,
            "acme",
            "fridge-1",
        ),
        (
            topic,
            f'{{"ts": {future}, "values": {{"t": 1}}}}'.encode(),
            RejectReason.BAD_TIMESTAMP,
            "acme",
            "fridge-1",
        ),
        (f"{p}/acme/bad device!/telemetry", b'{"temp": 1}', RejectReason.MALFORMED, "acme", None),
        (f"{p}/Not_A_Tenant/fridge-1/telemetry", b'{"temp": 1}', RejectReason.MALFORMED, None, "fridge-1"),
        (topic, b'{"tenant_id": "victim", "temp": 1}', RejectReason.BAD_METRIC_NAME, "acme", "fridge-1"),
        (
            topic,
            b'{"ts": 1795766400, "values": {"Device": "x"}}',
            RejectReason.BAD_METRIC_NAME,
            "acme",
            "fridge-1",
        ),
        (
            topic,
            b'{"tenant": "victim", "ts": 1795766400, "values": {"t": 1}}',
            RejectReason.MALFORMED,
            "acme",
            "fridge-1",
        ),
    ]
    sequence: list[tuple[str, bytes]] = []
    for i, (t, payload, *_rest) in enumerate(bad):
        sequence.append((topic, json.dumps({"n": i}).encode()))  # a good message before each bad one
        sequence.append((t, payload))
    sequence.append((topic, json.dumps({"n": len(bad)}).encode()))

    connector = make_connector(mosquitto_server, sink, p, name="mqtt-bad")
    async with running(connector), publisher(mosquitto_server) as pub:
        await publish_all(pub, sequence, window=1)  # one at a time: one topic's order is kept
        await sink.until(
            lambda: len(sink.readings) == len(bad) + 1 and len(sink.rejections) == len(bad),
            what="all good readings and all rejections",
        )

    assert sink.message_ids() == list(range(len(bad) + 1))
    assert all((r.tenant_id, r.device_id) == ("acme", "fridge-1") for r in sink.readings)
    got = [(r.reason, r.tenant_id, r.device_id) for r in sink.rejections]
    assert got == [(reason, tenant, device) for _t, _p, reason, tenant, device in bad]
    for rejection, (_t, payload, *_rest) in zip(sink.rejections, bad, strict=True):
        assert rejection.source == Source("mqtt", "mqtt-bad")
        assert rejection.payload == payload[:PAYLOAD_EXCERPT_BYTES]
        assert rejection.at == NOW
        assert rejection.detail
    assert "reserved" in sink.rejections[10].detail
    assert connector.details()["rejected"] == len(bad)


# 3. Backpressure: bounded while the pipeline is full, nothing lost --------------------------------


async def test_slow_pipeline_bounds_what_the_connector_holds_and_loses_nothing(
    own_broker: MosquittoServer,
) -> None:
    n = 2000
    sink = CollectingSink()
    sink.close()
    p = prefix()
    connector = make_connector(own_broker, sink, p, name="mqtt-slow", max_inflight=32)
    async with running(connector), publisher(own_broker) as pub:
        await publish_all(pub, numbered(f"{p}/acme/fridge-1/telemetry", range(n)))  # all acked by the broker
        # The broker stops sending once max_inflight messages are unacknowledged.
        await until(lambda: connector.details()["held"] == 32, what="a full receive window")
        assert sink.waiting == 1
        # Nothing more may arrive while the pipeline stays full (observing, not waiting for an event).
        for _ in range(25):
            await asyncio.sleep(0.02)
            details = connector.details()
            assert details["held"] == details["max_inflight"] == 32
            assert details["messages_received"] == 1  # the one inside submit()
            assert details["reading_paused"] is False
        assert sink.readings == []
        sink.release()
        await sink.until(lambda: len(sink.readings) >= n, within=60, what=f"{n} readings")

    ids = sink.message_ids()
    assert sorted(set(ids)) == list(range(n))
    assert ids == sorted(ids)  # one topic, QoS 1, one subscriber: in order
    details = connector.details()
    # While blocked the broker kept to ReceiveMaximum (32). Once acknowledgements flow, Mosquitto
    # 2.0.11 over-sends; then the connector stops reading at queue_limit instead of growing.
    assert details["max_held_seen"] <= details["queue_limit"] == 64


async def test_messages_held_by_a_cancelled_connector_are_redelivered(own_broker: MosquittoServer) -> None:
    """No message is acknowledged before the sink took it: what was queued or in submit comes again."""
    n = 300
    blocked = CollectingSink()
    blocked.close()
    p = prefix()
    client_id = f"platform-{secrets.token_hex(4)}"
    first = make_connector(own_broker, blocked, p, name="mqtt-first", client_id=client_id, max_inflight=50)
    async with running(first), publisher(own_broker) as pub:
        await publish_all(pub, numbered(f"{p}/acme/fridge-1/telemetry", range(n)))
        await until(lambda: first.details()["held"] >= 50, what="50 messages held")
        assert blocked.waiting == 1
    # Cancelled with 50 messages in memory, one of them inside submit(): none was acknowledged.
    assert blocked.readings == []

    sink = CollectingSink()
    # The next connector of the session asks for a smaller window: the broker still resends all 50
    # in flight at once, before the SUBACK; the connector must not stop reading before it subscribed.
    second = make_connector(own_broker, sink, p, name="mqtt-second", client_id=client_id, max_inflight=8)
    async with running(second):
        await sink.until(lambda: len(set(sink.message_ids())) == n, what=f"{n} unique readings")
    assert sorted(set(sink.message_ids())) == list(range(n))
    assert second.details()["max_held_seen"] <= second.details()["queue_limit"] == 16


async def test_qos0_flood_pauses_reading_instead_of_growing_memory(mosquitto_server: MosquittoServer) -> None:
    sink = CollectingSink()
    sink.close()
    p = prefix()
    connector = make_connector(mosquitto_server, sink, p, name="mqtt-qos0", max_inflight=16)
    async with running(connector), publisher(mosquitto_server) as pub:
        await publish_all(pub, numbered(f"{p}/acme/fridge-1/telemetry", range(2000)), qos=0, window=100)
        await until(lambda: connector.details()["reading_paused"], what="reading paused")
        details = connector.details()
        assert details["held"] <= details["queue_limit"] + 1 == 33
        sink.release()
        # Reading resumes: more than the queue bound gets through (QoS 0 may lose some at the broker).
        await sink.until(lambda: len(sink.readings) > 100, what="reading resumed")
    details = connector.details()
    assert details["max_held_seen"] <= details["queue_limit"] + 1
    assert details["pauses"] >= 1


# 4. Broker killed mid-stream, platform down: reconnect by itself, no loss -------------------------


async def test_supervised_connector_survives_broker_kill_and_platform_downtime(
    own_broker: MosquittoServer,
) -> None:
    p = prefix()
    topic = f"{p}/acme/fridge-1/telemetry"
    client_id = f"platform-{secrets.token_hex(4)}"
    publisher_id = f"device-{secrets.token_hex(4)}"
    sink = CollectingSink()
    sink.close()
    connector = make_connector(own_broker, sink, p, name="mqtt-kill", client_id=client_id, max_inflight=20)
    supervisor = ConnectorSupervisor([connector], initial_backoff=0.05, max_backoff=0.4, rng=lambda: 0.5)
    supervised = asyncio.create_task(supervisor.run())
    try:
        await until(lambda: connector.details()["subscribed"], what="subscribe")

        # Phase 1: mid-stream. 300 messages acknowledged by the broker; the connector holds 20 of
        # them unacknowledged (pipeline full), the rest wait in the broker. SIGKILL the broker.
        async with publisher(own_broker, publisher_id, persistent=True) as pub:
            await publish_all(pub, numbered(topic, range(300)))
        published_ns = time.time_ns()
        await until(lambda: connector.details()["held"] == 20, what="a full receive window")
        await wait_for_autosave(own_broker, published_ns)
        own_broker.process.kill()

        # The pipeline drains; the connector notices the dead broker and keeps failing to reconnect.
        sink.release()
        await until(lambda: supervisor.health()["mqtt-kill"].restarts >= 3, what="reconnect attempts")
        health = supervisor.health()["mqtt-kill"]
        assert health.last_error is not None and "ConnectorError" in health.last_error
        assert health.details["connected"] is False

        await asyncio.to_thread(own_broker.start)  # same port, same persistence file
        await sink.until(lambda: set(sink.message_ids()) >= set(range(300)), what="phase 1 messages")
        assert supervisor.health()["mqtt-kill"].state == HealthState.RUNNING
        assert connector.details()["connected"] is True
    finally:
        supervised.cancel()
        await asyncio.gather(supervised, return_exceptions=True)

    # Phase 2: the platform is down while devices publish; then the broker is killed too.
    async with publisher(own_broker, publisher_id, persistent=True) as pub:
        await publish_all(pub, numbered(topic, range(300, 400)))
    published_ns = time.time_ns()
    await wait_for_autosave(own_broker, published_ns)
    own_broker.process.kill()
    await asyncio.to_thread(own_broker.start)

    restarted = make_connector(own_broker, sink, p, name="mqtt-kill", client_id=client_id, max_inflight=20)
    supervisor = ConnectorSupervisor([restarted], initial_backoff=0.05, max_backoff=0.4)
    supervised = asyncio.create_task(supervisor.run())
    try:
        await sink.until(lambda: set(sink.message_ids()) >= set(range(400)), what="phase 2 messages")
    finally:
        supervised.cancel()
        await asyncio.gather(supervised, return_exceptions=True)

    ids = sink.message_ids()
    assert set(ids) == set(range(400))  # none lost; duplicates allowed (at-least-once)
    duplicates = sum(c - 1 for c in Counter(ids).values())
    assert duplicates <= 20 + 1  # at most the unacknowledged window came twice


async def test_unreachable_broker_raises_connector_error() -> None:
    sink = CollectingSink()
    connector = MqttConnector("mqtt-nowhere", sink, host="127.0.0.1", port=free_port(), client_id="nowhere")
    with pytest.raises(ConnectorError, match="MQTT connection to 127"):
        await asyncio.wait_for(connector.run(), WAIT_S)
    assert connector.details()["connected"] is False


# 5. Shared subscription: workers split the load --------------------------------------------------


async def test_shared_subscription_splits_messages_between_connectors(
    mosquitto_server: MosquittoServer,
) -> None:
    p = prefix()
    group = f"workers-{secrets.token_hex(2)}"
    sinks = [CollectingSink(), CollectingSink()]
    connectors = [
        make_connector(mosquitto_server, sink, p, name=f"mqtt-worker-{i}", shared_group=group)
        for i, sink in enumerate(sinks)
    ]
    assert connectors[0].subscription == f"$share/{group}/{p}/+/+/telemetry"
    messages: Sequence[tuple[str, bytes]] = [
        (f"{p}/acme/dev-{i % 7}/telemetry", json.dumps({"n": i}).encode()) for i in range(200)
    ]
    async with running(*connectors), publisher(mosquitto_server) as pub:
        await publish_all(pub, messages)

        def all_arrived() -> bool:
            return sum(len(s.readings) for s in sinks) >= 200

        await until(all_arrived, what="200 readings in all")  # two sinks: poll

    parts = [sink.message_ids() for sink in sinks]
    assert all(part for part in parts), [len(part) for part in parts]
    assert sorted(parts[0] + parts[1]) == list(range(200))  # exactly all, each once


async def test_a_packet_over_max_packet_bytes_is_dropped_by_the_broker_not_buffered(
    mosquitto_server: MosquittoServer,
) -> None:
    """MQTT 5 MaximumPacketSize: the broker discards (and logs) what the connector would not hold."""
    sink = CollectingSink()
    p = prefix()
    topic = f"{p}/acme/fridge-1/telemetry"
    connector = make_connector(mosquitto_server, sink, p, max_payload_bytes=1024, max_packet_bytes=8192)
    async with running(connector), publisher(mosquitto_server) as pub:
        await pub.publish(topic, b'{"temp": "' + b"x" * 2000 + b'"}', qos=1)  # > payload, < packet limit
        await pub.publish(topic, b'{"temp": "' + b"x" * 10_000 + b'"}', qos=1)  # > packet limit
        await pub.publish(topic, b'{"n": 1}', qos=1)
        await sink.until(lambda: len(sink.readings) == 1, what="the message after the big ones")
    # Same topic, same publisher: had the big one been delivered, it would have come before {"n": 1}.
    assert [r.reason for r in sink.rejections] == [RejectReason.TOO_LARGE]
    assert connector.details()["messages_received"] == 2


async def test_a_stopped_shared_worker_gets_its_share_when_it_returns(
    mosquitto_server: MosquittoServer,
) -> None:
    """Mosquitto 2.0.11 keeps dealing messages to a group member whose session persists while it is
    offline: they wait in its session (no loss, but no failover) until a worker with the same
    client id comes back. Worker client ids must therefore be stable slots, not random."""
    p = prefix()
    group = f"workers-{secrets.token_hex(2)}"
    live, returning = CollectingSink(), CollectingSink()
    worker_1 = make_connector(mosquitto_server, live, p, name="w1", shared_group=group)
    worker_2 = make_connector(mosquitto_server, returning, p, name="w2", shared_group=group)
    async with running(worker_1):
        async with running(worker_2):
            pass  # subscribed, then stopped: its session and subscription stay
        async with publisher(mosquitto_server) as pub:
            await publish_all(pub, numbered(f"{p}/acme/fridge-1/telemetry", range(100)))
        back = make_connector(
            mosquitto_server, returning, p, name="w2-again", shared_group=group, client_id=worker_2.client_id
        )
        async with running(back):

            def all_arrived() -> bool:
                return len(set(live.message_ids()) | set(returning.message_ids())) == 100

            await until(all_arrived, what="100 unique readings")  # two sinks: poll
    assert returning.message_ids(), "the returning worker's share was handed to the live one"
    assert sorted(live.message_ids() + returning.message_ids()) == list(range(100))
