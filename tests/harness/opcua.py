"""A private OPC-UA server (a fake PLC) in its own process on a free loopback port.

The server is an asyncua ``Server`` started as a child process, so that a test can SIGKILL,
SIGSTOP or restart it by PID exactly like the other private servers::

    python -m tests.harness.opcua --port 4840 [--host 127.0.0.1] [--simulate 1.0]

It registers the namespace ``urn:flatgigs:test-plc`` (look its index up by URI, never assume 2)
and exposes the globex-plant production line of docs/SCENARIOS.md under ``Objects/Line1``:

=====================  ==========  ==========================================
node (``s=`` id)       type        meaning
=====================  ==========  ==========================================
``Line1/Speed``        Double      line speed, m/s
``Line1/Temperature``  Double      oven temperature, °C
``Line1/State``        String      ``idle`` / ``running`` / ``stopped`` / ...
``Line1/PartsMade``    UInt32      parts counter
``Line1/Running``      Boolean     motor on
=====================  ==========  ==========================================

Every variable is writable: tests drive values deterministically through their own client
(:class:`PlcWriter`), including the status code and source timestamp of the value. With
``--simulate SECONDS`` the server also changes the values itself on that period (for the
simulator and demos). Start-up takes 2-3 s (``Server.init()``), so tests share one server per
session; a restart keeps the port, so clients can reconnect to the same URL.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
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
from asyncua.server.server import Server
from asyncua.ua.status_codes import StatusCodes

from tests.harness.ports import LOOPBACK, ServerExitedError, free_port, wait_until
from tests.harness.processes import ManagedProcess

logger = logging.getLogger(__name__)

NAMESPACE_URI = "urn:flatgigs:test-plc"
ENDPOINT_PATH = "/flatgigs/plc"
START_TIMEOUT_S = 30.0
READY_MARKER = "flatgigs-opcua-ready"
_START_ATTEMPTS = 3
_REPO_ROOT = Path(__file__).resolve().parents[2]
_OBJECT = "Line1"
# name under Line1 -> (asyncua VariantType name, initial value).
VARIABLES: dict[str, tuple[str, Any]] = {
    "Speed": ("Double", 0.0),
    "Temperature": ("Double", 20.0),
    "State": ("String", "idle"),
    "PartsMade": ("UInt32", 0),
    "Running": ("Boolean", False),
}


def node_identifier(name: str) -> str:
    """The string identifier of a Line1 variable, e.g. ``Line1/Speed``."""
    if name not in VARIABLES:
        raise KeyError(f"the test PLC has no variable {name!r} (it has {sorted(VARIABLES)})")
    return f"{_OBJECT}/{name}"


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
    argv = [sys.executable, "-m", "tests.harness.opcua", "--host", host, "--port", str(port)]
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


# --------------------------------------------------------------------------- child side


async def _serve(host: str, port: int, simulate_s: float | None) -> None:
    server = Server()
    await server.init()
    server.set_endpoint(f"opc.tcp://{host}:{port}{ENDPOINT_PATH}")
    server.set_server_name("flatgigs test PLC")
    # Anonymous, no encryption: a private loopback server for tests only.
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    idx = await server.register_namespace(NAMESPACE_URI)
    ns = ua.Int16(idx)
    line = await server.nodes.objects.add_object(
        ua.NodeId(ua.String(_OBJECT), ns), ua.QualifiedName(_OBJECT, idx)
    )
    nodes = {}
    for name, (type_name, initial) in VARIABLES.items():
        node = await line.add_variable(
            ua.NodeId(ua.String(node_identifier(name)), ns),
            ua.QualifiedName(name, idx),
            initial,
            varianttype=getattr(ua.VariantType, type_name),
        )
        await node.set_writable()
        nodes[name] = node

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async with server:
        print(f"{READY_MARKER} pid={os.getpid()} port={port} ns={idx}", flush=True)
        if simulate_s is None:
            await stop.wait()
            return
        tick = 0
        while not stop.is_set():
            tick += 1
            running = (tick // 30) % 4 != 3  # stopped one period in four
            await nodes["Speed"].write_value(
                round(1.2 + 0.1 * math.sin(tick / 5), 3) if running else 0.0, ua.VariantType.Double
            )
            await nodes["Temperature"].write_value(
                round(180.0 + 5 * math.sin(tick / 40), 2), ua.VariantType.Double
            )
            await nodes["State"].write_value("running" if running else "stopped", ua.VariantType.String)
            await nodes["Running"].write_value(running, ua.VariantType.Boolean)
            if running:
                await nodes["PartsMade"].write_value(tick, ua.VariantType.UInt32)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), simulate_s)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the server process."""
    parser = argparse.ArgumentParser(description="A private OPC-UA test server (fake PLC).")
    parser.add_argument("--host", default=LOOPBACK)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--simulate", type=float, default=None, metavar="SECONDS")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(_serve(args.host, args.port, args.simulate))


if __name__ == "__main__":
    main()
