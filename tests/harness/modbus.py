"""A private Modbus TCP server (pymodbus simulator) in its own process, on a free loopback port.

The server itself is product code, ``server/simulator/modbus_server.py``: it runs as
``python -m server.simulator.modbus_server --host H --port N --spec-file spec.json`` in a child
process (a ManagedProcess), so a test can SIGKILL it, freeze it or restart it on the same port,
exactly like a device that crashes, hangs or reboots. ``start_modbus_server`` starts it and waits
until the port accepts connections.

The spec types (:class:`ModbusSpec`, :class:`UnitSpec`, :class:`RegisterBlock`, :class:`BitBlock`)
come from that module; its docstring says what a spec serves and how undefined addresses answer.
``python -m tests.harness.modbus`` still runs the server, for the commands in older notes.
"""

from __future__ import annotations

import logging
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from server.simulator.modbus_server import (
    REGISTER_DATATYPES,
    BitBlock,
    ModbusSpec,
    RegisterBlock,
    UnitSpec,
)
from tests.harness.ports import LOOPBACK, ServerExitedError, free_port, wait_for_port
from tests.harness.processes import ManagedProcess

__all__ = [
    "REGISTER_DATATYPES",
    "BitBlock",
    "ModbusServer",
    "ModbusSpec",
    "RegisterBlock",
    "UnitSpec",
    "start_modbus_server",
]

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVER_MODULE = "server.simulator.modbus_server"
START_TIMEOUT_S = 20.0
# A port taken by someone else between free_port() and the bind makes the server exit at once.
_START_ATTEMPTS = 3


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
        SERVER_MODULE,
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


if __name__ == "__main__":
    from server.simulator.modbus_server import main

    main()
