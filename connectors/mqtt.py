"""The MQTT connector: device telemetry from a broker, with backpressure and at-least-once delivery.

Topic scheme (docs/devices/mqtt.md)::

    <prefix>/<tenant_id>/<device_id>/telemetry

The tenant and the device come only from the topic, never from the payload (a payload carrying a
``tenant``/``device`` field is refused with ``bad_metric_name``; broker ACLs will later bind each
device to its own topic). The payload is the JSON that connectors/payload.py decodes; every decoded
sample becomes one Reading handed to ``ReadingSink.submit``, every refused message one Rejection.

Session: MQTT 5, the stable ``client_id``, ``clean_start=False`` and a session expiry interval (one
day by default), subscription QoS 1. The broker keeps the subscription and queues QoS 1 messages
while the connector is away (platform restart, network loss, broker restart if it persists).

Delivery guarantee (what the tests in tests/integration/connectors/test_mqtt.py prove):

- QoS 1 messages are acknowledged (PUBACK) only *after* the connector is done with them: every
  reading of the message returned from ``await sink.submit(...)``, or the message was recorded with
  ``sink.reject(...)``. paho acknowledges QoS 1 as soon as its ``on_message`` returns, which with
  aiomqtt means "put in an in-memory queue"; aiomqtt 2.5 has no manual-ack API, so the connector
  switches the underlying paho client to ``manual_ack`` and acknowledges itself: the PUBACKs of the
  messages handled in a row go out together, in order, in one write (at least every half receive
  window, and before the connector waits for more). A crash,
  cancellation or disconnect with messages still queued or in ``submit`` therefore loses nothing:
  the broker redelivers the unacknowledged ones on the next connection of the same session.
  That is at-least-once: a message whose readings were submitted but whose PUBACK did not reach
  the broker comes again. A timestamped payload then yields an identical reading (the store can
  deduplicate); a flat payload is stamped on arrival, so its duplicate carries a later timestamp.
- The session lives ``session_expiry_s`` (one day by default) after the connector disconnects;
  an outage longer than that loses the session and what was queued in it.
- The end-to-end bound is the broker's: a QoS 1 message the broker acknowledged to the device is
  safe once it is in the broker's queue for this session. Mosquitto keeps at most
  ``max_queued_messages`` (default 1000!) per client and silently drops QoS 1 messages beyond it,
  and after a SIGKILL it has only its last autosave: configure ``max_queued_messages`` /
  ``max_queued_bytes`` for the longest outage to be bridged, and ``autosave_interval``.
- QoS 0 messages (a device publishing at QoS 0 is delivered at QoS 0) are at-most-once, as the
  protocol says: while reading is paused they wait in the socket buffers and the broker's queue,
  which may drop them; the ones in the connector's queue are lost on a crash.

Backpressure (bounded memory when the pipeline is slow):

- The CONNECT packet carries ``ReceiveMaximum = max_inflight``: a broker that honours it sends at
  most that many QoS 1 messages the connector has not acknowledged, and since acknowledgement
  waits for ``submit``, a stalled pipeline stops the QoS 1 flow at the broker. Mosquitto 2.0.11
  honours it only for the first window: on each PUBACK it moves up to ``max_inflight`` more queued
  messages into flight (``db__message_delete_outgoing`` stops counting in-flight messages at the
  acknowledged one), so after the first acknowledgement the window grows without bound. Hence:
- the connector stops reading the socket ("MQTT: stop reading") once it holds
  ``queue_limit = 2 * max_inflight`` messages, and reads again when it is down to ``max_inflight``.
  TCP pushes back to the broker, which keeps the messages (and, for QoS 1, redelivers them after
  a reconnect). This also bounds QoS 0 messages, which MQTT does not flow-control at all. The
  reader checks the bound after every packet, so the connector holds at most ``queue_limit``
  messages (plus the few aiomqtt's own reader may take between CONNACK and handing the socket
  over), and up to 64 KiB of bytes read from the socket but not yet parsed.
- Messages of a persistent session (and everything the broker resends on reconnect) arrive
  before the SUBACK, so the connector consumes while it subscribes: waiting for the SUBACK first
  would deadlock with reading paused (found by the redelivery test: the subscribe timed out).
- ``MaximumPacketSize`` (``max_packet_bytes``, 4x ``max_payload_bytes`` by default) bounds one
  message: the broker discards larger messages for this client instead of sending them (MQTT 5
  rule; they are only visible in the broker's log, so also set the broker's ``max_packet_size`` to
  refuse them from the device). Payloads between ``max_payload_bytes`` and that limit become
  ``too_large`` rejections.
- So the connector's memory is at most ``queue_limit`` messages of ``max_packet_bytes`` each.
  ``details()`` reports ``held`` (now) and ``max_held_seen``. If the pipeline stalls for longer
  than ``keepalive`` while reading is paused, paho misses the PINGRESP and drops the connection;
  the supervisor reconnects and the broker redelivers the unacknowledged QoS 1 messages.

Throughput (bench/ingest.py): messages go from paho straight into the connector's inbox (not
through aiomqtt's queue and message iterator, which cost a task and a wait per message), PUBLISH
packets are decoded by the connector (paho builds an MQTT 5 ``Properties`` object and an
MQTTMessage for each), the socket is read 64 KiB at a time (paho asks the kernel for every header
byte), and PUBACKs are grouped into one write.

Internals used, checked by ``_Internals`` (a clear ConnectorError if a release changes them):
aiomqtt's ``Client._client`` (the paho client) and ``Client._disconnected`` (to report a read
failure exactly as aiomqtt's own socket reader does); paho's ``_sock_recv`` (wrapped to buffer
reads), ``_handle_publish`` and ``_in_packet`` (PUBLISH decoding; QoS 2 still goes through paho),
``_out_packet`` and ``_packet_queue`` (PUBACKs written after whatever paho has queued).
"""

from __future__ import annotations

import asyncio
import logging
import math
import ssl
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, ClassVar

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from connectors.base import Connector, ConnectorError, ReadingSink
from connectors.payload import PayloadError, decode
from model.ids import is_object_id, is_tenant_id
from model.readings import Reading, Source
from model.rejections import Rejection, RejectReason

logger = logging.getLogger(__name__)

TELEMETRY = "telemetry"
DEFAULT_SESSION_EXPIRY_S = 24 * 3600
# Metric names that would pretend to say who sent the message: identity comes from the topic only.
RESERVED_METRICS = frozenset({"tenant", "tenant_id", "tenantid", "device", "device_id", "deviceid"})
# One recv() takes up to this much; paho then parses packets from it instead of asking the kernel
# for every header byte (3-4 system calls per message otherwise).
_RECV_CHUNK = 65536
# Topics whose (tenant, device) parse is remembered; past this the cache starts again.
_TOPIC_CACHE_SIZE = 50_000


def _utc_now() -> datetime:
    return datetime.now(UTC)


class _Message:
    """One PUBLISH as the connector needs it: raw topic, payload, QoS and packet id."""

    __slots__ = ("mid", "payload", "qos", "topic")

    def __init__(self, topic: bytes, payload: bytes, qos: int, mid: int) -> None:
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.mid = mid


def _decode_publish(header: int, packet: bytes | bytearray, v5: bool) -> _Message:
    """The variable header and payload of a PUBLISH packet (MQTT 3.1.1 or 5).

    MQTT 5 properties are skipped: topic aliases are off (the connector's CONNECT announces no
    TopicAliasMaximum), and nothing else in them matters to ingestion.
    """
    try:
        end = 2 + (packet[0] << 8 | packet[1])
        topic = bytes(packet[2:end])
        qos = (header & 0x06) >> 1
        mid = 0
        if qos:
            mid = packet[end] << 8 | packet[end + 1]
            end += 2
        if v5:
            length, shift = 0, 0
            while True:
                byte = packet[end]
                end += 1
                length |= (byte & 0x7F) << shift
                if byte < 0x80:
                    break
                shift += 7
                if shift > 21:
                    raise MalformedPacket("PUBLISH property length over 4 bytes")
            end += length
        if end > len(packet) or (len(topic) == 0 and not v5):
            raise MalformedPacket("PUBLISH shorter than its header says")
    except IndexError as exc:
        raise MalformedPacket("truncated PUBLISH") from exc
    return _Message(topic, bytes(packet[end:]), qos, mid)


class _Internals:
    """The aiomqtt and paho internals the connector needs, checked once per client."""

    def __init__(self, client: aiomqtt.Client) -> None:
        paho_client = getattr(client, "_client", None)
        disconnected = getattr(client, "_disconnected", None)
        if not isinstance(paho_client, paho.Client) or not isinstance(disconnected, asyncio.Future):
            raise ConnectorError(
                f"aiomqtt {getattr(aiomqtt, '__version__', '?')} changed its internals: "
                "the MQTT connector needs Client._client and Client._disconnected"
            )
        needed = ("_sock_recv", "_packet_queue", "_handle_publish")
        if (
            not all(callable(getattr(paho_client, name, None)) for name in needed)
            or not isinstance(getattr(paho_client, "_in_packet", None), dict)
            or not isinstance(getattr(paho_client, "_out_packet", None), deque)
        ):
            raise ConnectorError(
                f"paho-mqtt {getattr(paho, '__version__', '?')} changed its internals: the MQTT connector "
                "needs Client._sock_recv, _packet_queue, _handle_publish, _in_packet and _out_packet"
            )
        self.paho: paho.Client = paho_client
        self.client = client
        self.disconnected: asyncio.Future[None] = disconnected

    def fail(self, exc: BaseException) -> None:
        """End message iteration with ``exc``, as aiomqtt's own socket reader does."""
        if not self.disconnected.done():
            self.disconnected.set_exception(exc)

    def disconnected_error(self) -> aiomqtt.MqttError:
        """What ends message handling once the connection is gone (aiomqtt's own wording)."""
        error = aiomqtt.MqttError("Disconnected during message iteration")
        if not self.disconnected.cancelled():
            error.__cause__ = self.disconnected.exception()
        return error

    def deliver_to(self, inbox: deque[_Message]) -> None:
        """Put every PUBLISH paho reads into ``inbox``, decoded by ``_decode_publish``.

        paho's own decoding builds an MQTT 5 ``Properties`` object and an MQTTMessage per
        message, the largest single cost of ingestion; the connector needs neither. QoS 2 (which
        a QoS 1 subscription never receives) still goes through paho's handshake.
        """
        paho_client = self.paho
        paho_publish = paho_client._handle_publish
        v5 = paho_client._protocol == paho.MQTTv5

        def handle_publish() -> MQTTErrorCode:
            in_packet = paho_client._in_packet
            header = in_packet["command"]
            if header & 0x06 == 0x04:  # QoS 2
                return paho_publish()
            inbox.append(_decode_publish(header, in_packet["packet"], v5))
            return MQTTErrorCode.MQTT_ERR_SUCCESS

        paho_client._handle_publish = handle_publish  # type: ignore[method-assign]
        paho_client.on_message = lambda _client, _userdata, message: inbox.append(
            _Message(message._topic, bytes(message.payload), message.qos, message.mid)
        )

    def send_acks(self, packets: bytes) -> None:
        """Send PUBACK packets in one write; paho's ``ack`` makes a send() of each.

        Written straight to the socket when paho has nothing queued (so nothing can interleave);
        whatever the socket does not take now goes through paho's queue and writer.
        """
        paho_client = self.paho
        sock = paho_client.socket()
        if sock is not None and not paho_client._out_packet:
            try:
                sent = sock.send(packets)
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                sent = 0
            except OSError:  # the connection broke: paho's writer reports it as it always does
                sent = 0
            if sent == len(packets):
                return
            packets = packets[sent:]
        paho_client._packet_queue(paho.PUBACK, packets, 0, 0)


class MqttConnector(Connector):
    """Subscribes to ``<prefix>/+/+/telemetry`` and hands what arrives to the pipeline."""

    kind: ClassVar[str] = "mqtt"

    def __init__(
        self,
        name: str,
        sink: ReadingSink,
        *,
        host: str,
        port: int = 1883,
        client_id: str,
        topic_prefix: str = "fg",
        shared_group: str | None = None,
        max_payload_bytes: int = 65536,
        max_packet_bytes: int | None = None,
        username: str | None = None,
        password: str | None = None,
        clock: Callable[[], datetime] = _utc_now,
        max_inflight: int = 64,
        keepalive: int = 60,
        session_expiry_s: int = DEFAULT_SESSION_EXPIRY_S,
    ) -> None:
        super().__init__(name)
        if not 1 <= max_inflight <= 65535:
            raise ValueError("max_inflight (MQTT ReceiveMaximum) must be 1..65535")
        if not topic_prefix or any(c in topic_prefix for c in "+#") or topic_prefix.startswith("$"):
            raise ValueError(f"topic prefix {topic_prefix!r} must be a plain topic without wildcards")
        if shared_group is not None and (not shared_group or any(c in shared_group for c in "/+#")):
            raise ValueError(f"shared group {shared_group!r} must be one topic level without wildcards")
        self.sink = sink
        self.host = host
        self.port = port
        self.client_id = client_id
        self.topic_prefix = topic_prefix.rstrip("/")
        self.shared_group = shared_group
        self.max_payload_bytes = max_payload_bytes
        self.max_packet_bytes = max_packet_bytes or 4 * max_payload_bytes
        self.username = username
        self.password = password
        self.clock = clock
        self.max_inflight = max_inflight
        self.queue_limit = 2 * max_inflight
        self.keepalive = keepalive
        self.session_expiry_s = session_expiry_s
        self._source = Source(self.kind, name)
        self._connected = False
        self._subscribed = False
        self._paused = False
        self._inbox: deque[_Message] = deque()
        self._topics: dict[bytes, tuple[str, str | None, str | None]] = {}
        self._prefix_levels = self.topic_prefix.count("/") + 1
        self.messages_received = 0
        self.readings_submitted = 0
        self.rejected = 0
        self.max_held_seen = 0
        self.pauses = 0

    @property
    def subscription(self) -> str:
        """The topic filter the connector subscribes to (a shared subscription when grouped)."""
        topic = f"{self.topic_prefix}/+/+/{TELEMETRY}"
        return f"$share/{self.shared_group}/{topic}" if self.shared_group else topic

    def details(self) -> dict[str, Any]:
        """Connection state, counters and the backpressure bound (for health and tests)."""
        return {
            "connected": self._connected,
            "subscribed": self._subscribed,
            "broker": f"{self.host}:{self.port}",
            "client_id": self.client_id,
            "subscription": self.subscription,
            "messages_received": self.messages_received,
            "readings_submitted": self.readings_submitted,
            "rejected": self.rejected,
            "held": self._held(),
            "max_held_seen": self.max_held_seen,
            "queue_limit": self.queue_limit,
            "max_inflight": self.max_inflight,
            "reading_paused": self._paused,
            "pauses": self.pauses,
        }

    def _held(self) -> int:
        """Messages in memory: read from the socket and not yet handed to the sink (or rejected)."""
        return len(self._inbox)

    def _connect_properties(self) -> Properties:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho has no hints here
        props.SessionExpiryInterval = self.session_expiry_s
        props.ReceiveMaximum = self.max_inflight
        props.MaximumPacketSize = self.max_packet_bytes
        return props

    async def run(self) -> None:
        """Connect, subscribe and move messages until cancelled; raise ConnectorError on failure."""
        try:
            await self._run()
        except aiomqtt.MqttError as exc:
            raise ConnectorError(
                f"MQTT connection to {self.host}:{self.port} failed: {exc}",
                broker=f"{self.host}:{self.port}",
                client_id=self.client_id,
            ) from exc
        finally:
            self._connected = False
            self._subscribed = False
            self._paused = False
            self._inbox = deque()

    async def _run(self) -> None:
        client = aiomqtt.Client(
            self.host,
            self.port,
            identifier=self.client_id,
            username=self.username,
            password=self.password,
            protocol=aiomqtt.ProtocolVersion.V5,
            # aiomqtt's default is MQTT_CLEAN_START_FIRST_ONLY, which wipes the session (and the
            # messages queued in it) on every start of the process: never clean.
            clean_start=False,
            keepalive=self.keepalive,
            properties=self._connect_properties(),
        )
        internals = _Internals(client)
        # Before connecting: the broker sends queued session messages right after CONNACK.
        internals.paho.manual_ack_set(True)
        # paho's messages go straight to the connector's inbox, not through aiomqtt's queue and
        # message iterator (a Message copy, a task and a wait per message: half the throughput).
        inbox: deque[_Message] = deque()
        self._inbox = inbox
        internals.deliver_to(inbox)
        async with client:
            self._connected = True
            reader = _PausableReader(internals, self)
            # A persistent session's messages arrive right after CONNACK, before the SUBACK: consume
            # them while subscribing, or a full queue (reading paused) would hide the SUBACK forever.
            consumer = asyncio.create_task(
                self._consume(inbox, internals, reader), name=f"{self.name}:consume"
            )
            subscribing = asyncio.create_task(self._subscribe(client), name=f"{self.name}:subscribe")
            try:
                done, _ = await asyncio.wait({consumer, subscribing}, return_when=asyncio.FIRST_COMPLETED)
                if subscribing in done:
                    subscribing.result()  # refused or failed: raise
                    self._subscribed = True
                    logger.info("mqtt connector %s subscribed on %s:%d", self.name, self.host, self.port)
                await consumer  # runs until the connection fails (MqttError) or the task is cancelled
            finally:
                subscribing.cancel()
                consumer.cancel()
                await asyncio.gather(subscribing, consumer, return_exceptions=True)

    async def _consume(self, inbox: deque[_Message], internals: _Internals, reader: _PausableReader) -> None:
        # PUBACKs are sent in groups: one write for the messages handled in a row. The group goes
        # out as soon as this task yields to the event loop for any reason (waiting for messages
        # or for room in the sink), and at least every half receive window, so neither a broker
        # that keeps to ReceiveMaximum nor a blocked sink leaves handed-over messages unacknowledged.
        acks = bytearray()
        ack_every = 4 * max(1, self.max_inflight // 2)
        loop = asyncio.get_running_loop()
        flush_scheduled = False

        def flush() -> None:
            nonlocal flush_scheduled
            flush_scheduled = False
            if acks:
                internals.send_acks(bytes(acks))
                acks.clear()

        while True:
            while inbox:
                if internals.disconnected.done():
                    raise internals.disconnected_error()
                message = inbox[0]  # stays counted as held until the sink has it
                await self._handle(message)
                inbox.popleft()
                # Acknowledge only now: the message is with the sink (or rejected). If the
                # connection is gone by now the ack goes nowhere and the broker redelivers it.
                if message.qos == 1:
                    acks += b"\x40\x02" + message.mid.to_bytes(2, "big")
                    if len(acks) >= ack_every:
                        flush()
                    elif not flush_scheduled:
                        flush_scheduled = True
                        loop.call_soon(flush)
                elif message.qos == 2:  # never with a QoS 1 subscription; paho's PUBCOMP
                    flush()
                    internals.paho.ack(message.mid, 2)
                if self._paused and len(inbox) <= self.max_inflight:
                    reader.resume()
            flush()
            if internals.disconnected.done():
                raise internals.disconnected_error()
            await reader.wait()

    async def _subscribe(self, client: aiomqtt.Client) -> None:
        # Retained telemetry is delivered once, when the subscription is new, not on every restart.
        options = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB)
        # No timeout: the SUBACK may queue behind a backlog the pipeline is still working through;
        # a dead connection ends the consumer instead, which cancels this.
        granted = await client.subscribe(self.subscription, options=options, timeout=math.inf)
        for code in granted:
            value = code.value if isinstance(code, ReasonCode) else code
            if value >= 0x80:
                raise ConnectorError(
                    f"broker refused the subscription to {self.subscription!r}: {code}",
                    subscription=self.subscription,
                )

    def _parse_topic(self, raw: bytes) -> tuple[str, str | None, str | None]:
        """(topic, tenant, device) of a telemetry topic; tenant or device None when not a valid id."""
        topic = raw.decode("utf-8", "replace")  # Mosquitto refuses invalid UTF-8 topics anyway
        tail = topic.split("/")[self._prefix_levels :]
        tenant = tail[0] if len(tail) == 3 and is_tenant_id(tail[0]) else None
        device = tail[1] if len(tail) == 3 and is_object_id(tail[1]) else None
        if len(self._topics) >= _TOPIC_CACHE_SIZE:
            self._topics.clear()
        parsed = self._topics[raw] = (topic, tenant, device)
        return parsed

    async def _handle(self, message: _Message) -> None:
        self.messages_received += 1
        payload = message.payload
        topic, tenant, device = self._topics.get(message.topic) or self._parse_topic(message.topic)
        if tenant is None or device is None:
            self._reject(
                tenant,
                device,
                RejectReason.MALFORMED,
                f"topic {topic[:200]!r} is not {self.topic_prefix}/<tenant id>/<device id>/{TELEMETRY}",
                payload,
            )
            return
        now = self.clock()
        try:
            samples = decode(payload, max_bytes=self.max_payload_bytes, now=now)
            for sample in samples:
                if not RESERVED_METRICS.isdisjoint(map(str.lower, sample.metrics)):
                    reserved = sorted(RESERVED_METRICS.intersection(map(str.lower, sample.metrics)))
                    raise PayloadError(
                        RejectReason.BAD_METRIC_NAME,
                        f"{reserved[0]!r} is reserved: the tenant and device come from the topic",
                    )
        except PayloadError as exc:
            self._reject(tenant, device, exc.reason, exc.detail, payload)
            return
        source, submit = self._source, self.sink.submit
        for sample in samples:
            await submit(Reading(tenant, device, sample.ts, sample.metrics, source))
            self.readings_submitted += 1

    def _reject(
        self, tenant: str | None, device: str | None, reason: RejectReason, detail: str, payload: bytes
    ) -> None:
        self.rejected += 1
        self.sink.reject(
            Rejection(tenant, device, reason, detail, self._source, Rejection.excerpt(payload), self.clock())
        )


class _BufferedRecv:
    """Stands in for paho's ``_sock_recv``: one recv() of up to _RECV_CHUNK bytes, served to paho
    in the small pieces it asks for (a header byte, the length bytes, the rest of the packet)."""

    def __init__(self, recv: Callable[[int], bytes]) -> None:
        self._recv = recv
        self._data = b""
        self._pos = 0

    def __call__(self, bufsize: int) -> bytes:
        data, pos = self._data, self._pos
        if pos >= len(data):
            data = self._recv(_RECV_CHUNK)  # BlockingIOError when empty, b"" at EOF: as paho expects
            pos = 0
            self._data = data
        end = min(pos + bufsize, len(data))
        self._pos = end
        return data[pos:end] if pos or end < len(data) else data

    def pending(self) -> int:
        """Bytes read from the socket that paho has not taken yet."""
        return len(self._data) - self._pos


class _PausableReader:
    """Replaces aiomqtt's socket reader with one that stops reading while the inbox is full.

    Reads buffer up to _RECV_CHUNK bytes (held outside the inbox bound; at most that much).
    """

    def __init__(self, internals: _Internals, connector: MqttConnector) -> None:
        self._internals = internals
        self._connector = connector
        self._loop = asyncio.get_running_loop()
        self._waiter: asyncio.Future[None] | None = None
        sock = internals.paho.socket()
        if sock is None:
            raise aiomqtt.MqttError("connection closed right after CONNACK")
        self._sock = sock
        self._fd = sock.fileno()
        # paho reads exactly what a packet needs, so nothing is lost by buffering from here on.
        self._buffer = _BufferedRecv(internals.paho._sock_recv)
        internals.paho._sock_recv = self._buffer  # type: ignore[method-assign]
        # aiomqtt registered its reader for this socket while connecting; take over.
        self._loop.remove_reader(self._fd)
        self._loop.add_reader(self._fd, self._on_readable)
        internals.disconnected.add_done_callback(lambda _: self._wake())

    def _on_readable(self) -> None:
        paho_client = self._internals.paho
        connector = self._connector
        try:
            while True:
                paho_client.loop_read()  # one packet
                if connector._held() >= connector.queue_limit or not self._more_to_read():
                    break
        except Exception as exc:  # the connection broke: end message iteration like aiomqtt does
            self._internals.fail(exc)
            return
        held = connector._held()
        if held:
            self._wake()
        connector.max_held_seen = max(connector.max_held_seen, held)
        if held >= connector.queue_limit and not connector._paused and self._is_current():
            self._loop.remove_reader(self._fd)
            connector._paused = True
            connector.pauses += 1
            logger.debug("mqtt connector %s: pipeline slow, stopped reading", connector.name)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def wait(self) -> None:
        """Until messages arrive or the connection ends."""
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _is_current(self) -> bool:
        return self._internals.paho.socket() is self._sock

    def _more_to_read(self) -> bool:
        """Bytes already read that the socket will not announce again (buffered or TLS)."""
        return self._buffer.pending() > 0 or self._tls_pending()

    def _tls_pending(self) -> bool:
        """Whether TLS already decrypted bytes that the socket will not announce again."""
        pending = getattr(self._internals.paho.socket(), "pending", None)
        return pending is not None and bool(pending() > 0)

    def resume(self) -> None:
        """Read the socket again (no-op unless paused and still connected)."""
        if self._connector._paused:
            self._connector._paused = False
            if self._is_current():
                self._loop.add_reader(self._fd, self._on_readable)
                if self._more_to_read():
                    self._loop.call_soon(self._on_readable)
