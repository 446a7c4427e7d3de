"""The simulated power meters over Modbus TCP, polled by the platform's own Modbus connector."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from connectors.bindings import validate_binding
from connectors.modbus import ModbusConnector, ModbusDeviceConfig
from model.readings import Reading
from model.rejections import Rejection
from server.simulator.fleet import SimDevice, build_fleet
from server.simulator.modbus_server import (
    MAX_UNITS,
    BitBlock,
    ModbusServeError,
    ModbusSpec,
    PowerMeterServer,
    RegisterBlock,
    UnitSpec,
    meter_binding,
    meter_unit_ids,
    meter_words,
)
from tests.harness.ports import LOOPBACK, free_port

T0 = datetime(2026, 11, 27, 10, tzinfo=UTC).timestamp()  # a Friday morning: the stores are open
TENANT = "acme-test"


@dataclass
class _Sink:
    readings: list[Reading] = field(default_factory=list)
    unreachable_details: list[str] = field(default_factory=list)

    async def submit(self, reading: Reading) -> None:
        self.readings.append(reading)

    def offer(self, reading: Reading) -> None:
        self.readings.append(reading)

    def reject(self, rejection: Rejection) -> None:
        raise AssertionError(f"unexpected rejection {rejection}")

    def unreachable(self, tenant_id: str, device_id: str, detail: str) -> None:
        self.unreachable_details.append(detail)


class _Silence:
    """Dropouts that are silent while ``on`` is set."""

    def __init__(self) -> None:
        self.on = False

    def silent(self, t: float) -> bool:
        return self.on


class _Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _meters(stores: int = 2) -> list[SimDevice]:
    fleet = build_fleet(stores=stores, seed=3, dropouts_per_day=0)
    return [d for d in fleet.devices if d.type_id == "power-meter"]


def _connector(port: int, units: dict[str, int], sink: _Sink) -> ModbusConnector:
    configs = [
        ModbusDeviceConfig.model_validate(
            {**meter_binding(LOOPBACK, port, unit), "tenant_id": TENANT, "device_id": device_id}
        )
        for device_id, unit in units.items()
    ]
    return ModbusConnector("modbus", sink, sink, configs, reconnect_initial_s=0.05, reconnect_max_s=0.1)


@pytest.fixture
async def served() -> AsyncIterator[tuple[PowerMeterServer, _Clock, _Sink, ModbusConnector]]:
    clock = _Clock(T0)
    meters = _meters()
    silence = _Silence()
    meters[1] = replace(meters[1], dropouts=silence)  # type: ignore[arg-type]
    counted: list[tuple[str, int]] = []
    silent: list[str] = []
    server = PowerMeterServer(
        meters,
        port=free_port(),
        clock=clock,
        update_s=3600.0,  # no background update: the test calls update() itself
        on_read=lambda device, n: counted.append((device, n)),
        on_silent=silent.append,
    )
    server.counted, server.silent, server.silence = counted, silent, silence  # type: ignore[attr-defined]
    sink = _Sink()
    async with server:
        connector = _connector(server.port, server.units, sink)
        try:
            yield server, clock, sink, connector
        finally:
            for endpoint in connector._endpoints.values():
                endpoint.close()


def test_the_registers_of_the_documented_example() -> None:
    # docs/devices/modbus.md: 230.5 V, 12.75 A and 12345.67 kWh in registers 0-5.
    words = meter_words({"voltage": 230.5, "current": 12.75, "energy_kwh": 12345.67})
    assert words == [0x4366, 0x8000, 0x414C, 0x0000, 0x0012, 0xD687]
    assert meter_words({"voltage": 0.0, "current": 0.0, "energy_kwh": 2**32 / 100 + 1})[4:] == [0, 100]
    with pytest.raises(TypeError):
        meter_words({"voltage": "high", "current": 1.0, "energy_kwh": 1.0})


def test_the_binding_is_what_the_platform_accepts() -> None:
    config = meter_binding("10.0.0.5", 5020, 17, poll_interval_s=5.0)
    model = validate_binding("modbus", TENANT, "meter-17", config)
    assert isinstance(model, ModbusDeviceConfig)
    assert (model.host, model.port, model.unit_id, model.poll_interval_s) == ("10.0.0.5", 5020, 17, 5.0)
    assert [(r.metric, r.address, r.data_type.value, r.scale) for r in model.registers] == [
        ("voltage", 0, "float32", 1.0),
        ("current", 2, "float32", 1.0),
        ("energy_kwh", 4, "uint32", 0.01),
    ]


def test_unit_ids_are_store_numbers() -> None:
    assert meter_unit_ids(["meter-01", "meter-02", "meter-40"]) == {
        "meter-01": 1,
        "meter-02": 2,
        "meter-40": 40,
    }
    # Ids without a usable number (or clashing ones) get 1, 2, ... in order.
    assert meter_unit_ids(["meter-a", "meter-01"]) == {"meter-a": 1, "meter-01": 2}
    assert meter_unit_ids(["x-1", "y-1"]) == {"x-1": 1, "y-1": 2}
    assert len(meter_unit_ids([f"meter-{i:03d}" for i in range(1, MAX_UNITS + 1)])) == MAX_UNITS
    with pytest.raises(ModbusServeError, match="247"):
        meter_unit_ids([f"meter-{i:03d}" for i in range(1, MAX_UNITS + 2)])


def test_a_spec_survives_json() -> None:
    spec = ModbusSpec(
        [
            UnitSpec(
                unit_id=3,
                holding=[RegisterBlock(0, "float32", [1.5])],
                input=[RegisterBlock(10, "registers", [1, 2])],
                coils=[BitBlock(0, [True, False])],
            )
        ]
    )
    assert ModbusSpec.from_json(spec.to_json()) == spec
    with pytest.raises(ValueError, match="datatype"):
        RegisterBlock(0, "float16", [1.0])


async def test_the_platform_polls_what_the_signal_says(
    served: tuple[PowerMeterServer, _Clock, _Sink, ModbusConnector],
) -> None:
    server, clock, _, connector = served
    meter = server.meters[0]
    key = f"{TENANT}/{meter.id}"
    reading = await connector.poll_once(key)
    assert reading is not None and reading.device_id == "meter-01"
    expected = meter.signal.sample(T0)
    assert reading.metrics["voltage"] == pytest.approx(expected["voltage"], abs=1e-4)
    assert reading.metrics["current"] == pytest.approx(expected["current"], abs=1e-4)
    assert reading.metrics["energy_kwh"] == pytest.approx(expected["energy_kwh"], abs=1e-6)
    assert server.counted == [("meter-01", 3)]  # type: ignore[attr-defined]

    # An hour later the registers hold the new values (the updater calls update() every second).
    clock.t = T0 + 3600
    await server.update()
    later = await connector.poll_once(key)
    assert later is not None
    assert later.metrics["energy_kwh"] == pytest.approx(
        meter.signal.sample(T0 + 3600)["energy_kwh"], abs=1e-6
    )
    assert later.metrics["energy_kwh"] > reading.metrics["energy_kwh"]  # type: ignore[operator]

    # The second store's meter is unit 2 on the same port.
    other = await connector.poll_once(f"{TENANT}/meter-02")
    assert other is not None and other.metrics["voltage"] != later.metrics["voltage"]


async def test_a_meter_in_a_dropout_does_not_answer(
    served: tuple[PowerMeterServer, _Clock, _Sink, ModbusConnector],
) -> None:
    server, _, sink, connector = served
    server.silence.on = True  # type: ignore[attr-defined]
    assert await connector.poll_once(f"{TENANT}/meter-02") is None
    assert sink.unreachable_details and "exception 11" in sink.unreachable_details[0]
    assert server.silent == ["meter-02"]  # type: ignore[attr-defined]
    assert await connector.poll_once(f"{TENANT}/meter-01") is not None, "the other meters still answer"
    server.silence.on = False  # type: ignore[attr-defined]
    assert await connector.poll_once(f"{TENANT}/meter-02") is not None


async def test_the_registers_follow_the_clock_every_update_period() -> None:
    meters = _meters(1)
    server = PowerMeterServer(meters, port=free_port(), update_s=0.05)
    sink = _Sink()
    async with server:
        first = server.updated_at
        assert first is not None and first == pytest.approx(round(first / 0.05) * 0.05)
        async with asyncio.timeout(5):
            while server.updated_at == first:
                await asyncio.sleep(0.01)
        assert server.updated_at is not None and server.updated_at > first
        connector = _connector(server.port, server.units, sink)
        assert await connector.poll_once(f"{TENANT}/meter-01") is not None
        for endpoint in connector._endpoints.values():
            endpoint.close()
    assert not server.running


async def test_a_taken_port_is_an_error() -> None:
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        server = PowerMeterServer(_meters(1), port=taken.getsockname()[1])
        with pytest.raises(ModbusServeError, match="cannot serve"):
            await server.start()
    assert not server.running
    await server.close()


def test_the_documented_binding_is_the_one_made() -> None:
    doc = (Path(__file__).resolve().parents[3] / "docs" / "simulator.md").read_text()
    after = doc.split("The binding the simulator makes for `meter-07`:", 1)[1]
    block = after.split("```json", 1)[1].split("```", 1)[0]
    assert json.loads(block) == {"kind": "modbus", "config": meter_binding("127.0.0.1", 5020, 7)}
