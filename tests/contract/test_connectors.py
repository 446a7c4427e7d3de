"""One contract, every connector: the same cases run over MQTT, CoAP, Modbus and OPC-UA.

Each rig starts a real peer (broker, client, Modbus server, OPC-UA server), runs the connector
under test, and can make "the device" report ``temp = 21.5``. HTTP ingestion is an API route, not
a Connector; it is covered end to end in tests/integration/pipeline.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiocoap
import paho.mqtt.client as mqtt
import pytest

from connectors.base import CommandNotSupportedError, Connector
from connectors.coap import CoapConnector
from connectors.modbus import ModbusConnector, ModbusDeviceConfig, RegisterMapping
from connectors.mqtt import MqttConnector
from connectors.opcua import NodeMapping, OpcUaConnector, OpcUaEndpointConfig
from model.readings import Reading
from model.rejections import Rejection
from tests.harness.modbus import ModbusSpec, RegisterBlock, UnitSpec, start_modbus_server
from tests.harness.mosquitto import MosquittoServer
from tests.harness.opcua import NAMESPACE_URI, OpcUaServer, PlcWriter, start_opcua_server
from tests.harness.ports import free_port

TENANT, DEVICE = "acme-retail", "dev-1"
KINDS = ["mqtt", "coap", "modbus", "opcua"]


@dataclass
class Sink:
    """A real ReadingSink, ConnectivitySink and DeviceAuthenticator for connectors under test."""

    readings: list[Reading] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    unreachable_reports: list[str] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def submit(self, reading: Reading) -> None:
        self.readings.append(reading)
        self.arrived.set()

    def offer(self, reading: Reading) -> None:
        self.readings.append(reading)
        self.arrived.set()

    def reject(self, rejection: Rejection) -> None:
        self.rejections.append(rejection)

    def unreachable(self, tenant_id: str, device_id: str, detail: str) -> None:
        self.unreachable_reports.append(detail)

    async def authenticate(self, token: str) -> tuple[str, str] | None:
        return (TENANT, DEVICE) if token == "good-token" else None


@dataclass
class Rig:
    """A running connector and a way to make its device report a value."""

    connector: Connector
    report: Callable[[float], Awaitable[None]]
    ready: Callable[[], Awaitable[None]]


@pytest.fixture(scope="module")
def plc(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[OpcUaServer]:
    server = start_opcua_server(tmp_path_factory.mktemp("plc"))
    yield server
    server.stop()


async def _until(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(20):
        while not predicate():
            await asyncio.sleep(0.02)


@asynccontextmanager
async def _rig(kind: str, sink: Sink, request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Rig]:
    if kind == "mqtt":
        broker: MosquittoServer = request.getfixturevalue("mosquitto_server")
        connector: Connector = MqttConnector(
            "mqtt", sink, host="127.0.0.1", port=broker.port, client_id=f"contract-{secrets.token_hex(4)}"
        )

        async def report(value: float) -> None:
            def publish() -> None:
                client = mqtt.Client(
                    callback_api_version=mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5
                )
                client.connect("127.0.0.1", broker.port)
                client.loop_start()
                client.publish(
                    f"fg/{TENANT}/{DEVICE}/telemetry", json.dumps({"temp": value}), qos=1
                ).wait_for_publish(10)
                client.loop_stop()
                client.disconnect()

            await asyncio.to_thread(publish)

        async def ready() -> None:
            await _until(lambda: bool(connector.details().get("subscribed")))

        yield Rig(connector, report, ready)
    elif kind == "coap":
        port = free_port()
        coap = CoapConnector("coap", sink, sink, host="127.0.0.1", port=port)

        async def report(value: float) -> None:
            context = await aiocoap.Context.create_client_context()
            try:
                message = aiocoap.Message(
                    code=aiocoap.POST,
                    uri=f"coap://127.0.0.1:{port}/telemetry?k=good-token",
                    payload=json.dumps({"temp": value}).encode(),
                )
                await context.request(message).response
            finally:
                await context.shutdown()

        async def ready() -> None:
            await asyncio.wait_for(coap.ready.wait(), 20)

        yield Rig(coap, report, ready)
    elif kind == "modbus":
        spec = ModbusSpec([UnitSpec(unit_id=1, holding=[RegisterBlock(0, "float32", [21.5])])])
        server = await asyncio.to_thread(start_modbus_server, spec, tmp_path / "modbus")
        config = ModbusDeviceConfig(
            tenant_id=TENANT,
            device_id=DEVICE,
            host="127.0.0.1",
            port=server.port,
            poll_interval_s=0.1,
            registers=[RegisterMapping(metric="temp", address=0, kind="holding", data_type="float32")],
        )

        async def report(value: float) -> None:
            return None  # the register already holds 21.5; polling reports it

        async def ready() -> None:
            return None

        try:
            yield Rig(ModbusConnector("modbus", sink, sink, [config]), report, ready)
        finally:
            await asyncio.to_thread(server.stop)
    else:
        plc_server: OpcUaServer = request.getfixturevalue("plc")
        endpoint = OpcUaEndpointConfig(
            tenant_id=TENANT,
            device_id=DEVICE,
            url=plc_server.url,
            publishing_interval_ms=50,
            nodes=[NodeMapping(metric="temp", node_id=f"nsu={NAMESPACE_URI};s=Line1/Temperature")],
        )
        opcua = OpcUaConnector("opcua", sink, [endpoint], connectivity=sink)

        async def report(value: float) -> None:
            async with PlcWriter(plc_server.url) as writer:
                await writer.write("Temperature", value)

        async def ready() -> None:
            await _until(lambda: any(e["connected"] for e in opcua.details()["endpoints"].values()))

        yield Rig(opcua, report, ready)


@pytest.fixture(params=KINDS)
async def rig(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[Rig, Sink]]:
    sink = Sink()
    async with _rig(request.param, sink, request, tmp_path) as running_rig:
        task = asyncio.create_task(running_rig.connector.run())
        try:
            await running_rig.ready()
            yield running_rig, sink
        finally:
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=15)
            assert done, f"{running_rig.connector.kind} did not stop when cancelled"


async def test_a_device_value_becomes_a_normalized_reading(rig: tuple[Rig, Sink]) -> None:
    running, sink = rig
    await running.report(21.5)
    await _until(lambda: any(r.metrics.get("temp") == 21.5 for r in sink.readings))
    reading = next(r for r in sink.readings if r.metrics.get("temp") == 21.5)
    assert (reading.tenant_id, reading.device_id) == (TENANT, DEVICE)
    assert reading.ts.tzinfo is not None and reading.ts.utcoffset() is not None
    assert reading.source.kind == running.connector.kind
    assert reading.source.instance == running.connector.name
    assert isinstance(reading.metrics["temp"], float)


async def test_details_are_plain_data(rig: tuple[Rig, Sink]) -> None:
    running, _ = rig
    details = running.connector.details()
    assert isinstance(details, dict) and details
    json.dumps(details, default=str)  # health endpoints serialize it


async def test_commands_are_refused_clearly_until_built(rig: tuple[Rig, Sink]) -> None:
    running, _ = rig
    with pytest.raises(CommandNotSupportedError, match=running.connector.kind):
        await running.connector.send(TENANT, DEVICE, {"setpoint": -20})


def test_every_connector_kind_is_covered() -> None:
    from connectors import coap, modbus, opcua
    from connectors import mqtt as mqtt_module

    kinds = {
        m.__dict__[n].kind
        for m in (coap, modbus, mqtt_module, opcua)
        for n in dir(m)
        if isinstance(m.__dict__.get(n), type)
        and issubclass(m.__dict__[n], Connector)
        and m.__dict__[n] is not Connector
    }
    assert kinds == set(KINDS)
