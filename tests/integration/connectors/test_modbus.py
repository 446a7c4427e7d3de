"""The Modbus connector against a real pymodbus server in its own process (tests/harness/modbus.py).

Every expected value below is written down independently of the connector's decoding: the raw
registers are hex literals (or typed values that pymodbus itself encodes in the server), the
expected numbers come from fixed byte strings. Waits are on events (readings, unreachable reports,
poll ticks through the connector's clock), each with a timeout; nothing sleeps to wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import re
import struct
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from connectors.modbus import (
    DataType,
    ModbusConnector,
    ModbusDeviceConfig,
    Order,
    RegisterKind,
    RegisterMapping,
    decode_registers,
    encode_registers,
    plan_reads,
)
from model.readings import Quality, Reading, Source
from model.rejections import Rejection
from tests.harness.modbus import (
    BitBlock,
    ModbusServer,
    ModbusSpec,
    RegisterBlock,
    UnitSpec,
    start_modbus_server,
)
from tests.harness.ports import LOOPBACK, free_port

DOC = Path(__file__).resolve().parents[3] / "docs" / "devices" / "modbus.md"
WAIT_S = 10.0
STOP_S = 5.0

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
    """ReadingSink keeping everything it is handed."""

    def __init__(self) -> None:
        super().__init__()
        self.readings: list[Reading] = []
        self.rejections: list[Rejection] = []

    async def submit(self, reading: Reading) -> None:
        self.readings.append(reading)
        self._notify()

    def offer(self, reading: Reading) -> None:
        self.readings.append(reading)
        self._notify()

    def reject(self, rejection: Rejection) -> None:
        self.rejections.append(rejection)
        self._notify()

    def of(self, device_id: str) -> list[Reading]:
        return [r for r in self.readings if r.device_id == device_id]


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


class TickClock(_Recorder):
    """The connector's clock; it is read once at the start of every poll, so it counts polls."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __call__(self) -> datetime:
        self.calls += 1
        self._notify()
        return datetime.now(UTC)


@contextlib.asynccontextmanager
async def running(connector: ModbusConnector) -> AsyncIterator[asyncio.Task[None]]:
    """Run the connector in a task; cancel it afterwards (a crash inside fails the test).

    The connector must end promptly when cancelled: a swallowed cancellation fails the test here
    (TimeoutError) instead of hanging it.
    """
    task = asyncio.create_task(connector.run(), name=f"test:{connector.name}")
    try:
        yield task
    finally:
        await stop(task)


async def stop(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` and fail (not hang) unless it ends within STOP_S.

    asyncio.wait, not ``await task`` under a timeout: awaiting a task forwards our own cancellation
    into it, so a task that ignores cancellation would keep us waiting forever.
    """
    task.cancel()
    await asyncio.wait({task}, timeout=STOP_S)
    assert task.done(), f"{task.get_name()} did not stop within {STOP_S}s of being cancelled"
    if not task.cancelled():
        task.result()  # re-raise what the connector died of


# ---------------------------------------------------------------------------------------------
# What the server holds
# ---------------------------------------------------------------------------------------------

# float32 0x42F6E979 (≈123.456; four distinct bytes, so any wrong swap shows)
F32 = struct.unpack(">f", bytes.fromhex("42f6e979"))[0]
# float64 0x400921FB54442D18 is exactly math.pi
F64 = math.pi

# metric, address, data type, word order, byte order, registers as stored (lowest address first), expected
RAW_CASES: list[tuple[str, int, DataType, Order, Order, list[int], int | float]] = [
    ("f32_abcd", 10, DataType.FLOAT32, Order.BIG, Order.BIG, [0x42F6, 0xE979], F32),
    ("f32_cdab", 12, DataType.FLOAT32, Order.LITTLE, Order.BIG, [0xE979, 0x42F6], F32),
    ("f32_badc", 14, DataType.FLOAT32, Order.BIG, Order.LITTLE, [0xF642, 0x79E9], F32),
    ("f32_dcba", 16, DataType.FLOAT32, Order.LITTLE, Order.LITTLE, [0x79E9, 0xF642], F32),
    ("u32_abcd", 20, DataType.UINT32, Order.BIG, Order.BIG, [0x0012, 0xD687], 1234567),
    ("u32_cdab", 22, DataType.UINT32, Order.LITTLE, Order.BIG, [0xD687, 0x0012], 1234567),
    ("u32_max", 24, DataType.UINT32, Order.BIG, Order.BIG, [0xFFFF, 0xFFFF], 4294967295),
    ("i32_abcd", 26, DataType.INT32, Order.BIG, Order.BIG, [0xFFED, 0x2979], -1234567),
    ("i32_cdab", 28, DataType.INT32, Order.LITTLE, Order.BIG, [0x2979, 0xFFED], -1234567),
    ("i32_dcba", 30, DataType.INT32, Order.LITTLE, Order.LITTLE, [0x7929, 0xEDFF], -1234567),
    ("i16_neg", 40, DataType.INT16, Order.BIG, Order.BIG, [0xFFFB], -5),
    ("i16_min", 41, DataType.INT16, Order.BIG, Order.BIG, [0x8000], -32768),
    ("i16_swapped", 42, DataType.INT16, Order.BIG, Order.LITTLE, [0xFBFF], -5),
    ("u16_max", 43, DataType.UINT16, Order.BIG, Order.BIG, [0xFFFF], 65535),
    ("u16_swapped", 44, DataType.UINT16, Order.BIG, Order.LITTLE, [0x3412], 0x1234),
    ("f64_abcd", 50, DataType.FLOAT64, Order.BIG, Order.BIG, [0x4009, 0x21FB, 0x5444, 0x2D18], F64),
    ("f64_ghef", 54, DataType.FLOAT64, Order.LITTLE, Order.BIG, [0x2D18, 0x5444, 0x21FB, 0x4009], F64),
    ("f64_badc", 58, DataType.FLOAT64, Order.BIG, Order.LITTLE, [0x0940, 0xFB21, 0x4454, 0x182D], F64),
    ("f64_hgfe", 62, DataType.FLOAT64, Order.LITTLE, Order.LITTLE, [0x182D, 0x4454, 0xFB21, 0x0940], F64),
]

TYPES_UNIT = 1
METER_UNIT = 2

SERVER_SPEC = ModbusSpec(
    [
        UnitSpec(
            unit_id=TYPES_UNIT,
            holding=[
                # Encoded by pymodbus itself (big word and byte order, the Modbus convention).
                RegisterBlock(0, "float32", [230.5]),
                RegisterBlock(2, "uint32", [1234567]),
                RegisterBlock(4, "int16", [-5, -32768, 12345]),
                # Every other layout as raw registers, one block per case.
                *(RegisterBlock(case[1], "registers", case[5]) for case in RAW_CASES),
            ],
            input=[RegisterBlock(0, "float32", [-40.25]), RegisterBlock(2, "int16", [-1])],
            coils=[BitBlock(0, [True, False, True])],
            discrete=[BitBlock(5, [False, True])],
        ),
        # The power meter of docs/SCENARIOS: voltage and current float32, energy uint32 in 0.01 kWh.
        UnitSpec(
            unit_id=METER_UNIT,
            holding=[
                RegisterBlock(0, "float32", [230.5, 12.75]),
                RegisterBlock(4, "uint32", [1234567]),
            ],
        ),
    ]
)


def power_meter_registers() -> list[RegisterMapping]:
    return [
        RegisterMapping(metric="voltage", address=0, kind=RegisterKind.HOLDING, data_type=DataType.FLOAT32),
        RegisterMapping(metric="current", address=2, kind=RegisterKind.HOLDING, data_type=DataType.FLOAT32),
        RegisterMapping(
            metric="energy_kwh", address=4, kind=RegisterKind.HOLDING, data_type=DataType.UINT32, scale=0.01
        ),
    ]


@pytest.fixture(scope="module")
def modbus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModbusServer]:
    """One server for the tests that do not break it."""
    server = start_modbus_server(SERVER_SPEC, tmp_path_factory.mktemp("modbus"))
    yield server
    server.stop()


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[ModbusServer]:
    """A server of this test alone, to kill, freeze and restart."""
    server = start_modbus_server(SERVER_SPEC, tmp_path / "modbus")
    yield server
    server.stop()


def device(
    server_port: int,
    device_id: str,
    registers: list[RegisterMapping],
    *,
    unit_id: int = TYPES_UNIT,
    tenant_id: str = "acme-retail",
    poll_interval_s: float = 0.2,
    timeout_s: float = 1.0,
) -> ModbusDeviceConfig:
    return ModbusDeviceConfig(
        tenant_id=tenant_id,
        device_id=device_id,
        host=LOOPBACK,
        port=server_port,
        unit_id=unit_id,
        poll_interval_s=poll_interval_s,
        timeout_s=timeout_s,
        registers=registers,
    )


def connector(
    devices: list[ModbusDeviceConfig], sink: RecordingSink, connectivity: RecordingConnectivity, **kwargs: Any
) -> ModbusConnector:
    return ModbusConnector("modbus-test", sink, connectivity, devices, **kwargs)


# ---------------------------------------------------------------------------------------------
# Decoding, against the server
# ---------------------------------------------------------------------------------------------


async def test_every_type_and_order_decodes_exactly(modbus_server: ModbusServer) -> None:
    holding, inp = RegisterKind.HOLDING, RegisterKind.INPUT
    registers = [
        RegisterMapping(metric="typed_f32", address=0, kind=holding, data_type=DataType.FLOAT32),
        RegisterMapping(metric="typed_u32", address=2, kind=holding, data_type=DataType.UINT32),
        RegisterMapping(metric="typed_i16_a", address=4, kind=holding, data_type=DataType.INT16),
        RegisterMapping(metric="typed_i16_b", address=5, kind=holding, data_type=DataType.INT16),
        RegisterMapping(metric="typed_i16_c", address=6, kind=holding, data_type=DataType.INT16),
        RegisterMapping(metric="same_reg_as_u16", address=4, kind=holding, data_type=DataType.UINT16),
        RegisterMapping(metric="input_f32", address=0, kind=inp, data_type=DataType.FLOAT32),
        RegisterMapping(metric="input_i16", address=2, kind=inp, data_type=DataType.INT16),
        RegisterMapping(metric="coil_0", address=0, kind=RegisterKind.COIL, data_type=DataType.BOOL),
        RegisterMapping(metric="coil_1", address=1, kind=RegisterKind.COIL, data_type=DataType.BOOL),
        RegisterMapping(metric="coil_2", address=2, kind=RegisterKind.COIL, data_type=DataType.BOOL),
        RegisterMapping(metric="discrete_5", address=5, kind=RegisterKind.DISCRETE, data_type=DataType.BOOL),
        RegisterMapping(metric="discrete_6", address=6, kind=RegisterKind.DISCRETE, data_type=DataType.BOOL),
        *(
            RegisterMapping(
                metric=name, address=address, kind=holding, data_type=dt, word_order=wo, byte_order=bo
            )
            for name, address, dt, wo, bo, _regs, _expected in RAW_CASES
        ),
    ]
    sink, connectivity = RecordingSink(), RecordingConnectivity()
    conn = connector([device(modbus_server.port, "types", registers)], sink, connectivity)
    async with running(conn):
        await sink.wait_for(lambda: len(sink.readings) >= 1)
    metrics = dict(sink.readings[0].metrics)

    expected: dict[str, object] = {
        "typed_f32": 230.5,
        "typed_u32": 1234567,
        "typed_i16_a": -5,
        "typed_i16_b": -32768,
        "typed_i16_c": 12345,
        "same_reg_as_u16": 65531,
        "input_f32": -40.25,
        "input_i16": -1,
        "coil_0": True,
        "coil_1": False,
        "coil_2": True,
        "discrete_5": False,
        "discrete_6": True,
        **{case[0]: case[6] for case in RAW_CASES},
    }
    assert metrics == expected
    for name, value in expected.items():  # == would let 1234567.0 pass for 1234567 and 1 for True
        assert type(metrics[name]) is type(value), name
    assert connectivity.reports == []
    details = conn.details()["devices"]["acme-retail/types"]
    assert details["polls_failed"] == 0
    assert details["last_error"] is None
    # holding 0-6, 10-17, 20-31, 40-44, 50-65 (adjacent blocks merged, no gap read), input, coils, discrete
    assert details["reads_per_poll"] == 8


async def test_scale_and_offset_are_applied(modbus_server: ModbusServer) -> None:
    holding = RegisterKind.HOLDING
    registers = [
        RegisterMapping(metric="energy_kwh", address=2, kind=holding, data_type=DataType.UINT32, scale=0.01),
        RegisterMapping(
            metric="temp", address=4, kind=holding, data_type=DataType.INT16, scale=0.5, offset=10.0
        ),
        RegisterMapping(
            metric="whole", address=6, kind=holding, data_type=DataType.INT16, scale=1.0, offset=0.5
        ),
        RegisterMapping(metric="raw", address=6, kind=holding, data_type=DataType.INT16),
        RegisterMapping(metric="volts_mv", address=0, kind=holding, data_type=DataType.FLOAT32, scale=1000.0),
    ]
    sink, connectivity = RecordingSink(), RecordingConnectivity()
    conn = connector([device(modbus_server.port, "scaled", registers)], sink, connectivity)
    async with running(conn):
        await sink.wait_for(lambda: len(sink.readings) >= 1)
    metrics = sink.readings[0].metrics
    assert metrics["energy_kwh"] == pytest.approx(12345.67, abs=1e-9)
    assert metrics["temp"] == -5 * 0.5 + 10.0 == 7.5
    assert metrics["whole"] == 12345.5
    assert metrics["raw"] == 12345
    assert metrics["volts_mv"] == 230500.0
    assert isinstance(metrics["energy_kwh"], float)
    assert type(metrics["raw"]) is int


async def test_power_meter_of_the_scenarios_is_polled(modbus_server: ModbusServer) -> None:
    meter = device(modbus_server.port, "store-017-power-meter", power_meter_registers(), unit_id=METER_UNIT)
    sink, connectivity, clock = RecordingSink(), RecordingConnectivity(), TickClock()
    conn = connector([meter], sink, connectivity, clock=clock)
    async with running(conn):
        await sink.wait_for(lambda: len(sink.readings) >= 4)
    readings = sink.readings[:4]
    for reading in readings:
        assert reading.tenant_id == "acme-retail"
        assert reading.device_id == "store-017-power-meter"
        assert reading.source == Source("modbus", "modbus-test")
        assert reading.quality is Quality.GOOD
        assert set(reading.metrics) == {"voltage", "current", "energy_kwh"}
        assert reading.metrics["voltage"] == 230.5
        assert reading.metrics["current"] == 12.75
        assert reading.metrics["energy_kwh"] == pytest.approx(12345.67, abs=1e-9)
    details = conn.details()
    # Drift-free: 3 intervals of 0.2 s between the first and the fourth poll (plus skipped ticks,
    # should the machine be too busy to poll on time); no poll twice in the same tick.
    skipped = details["devices"]["acme-retail/store-017-power-meter"]["ticks_skipped"]
    span = (readings[-1].ts - readings[0].ts).total_seconds()
    assert 0.45 < span < 0.75 + 0.2 * skipped, span
    gaps = [(b.ts - a.ts).total_seconds() for a, b in itertools.pairwise(readings)]
    assert all(gap > 0.05 for gap in gaps), gaps
    assert details["devices"]["acme-retail/store-017-power-meter"]["reads_per_poll"] == 1
    assert details["endpoints"][f"{LOOPBACK}:{modbus_server.port}"]["connects"] == 1
    assert connectivity.reports == []


# ---------------------------------------------------------------------------------------------
# Failures
# ---------------------------------------------------------------------------------------------


async def test_killed_server_is_reported_once_and_polling_resumes_after_restart(
    own_server: ModbusServer,
) -> None:
    meter = device(
        own_server.port,
        "store-017-power-meter",
        power_meter_registers(),
        unit_id=METER_UNIT,
        timeout_s=0.5,
    )
    sink, connectivity, clock = RecordingSink(), RecordingConnectivity(), TickClock()
    conn = connector([meter], sink, connectivity, clock=clock, reconnect_initial_s=0.1, reconnect_max_s=0.4)
    key = "acme-retail/store-017-power-meter"
    async with running(conn):
        await sink.wait_for(lambda: len(sink.readings) >= 1)

        own_server.kill()
        await connectivity.wait_for(lambda: len(connectivity.reports) >= 1)
        assert connectivity.reports[0][:2] == ("acme-retail", "store-017-power-meter")
        # Several more polls fail during the outage, none of them is reported again.
        polls_at_report = clock.calls
        await clock.wait_for(lambda: clock.calls >= polls_at_report + 5)
        assert len(connectivity.reports) == 1
        during = conn.details()["devices"][key]
        assert during["reachable"] is False
        assert during["polls_failed"] >= 5
        assert during["last_error"]

        readings_before_restart = len(sink.readings)
        own_server.start()
        await sink.wait_for(lambda: len(sink.readings) > readings_before_restart)
        assert len(connectivity.reports) == 1
        after = conn.details()["devices"][key]
        assert after["reachable"] is True
        assert after["last_error"] is None
        assert sink.readings[-1].metrics["voltage"] == 230.5

        # A new outage is a new report.
        own_server.kill()
        await connectivity.wait_for(lambda: len(connectivity.reports) >= 2)
    assert len(connectivity.reports) == 2


async def test_frozen_server_times_out_and_recovers(own_server: ModbusServer) -> None:
    meter = device(own_server.port, "meter", power_meter_registers(), unit_id=METER_UNIT, timeout_s=0.3)
    sink, connectivity = RecordingSink(), RecordingConnectivity()
    conn = connector([meter], sink, connectivity, reconnect_initial_s=0.1, reconnect_max_s=0.4)
    async with running(conn):
        await sink.wait_for(lambda: len(sink.readings) >= 1)
        own_server.pause()
        try:
            await connectivity.wait_for(lambda: len(connectivity.reports) >= 1)
        finally:
            own_server.resume()
        assert "no answer" in connectivity.reports[0][2]
        count = len(sink.readings)
        await sink.wait_for(lambda: len(sink.readings) > count)
    assert len(connectivity.reports) == 1
    assert conn.details()["devices"]["acme-retail/meter"]["ticks_skipped"] >= 1


async def test_undefined_address_fails_only_that_device(modbus_server: ModbusServer) -> None:
    good = device(modbus_server.port, "meter", power_meter_registers(), unit_id=METER_UNIT)
    bad = device(
        modbus_server.port,
        "misconfigured",
        [
            RegisterMapping(metric="ok", address=0, kind=RegisterKind.HOLDING, data_type=DataType.FLOAT32),
            RegisterMapping(
                metric="nope", address=1000, kind=RegisterKind.HOLDING, data_type=DataType.UINT16
            ),
        ],
    )
    sink, connectivity = RecordingSink(), RecordingConnectivity()
    conn = connector([good, bad], sink, connectivity)
    async with running(conn):
        await connectivity.wait_for(lambda: len(connectivity.of("misconfigured")) >= 1)
        # The other device (same server, same connection) keeps delivering, poll after poll.
        count = len(sink.of("meter"))
        await sink.wait_for(lambda: len(sink.of("meter")) >= count + 3)
    tenant, device_id, detail = connectivity.of("misconfigured")[0]
    assert (tenant, device_id) == ("acme-retail", "misconfigured")
    assert "Modbus exception 2 (illegal data address)" in detail
    assert "holding 1000..1000" in detail
    assert len(connectivity.reports) == 1  # once, although every poll of it failed
    assert sink.of("misconfigured") == []  # all-or-nothing: no partial reading
    details = conn.details()["devices"]
    assert details["acme-retail/misconfigured"]["polls_failed"] >= 3
    assert "illegal data address" in details["acme-retail/misconfigured"]["last_error"]
    assert details["acme-retail/meter"]["polls_failed"] == 0


async def test_refused_connection_does_not_stop_other_devices(modbus_server: ModbusServer) -> None:
    dead_port = free_port()  # nothing listens here
    alive = device(modbus_server.port, "meter", power_meter_registers(), unit_id=METER_UNIT)
    dead = device(dead_port, "gone", power_meter_registers())
    sink, connectivity = RecordingSink(), RecordingConnectivity()
    conn = connector([alive, dead], sink, connectivity, reconnect_initial_s=0.1, reconnect_max_s=0.4)
    async with running(conn):
        await connectivity.wait_for(lambda: len(connectivity.of("gone")) >= 1)
        count = len(sink.of("meter"))
        await sink.wait_for(lambda: len(sink.of("meter")) >= count + 3)
    assert "refused or unreachable" in connectivity.of("gone")[0][2]
    assert len(connectivity.reports) == 1
    assert conn.details()["endpoints"][f"{LOOPBACK}:{dead_port}"]["connected"] is False


class CancellationSwallowingSink(RecordingSink):
    """A sink that loses a cancellation, as Python 3.11's asyncio.wait_for inside pymodbus can."""

    def __init__(self) -> None:
        super().__init__()
        self.blocked = asyncio.Event()

    async def submit(self, reading: Reading) -> None:
        await super().submit(reading)
        if self.blocked.is_set():
            return  # swallow only the first cancellation, so a failing test cannot hang the loop
        self.blocked.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()


async def test_a_swallowed_cancellation_still_stops_the_connector(modbus_server: ModbusServer) -> None:
    meter = device(modbus_server.port, "meter", power_meter_registers(), unit_id=METER_UNIT)
    sink, connectivity = CancellationSwallowingSink(), RecordingConnectivity()
    conn = connector([meter], sink, connectivity)
    task = asyncio.create_task(conn.run())
    async with asyncio.timeout(WAIT_S):
        await sink.blocked.wait()
    await stop(task)
    assert task.cancelled()
    assert len(sink.readings) == 1


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------


def _errors(excinfo: pytest.ExceptionInfo[ValidationError]) -> list[tuple[tuple[int | str, ...], str]]:
    return [(tuple(e["loc"]), e["msg"]) for e in excinfo.value.errors()]


def test_float32_on_a_coil_is_refused() -> None:
    with pytest.raises(ValidationError) as excinfo:
        RegisterMapping.model_validate({"metric": "x", "address": 0, "kind": "coil", "data_type": "float32"})
    [(loc, msg)] = _errors(excinfo)
    assert loc == ()
    assert "data_type float32 needs registers (kind holding or input)" in msg
    assert "use data_type bool" in msg


def test_bool_on_a_register_is_refused() -> None:
    with pytest.raises(ValidationError, match="data_type bool is only for kind coil or discrete"):
        RegisterMapping.model_validate({"metric": "x", "address": 0, "kind": "holding", "data_type": "bool"})


def test_poll_interval_zero_is_refused() -> None:
    config = {
        "tenant_id": "acme-retail",
        "device_id": "m",
        "host": "127.0.0.1",
        "poll_interval_s": 0,
        "timeout_s": 1,
        "registers": [{"metric": "v", "address": 0, "kind": "holding", "data_type": "uint16"}],
    }
    with pytest.raises(ValidationError) as excinfo:
        ModbusDeviceConfig.model_validate(config)
    [error] = excinfo.value.errors()
    assert error["loc"] == ("poll_interval_s",)
    assert error["type"] == "greater_than_equal"
    assert "greater than or equal to 0.1" in error["msg"]


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"colour": "red"}, "Extra inputs are not permitted"),
        ({"registers": []}, "at least 1 item"),
        ({"tenant_id": "Acme Retail"}, "should match pattern"),
        ({"port": 0}, "greater than or equal to 1"),
        (
            {"registers": [{"metric": "v", "address": 0, "kind": "holding", "data_type": "uint16"}] * 2},
            "metric names must be unique per device; repeated: v",
        ),
        (
            {"registers": [{"metric": "v", "address": 65533, "kind": "holding", "data_type": "float64"}]},
            "would end past the last address 65535",
        ),
        (
            {
                "registers": [
                    {"metric": "v", "address": 0, "kind": "holding", "data_type": "int16", "word": "x"}
                ]
            },
            "Extra inputs are not permitted",
        ),
        (
            {"registers": [{"metric": "v", "address": 0, "kind": "coil", "data_type": "bool", "scale": 2}]},
            "scale and offset cannot be applied to a bool",
        ),
    ],
)
def test_invalid_configurations_are_refused(change: dict[str, Any], fragment: str) -> None:
    config: dict[str, Any] = {
        "tenant_id": "acme-retail",
        "device_id": "m",
        "host": "127.0.0.1",
        "registers": [{"metric": "v", "address": 0, "kind": "holding", "data_type": "uint16"}],
        **change,
    }
    with pytest.raises(ValidationError, match=re.escape(fragment)):
        ModbusDeviceConfig.model_validate(config)


def test_a_device_configured_twice_is_refused() -> None:
    meter = device(502, "meter", power_meter_registers())
    with pytest.raises(ValueError, match="configured more than once: acme-retail/meter"):
        connector([meter, meter], RecordingSink(), RecordingConnectivity())


def test_the_documented_power_meter_config_is_valid() -> None:
    blocks = re.findall(r"```json\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    assert blocks, "docs/devices/modbus.md has no JSON example"
    config = ModbusDeviceConfig.model_validate(json.loads(blocks[0]))
    assert [m.metric for m in config.registers] == ["voltage", "current", "energy_kwh"]
    assert config.poll_interval_s == 5.0
    assert plan_reads(config.registers) == plan_reads(power_meter_registers())


# ---------------------------------------------------------------------------------------------
# Pure functions (no server)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", RAW_CASES, ids=[case[0] for case in RAW_CASES])
def test_decode_and_encode_are_inverse(
    case: tuple[str, int, DataType, Order, Order, list[int], int | float],
) -> None:
    _name, _address, data_type, word_order, byte_order, registers, expected = case
    assert decode_registers(registers, data_type, word_order, byte_order) == expected
    assert encode_registers(expected, data_type, word_order, byte_order) == registers


def test_decode_refuses_wrong_register_counts() -> None:
    with pytest.raises(ValueError, match="float32 needs 2 registers, got 1"):
        decode_registers([1], DataType.FLOAT32)
    with pytest.raises(ValueError, match=re.escape("0..65535")):
        decode_registers([70000], DataType.UINT16)


def test_plan_merges_adjacent_and_overlapping_but_not_gaps() -> None:
    def m(metric: str, address: int, kind: RegisterKind, data_type: DataType) -> RegisterMapping:
        return RegisterMapping(metric=metric, address=address, kind=kind, data_type=data_type)

    holding, coil = RegisterKind.HOLDING, RegisterKind.COIL
    mappings = [
        m("c", 4, holding, DataType.UINT32),  # 4-5, adjacent to a
        m("a", 0, holding, DataType.FLOAT64),  # 0-3
        m("b", 2, holding, DataType.UINT16),  # inside a
        m("d", 7, holding, DataType.INT16),  # gap at 6: a new block
        m("e", 1, RegisterKind.INPUT, DataType.INT16),  # another table
        m("f", 10, coil, DataType.BOOL),
        m("g", 11, coil, DataType.BOOL),
        m("h", 13, coil, DataType.BOOL),
    ]
    plan = [(b.kind, b.address, b.count, [x.metric for x in b.mappings]) for b in plan_reads(mappings)]
    assert plan == [
        (holding, 0, 6, ["a", "b", "c"]),
        (holding, 7, 1, ["d"]),
        (RegisterKind.INPUT, 1, 1, ["e"]),
        (coil, 10, 2, ["f", "g"]),
        (coil, 13, 1, ["h"]),
    ]
    # The per-request limit splits contiguous registers too.
    limited = plan_reads([m(f"r{i}", i, holding, DataType.UINT16) for i in range(10)], max_read_registers=4)
    assert [(b.address, b.count) for b in limited] == [(0, 4), (4, 4), (8, 2)]
