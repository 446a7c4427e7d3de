"""Simulated Modbus TCP servers (pymodbus): a fixed register map, and the fleet's live power meters.

**A fixed register map.** ``python -m server.simulator.modbus_server --port N --spec '{...}'`` (or
``--spec-file spec.json``) serves a :class:`ModbusSpec` on ``--host`` (default 127.0.0.1) until it
is killed. The test harness (tests/harness/modbus.py) runs it as a child process, so that a test can
SIGKILL it, freeze it or restart it on the same port like a device that crashes, hangs or reboots.
The spec lists the units (Modbus device ids) and, per unit, four separate tables, as most real
devices have them::

    {"units": [{"unit_id": 1,
                "holding":  [{"address": 0, "datatype": "float32", "values": [230.5]},
                             {"address": 2, "datatype": "registers", "values": [32768, 17254]}],
                "input":    [{"address": 0, "datatype": "int16", "values": [-5]}],
                "coils":    [{"address": 0, "values": [true, false, true]}],
                "discrete": []}]}

``datatype`` is one of pymodbus's simulator types (int16, uint16, int32, uint32, float32, float64,
registers = raw 16-bit words); typed values are stored big-endian (big word and byte order, the
Modbus convention); any other layout is given as raw ``registers``. Reading an address that no
block defines gives exception code 2 (illegal data address), as does a read that runs past the end
of a block. Coils and discrete inputs are packed 16 to a register by pymodbus, so the unused bits of
a register that holds a defined bit read as False instead of failing. A unit id that is not in the
spec gets exception code 4.

**The live power meters.** :class:`PowerMeterServer` serves the ``power-meter`` devices of a
simulated fleet inside the ``flatgigs simulate`` process (an asyncio server, no child process): one
unit id per meter (``meter-SS`` is unit SS) on one port, with the register map of
docs/devices/modbus.md (holding registers: ``voltage`` float32 at 0, ``current`` float32 at 2,
``energy_kwh`` uint32 in hundredths at 4). The registers follow the meter's
:class:`~server.simulator.signals.PowerMeterSignal` at the wall-clock time, updated every second:
the platform stamps a polled reading with its own clock, so the value must be the one of that
instant. While a meter is in a dropout it answers every read with exception 11 (gateway target
device failed to respond), as a meter behind a gateway that has gone quiet.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import logging
import re
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from server.simulator._ticker import GridUpdates
from server.simulator.signals import Metrics

if TYPE_CHECKING:  # pymodbus is imported when a server starts, not when the simulator loads
    from pymodbus.constants import ExcCodes
    from pymodbus.server import ModbusTcpServer
    from pymodbus.simulator import SimDevice as ModbusSimDevice
    from pymodbus.simulator.simdevice import SimAction

    from server.simulator.fleet import SimDevice

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
# pymodbus cannot build a table without any block: an empty bit table gets this unused block.
_PLACEHOLDER_BIT_ADDRESS = 65520

REGISTER_DATATYPES = ("int16", "uint16", "int32", "uint32", "float32", "float64", "registers")

# Function code 16 (write multiple holding registers): how the updates reach the holding table.
_WRITE_HOLDING = 16
# Unit ids 1-247 address devices; 0 is broadcast and 248-255 are reserved.
MAX_UNITS = 247


class ModbusServeError(Exception):
    """A simulated Modbus server that cannot start (port taken, too many units, ...)."""


# --------------------------------------------------------------------------------------------
# A fixed register map
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RegisterBlock:
    """Consecutive values of one type in the holding or input table, from ``address``."""

    address: int
    datatype: str
    values: list[int] | list[float]

    def __post_init__(self) -> None:
        if self.datatype not in REGISTER_DATATYPES:
            raise ValueError(f"datatype must be one of {REGISTER_DATATYPES}, not {self.datatype!r}")
        if not self.values:
            raise ValueError("a block needs at least one value")


@dataclass(frozen=True)
class BitBlock:
    """Consecutive coils or discrete inputs from ``address``."""

    address: int
    values: list[bool]

    def __post_init__(self) -> None:
        if not self.values:
            raise ValueError("a block needs at least one value")


@dataclass(frozen=True)
class UnitSpec:
    """The four tables of one Modbus unit (device id)."""

    unit_id: int = 1
    holding: list[RegisterBlock] = field(default_factory=list)
    input: list[RegisterBlock] = field(default_factory=list)
    coils: list[BitBlock] = field(default_factory=list)
    discrete: list[BitBlock] = field(default_factory=list)


@dataclass(frozen=True)
class ModbusSpec:
    """Everything the server serves."""

    units: list[UnitSpec]

    def to_json(self) -> str:
        """The spec as the server process reads it."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ModbusSpec:
        """Parse what to_json() wrote."""
        data = json.loads(text)
        units = []
        for unit in data["units"]:
            units.append(
                UnitSpec(
                    unit_id=int(unit.get("unit_id", 1)),
                    holding=[RegisterBlock(**block) for block in unit.get("holding", [])],
                    input=[RegisterBlock(**block) for block in unit.get("input", [])],
                    coils=[BitBlock(**block) for block in unit.get("coils", [])],
                    discrete=[BitBlock(**block) for block in unit.get("discrete", [])],
                )
            )
        return cls(units)


def build_devices(spec: ModbusSpec, actions: Mapping[int, SimAction] | None = None) -> list[ModbusSimDevice]:
    """pymodbus SimDevice objects for the spec (separate coil/discrete/holding/input tables).

    ``actions`` maps unit ids to a pymodbus action, awaited on every access to that unit (it can
    refuse the request with an exception code).
    """
    from pymodbus.simulator import DataType, SimData, SimDevice

    types = {
        "int16": DataType.INT16,
        "uint16": DataType.UINT16,
        "int32": DataType.INT32,
        "uint32": DataType.UINT32,
        "float32": DataType.FLOAT32,
        "float64": DataType.FLOAT64,
        "registers": DataType.REGISTERS,
    }

    def registers(blocks: Sequence[RegisterBlock]) -> list[SimData]:
        if not blocks:  # pymodbus needs one block per table: an invalid one keeps every address undefined
            return [SimData(address=0, datatype=DataType.INVALID)]
        out = []
        for block in blocks:
            is_float = block.datatype.startswith("float")
            values: list[int] | list[float] = (
                [float(v) for v in block.values] if is_float else [int(v) for v in block.values]
            )
            out.append(SimData(address=block.address, values=values, datatype=types[block.datatype]))
        return out

    def bits(blocks: Sequence[BitBlock]) -> list[SimData]:
        if not blocks:
            return [SimData(address=_PLACEHOLDER_BIT_ADDRESS, values=[False] * 16, datatype=DataType.BITS)]
        return [
            SimData(address=block.address, values=[bool(v) for v in block.values], datatype=DataType.BITS)
            for block in blocks
        ]

    actions = actions or {}
    return [
        SimDevice(
            id=unit.unit_id,
            simdata=(bits(unit.coils), bits(unit.discrete), registers(unit.holding), registers(unit.input)),
            action=actions.get(unit.unit_id),
        )
        for unit in spec.units
    ]


async def _listen(devices: list[ModbusSimDevice], host: str, port: int) -> ModbusTcpServer:
    """A pymodbus TCP server listening on host:port (in the background of the running loop)."""
    from pymodbus.server import ModbusTcpServer

    server = ModbusTcpServer(devices, address=(host, port))
    try:
        await server.serve_forever(background=True)
    except (OSError, RuntimeError) as exc:  # pymodbus says "Could not start listen" for a taken port
        with contextlib.suppress(Exception):
            await _shutdown(server)
        raise ModbusServeError(f"cannot serve Modbus TCP on {host}:{port}: {exc}") from exc
    return server


async def _shutdown(server: ModbusTcpServer) -> None:
    await server.shutdown()  # type: ignore[no-untyped-call]  # pymodbus leaves it unannotated


async def serve(host: str, port: int, spec: ModbusSpec) -> None:
    """Serve ``spec`` on host:port until the process is killed."""
    from pymodbus.server import ModbusTcpServer

    server = ModbusTcpServer(build_devices(spec), address=(host, port))
    await server.serve_forever()


# --------------------------------------------------------------------------------------------
# The live power meters
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MeterRegister:
    """Where a power meter keeps one metric (holding table, big word and byte order)."""

    metric: str
    address: int
    data_type: str
    scale: float = 1.0


# docs/devices/modbus.md, "Example: the store power meter".
METER_REGISTERS = (
    MeterRegister("voltage", 0, "float32"),
    MeterRegister("current", 2, "float32"),
    MeterRegister("energy_kwh", 4, "uint32", 0.01),
)
METER_WORDS = 6  # registers 0-5
_UINT32 = 2**32
_METER_NUMBER = re.compile(r"(\d+)$")


def meter_words(metrics: Metrics) -> list[int]:
    """The six holding registers (0-5) of a meter showing ``metrics``."""
    words: list[int] = []
    for register in METER_REGISTERS:
        value = metrics[register.metric]
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise TypeError(f"{register.metric} must be a number, not {value!r}")
        if register.data_type == "float32":
            packed = struct.pack(">f", float(value))
        else:  # uint32 in units of ``scale``; a real counter wraps around
            packed = struct.pack(">I", round(value / register.scale) % _UINT32)
        words.extend(struct.unpack(">HH", packed))
    return words


def meter_binding(host: str, port: int, unit_id: int, *, poll_interval_s: float = 5.0) -> dict[str, Any]:
    """The ``config`` of a meter's ``modbus`` binding (``PUT /api/v1/devices/{id}/binding``)."""
    registers: list[dict[str, Any]] = []
    for register in METER_REGISTERS:
        mapping: dict[str, Any] = {
            "metric": register.metric,
            "address": register.address,
            "kind": "holding",
            "data_type": register.data_type,
        }
        if register.scale != 1.0:
            mapping["scale"] = register.scale
        registers.append(mapping)
    return {
        "host": host,
        "port": port,
        "unit_id": unit_id,
        "poll_interval_s": poll_interval_s,
        "timeout_s": 1.0,
        "registers": registers,
    }


def meter_unit_ids(device_ids: Sequence[str]) -> dict[str, int]:
    """A unit id per meter: the store number of ``meter-SS``, else 1, 2, ... in order.

    ModbusServeError when there are more meters than unit ids (247 per port).
    """
    if len(device_ids) > MAX_UNITS:
        raise ModbusServeError(
            f"{len(device_ids)} power meters do not fit on one Modbus port (at most {MAX_UNITS} unit ids)"
        )
    numbers = []
    for device_id in device_ids:
        match = _METER_NUMBER.search(device_id)
        numbers.append(int(match.group(1)) if match else 0)
    if all(1 <= n <= MAX_UNITS for n in numbers) and len(set(numbers)) == len(numbers):
        return dict(zip(device_ids, numbers, strict=True))
    return {device_id: n for n, device_id in enumerate(device_ids, start=1)}


class PowerMeterServer(GridUpdates):
    """The fleet's power meters on one Modbus TCP port, their registers following their signals.

    ``on_read(device_id, readings)`` is called for every read a meter answers, ``on_silent(device_id)``
    for every read it refuses because it is in a dropout (both for the simulator's counters).
    """

    what = "the power meters' registers"

    def __init__(
        self,
        meters: Sequence[SimDevice],
        *,
        host: str = DEFAULT_HOST,
        port: int,
        clock: Callable[[], float] = time.time,
        update_s: float = 1.0,
        on_read: Callable[[str, int], None] | None = None,
        on_silent: Callable[[str], None] | None = None,
    ) -> None:
        if update_s <= 0:
            raise ValueError("update_s must be positive")
        self.meters = list(meters)
        self.host = host
        self.port = port
        self.clock = clock
        self.update_s = update_s
        self.on_read = on_read
        self.on_silent = on_silent
        self.units = meter_unit_ids([m.id for m in self.meters])
        self.updated_at: float | None = None
        self._server: ModbusTcpServer | None = None
        self._updater: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        """True between start() and close()."""
        return self._server is not None

    async def start(self) -> None:
        """Listen (ModbusServeError if the port is taken) and start updating every ``update_s``."""
        if self._server is not None:
            return
        now = self._grid(self.clock())
        spec = ModbusSpec(
            [
                UnitSpec(
                    unit_id=self.units[meter.id],
                    holding=[RegisterBlock(0, "registers", meter_words(meter.signal.sample(now)))],
                )
                for meter in self.meters
            ]
        )
        actions = {self.units[m.id]: functools.partial(self._access, m) for m in self.meters}
        self._server = await _listen(build_devices(spec, actions), self.host, self.port)
        self.updated_at = now
        self._updater = asyncio.create_task(self._update_forever(), name=f"modbus-meters:{self.port}")
        logger.info(
            "serving %d power meter(s) over Modbus TCP on %s:%d", len(self.meters), self.host, self.port
        )

    async def update(self, t: float | None = None) -> None:
        """Set every meter's registers to its signal at ``t`` (default: now)."""
        if self._server is None:
            raise RuntimeError("the server is not running")
        t = self.clock() if t is None else t
        for meter in self.meters:
            words = meter_words(meter.signal.sample(t))
            await self._server.async_setValues(self.units[meter.id], _WRITE_HOLDING, 0, words)
        self.updated_at = t

    async def _access(
        self,
        meter: SimDevice,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        current_registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """pymodbus action on every access to a meter's unit: refuse reads during a dropout."""
        from pymodbus.constants import ExcCodes

        if set_values is not None:  # our own updates (and anyone else's writes)
            return None
        if meter.dropouts is not None and meter.dropouts.silent(self.clock()):
            if self.on_silent is not None:
                self.on_silent(meter.id)
            return ExcCodes.GATEWAY_NO_RESPONSE
        if self.on_read is not None:
            self.on_read(meter.id, max(1, count // 2))
        return None

    async def close(self) -> None:
        """Stop updating and serving; safe to call more than once."""
        updater, self._updater = self._updater, None
        if updater is not None:
            updater.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await updater
        server, self._server = self._server, None
        if server is not None:
            await _shutdown(server)

    async def __aenter__(self) -> PowerMeterServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


# --------------------------------------------------------------------------------------------
# python -m server.simulator.modbus_server
# --------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the server process (a fixed register map)."""
    parser = argparse.ArgumentParser(
        prog="python -m server.simulator.modbus_server",
        description="A simulated Modbus TCP server (pymodbus) serving a fixed register map.",
    )
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--port", type=int, required=True)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--spec", help="the spec as a JSON string")
    source.add_argument("--spec-file", type=Path, help="a file holding the spec as JSON")
    args = parser.parse_args(argv)
    text = args.spec if args.spec is not None else args.spec_file.read_text()
    spec = ModbusSpec.from_json(text)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger.info("serving %d unit(s) on %s:%d", len(spec.units), args.host, args.port)
    asyncio.run(serve(args.host, args.port, spec))


if __name__ == "__main__":
    main()
