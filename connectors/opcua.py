"""The OPC-UA connector: subscribes to PLC variables and turns their data changes into readings.

Configuration (docs/devices/opcua.md): one :class:`OpcUaEndpointConfig` per device, i.e. per
(tenant, device, server URL), mapping OPC-UA nodes to metric names. A node is named by a full node
id (``ns=2;s=Line1/Speed``, ``i=2258``, or the index-free ``nsu=<uri>;s=Line1/Speed``) or by
``namespace_uri`` + ``identifier``; namespace URIs are resolved to the server's namespace index on
every connection, because the index may change when the PLC program changes.

Per endpoint, the connector runs two tasks:

- a *session loop*: connect (asyncua ``Client``), create one subscription with a monitored item per
  mapped node, wait until the connection is lost, disconnect, wait a jittered exponential backoff
  (``reconnect_min_s`` doubling up to ``reconnect_max_s``; reset after a connection that stayed up
  ``reconnect_max_s``), and start again with a new client and a new subscription. Endpoints are
  independent: one unreachable or misconfigured server never stops, restarts or slows the others,
  so ``run()`` itself does not fail on connection problems (the ConnectorSupervisor only restarts
  the connector if the reading sink fails or on a bug).
- a *delivery loop*: takes data changes from the endpoint's bounded buffer, turns each into one
  Reading ``{metric: value}`` and awaits ``ReadingSink.submit``.

asyncua calls the subscription handler from its own publish machinery (in 2.1: one task per
notification), so the handler only records the change in the buffer and never blocks.

Buffer and backpressure: the buffer holds up to ``buffer_size`` changes in arrival order. When the
pipeline is slow and the buffer is full, OPC-UA gives the client no way to make the *server* wait
without losing the subscription, so the connector sheds load the way OPC-UA servers do: from then on
it keeps only the latest change of each metric ("latest value wins", counted as ``superseded``)
until the buffer has drained. Memory is bounded by ``buffer_size`` + the number of mapped nodes;
within a metric, changes are never reordered, and the last value of every metric always reaches
the pipeline. On the server side, each monitored item keeps up to ``server_queue_size`` samples
between two publish cycles (oldest discarded first).

Connection loss is detected by asyncua's connection supervisor (the socket closing, or the
``watchdog_interval_s`` probe of the server state timing out) through ``connection_lost_callback``,
and by a Bad subscription status change from the server (e.g. ``BadTimeout``: the server dropped the
subscription). The first failure of an outage (connection lost, or the first connection attempt
refused or timing out) is reported once through ``ConnectivitySink.unreachable``; the next
successful connection ends the outage. A server that answers but refuses a node is *not*
unreachable: the node's error shows in ``details()`` and the other nodes keep flowing; if no mapped
node can be monitored the endpoint retries with backoff.

Readings: ``ts`` is the value's SourceTimestamp, else its ServerTimestamp, else the time the change
arrived (always timezone-aware UTC); ``quality`` comes from the StatusCode severity (Good, Uncertain,
Bad); ``source`` is ``Source("opcua", <connector name>)``. Scalars map to bool, int, float or str
(LocalizedText to its text); other types are refused with a ``wrong_type`` Rejection, non-finite
floats with ``not_finite``. A change without a value (a Bad status with a null value, e.g.
``BadSensorFailure``) produces no reading: it is counted and its status is shown in ``details()``.
A change identical (value, status, source timestamp) to the last one delivered for the metric, as
servers resend on a new subscription after a reconnect, is skipped.

asyncua and ``ua`` errors are translated into ConnectorError at the boundary of each connection
attempt; ``ConnectorError.extensions["unreachable"]`` says whether it was a network failure.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, Self

from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.node import Node
from asyncua.common.subscription import DataChangeNotif
from asyncua.ua.uaerrors import UaError
from pydantic import BaseModel, ConfigDict, Field, model_validator

from connectors.base import ConnectivitySink, Connector, ConnectorError, ReadingSink
from model.devices import METRIC_NAME_PATTERN
from model.ids import OBJECT_ID_PATTERN, TENANT_ID_PATTERN
from model.readings import MetricValue, Quality, Reading, Source
from model.rejections import Rejection, RejectReason

logger = logging.getLogger(__name__)

_IDENTIFIER_PREFIXES = ("i=", "s=", "g=", "b=")
# OPC-UA's "no timestamp" is the FILETIME epoch (1601-01-01); asyncua decodes it as such a date.
_NULL_TIMESTAMP_YEAR = 1601
APPLICATION_URI = "urn:flatgigs:connector:opcua"


def _utc_now() -> datetime:
    return datetime.now(UTC)


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True, slots=True)
class NodeReference:
    """A parsed node reference; the namespace index is resolved on the server if a URI is given."""

    namespace_uri: str | None
    namespace_index: int
    identifier_type: ua.NodeIdType
    identifier: Any

    def resolve(self, namespaces: Sequence[str] | None) -> ua.NodeId:
        """The NodeId on a server whose namespace array is `namespaces`; LookupError if unknown."""
        index = self.namespace_index
        if self.namespace_uri is not None:
            if namespaces is None or self.namespace_uri not in namespaces:
                raise LookupError(f"the server has no namespace {self.namespace_uri!r}")
            index = list(namespaces).index(self.namespace_uri)
        return ua.NodeId(self.identifier, ua.Int16(index), self.identifier_type)

    def __str__(self) -> str:
        plain = ua.NodeId(self.identifier, ua.Int16(0), self.identifier_type).to_string()
        if self.namespace_uri is not None:
            return f"nsu={self.namespace_uri};{plain}"
        if self.namespace_index:
            return f"ns={self.namespace_index};{plain}"
        return plain


class NodeMapping(BaseModel):
    """One OPC-UA variable and the metric its value becomes.

    Either ``node_id`` in the OPC-UA string form (``ns=2;s=Line1/Speed``, ``i=2258``,
    ``nsu=urn:flatgigs:test-plc;s=Line1/Speed``) or ``namespace_uri`` with ``identifier``
    (``s=Line1/Speed``, ``i=1001``, ``g=<uuid>``, ``b=<base64>``; a bare text is a string id).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: str = Field(pattern=METRIC_NAME_PATTERN, examples=["speed"])
    node_id: str | None = Field(default=None, min_length=1, max_length=4096, examples=["ns=2;s=Line1/Speed"])
    namespace_uri: str | None = Field(default=None, min_length=1, max_length=1024)
    identifier: str | None = Field(default=None, min_length=1, max_length=4096, examples=["s=Line1/Speed"])

    @model_validator(mode="after")
    def _one_form(self) -> Self:
        if self.node_id is not None:
            if self.namespace_uri is not None or self.identifier is not None:
                raise ValueError("give either node_id, or namespace_uri with identifier, not both")
        elif self.namespace_uri is None or self.identifier is None:
            raise ValueError("give node_id, or namespace_uri together with identifier")
        self.reference()  # a malformed node id is a configuration error, found now
        return self

    def reference(self) -> NodeReference:
        """The parsed node reference (raises ValueError for a malformed one)."""
        if self.node_id is not None:
            text = self.node_id
        else:
            assert self.identifier is not None
            prefixed = self.identifier.startswith((*_IDENTIFIER_PREFIXES, "ns=", "nsu="))
            text = self.identifier if prefixed else f"s={self.identifier}"
        try:
            parsed = ua.NodeId.from_string(text)
        except (UaError, ValueError) as exc:
            raise ValueError(f"{text!r} is not an OPC-UA node id (e.g. 'ns=2;s=Line1/Speed')") from exc
        uri = self.namespace_uri
        if isinstance(parsed, ua.ExpandedNodeId):
            if parsed.ServerIndex:
                raise ValueError(f"{text!r} names a node on another server (srv=), which is not supported")
            if parsed.NamespaceUri:
                if parsed.NamespaceIndex:
                    raise ValueError(f"{text!r} gives both ns= and nsu=")
                uri = str(parsed.NamespaceUri)
        if self.namespace_uri is not None and (
            parsed.NamespaceIndex or uri != self.namespace_uri or text.startswith(("ns=", "nsu="))
        ):
            raise ValueError("with namespace_uri, the identifier must not name a namespace (ns=/nsu=)")
        return NodeReference(uri, int(parsed.NamespaceIndex), parsed.NodeIdType, parsed.Identifier)


class OpcUaEndpointConfig(BaseModel):
    """One device behind one OPC-UA server endpoint, and how its nodes map to metrics."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tenant_id: str = Field(pattern=TENANT_ID_PATTERN, examples=["globex-plant"])
    device_id: str = Field(pattern=OBJECT_ID_PATTERN, examples=["line1-plc"])
    # Credentials in the URL would end up in logs and health details: not accepted.
    url: str = Field(pattern=r"^opc\.tcp://[^\s/@]+(/\S*)?$", examples=["opc.tcp://10.0.0.5:4840"])
    nodes: list[NodeMapping] = Field(min_length=1, max_length=1000)
    publishing_interval_ms: float = Field(default=500, gt=0, le=3_600_000)
    # None: sample as often as the subscription publishes.
    sampling_interval_ms: float | None = Field(default=None, ge=0, le=3_600_000)
    server_queue_size: int = Field(default=10, ge=1, le=10_000)
    buffer_size: int = Field(default=1000, ge=1, le=1_000_000)
    request_timeout_s: float = Field(default=4.0, gt=0, le=600)
    watchdog_interval_s: float = Field(default=1.0, gt=0, le=600)
    session_timeout_s: float = Field(default=60.0, ge=1, le=86_400)
    reconnect_min_s: float = Field(default=0.5, gt=0, le=3600)
    reconnect_max_s: float = Field(default=30.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        metrics = [n.metric for n in self.nodes]
        duplicates = sorted({m for m in metrics if metrics.count(m) > 1})
        if duplicates:
            raise ValueError(f"metrics mapped twice: {duplicates}")
        references = [str(n.reference()) for n in self.nodes]
        duplicates = sorted({r for r in references if references.count(r) > 1})
        if duplicates:
            raise ValueError(f"nodes mapped twice: {duplicates}")
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError("reconnect_min_s is greater than reconnect_max_s")
        return self

    @property
    def key(self) -> str:
        """``<tenant>/<device>``: the endpoint's name in logs and health details."""
        return f"{self.tenant_id}/{self.device_id}"


# --------------------------------------------------------------------------- value mapping


def quality_of(status: ua.StatusCode | None) -> Quality:
    """Reading quality from an OPC-UA status code's severity (no status means Good)."""
    if status is None or status.is_good():
        return Quality.GOOD
    if status.is_uncertain():
        return Quality.UNCERTAIN
    return Quality.BAD


def timestamp_of(value: ua.DataValue | None) -> datetime | None:
    """SourceTimestamp, else ServerTimestamp, as aware UTC; None if the server sent neither."""
    if value is None:
        return None
    for ts in (value.SourceTimestamp, value.ServerTimestamp):
        if ts is None or ts.year <= _NULL_TIMESTAMP_YEAR:
            continue
        # asyncua 2.1 decodes aware UTC datetimes; older versions gave naive UTC ones.
        return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
    return None


def metric_value(value: Any) -> MetricValue | None:
    """The metric value of an OPC-UA scalar, or None if it is not a bool, number or text."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, ua.LocalizedText) and value.Text is not None:
        return str(value.Text)
    return None


def _describe(exc: BaseException) -> str:
    text = str(exc)
    name = type(exc).__name__
    if isinstance(exc, TimeoutError) and not text:
        return "TimeoutError: no answer in time"
    return f"{name}: {text}" if text else name


# --------------------------------------------------------------------------- buffering


@dataclass(frozen=True, slots=True)
class _Change:
    metric: str
    value: Any
    data_value: ua.DataValue | None
    received_at: datetime


class _ChangeBuffer:
    """Bounded FIFO of data changes; when full, keeps only the latest change per metric.

    ``put`` never blocks (it runs in asyncua's notification path). While the FIFO is full, and
    until everything queued before has been taken, changes go to a per-metric overflow slot that a
    newer change of the same metric replaces, so per-metric order holds and memory stays bounded.
    """

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._queue: deque[_Change] = deque()
        self._overflow: dict[str, _Change] = {}
        self._ready = asyncio.Event()
        self.superseded = 0

    def __len__(self) -> int:
        return len(self._queue) + len(self._overflow)

    def put(self, change: _Change) -> None:
        if self._overflow or len(self._queue) >= self.maxsize:
            if change.metric in self._overflow:
                self.superseded += 1
            self._overflow[change.metric] = change
        else:
            self._queue.append(change)
        self._ready.set()

    async def get(self) -> _Change:
        while True:
            if self._queue:
                return self._queue.popleft()
            if self._overflow:
                metric = next(iter(self._overflow))
                return self._overflow.pop(metric)
            self._ready.clear()
            await self._ready.wait()


# --------------------------------------------------------------------------- endpoint


@dataclass(slots=True)
class _NodeState:
    reference: str
    node_id: str | None = None
    status: str | None = None
    error: str | None = None


class _Handler:
    """asyncua subscription handler: records changes, never blocks, flags a dead subscription."""

    def __init__(self, endpoint: _Endpoint, metrics: dict[str, str], on_lost: Callable[[str], None]) -> None:
        self._endpoint = endpoint
        self._metrics = metrics  # node id string -> metric
        self._on_lost = on_lost

    def datachange_notification(self, node: Node, val: Any, data: DataChangeNotif) -> None:
        metric = self._metrics.get(node.nodeid.to_string())
        if metric is not None:
            self._endpoint.received(metric, val, data.monitored_item.Value)

    def status_change_notification(self, status: ua.StatusChangeNotification) -> None:
        code = status.Status
        if code is not None and not code.is_good():
            self._on_lost(f"the server ended the subscription: {code.name}")


class _Endpoint:
    """Connection, subscription, buffer and counters of one configured endpoint."""

    def __init__(self, config: OpcUaEndpointConfig, connector: OpcUaConnector) -> None:
        self.config = config
        self.key = config.key
        self._connector = connector
        self._buffer = _ChangeBuffer(config.buffer_size)
        self._nodes = {n.metric: _NodeState(str(n.reference())) for n in config.nodes}
        self._last_delivered: dict[str, tuple[datetime, MetricValue, Quality]] = {}
        self._in_outage = False
        self._up_since: float | None = None
        self.connected = False
        self.last_error: str | None = None
        self.last_error_at: datetime | None = None
        self.connects = 0
        self.outages = 0
        self.changes_received = 0
        self.readings_submitted = 0
        self.rejected = 0
        self.without_value = 0
        self.duplicates = 0

    def details(self) -> dict[str, Any]:
        return {
            "tenant_id": self.config.tenant_id,
            "device_id": self.config.device_id,
            "url": self.config.url,
            "connected": self.connected,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at.isoformat() if self.last_error_at else None,
            "connects": self.connects,
            "outages": self.outages,
            "changes_received": self.changes_received,
            "readings_submitted": self.readings_submitted,
            "rejected": self.rejected,
            "without_value": self.without_value,
            "duplicates": self.duplicates,
            "superseded": self._buffer.superseded,
            "buffered": len(self._buffer),
            "buffer_size": self.config.buffer_size,
            "nodes": {
                metric: {"node": s.reference, "node_id": s.node_id, "status": s.status, "error": s.error}
                for metric, s in self._nodes.items()
            },
        }

    # -- session loop ------------------------------------------------------------------------

    async def run_sessions(self) -> None:
        """Connect, subscribe and wait for loss, forever, with backoff between attempts."""
        config = self.config
        loop = asyncio.get_running_loop()
        backoff = config.reconnect_min_s
        while True:
            self._up_since = None
            try:
                await self._session()
            except ConnectorError as exc:
                self._failed(exc)
            # A connection that stayed up for a while resets the backoff; a flapping one does not.
            if self._up_since is not None and loop.time() - self._up_since >= config.reconnect_max_s:
                backoff = config.reconnect_min_s
            delay = backoff * (0.5 + self._connector.rng())  # jitter: endpoints do not retry in step
            logger.debug("opcua %s: next connection attempt in %.2fs", self.key, delay)
            await asyncio.sleep(delay)
            backoff = min(backoff * 2, config.reconnect_max_s)

    async def _session(self) -> None:
        """One connection from connect to loss; always ends with ConnectorError (or cancellation)."""
        config = self.config
        loop = asyncio.get_running_loop()
        lost: asyncio.Future[str] = loop.create_future()

        def on_lost(detail: str) -> None:
            if not lost.done():
                lost.set_result(detail)

        async def connection_lost(exc: Exception) -> None:
            on_lost(f"connection lost: {_describe(exc)}")

        client = Client(
            config.url, timeout=config.request_timeout_s, watchdog_intervall=config.watchdog_interval_s
        )
        client.session_timeout = round(config.session_timeout_s * 1000)
        client.name = client.description = f"flatgigs {self._connector.name}"
        client.application_uri = APPLICATION_URI
        client.connection_lost_callback = connection_lost
        opened = False
        try:
            try:
                await client.connect()
            except Exception as exc:
                raise self._translate(exc, "connect") from exc
            opened = True
            self.connects += 1
            if self._in_outage:
                logger.info("opcua %s: %s answers again", self.key, config.url)
            self._in_outage = False
            try:
                await self._subscribe(client, on_lost)
            except ConnectorError:
                raise
            except Exception as exc:
                raise self._translate(exc, "subscribe") from exc
            self.connected = True
            self._up_since = loop.time()
            self._connector.notify(self)
            detail = await lost
            raise ConnectorError(
                f"{config.url}: {detail}", endpoint=self.key, url=config.url, unreachable=True
            )
        finally:
            self.connected = False
            # (Cancelling this task cancels the awaited future too: that is no loss.)
            await self._close(client, opened=opened, lost=lost.done() and not lost.cancelled())

    async def _subscribe(self, client: Client, on_lost: Callable[[str], None]) -> None:
        config = self.config
        references = [(mapping.metric, mapping.reference()) for mapping in config.nodes]
        namespaces: list[str] | None = None
        if any(ref.namespace_uri is not None for _, ref in references):
            namespaces = await client.get_namespace_array()
        targets: list[tuple[str, Node]] = []
        seen: dict[str, str] = {}
        for metric, ref in references:
            state = self._nodes[metric]
            state.node_id = None
            try:
                node_id = ref.resolve(namespaces)
            except LookupError as exc:
                state.error = str(exc)
                continue
            state.node_id = node_id.to_string()
            if state.node_id in seen:  # e.g. an ns= and a nsu= form of the same node
                state.error = f"the same node as metric {seen[state.node_id]!r}"
                continue
            seen[state.node_id] = metric
            state.error = None
            targets.append((metric, client.get_node(node_id)))
        results: list[int | ua.StatusCode] = []
        if targets:
            handler = _Handler(self, {node.nodeid.to_string(): metric for metric, node in targets}, on_lost)
            subscription = await client.create_subscription(config.publishing_interval_ms, handler)
            sampling = config.sampling_interval_ms
            results = await subscription.subscribe_data_change(
                [node for _, node in targets],
                queuesize=config.server_queue_size,
                sampling_interval=ua.Duration(
                    sampling if sampling is not None else config.publishing_interval_ms
                ),
            )
        monitored = 0
        for (metric, _), result in zip(targets, results, strict=True):
            if isinstance(result, ua.StatusCode):
                self._nodes[metric].error = f"the server refused to monitor it: {result.name}"
            else:
                monitored += 1
        refused = {m: s for m, s in self._nodes.items() if s.error is not None}
        if refused:
            summary = "; ".join(f"{m} ({s.reference}): {s.error}" for m, s in refused.items())
            self._record_error(f"{config.url}: node(s) not monitored: {summary}")
            logger.warning("opcua %s: node(s) not monitored: %s", self.key, summary)
            self._connector.notify(self)
        if monitored == 0:
            raise ConnectorError(
                f"{config.url}: none of the mapped nodes can be monitored",
                endpoint=self.key,
                url=config.url,
                unreachable=False,
                nodes={m: s.error for m, s in refused.items()},
            )

    async def _close(self, client: Client, *, opened: bool, lost: bool) -> None:
        """Close the session politely if the server may still answer; never leave a socket open."""
        try:
            if lost:
                # A frozen server would never answer CloseSession: drop the socket first, then let
                # disconnect() stop asyncua's tasks (it skips the requests on a closed socket).
                _drop_transport(client)
            if opened:
                async with asyncio.timeout(self.config.request_timeout_s):
                    await client.disconnect()
        except Exception as exc:  # the connection is being dropped anyway
            logger.debug("opcua %s: disconnect: %s", self.key, _describe(exc))
        finally:
            _drop_transport(client)

    def _translate(self, exc: Exception, stage: str) -> ConnectorError:
        """asyncua/ua/socket errors -> ConnectorError; a network failure means unreachable."""
        url = self.config.url
        unreachable = isinstance(exc, OSError)  # incl. ConnectionError and TimeoutError
        if not unreachable and not isinstance(exc, UaError):
            logger.error("opcua %s: unexpected error during %s", self.key, stage, exc_info=exc)
        return ConnectorError(
            f"{url}: {stage} failed: {_describe(exc)}", endpoint=self.key, url=url, unreachable=unreachable
        )

    def _record_error(self, detail: str) -> None:
        self.last_error = detail
        self.last_error_at = self._connector.clock()

    def _failed(self, exc: ConnectorError) -> None:
        self._record_error(exc.detail)
        if exc.extensions.get("unreachable") and not self._in_outage:
            self._in_outage = True
            self.outages += 1
            logger.warning("opcua %s: unreachable: %s", self.key, exc.detail)
            self._connector.report_unreachable(self, exc.detail)
        else:
            logger.debug("opcua %s: %s", self.key, exc.detail)
        self._connector.notify(self)

    # -- delivery ----------------------------------------------------------------------------

    def received(self, metric: str, value: Any, data_value: ua.DataValue | None) -> None:
        """A data change from asyncua: buffer it (never blocks)."""
        self.changes_received += 1
        self._buffer.put(_Change(metric, value, data_value, self._connector.clock()))

    async def run_delivery(self) -> None:
        """Hand buffered changes to the sink, one reading each, waiting while the sink is full."""
        while True:
            change = await self._buffer.get()
            await self._deliver(change)

    async def _deliver(self, change: _Change) -> None:
        config = self.config
        status = change.data_value.StatusCode if change.data_value is not None else None
        state = self._nodes[change.metric]
        state.status = status.name if status is not None else None
        if change.value is None:
            self.without_value += 1
            logger.debug("opcua %s: %s has no value (%s)", self.key, change.metric, state.status)
            return
        value = metric_value(change.value)
        if value is None:
            self._reject(
                change,
                RejectReason.WRONG_TYPE,
                f"{change.metric}: OPC-UA value of type {type(change.value).__name__} "
                "is not a bool, number or text",
            )
            return
        if isinstance(value, float) and not math.isfinite(value):
            self._reject(change, RejectReason.NOT_FINITE, f"{change.metric}: {value} is not a finite number")
            return
        quality = quality_of(status)
        source_ts = timestamp_of(change.data_value)
        if source_ts is not None and self._last_delivered.get(change.metric) == (source_ts, value, quality):
            self.duplicates += 1
            return
        reading = Reading(
            config.tenant_id,
            config.device_id,
            source_ts or change.received_at,
            {change.metric: value},
            self._connector.source,
            quality,
        )
        await self._connector.sink.submit(reading)
        self.readings_submitted += 1
        if source_ts is not None:
            self._last_delivered[change.metric] = (source_ts, value, quality)

    def _reject(self, change: _Change, reason: RejectReason, detail: str) -> None:
        self.rejected += 1
        self._connector.sink.reject(
            Rejection(
                self.config.tenant_id,
                self.config.device_id,
                reason,
                detail,
                self._connector.source,
                Rejection.excerpt(repr(change.value).encode()),
                self._connector.clock(),
            )
        )


# --------------------------------------------------------------------------- connector


class OpcUaConnector(Connector):
    """Subscribes to the mapped nodes of every configured endpoint and submits their changes."""

    kind: ClassVar[str] = "opcua"

    def __init__(
        self,
        name: str,
        sink: ReadingSink,
        endpoints: Sequence[OpcUaEndpointConfig],
        *,
        connectivity: ConnectivitySink | None = None,
        on_change: Callable[[str, dict[str, Any]], None] | None = None,
        clock: Callable[[], datetime] = _utc_now,
        rng: Callable[[], float] = random.random,
    ) -> None:
        """`on_change(endpoint key, endpoint details)` is called when an endpoint connects or fails."""
        super().__init__(name)
        if not endpoints:
            raise ValueError("an OPC-UA connector needs at least one endpoint")
        keys = [e.key for e in endpoints]
        duplicates = sorted({k for k in keys if keys.count(k) > 1})
        if duplicates:
            raise ValueError(f"devices configured twice: {duplicates}")
        self.sink = sink
        self.connectivity = connectivity
        self.on_change = on_change
        self.clock = clock
        self.rng = rng
        self.source = Source(self.kind, name)
        self._endpoints = [_Endpoint(config, self) for config in endpoints]

    def details(self) -> dict[str, Any]:
        """Per endpoint: connected flag, last error, counters and the state of every node."""
        endpoints = {e.key: e.details() for e in self._endpoints}
        return {
            "endpoints": endpoints,
            "connected": sum(1 for e in self._endpoints if e.connected),
            "configured": len(self._endpoints),
        }

    async def run(self) -> None:
        """Run every endpoint until cancelled; raise ConnectorError only if delivery itself fails."""
        try:
            async with asyncio.TaskGroup() as group:
                for endpoint in self._endpoints:
                    group.create_task(
                        endpoint.run_sessions(), name=f"opcua:{self.name}:{endpoint.key}:session"
                    )
                    group.create_task(
                        endpoint.run_delivery(), name=f"opcua:{self.name}:{endpoint.key}:delivery"
                    )
        except ExceptionGroup as group:
            first = _first_leaf(group)
            raise ConnectorError(
                f"OPC-UA connector {self.name!r} stopped: {_describe(first)}", connector=self.name
            ) from group
        finally:
            for endpoint in self._endpoints:
                endpoint.connected = False

    def report_unreachable(self, endpoint: _Endpoint, detail: str) -> None:
        if self.connectivity is None:
            return
        try:
            self.connectivity.unreachable(endpoint.config.tenant_id, endpoint.config.device_id, detail)
        except Exception:  # a broken observer must not stop the connection loop
            logger.exception("opcua %s: connectivity sink failed", endpoint.key)

    def notify(self, endpoint: _Endpoint) -> None:
        if self.on_change is None:
            return
        try:
            self.on_change(endpoint.key, endpoint.details())
        except Exception:
            logger.exception("opcua %s: on_change callback failed", endpoint.key)


def _drop_transport(client: Client) -> None:
    """Close the client's socket whatever asyncua's state says (after a loss it says DISCONNECTED
    while the socket to a frozen server is still open, so ``Client.disconnect_socket`` skips it)."""
    protocol = client.uaclient.protocol
    if protocol is not None and not protocol.is_closed:
        protocol.disconnect_socket()


def _first_leaf(group: BaseExceptionGroup[Any]) -> BaseException:
    first: BaseException = group
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return first
