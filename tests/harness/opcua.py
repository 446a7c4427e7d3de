"""A private OPC-UA server (a fake PLC) in its own process on a free loopback port.

The server itself is product code, ``server/simulator/opcua_server.py`` (an asyncua ``Server``);
it runs as a child process, so that a test can SIGKILL, SIGSTOP or restart it by PID exactly like
the other private servers::

    python -m server.simulator.opcua_server --port 4840 [--host 127.0.0.1] [--simulate 1.0]

It registers the namespace ``urn:flatgigs:test-plc`` (look its index up by URI, never assume 2)
and exposes the globex-plant production line of docs/SCENARIOS.md under ``Objects/Line1``
(``Speed``, ``Temperature``, ``State``, ``PartsMade``, ``Running``; see that module).

Every variable is writable: tests drive values deterministically through their own client
(:class:`PlcWriter`), including the status code and source timestamp of the value. With
``simulate_s`` the server also changes the values itself on that period (the line's signal).
Start-up takes 2-3 s (``Server.init()``), so tests share one server per session; a restart keeps
the port, so clients can reconnect to the same URL. ``python -m tests.harness.opcua`` still runs
the server, for the commands in older notes.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, cast

from asyncua import ua
from asyncua.client.client import Client
from asyncua.ua.status_codes import StatusCodes

from server.simulator.opcua_server import (
    ENDPOINT_PATH,
    NAMESPACE_URI,
    READY_MARKER,
    VARIABLES,
    node_identifier,
)
from tests.harness.ports import LOOPBACK, ServerExitedError, free_port, wait_until
from tests.harness.processes import ManagedProcess

__all__ = [
    "ENDPOINT_PATH",
    "NAMESPACE_URI",
    "READY_MARKER",
    "VARIABLES",
    "OpcUaServer",
    "PlcWriter",
    "node_identifier",
    "start_opcua_server",
]

logger = logging.getLogger(__name__)

SERVER_MODULE = "server.simulator.opcua_server"
START_TIMEOUT_S = 30.0
_START_ATTEMPTS = 3
_REPO_ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- parent side


@dataclass
class OpcUaServer:
    """Handle on a running private OPC-UA server: where it listens and the process behind it."""

    host: str
    port: int
    workdir: Path
    log_path: Path
    process: ManagedProcess
    simulate_s: float | None = None
    startup_seconds: float = field(default=0.0)

    @property
    def url(self) -> str:
        """The endpoint URL clients connect to."""
        return f"opc.tcp://{self.host}:{self.port}{ENDPOINT_PATH}"

    @property
    def namespace_uri(self) -> str:
        """The URI of the namespace holding Line1 (resolve its index on the server)."""
        return NAMESPACE_URI

    @property
    def pid(self) -> int | None:
        """PID of the server process."""
        return self.process.pid

    def kill(self) -> int | None:
        """SIGKILL the server (a crash): open connections drop, nothing is saved."""
        return self.process.kill()

    def stop(self, timeout: float = 10.0) -> int | None:
        """Stop the server (SIGTERM: it closes its sessions, then exits; SIGKILL after timeout)."""
        return self.process.stop(signal.SIGTERM, timeout)

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        """(Re)start the server on the same port; the values start from their defaults again."""
        self.process, self.startup_seconds = _launch(
            self.host, self.port, self.log_path, self.simulate_s, timeout
        )

    def restart(self, timeout: float = START_TIMEOUT_S) -> None:
        """Stop (if still running) and start again on the same port."""
        self.stop()
        self.start(timeout)


def _argv(host: str, port: int, simulate_s: float | None) -> list[str]:
    argv = [sys.executable, "-m", SERVER_MODULE, "--host", host, "--port", str(port)]
    if simulate_s is not None:
        argv += ["--simulate", str(simulate_s)]
    return argv


def _launch(
    host: str, port: int, log_path: Path, simulate_s: float | None, timeout: float
) -> tuple[ManagedProcess, float]:
    """Start the server process and wait for its ready line; return the process and seconds taken."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    process = ManagedProcess(
        "opcua", _argv(host, port, simulate_s), log_path, env=env, cwd=_REPO_ROOT
    ).start()
    # The child prints the marker with its own PID once the endpoint is listening, so a marker
    # left in the (appended) log by an earlier run on this port cannot be mistaken for this one.
    marker = f"{READY_MARKER} pid={process.pid} "
    try:
        seconds = wait_until(lambda: marker in process.log_tail(200), timeout, f"OPC-UA on {port}", process)
    except BaseException:
        process.kill()
        raise
    logger.info("OPC-UA server ready on %s:%d after %.2fs", host, port, seconds)
    return process, seconds


def start_opcua_server(
    workdir: Path,
    *,
    host: str = LOOPBACK,
    port: int | None = None,
    simulate_s: float | None = None,
    timeout: float = START_TIMEOUT_S,
) -> OpcUaServer:
    """Start a private OPC-UA server with its log in `workdir`; wait until it accepts sessions.

    `simulate_s` makes the server change its values itself every that many seconds.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "opcua.log"
    attempts = 1 if port is not None else _START_ATTEMPTS
    for attempt in range(1, attempts + 1):
        chosen = port if port is not None else free_port(host)
        try:
            process, seconds = _launch(host, chosen, log_path, simulate_s, timeout)
        except ServerExitedError:
            if attempt == attempts:
                raise
            logger.warning("OPC-UA server exited at start on port %d; retrying", chosen)
            continue
        return OpcUaServer(host, chosen, workdir, log_path, process, simulate_s, seconds)
    raise AssertionError("unreachable")


class PlcWriter:
    """A test's own OPC-UA client that sets the fake PLC's values (with status and timestamps).

    Use as ``async with PlcWriter(server.url) as plc: await plc.write("Speed", 1.5)``.
    """

    def __init__(self, url: str, namespace_uri: str = NAMESPACE_URI, timeout: float = 5.0) -> None:
        self._client = Client(url, timeout=timeout)
        self._namespace_uri = namespace_uri
        self.namespace_index = -1

    async def __aenter__(self) -> PlcWriter:
        await self._client.connect()
        try:
            self.namespace_index = await self._client.get_namespace_index(self._namespace_uri)
        except BaseException:
            await self._client.disconnect()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._client.disconnect()

    def node_id(self, name: str) -> str:
        """The ``ns=<index>;s=Line1/<name>`` form of a variable on this server."""
        return f"ns={self.namespace_index};s={node_identifier(name)}"

    async def write(
        self,
        name: str,
        value: Any,
        *,
        status: int | None = None,
        source_ts: datetime | None = None,
    ) -> None:
        """Write one Line1 variable with its declared type (ints to a Double are converted).

        `status` is an OPC-UA status code (e.g. ``StatusCodes.UncertainLastUsableValue``);
        `value` None with a Bad status writes "no value", as a PLC with a broken sensor does.
        """
        type_name, _ = VARIABLES[name]
        variant_type = getattr(ua.VariantType, type_name)
        if type_name in ("Double", "Float") and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)  # asyncua refuses an int for a Double with BadTypeMismatch
        variant = ua.Variant(value, variant_type) if value is not None else ua.Variant()
        data_value = ua.DataValue(
            variant,
            StatusCode=ua.StatusCode(ua.UInt32(status if status is not None else StatusCodes.Good)),
            # asyncua types timestamps as its own datetime subclass; a plain aware datetime is what
            # it encodes anyway.
            SourceTimestamp=cast("ua.DateTime | None", source_ts),
        )
        await self._client.get_node(self.node_id(name)).write_value(data_value)

    async def read(self, name: str) -> Any:
        """The current value of a Line1 variable."""
        return await self._client.get_node(self.node_id(name)).read_value()


if __name__ == "__main__":
    from server.simulator.opcua_server import main

    main()
