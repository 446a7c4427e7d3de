"""A simulated OPC-UA server (asyncua): the production line PLC of globex-plant.

The server registers the namespace ``urn:flatgigs:test-plc`` (look its index up by URI, never
assume 2) and exposes the production line of docs/SCENARIOS.md under ``Objects/Line1``:

=====================  ==========  ==========================================
node (``s=`` id)       type        meaning
=====================  ==========  ==========================================
``Line1/Speed``        Double      line speed, units/min
``Line1/Temperature``  Double      oven temperature, °C
``Line1/State``        String      ``idle`` / ``running`` / ``stopped`` / ...
``Line1/PartsMade``    UInt32      parts counter
``Line1/Running``      Boolean     motor on
=====================  ==========  ==========================================

Every variable is writable (anonymous, no encryption), so a client can drive values itself.

Two ways to use it:

- ``python -m server.simulator.opcua_server --port 4840 [--host 127.0.0.1] [--simulate SECONDS]``
  runs it as a process until SIGTERM; it prints ``flatgigs-opcua-ready pid=<pid> ...`` once the
  endpoint listens. Without ``--simulate`` the values stay at their defaults until a client writes
  them (the test harness, tests/harness/opcua.py); with it they follow the line's
  :class:`~server.simulator.signals.LineSignal` (``--seed``), updated every that many seconds.
- :class:`PlcServer` runs the same server inside the ``flatgigs simulate`` process, driven by the
  ``line1-plc`` device of the plant scenario.

Driven by a signal, each update writes ``Speed``, ``Temperature``, ``State`` and ``Running`` with
the signal at the wall-clock time as their source timestamp, and ``PartsMade`` counts the parts
made since the server started (the integral of the speed). During a dropout of the device the
values freeze, so the platform's subscription sees no change. Start-up takes 2-3 s
(``Server.init()``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

from server.simulator._ticker import GridUpdates
from server.simulator.signals import Dropouts, LineSignal, Metrics, Signal, derive_seed

if TYPE_CHECKING:  # asyncua is imported when a server starts, not when the simulator loads
    from asyncua.common.node import Node
    from asyncua.server.server import Server

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
NAMESPACE_URI = "urn:flatgigs:test-plc"
ENDPOINT_PATH = "/flatgigs/plc"
READY_MARKER = "flatgigs-opcua-ready"
PLC_DEVICE = "line1-plc"
_OBJECT = "Line1"
# name under Line1 -> (asyncua VariantType name, initial value).
VARIABLES: dict[str, tuple[str, Any]] = {
    "Speed": ("Double", 0.0),
    "Temperature": ("Double", 20.0),
    "State": ("String", "idle"),
    "PartsMade": ("UInt32", 0),
    "Running": ("Boolean", False),
}
# The metrics of the plc-line device type and the variable each comes from (docs/devices/opcua.md).
METRIC_VARIABLES = {"speed": "Speed", "temperature": "Temperature", "state": "State"}


class OpcUaServeError(Exception):
    """A simulated OPC-UA server that cannot start (port taken, ...)."""


def node_identifier(name: str) -> str:
    """The string identifier of a Line1 variable, e.g. ``Line1/Speed``."""
    if name not in VARIABLES:
        raise KeyError(f"the PLC has no variable {name!r} (it has {sorted(VARIABLES)})")
    return f"{_OBJECT}/{name}"


def endpoint_url(host: str, port: int) -> str:
    """The endpoint URL of a server on host:port."""
    return f"opc.tcp://{host}:{port}{ENDPOINT_PATH}"


def plc_binding(url: str, *, publishing_interval_ms: float = 500.0) -> dict[str, Any]:
    """The ``config`` of the PLC's ``opcua`` binding (``PUT /api/v1/devices/line1-plc/binding``)."""
    return {
        "url": url,
        "publishing_interval_ms": publishing_interval_ms,
        "nodes": [
            {"metric": metric, "namespace_uri": NAMESPACE_URI, "identifier": f"s={node_identifier(name)}"}
            for metric, name in METRIC_VARIABLES.items()
        ],
    }


class PlcServer(GridUpdates):
    """An asyncua server exposing Line1; with a ``signal``, its values follow it every ``update_s``.

    ``on_update(readings)`` is called after every update with the number of metrics written,
    ``on_silent()`` for every update skipped by a dropout (both for the simulator's counters).
    """

    what = "the PLC's values"

    def __init__(
        self,
        *,
        host: str = DEFAULT_HOST,
        port: int,
        signal: Signal | None = None,
        dropouts: Dropouts | None = None,
        clock: Callable[[], float] = time.time,
        update_s: float = 1.0,
        on_update: Callable[[int], None] | None = None,
        on_silent: Callable[[], None] | None = None,
        name: str = "flatgigs simulated PLC",
    ) -> None:
        if update_s <= 0:
            raise ValueError("update_s must be positive")
        self.host = host
        self.port = port
        self.signal = signal
        self.dropouts = dropouts
        self.clock = clock
        self.update_s = update_s
        self.on_update = on_update
        self.on_silent = on_silent
        self.name = name
        self.namespace_index = -1
        self.parts = 0.0
        self.updated_at: float | None = None
        self._server: Server | None = None
        self._nodes: dict[str, Node] = {}
        self._updater: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        """The endpoint URL clients connect to."""
        return endpoint_url(self.host, self.port)

    @property
    def running(self) -> bool:
        """True between start() and close()."""
        return self._server is not None

    async def start(self) -> None:
        """Listen (OpcUaServeError if impossible); start updating when there is a signal."""
        if self._server is not None:
            return
        from asyncua import ua
        from asyncua.server.server import Server

        server = Server()
        await server.init()
        server.set_endpoint(self.url)
        server.set_server_name(self.name)
        # Anonymous, no encryption: a simulated device on a trusted network.
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        idx = await server.register_namespace(NAMESPACE_URI)
        ns = ua.Int16(idx)
        line = await server.nodes.objects.add_object(
            ua.NodeId(ua.String(_OBJECT), ns), ua.QualifiedName(_OBJECT, idx)
        )
        nodes: dict[str, Node] = {}
        for name, (type_name, initial) in VARIABLES.items():
            node = await line.add_variable(
                ua.NodeId(ua.String(node_identifier(name)), ns),
                ua.QualifiedName(name, idx),
                initial,
                varianttype=getattr(ua.VariantType, type_name),
            )
            await node.set_writable()
            nodes[name] = node
        try:
            await server.start()
        except OSError as exc:
            with contextlib.suppress(Exception):
                await server.stop()
            raise OpcUaServeError(f"cannot serve OPC-UA on {self.host}:{self.port}: {exc}") from exc
        self._server, self._nodes, self.namespace_index = server, nodes, idx
        if self.signal is not None:
            await self.update(self._grid(self.clock()))
            self._updater = asyncio.create_task(self._update_forever(), name=f"opcua-plc:{self.port}")
        logger.info("serving the PLC over OPC-UA at %s (namespace index %d)", self.url, idx)

    async def write(self, name: str, value: Any, source_ts: datetime | None = None) -> None:
        """Set one Line1 variable (with its declared type) on the server."""
        from asyncua import ua

        type_name, _ = VARIABLES[name]
        variant = ua.Variant(value, getattr(ua.VariantType, type_name))
        # asyncua types timestamps as its own datetime subclass; an aware datetime is what it encodes.
        data_value = ua.DataValue(variant, SourceTimestamp=cast("ua.DateTime | None", source_ts))
        await self._nodes[name].write_value(data_value)

    async def update(self, t: float | None = None) -> None:
        """Write the signal at ``t`` (default: now) to Line1, unless the device is in a dropout."""
        if self._server is None or self.signal is None:
            raise RuntimeError("the server is not running, or has no signal to follow")
        t = self.clock() if t is None else t
        if self.dropouts is not None and self.dropouts.silent(t):
            if self.on_silent is not None:
                self.on_silent()
            return
        metrics = self.signal.sample(t)
        self._count_parts(metrics, t)
        stamp = datetime.fromtimestamp(t, UTC)
        await self.write("Speed", float(_number(metrics, "speed")), stamp)
        await self.write("Temperature", float(_number(metrics, "temperature")), stamp)
        await self.write("State", str(metrics["state"]), stamp)
        await self.write("Running", metrics["state"] == "running", stamp)
        await self.write("PartsMade", int(self.parts) % 2**32, stamp)
        self.updated_at = t
        if self.on_update is not None:
            self.on_update(len(METRIC_VARIABLES))

    def _count_parts(self, metrics: Metrics, t: float) -> None:
        if self.updated_at is not None and t > self.updated_at:
            self.parts += _number(metrics, "speed") * (t - self.updated_at) / 60.0  # speed is per minute

    async def close(self) -> None:
        """Stop updating and serving (open sessions are closed); safe to call more than once."""
        updater, self._updater = self._updater, None
        if updater is not None:
            updater.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await updater
        server, self._server = self._server, None
        if server is not None:
            await server.stop()

    async def __aenter__(self) -> PlcServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def _number(metrics: Metrics, name: str) -> float:
    value = metrics[name]
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number, not {value!r}")
    return float(value)


# --------------------------------------------------------------------------------------------
# python -m server.simulator.opcua_server
# --------------------------------------------------------------------------------------------


async def _serve(host: str, port: int, simulate_s: float | None, seed: int) -> None:
    line = LineSignal(derive_seed(seed, PLC_DEVICE)) if simulate_s is not None else None
    plc = PlcServer(host=host, port=port, signal=line, update_s=simulate_s or 1.0)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with plc:
        # The PID lets a parent tell this start from an earlier one in the same (appended) log.
        print(f"{READY_MARKER} pid={os.getpid()} port={port} ns={plc.namespace_index}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    """Entry point of the server process."""
    parser = argparse.ArgumentParser(
        prog="python -m server.simulator.opcua_server",
        description="A simulated OPC-UA server: the production line PLC (Objects/Line1).",
    )
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--simulate",
        type=float,
        default=None,
        metavar="SECONDS",
        help="follow the line's signal, updated every that many seconds (default: static values)",
    )
    parser.add_argument("--seed", type=int, default=0, help="the signal's seed (as flatgigs simulate --seed)")
    args = parser.parse_args(argv)
    if args.simulate is not None and args.simulate <= 0:
        parser.error("--simulate must be positive")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(_serve(args.host, args.port, args.simulate, args.seed))


if __name__ == "__main__":
    main()
