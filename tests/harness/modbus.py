"""A private Modbus TCP server (pymodbus simulator) in its own process, on a free loopback port.

The server runs as ``python -m tests.harness.modbus --host H --port N --spec-file spec.json`` in a
child process (a ManagedProcess), so a test can SIGKILL it, freeze it or restart it on the same
port, exactly like a device that crashes, hangs or reboots. ``start_modbus_server`` starts it and
waits until the port accepts connections.

The spec (JSON, built with the dataclasses below) lists the units (Modbus device ids) and, per
unit, four separate tables, as most real devices have them:

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
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.harness.ports import LOOPBACK, ServerExitedError, free_port, wait_for_port
from tests.harness.processes import ManagedProcess

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 20.0
# A port taken by someone else between free_port() and the bind makes the server exit at once.
_START_ATTEMPTS = 3
# pymodbus cannot build a table without any block: an empty bit table gets this unused block.
_PLACEHOLDER_BIT_ADDRESS = 65520

REGISTER_DATATYPES = ("int16", "uint16", "int32", "uint32", "float32", "float64", "registers")


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


@dataclass
class ModbusServer:
    """Handle on a running private Modbus server: where it listens and the process behind it."""

    host: str
    port: int
    spec: ModbusSpec
    spec_path: Path
    log_path: Path
    process: ManagedProcess
    startup_seconds: float = 0.0

    @property
    def pid(self) -> int | None:
        """PID of the server process (None before the first start)."""
        return self.process.pid

    @property
    def running(self) -> bool:
        """True while the server process is alive."""
        return self.process.running

    def kill(self) -> int | None:
        """SIGKILL the server (a crashed device): connections die without a goodbye."""
        return self.process.kill()

    def stop(self, timeout: float = 10.0) -> int | None:
        """Stop the server (SIGTERM, then SIGKILL)."""
        return self.process.stop(signal.SIGTERM, timeout)

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open but nothing answers."""
        self.process.pause()

    def resume(self) -> None:
        """Unfreeze a paused server."""
        self.process.resume()

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        """(Re)start the server on the same port with the same spec."""
        self.process, self.startup_seconds = _launch(
            self.host, self.port, self.spec_path, self.log_path, timeout
        )

    def restart(self, timeout: float = START_TIMEOUT_S) -> None:
        """Stop (if still running) and start again on the same port."""
        self.stop()
        self.start(timeout)


def _launch(
    host: str, port: int, spec_path: Path, log_path: Path, timeout: float
) -> tuple[ManagedProcess, float]:
    argv = [
        sys.executable,
        "-m",
        "tests.harness.modbus",
        "--host",
        host,
        "--port",
        str(port),
        "--spec-file",
        str(spec_path),
    ]
    process = ManagedProcess("modbus", argv, log_path, cwd=REPO_ROOT).start()
    try:
        seconds = wait_for_port(host, port, timeout, process)
    except BaseException:
        process.kill()
        raise
    logger.info("modbus server ready on %s:%d after %.2fs (PID %s)", host, port, seconds, process.pid)
    return process, seconds


def start_modbus_server(
    spec: ModbusSpec,
    workdir: Path | None = None,
    *,
    host: str = LOOPBACK,
    port: int | None = None,
    timeout: float = START_TIMEOUT_S,
) -> ModbusServer:
    """Start a Modbus server process serving ``spec``; return once its port accepts connections."""
    if workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix="flatgigs-modbus-"))
    workdir.mkdir(parents=True, exist_ok=True)
    spec_path = workdir / "modbus-spec.json"
    spec_path.write_text(spec.to_json())
    log_path = workdir / "modbus.log"
    attempts = 1 if port is not None else _START_ATTEMPTS
    last_error: ServerExitedError | None = None
    for _ in range(attempts):
        chosen = port if port is not None else free_port(host)
        try:
            process, seconds = _launch(host, chosen, spec_path, log_path, timeout)
        except ServerExitedError as error:  # most likely the port was taken in between: try another
            last_error = error
            continue
        return ModbusServer(host, chosen, spec, spec_path, log_path, process, seconds)
    assert last_error is not None
    raise last_error


# --------------------------------------------------------------------------------------------
# The server process itself (runs in the child; imports pymodbus only there)
# --------------------------------------------------------------------------------------------


def build_devices(spec: ModbusSpec) -> list[Any]:
    """pymodbus SimDevice objects for the spec (separate coil/discrete/holding/input tables)."""
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

    def registers(blocks: Sequence[RegisterBlock]) -> list[Any]:
        if not blocks:  # pymodbus needs one block per table: an invalid one keeps every address undefined
            return [SimData(address=0, datatype=DataType.INVALID)]
        out = []
        for block in blocks:
            is_float = block.datatype.startswith("float")
            values = [float(v) for v in block.values] if is_float else [int(v) for v in block.values]
            out.append(SimData(address=block.address, values=values, datatype=types[block.datatype]))
        return out

    def bits(blocks: Sequence[BitBlock]) -> list[Any]:
        if not blocks:
            return [SimData(address=_PLACEHOLDER_BIT_ADDRESS, values=[False] * 16, datatype=DataType.BITS)]
        return [
            SimData(address=block.address, values=[bool(v) for v in block.values], datatype=DataType.BITS)
            for block in blocks
        ]

    return [
        SimDevice(
            id=unit.unit_id,
            simdata=(bits(unit.coils), bits(unit.discrete), registers(unit.holding), registers(unit.input)),
        )
        for unit in spec.units
    ]


async def serve(host: str, port: int, spec: ModbusSpec) -> None:
    """Serve ``spec`` on host:port until the process is killed."""
    from pymodbus.server import ModbusTcpServer

    server = ModbusTcpServer(build_devices(spec), address=(host, port))
    await server.serve_forever()


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the server process."""
    parser = argparse.ArgumentParser(description="Private pymodbus simulator server for tests")
    parser.add_argument("--host", default=LOOPBACK)
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
