"""The OPC-UA connector against a real asyncua server in its own process (tests/harness/opcua.py).

The test drives the fake PLC through its own OPC-UA client (``PlcWriter``): every value, status
code and source timestamp below is written by the test, so the expected readings are known exactly.
Node ids are resolved by namespace URI (never by assuming index 2), except where the ``ns=`` form
itself is under test, and then the index is looked up first. Waits are on events (readings,
refusals, unreachable reports, endpoint state changes, the connector reading its clock for each
data change), each with a timeout; nothing sleeps to wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from asyncua import ua
from asyncua.ua.status_codes import StatusCodes
from pydantic import ValidationError

from connectors.opcua import (
    NodeMapping,
    OpcUaConnector,
    OpcUaEndpointConfig,
    metric_value,
    quality_of,
    timestamp_of,
)
from connectors.supervisor import ConnectorSupervisor
from model.readings import Quality, Reading, Source
from model.rejections import Rejection, RejectReason
from tests.harness.opcua import NAMESPACE_URI, OpcUaServer, PlcWriter, start_opcua_server
from tests.harness.ports import LOOPBACK, free_port

DOC = Path(__file__).resolve().parents[3] / "docs" / "devices" / "opcua.md"
WAIT_S = 15.0
TENANT = "globex-plant"

# ---------------------------------------------------------------------------------------------
# Real in-test sinks: lists plus an event, no mocks
# ---------------------------------------------------------------------------------------------


class _Recorder:
    def __init__(self) -> None:
        self._changed = asyncio.Event()

    def _notify(self) -> None:
        self._changed.set()

    async def wait_for(self, condition: Callable[[], bool], within: float = WAIT_S) -> None:
        """Wait until ``condition()`` holds, re-checking it whenever something is recorded."""
        async with asyncio.timeout(within):
            while not condition():
                self._changed.clear()
                await self._changed.wait()


class RecordingSink(_Recorder):
    """ReadingSink keeping everything it is handed; ``gate`` cleared makes ``submit`` wait."""

    def __init__(self) -> None:
        super().__init__()
        self.readings: list[Reading] = []
        self.rejections: list[Rejection] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def submit(self, reading: Reading) -> None:
        await self.gate.wait()
        self.readings.append(reading)
        self._notify()

    def offer(self, reading: Reading) -> None:
        self.readings.append(reading)
        self._notify()

    def reject(self, rejection: Rejection) -> None:
        self.rejections.append(rejection)
        self._notify()

    def values(self, device_id: str, metric: str) -> list[Any]:
        return [r.metrics[metric] for r in self.readings if r.device_id == device_id and metric in r.metrics]

    def with_value(self, device_id: str, metric: str, value: Any) -> list[Reading]:
        return [r for r in self.readings if r.device_id == device_id and r.metrics.get(metric) == value]


class RecordingConnectivity(_Recorder):
    """ConnectivitySink keeping every unreachable report."""

    def __init__(self) -> None:
        super().__init__()
        self.reports: list[tuple[str, str, str]] = []

    def unreachable(self, tenant_id: str, device_id: str, detail: str) -> None:
        self.reports.append((tenant_id, device_id, detail))
        self._notify()

    def of(self, device_id: str) -> list[tuple[str, str, str]]:
        return [r for r in self.reports if r[1] == device_id]


class StateChanges(_Recorder):
    """The connector's ``on_change`` callback: endpoint details at every connect and failure."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, key: str, details: dict[str, Any]) -> None:
        self.events.append((key, details))
        self._notify()

    def of(self, device_id: str) -> list[dict[str, Any]]:
        return [d for k, d in self.events if k == f"{TENANT}/{device_id}"]


class CountingClock(_Recorder):
    """The connector's clock: it is read once for every data change that arrives."""

    def __call__(self) -> datetime:
        self._notify()
        return datetime.now(UTC)


@contextlib.asynccontextmanager
async def running(connector: OpcUaConnector) -> AsyncIterator[asyncio.Task[None]]:
    """Run the connector in a task; cancel it afterwards (a crash inside fails the test)."""
    task = asyncio.create_task(connector.run(), name=f"test:{connector.name}")
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def endpoint(device_id: str, url: str, nodes: list[NodeMapping], **overrides: Any) -> OpcUaEndpointConfig:
    """An endpoint tuned for tests: fast publishing, quick loss detection and retries."""
    settings: dict[str, Any] = {
        "publishing_interval_ms": 50,
        "watchdog_interval_s": 0.5,
        "request_timeout_s": 2.0,
        "reconnect_min_s": 0.1,
        "reconnect_max_s": 0.5,
        **overrides,
    }
    return OpcUaEndpointConfig(tenant_id=TENANT, device_id=device_id, url=url, nodes=nodes, **settings)


def by_uri(metric: str, name: str) -> NodeMapping:
    return NodeMapping(metric=metric, namespace_uri=NAMESPACE_URI, identifier=f"s=Line1/{name}")


def line1_nodes() -> list[NodeMapping]:
    """Line1 of the scenarios, in every supported spelling of a node (the ns= one is added per test)."""
    return [
        NodeMapping(metric="temperature", namespace_uri=NAMESPACE_URI, identifier="s=Line1/Temperature"),
        NodeMapping(metric="state", namespace_uri=NAMESPACE_URI, identifier="Line1/State"),
        NodeMapping(metric="parts_made", node_id=f"nsu={NAMESPACE_URI};s=Line1/PartsMade"),
        by_uri("running", "Running"),
    ]


@pytest.fixture(scope="session")
def opcua_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpcUaServer]:
    """One fake PLC for the tests that do not break it (start-up takes 2-3 s)."""
    server = start_opcua_server(tmp_path_factory.mktemp("opcua"))
    yield server
    server.stop()


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[OpcUaServer]:
    """A fake PLC of this test alone, to kill and restart."""
    server = start_opcua_server(tmp_path / "opcua")
    yield server
    server.stop()


# ---------------------------------------------------------------------------------------------
# Values, types, timestamps, quality
# ---------------------------------------------------------------------------------------------


async def test_written_values_become_readings(opcua_server: OpcUaServer) -> None:
    sink = RecordingSink()
    async with PlcWriter(opcua_server.url) as plc:
        # The ns= form needs the index: looked up, not assumed.
        speed = NodeMapping(metric="speed", node_id=plc.node_id("Speed"))
        config = endpoint("line1-plc", opcua_server.url, [speed, *line1_nodes()])
        connector = OpcUaConnector("plant-opcua", sink, [config])
        async with running(connector):
            # A new subscription first delivers every node's current value.
            await sink.wait_for(lambda: {m for r in sink.readings for m in r.metrics} >= {"speed", "state"})

            stamped = datetime(2026, 3, 1, 8, 30, 15, 250000, tzinfo=UTC)
            await plc.write("Speed", 12.5, source_ts=stamped)
            await plc.write("Temperature", 181)  # the writer sends a Double, as the PLC declares
            await plc.write("State", "running")
            await plc.write("PartsMade", 7)
            await plc.write("Running", True)
            await sink.wait_for(lambda: bool(sink.with_value("line1-plc", "running", True)))
            await sink.wait_for(
                lambda: (
                    all(
                        sink.with_value("line1-plc", metric, value)
                        for metric, value in (("speed", 12.5), ("temperature", 181.0), ("state", "running"))
                    )
                    and bool(sink.with_value("line1-plc", "parts_made", 7))
                )
            )

    (reading,) = sink.with_value("line1-plc", "speed", 12.5)
    assert reading.tenant_id == TENANT
    assert reading.device_id == "line1-plc"
    assert reading.metrics == {"speed": 12.5}
    assert reading.ts == stamped
    assert reading.ts.tzinfo is not None and reading.ts.utcoffset() == timedelta(0)
    assert reading.source == Source("opcua", "plant-opcua")
    assert reading.quality is Quality.GOOD

    typed = {
        "speed": (12.5, float),
        "temperature": (181.0, float),
        "state": ("running", str),
        "parts_made": (7, int),
        "running": (True, bool),
    }
    for metric, (value, kind) in typed.items():
        (found,) = sink.with_value("line1-plc", metric, value)
        assert type(found.metrics[metric]) is kind, metric
        assert found.quality is Quality.GOOD
    details = connector.details()["endpoints"][f"{TENANT}/line1-plc"]
    assert details["connected"] is False  # the connector has stopped
    assert details["changes_received"] >= 10
    assert details["nodes"]["speed"]["node_id"] == plc.node_id("Speed")
    assert details["nodes"]["temperature"]["node"] == f"nsu={NAMESPACE_URI};s=Line1/Temperature"


async def test_without_source_timestamp_the_server_time_is_used(opcua_server: OpcUaServer) -> None:
    sink = RecordingSink()
    config = endpoint("line1-ts", opcua_server.url, [by_uri("speed", "Speed")])
    async with PlcWriter(opcua_server.url) as plc, running(OpcUaConnector("ts", sink, [config])):
        await sink.wait_for(lambda: bool(sink.readings))
        before = datetime.now(UTC)
        await plc.write("Speed", 3.25)
        await sink.wait_for(lambda: bool(sink.with_value("line1-ts", "speed", 3.25)))
        after = datetime.now(UTC)
    (reading,) = sink.with_value("line1-ts", "speed", 3.25)
    # asyncua stamps a write without SourceTimestamp with its own clock (same machine here).
    assert before - timedelta(seconds=1) <= reading.ts <= after + timedelta(seconds=1)
    assert reading.ts.utcoffset() == timedelta(0)


async def test_status_codes_map_to_quality(opcua_server: OpcUaServer) -> None:
    sink = RecordingSink()
    config = endpoint("line1-q", opcua_server.url, [by_uri("speed", "Speed"), by_uri("state", "State")])
    connector = OpcUaConnector("quality", sink, [config])
    async with PlcWriter(opcua_server.url) as plc, running(connector):
        await sink.wait_for(lambda: len(sink.readings) >= 2)
        await plc.write("Speed", 5.5, status=StatusCodes.UncertainLastUsableValue)
        # A spec-conformant server stores a Bad value as null (Part 4, 7.7.1), the value is lost.
        await plc.write("Speed", 6.5, status=StatusCodes.BadOutOfService)
        await plc.write("Speed", None, status=StatusCodes.BadSensorFailure)  # Bad without a value
        await plc.write("Speed", 7.5)
        await plc.write("State", "fault", status=StatusCodes.UncertainSensorNotAccurate)
        # Changes of one metric keep their order: once 7.5 is here, the null one was handled.
        await sink.wait_for(lambda: bool(sink.with_value("line1-q", "speed", 7.5)))
        await sink.wait_for(lambda: bool(sink.with_value("line1-q", "state", "fault")))

    assert [r.quality for r in sink.with_value("line1-q", "speed", 5.5)] == [Quality.UNCERTAIN]
    assert sink.with_value("line1-q", "speed", 6.5) == []
    assert [r.quality for r in sink.with_value("line1-q", "speed", 7.5)] == [Quality.GOOD]
    assert [r.quality for r in sink.with_value("line1-q", "state", "fault")] == [Quality.UNCERTAIN]
    values = sink.values("line1-q", "speed")
    assert values.index(5.5) < values.index(7.5)
    assert None not in values
    details = connector.details()["endpoints"][f"{TENANT}/line1-q"]
    assert details["without_value"] == 2  # both Bad changes: counted, no reading
    assert details["nodes"]["speed"]["status"] == "Good"
    assert details["nodes"]["state"]["status"] == "UncertainSensorNotAccurate"


async def test_a_non_finite_value_is_refused_not_submitted(opcua_server: OpcUaServer) -> None:
    sink = RecordingSink()
    config = endpoint("line1-nan", opcua_server.url, [by_uri("temperature", "Temperature")])
    async with PlcWriter(opcua_server.url) as plc, running(OpcUaConnector("nan", sink, [config])):
        await sink.wait_for(lambda: bool(sink.readings))
        await plc.write("Temperature", math.nan)
        await plc.write("Temperature", 99.5)
        await sink.wait_for(lambda: bool(sink.with_value("line1-nan", "temperature", 99.5)))
    (rejection,) = sink.rejections
    assert rejection.reason is RejectReason.NOT_FINITE
    assert (rejection.tenant_id, rejection.device_id) == (TENANT, "line1-nan")
    assert rejection.source == Source("opcua", "nan")
    assert "temperature" in rejection.detail
    assert not any(isinstance(v, float) and math.isnan(v) for v in sink.values("line1-nan", "temperature"))


# ---------------------------------------------------------------------------------------------
# Backpressure
# ---------------------------------------------------------------------------------------------


async def test_a_stalled_pipeline_keeps_the_latest_value_of_each_metric(opcua_server: OpcUaServer) -> None:
    sink = RecordingSink()
    clock = CountingClock()
    config = endpoint(
        "line1-slow",
        opcua_server.url,
        [by_uri("speed", "Speed"), by_uri("state", "State")],
        buffer_size=2,
        server_queue_size=100,
    )
    connector = OpcUaConnector("slow", sink, [config], clock=clock)
    key = f"{TENANT}/line1-slow"

    def received() -> int:
        count: int = connector.details()["endpoints"][key]["changes_received"]
        return count

    async with PlcWriter(opcua_server.url) as plc, running(connector):
        await sink.wait_for(lambda: len(sink.readings) >= 2)  # both initial values
        sink.gate.clear()  # the pipeline stalls: submit() waits
        start = received()
        speeds = [float(n) for n in range(1, 21)]
        for speed in speeds:
            await plc.write("Speed", speed)
        await plc.write("State", "stopped")
        await clock.wait_for(lambda: received() >= start + len(speeds) + 1)
        details = connector.details()["endpoints"][key]
        # Held: the one in submit() is out of the buffer, 2 queued, then one slot per metric.
        assert details["buffered"] <= config.buffer_size + len(config.nodes)
        assert details["superseded"] > 0
        sink.gate.set()
        await sink.wait_for(lambda: bool(sink.with_value("line1-slow", "state", "stopped")))
        await sink.wait_for(lambda: bool(sink.with_value("line1-slow", "speed", 20.0)))
        details = connector.details()["endpoints"][key]

    delivered = sink.values("line1-slow", "speed")[1:]  # after the initial value
    assert delivered == sorted(delivered), "changes of one metric must keep their order"
    assert delivered[-1] == 20.0
    assert len(delivered) < len(speeds)
    assert details["buffered"] == 0
    accounted = details["readings_submitted"] + details["superseded"] + details["duplicates"]
    assert accounted + details["without_value"] + details["rejected"] == details["changes_received"]


# ---------------------------------------------------------------------------------------------
# Connection loss and recovery
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_killed_server_is_reported_once_and_the_connector_reconnects(own_server: OpcUaServer) -> None:
    sink = RecordingSink()
    connectivity = RecordingConnectivity()
    changes = StateChanges()
    config = endpoint("line1-crash", own_server.url, [by_uri("speed", "Speed"), by_uri("state", "State")])
    connector = OpcUaConnector("crash", sink, [config], connectivity=connectivity, on_change=changes)
    supervisor = ConnectorSupervisor([connector], initial_backoff=0.1, max_backoff=0.5)
    key = f"{TENANT}/line1-crash"
    task = asyncio.create_task(supervisor.run())
    try:
        async with PlcWriter(own_server.url) as plc:
            await plc.write("Speed", 10.5)
            await sink.wait_for(lambda: bool(sink.with_value("line1-crash", "speed", 10.5)))
        assert connector.details()["endpoints"][key]["connected"] is True

        own_server.kill()  # SIGKILL by PID: no goodbye to the client
        await connectivity.wait_for(lambda: bool(connectivity.of("line1-crash")))
        assert connector.details()["endpoints"][key]["connected"] is False
        await changes.wait_for(lambda: len(changes.of("line1-crash")) >= 3)  # loss + refused retries

        await asyncio.to_thread(own_server.start)  # same port, fresh values
        async with PlcWriter(own_server.url) as plc:
            await plc.write("Speed", 20.5)
            await plc.write("State", "restarted")
            await sink.wait_for(lambda: bool(sink.with_value("line1-crash", "speed", 20.5)))
            await sink.wait_for(lambda: bool(sink.with_value("line1-crash", "state", "restarted")))
        details = connector.details()["endpoints"][key]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    (report,) = connectivity.reports  # once per outage, however many attempts failed
    assert report[:2] == (TENANT, "line1-crash")
    assert own_server.url in report[2]
    assert details["connected"] is True
    assert details["connects"] == 2
    assert details["outages"] == 1
    assert details["last_error"] is not None
    health = supervisor.health()["crash"]
    assert health.restarts == 0  # the endpoint reconnected by itself


async def test_a_frozen_server_is_detected_by_the_watchdog(opcua_server: OpcUaServer) -> None:
    sink = RecordingSink()
    connectivity = RecordingConnectivity()
    config = endpoint("line1-frozen", opcua_server.url, [by_uri("temperature", "Temperature")])
    connector = OpcUaConnector("frozen", sink, [config], connectivity=connectivity)
    key = f"{TENANT}/line1-frozen"
    async with running(connector):
        await sink.wait_for(lambda: bool(sink.readings))
        opcua_server.process.pause()  # SIGSTOP: the socket stays open, nothing answers
        try:
            await connectivity.wait_for(lambda: bool(connectivity.reports))
        finally:
            opcua_server.process.resume()
        async with PlcWriter(opcua_server.url) as plc:
            await plc.write("Temperature", 150.25)
            await sink.wait_for(lambda: bool(sink.with_value("line1-frozen", "temperature", 150.25)))
        details = connector.details()["endpoints"][key]
    assert len(connectivity.reports) == 1
    assert details["connects"] == 2


async def test_an_unreachable_server_at_start_is_reported_once(opcua_server: OpcUaServer) -> None:
    sink = RecordingSink()
    connectivity = RecordingConnectivity()
    changes = StateChanges()
    dead_url = f"opc.tcp://{LOOPBACK}:{free_port()}/nothing"
    configs = [
        endpoint("line1-dead", dead_url, [by_uri("speed", "Speed")]),
        endpoint("line1-alive", opcua_server.url, [by_uri("speed", "Speed")]),
    ]
    connector = OpcUaConnector("dead", sink, configs, connectivity=connectivity, on_change=changes)
    async with running(connector):
        await changes.wait_for(lambda: len(changes.of("line1-dead")) >= 4)  # several refused attempts
        await sink.wait_for(lambda: bool(sink.values("line1-alive", "speed")))
        details = connector.details()
    assert [r[:2] for r in connectivity.reports] == [(TENANT, "line1-dead")]
    dead = details["endpoints"][f"{TENANT}/line1-dead"]
    assert dead["connected"] is False and dead["connects"] == 0 and dead["outages"] == 1
    assert "connect failed" in dead["last_error"] and dead_url in dead["last_error"]
    assert details["endpoints"][f"{TENANT}/line1-alive"]["connected"] is True
    assert details["connected"] == 1 and details["configured"] == 2


# ---------------------------------------------------------------------------------------------
# Bad nodes
# ---------------------------------------------------------------------------------------------


async def test_a_bad_node_is_an_error_of_its_endpoint_only(opcua_server: OpcUaServer) -> None:
    sink = RecordingSink()
    connectivity = RecordingConnectivity()
    changes = StateChanges()
    configs = [
        endpoint(
            "line1-wrong",
            opcua_server.url,
            [
                by_uri("speed", "NoSuchSpeed"),
                NodeMapping(metric="state", namespace_uri="urn:nobody:here", identifier="s=Line1/State"),
            ],
        ),
        endpoint("line1-partly", opcua_server.url, [by_uri("speed", "Speed"), by_uri("ghost", "Ghost")]),
        endpoint("line1-fine", opcua_server.url, [by_uri("state", "State")]),
    ]
    connector = OpcUaConnector("bad-nodes", sink, configs, connectivity=connectivity, on_change=changes)
    async with PlcWriter(opcua_server.url) as plc, running(connector):
        await changes.wait_for(lambda: any(d["last_error"] for d in changes.of("line1-wrong")))
        await changes.wait_for(lambda: any(d["connected"] for d in changes.of("line1-partly")))
        await plc.write("State", "checked")
        await plc.write("Speed", 4.75)
        await sink.wait_for(lambda: bool(sink.with_value("line1-fine", "state", "checked")))
        await sink.wait_for(lambda: bool(sink.with_value("line1-partly", "speed", 4.75)))
        details = connector.details()["endpoints"]

    wrong = details[f"{TENANT}/line1-wrong"]
    assert wrong["connected"] is False
    assert "none of the mapped nodes can be monitored" in wrong["last_error"]
    assert "BadNodeIdUnknown" in wrong["nodes"]["speed"]["error"]
    assert "urn:nobody:here" in wrong["nodes"]["state"]["error"]
    partly = details[f"{TENANT}/line1-partly"]
    assert partly["connected"] is True
    assert partly["nodes"]["speed"]["error"] is None
    assert "BadNodeIdUnknown" in partly["nodes"]["ghost"]["error"]
    assert "ghost" in partly["last_error"]
    assert details[f"{TENANT}/line1-fine"]["connected"] is True
    assert connectivity.reports == []  # the server answered: a configuration error, not an outage
    assert not [r for r in sink.readings if r.device_id == "line1-wrong"]


# ---------------------------------------------------------------------------------------------
# Configuration and mapping (no server)
# ---------------------------------------------------------------------------------------------


def test_node_forms_parse_to_the_same_reference() -> None:
    forms = [
        NodeMapping(metric="speed", node_id=f"nsu={NAMESPACE_URI};s=Line1/Speed"),
        NodeMapping(metric="speed", namespace_uri=NAMESPACE_URI, identifier="s=Line1/Speed"),
        NodeMapping(metric="speed", namespace_uri=NAMESPACE_URI, identifier="Line1/Speed"),
    ]
    assert {str(f.reference()) for f in forms} == {f"nsu={NAMESPACE_URI};s=Line1/Speed"}
    resolved = forms[0].reference().resolve(["http://opcfoundation.org/UA/", "urn:x", NAMESPACE_URI])
    assert resolved == ua.NodeId(ua.String("Line1/Speed"), ua.Int16(2), ua.NodeIdType.String)
    numeric = NodeMapping(metric="uptime", node_id="i=2258").reference().resolve(None)
    assert numeric == ua.NodeId(ua.Int32(2258), ua.Int16(0), ua.NodeIdType.Numeric)
    with pytest.raises(LookupError, match="urn:missing"):
        NodeMapping(metric="x", namespace_uri="urn:missing", identifier="i=1").reference().resolve(["a"])


@pytest.mark.parametrize(
    ("mapping", "fragment"),
    [
        ({"metric": "speed"}, "give node_id"),
        ({"metric": "speed", "namespace_uri": NAMESPACE_URI}, "give node_id"),
        ({"metric": "speed", "node_id": "ns=2;s=X", "namespace_uri": NAMESPACE_URI}, "not both"),
        ({"metric": "speed", "node_id": "Line1/Speed"}, "is not an OPC-UA node id"),
        ({"metric": "speed", "node_id": "ns=two;s=X"}, "is not an OPC-UA node id"),
        ({"metric": "speed", "node_id": "ns=2;nsu=urn:a;s=X"}, "both ns= and nsu="),
        ({"metric": "speed", "node_id": "srv=1;nsu=urn:a;s=X"}, "another server"),
        (
            {"metric": "speed", "namespace_uri": "urn:a", "identifier": "ns=3;s=X"},
            "must not name a namespace",
        ),
        ({"metric": "9speed", "node_id": "i=1"}, "metric"),
        ({"metric": "speed", "node_id": "i=1", "unit": "m/s"}, "Extra inputs"),
    ],
)
def test_invalid_node_mappings_are_refused(mapping: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(fragment)):
        NodeMapping.model_validate(mapping)


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"url": "http://plc:4840"}, "url"),
        ({"url": "opc.tcp://user:secret@plc:4840"}, "url"),
        ({"tenant_id": "Globex Plant"}, "tenant_id"),
        ({"device_id": "line/1"}, "device_id"),
        ({"nodes": []}, "nodes"),
        (
            {"nodes": [{"metric": "a", "node_id": "i=1"}, {"metric": "a", "node_id": "i=2"}]},
            "metrics mapped twice",
        ),
        (
            {
                "nodes": [
                    {"metric": "a", "node_id": "nsu=urn:a;i=1"},
                    {"metric": "b", "namespace_uri": "urn:a", "identifier": "i=1"},
                ]
            },
            "nodes mapped twice",
        ),
        ({"publishing_interval_ms": 0}, "publishing_interval_ms"),
        ({"reconnect_min_s": 10, "reconnect_max_s": 1}, "reconnect_min_s"),
        ({"buffer_size": 0}, "buffer_size"),
        ({"password": "x"}, "Extra inputs"),
    ],
)
def test_invalid_endpoint_configurations_are_refused(change: dict[str, Any], fragment: str) -> None:
    config = {
        "tenant_id": TENANT,
        "device_id": "line1-plc",
        "url": "opc.tcp://127.0.0.1:4840",
        "nodes": [{"metric": "speed", "node_id": "ns=2;s=Line1/Speed"}],
        **change,
    }
    with pytest.raises(ValidationError, match=re.escape(fragment)):
        OpcUaEndpointConfig.model_validate(config)


def test_a_device_configured_twice_is_refused() -> None:
    config = endpoint("line1-plc", "opc.tcp://127.0.0.1:4840", [by_uri("speed", "Speed")])
    with pytest.raises(ValueError, match="configured twice"):
        OpcUaConnector("twice", RecordingSink(), [config, config])
    with pytest.raises(ValueError, match="at least one endpoint"):
        OpcUaConnector("none", RecordingSink(), [])


def test_status_severity_maps_to_quality() -> None:
    assert quality_of(None) is Quality.GOOD
    assert quality_of(ua.StatusCode(ua.UInt32(StatusCodes.Good))) is Quality.GOOD
    assert quality_of(ua.StatusCode(ua.UInt32(StatusCodes.GoodClamped))) is Quality.GOOD
    assert quality_of(ua.StatusCode(ua.UInt32(StatusCodes.Uncertain))) is Quality.UNCERTAIN
    assert quality_of(ua.StatusCode(ua.UInt32(StatusCodes.UncertainSubNormal))) is Quality.UNCERTAIN
    assert quality_of(ua.StatusCode(ua.UInt32(StatusCodes.Bad))) is Quality.BAD
    assert quality_of(ua.StatusCode(ua.UInt32(StatusCodes.BadCommunicationError))) is Quality.BAD
    assert quality_of(ua.StatusCode(ua.UInt32(0xC0000000))) is Quality.BAD  # reserved severity = Bad


def test_timestamps_prefer_source_then_server_and_are_utc() -> None:
    source = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    server = datetime(2026, 1, 2, 3, 4, 6, tzinfo=UTC)
    null = datetime(1601, 1, 1, tzinfo=UTC)  # OPC-UA's "no timestamp"

    def dv(src: datetime | None, srv: datetime | None) -> ua.DataValue:
        return ua.DataValue(ua.Variant(1.0), SourceTimestamp=src, ServerTimestamp=srv)  # type: ignore[arg-type]

    assert timestamp_of(dv(source, server)) == source
    assert timestamp_of(dv(None, server)) == server
    assert timestamp_of(dv(null, server)) == server
    assert timestamp_of(dv(None, None)) is None
    assert timestamp_of(None) is None
    naive = timestamp_of(dv(datetime(2026, 1, 2, 3, 4, 5), None))  # older asyncua: naive UTC
    assert naive == source and naive is not None and naive.tzinfo is UTC


def test_values_map_to_metric_types() -> None:
    assert metric_value(True) is True
    assert metric_value(7) == 7 and type(metric_value(7)) is int
    assert metric_value(2.5) == 2.5
    assert metric_value("running") == "running"
    assert metric_value(ua.LocalizedText("Betrieb", "de")) == "Betrieb"
    assert metric_value([1.0, 2.0]) is None
    assert metric_value(b"\x00") is None
    assert metric_value(datetime.now(UTC)) is None


def test_the_documented_configuration_is_valid() -> None:
    blocks = re.findall(r"```json\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    assert blocks, "docs/devices/opcua.md has no json example"
    for block in blocks:
        config = OpcUaEndpointConfig.model_validate(json.loads(block))
        assert config.tenant_id == TENANT
        assert {n.metric for n in config.nodes} >= {"speed", "temperature", "state"}
