"""Running a simulation: provisioning, an optional backfill of history, then the live run.

Simulated time: the live run starts at ``t0`` and runs ``speed`` times faster than the wall clock.
Timestamps are never in the future (the platform refuses readings more than an hour ahead): at
``speed`` 1 or below ``t0`` is now; faster runs need a ``duration`` and are placed in the past so
that they end now (``t0 = now - (speed - 1) * duration``). A backfill writes
``[t0 - backfill, t0)`` first, as timestamped batches over HTTP.

The scheduler keeps one queue of devices ordered by when they next send. A device sends the
samples due since its last message; when the senders fall behind (a slow platform, a high
``speed``), samples pile up and leave as one batch per device, so the run catches up instead of
drifting. At most ``concurrency`` messages are in flight, and each device has at most one, so a
device's readings arrive in order.

Devices the platform polls or subscribes to can be *served* instead of sent: with a Modbus port the
power meters are units of a Modbus TCP server, with an OPC-UA port the plant's PLC is an OPC-UA
server, both running as asyncio tasks of this process for the live run, and the session binds each
served device through the API (``PUT /api/v1/devices/{id}/binding``) so that the platform polls it.
Served values follow the wall clock, whatever the speed: the platform stamps what it polls with its
own clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import ipaddress
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from server.simulator.drivers import (
    DEFAULT_MAX_BYTES,
    CoapDriver,
    Driver,
    DriverUnavailable,
    HttpDriver,
    MqttDriver,
    RateLimiter,
    Sample,
    SendError,
    encode_batches,
)
from server.simulator.fleet import DeviceProtocol, Fleet, FleetError, Scenario, SimDevice, build_fleet
from server.simulator.modbus_server import (
    MAX_UNITS,
    ModbusServeError,
    PowerMeterServer,
    meter_binding,
)
from server.simulator.opcua_server import OpcUaServeError, PlcServer, endpoint_url, plc_binding
from server.simulator.provision import (
    CREDENTIALS_FILE,
    CredentialStore,
    ProvisioningError,
    api_client,
    ensure_binding,
    ensure_fleet,
    remove_binding,
    tenant_of,
)

logger = logging.getLogger(__name__)

BACKFILL_ROUTE = "backfill"
MODBUS_ROUTE = "modbus"
OPCUA_ROUTE = "opcua"
# Routes whose devices need a device credential (sending over MQTT needs none).
CREDENTIAL_ROUTES = frozenset({"http", "coap"})
MAX_CONSECUTIVE_BACKFILL_ERRORS = 20
STOP_GRACE_S = 10.0


class SimulationError(Exception):
    """The simulation cannot run (bad options, unreachable platform, missing package)."""


# --- counters ------------------------------------------------------------------------------------


@dataclass
class RouteStats:
    """Counters of one delivery route (mqtt, http, coap, backfill; modbus, opcua when served).

    For a served route a message is a read the server answered (modbus) or an update of the
    server's values (opcua).
    """

    devices: int = 0
    messages: int = 0
    readings: int = 0
    errors: int = 0
    lost: int = 0
    last_error: str = ""


@dataclass
class Stats:
    """What the run did so far; read by the live display."""

    routes: dict[str, RouteStats] = field(default_factory=dict)
    phase: str = "starting"
    silent: int = 0
    sim_time: float | None = None
    backfill_total: int = 0
    backfill_done: int = 0
    notes: list[str] = field(default_factory=list)

    def route(self, name: str) -> RouteStats:
        """The counters of ``name`` (created on first use)."""
        return self.routes.setdefault(name, RouteStats())

    def sent(self, route: str, readings: int) -> None:
        """One message with ``readings`` readings was delivered."""
        counters = self.route(route)
        counters.messages += 1
        counters.readings += readings

    def failed(self, route: str, readings: int, error: str) -> None:
        """One message with ``readings`` readings could not be delivered."""
        counters = self.route(route)
        counters.errors += 1
        counters.lost += readings
        counters.last_error = error

    @property
    def messages(self) -> int:
        """Messages delivered on every route."""
        return sum(r.messages for r in self.routes.values())

    @property
    def readings(self) -> int:
        """Readings delivered on every route."""
        return sum(r.readings for r in self.routes.values())

    @property
    def errors(self) -> int:
        """Messages that could not be delivered."""
        return sum(r.errors for r in self.routes.values())


# --- time ----------------------------------------------------------------------------------------


class SimClock:
    """Simulated epoch seconds: ``start`` when created, then ``speed`` times the wall clock."""

    def __init__(
        self, start: float, speed: float, *, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.start = start
        self.speed = speed
        self._monotonic = monotonic
        self._wall0 = monotonic()

    def now(self) -> float:
        """The simulated time now."""
        return self.start + (self._monotonic() - self._wall0) * self.speed

    def elapsed(self) -> float:
        """Wall seconds since the clock started."""
        return self._monotonic() - self._wall0

    def wall_delay(self, sim_t: float) -> float:
        """Wall seconds until the simulated time reaches ``sim_t`` (0 if it has)."""
        return max(0.0, (sim_t - self.now()) / self.speed)


def live_start(now: float, speed: float, duration: float | None) -> float:
    """``t0``: when the live run starts in simulated time, so that it never runs ahead of ``now``."""
    if speed <= 1:
        return now
    if duration is None:
        raise SimulationError(
            "--speed above 1 needs --duration: the simulated window is placed in the past so that it "
            "ends now (the platform refuses readings from the future)"
        )
    return now - (speed - 1) * duration


# --- live run ------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Cursor:
    device: SimDevice
    driver: Driver
    route: str
    next_t: float


class Simulation:
    """Sends every device's samples as simulated time passes, until ``end`` or ``stop``."""

    def __init__(
        self,
        fleet: Fleet,
        routes: Mapping[str, Driver],
        stats: Stats,
        clock: SimClock,
        *,
        begin: float | None = None,
        end: float | None = None,
        concurrency: int = 32,
        max_batch: int = 500,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.stats = stats
        self.clock = clock
        self.end = end
        self.concurrency = concurrency
        self.max_batch = max_batch
        self.max_bytes = max_bytes
        first = clock.now() if begin is None else begin
        self._cursors = [
            _Cursor(d, routes[d.id], routes[d.id].name, d.first_sample_at(first)) for d in fleet.devices
        ]
        self._heap: list[tuple[float, int]] = []
        self._in_flight: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()

    def _push(self, index: int) -> None:
        cursor = self._cursors[index]
        if self.end is not None and cursor.next_t > self.end:
            return  # this device is done
        device = cursor.device
        due = cursor.next_t + (device.send_every - 1) * device.interval_s
        heapq.heappush(self._heap, (due if self.end is None else min(due, self.end), index))

    def _collect(self, cursor: _Cursor, limit: float) -> list[Sample]:
        device = cursor.device
        samples: list[Sample] = []
        t = cursor.next_t
        while t <= limit and len(samples) < self.max_batch:
            if device.dropouts is not None and device.dropouts.silent(t):
                self.stats.silent += 1
            else:
                samples.append((t, device.signal.sample(t)))
            t += device.interval_s
        cursor.next_t = t
        return samples

    async def _send(self, cursor: _Cursor, samples: list[Sample]) -> None:
        for payload, count in encode_batches(samples, max_bytes=self.max_bytes):
            try:
                await cursor.driver.send(cursor.device.id, payload)
            except SendError as exc:
                self.stats.failed(cursor.route, count, f"{cursor.device.id}: {exc}")
            except Exception as exc:  # a bug or an unexpected library error: count it, keep running
                logger.exception("sending for %s failed", cursor.device.id)
                self.stats.failed(cursor.route, count, f"{cursor.device.id}: {type(exc).__name__}: {exc}")
            else:
                self.stats.sent(cursor.route, count)

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``end`` (every sample up to it sent) or until ``stop`` is set."""
        for index in range(len(self._cursors)):
            self._push(index)
        semaphore = asyncio.Semaphore(self.concurrency)
        waker = asyncio.create_task(self._wake_on(stop))

        def done(index: int, task: asyncio.Task[None]) -> None:
            semaphore.release()
            self._in_flight.discard(task)
            self._push(index)
            self._wake.set()

        try:
            while not stop.is_set():
                now = self.clock.now()
                limit = now if self.end is None else min(now, self.end)
                self.stats.sim_time = limit
                while self._heap and self._heap[0][0] <= limit and not stop.is_set():
                    _, index = heapq.heappop(self._heap)
                    cursor = self._cursors[index]
                    samples = self._collect(cursor, limit)
                    if not samples:
                        self._push(index)
                        continue
                    await semaphore.acquire()
                    task = asyncio.create_task(self._send(cursor, samples))
                    self._in_flight.add(task)
                    task.add_done_callback(functools.partial(done, index))
                if self.end is not None and now >= self.end and not self._heap and not self._in_flight:
                    break
                timeout = 0.5
                if self._heap:
                    timeout = min(timeout, self.clock.wall_delay(self._heap[0][0]))
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await self._wake.wait()
        finally:
            waker.cancel()
            await self._drain()

    async def _wake_on(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._wake.set()

    async def _drain(self) -> None:
        if not self._in_flight:
            return
        _, pending = await asyncio.wait(set(self._in_flight), timeout=STOP_GRACE_S)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)


# --- backfill ------------------------------------------------------------------------------------


def grid_points(device: SimDevice, start: float, end: float) -> int:
    """How many sampling instants of ``device`` fall in [start, end)."""
    first = device.first_sample_at(start)
    return max(0, math.ceil((end - first) / device.interval_s - 1e-9)) if first < end else 0


async def backfill(
    fleet: Fleet,
    driver: Driver,
    stats: Stats,
    *,
    start: float,
    end: float,
    stop: asyncio.Event,
    concurrency: int = 8,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> None:
    """Write every device's history of [start, end) as timestamped batches (all through ``driver``)."""
    stats.backfill_total = sum(grid_points(d, start, end) for d in fleet.devices)
    queue = deque(fleet.devices)
    consecutive = 0

    def produce(device: SimDevice) -> Iterator[Sample]:
        for t in device.sample_times(start, end):
            if device.dropouts is not None and device.dropouts.silent(t):
                stats.silent += 1
                stats.backfill_done += 1
                continue
            yield t, device.signal.sample(t)

    async def worker() -> None:
        nonlocal consecutive
        while queue and not stop.is_set():
            device = queue.popleft()
            for payload, count in encode_batches(produce(device), max_bytes=max_bytes):
                if stop.is_set():
                    return
                try:
                    await driver.send(device.id, payload)
                except SendError as exc:
                    stats.failed(BACKFILL_ROUTE, count, f"{device.id}: {exc}")
                    consecutive += 1
                    if consecutive >= MAX_CONSECUTIVE_BACKFILL_ERRORS:
                        raise SimulationError(
                            f"backfill stopped after {consecutive} failures in a row: {exc}"
                        ) from exc
                else:
                    consecutive = 0
                    stats.sent(BACKFILL_ROUTE, count)
                stats.backfill_done += count

    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(max(1, concurrency)):
                group.create_task(worker())
    except ExceptionGroup as errors:
        raise errors.exceptions[0] from None


# --- a whole session -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SimOptions:
    """Everything a simulation run needs (the CLI's options, parsed)."""

    api: str
    token: str
    mqtt: str | None = None
    coap: str | None = None
    scenario: Scenario = Scenario.RETAIL
    stores: int = 40
    devices: int = 0
    speed: float = 1.0
    duration: float | None = None
    seed: int = 0
    failures: tuple[tuple[str, float], ...] = ()
    backfill: float | None = None
    dropouts_per_day: float = 0.25
    data_dir: Path = Path(".flatgigs")
    rate: float | None = None
    concurrency: int = 32
    provision: bool = True
    modbus_port: int | None = None
    opcua_port: int | None = None
    listen_host: str = "127.0.0.1"
    bind_host: str = "127.0.0.1"
    unbind_on_exit: bool = False
    server_update_s: float = 1.0


def route_for(device: SimDevice, *, mqtt: bool, coap: bool, modbus: bool = False, opcua: bool = False) -> str:
    """How the simulator delivers a device: its own protocol when possible, else HTTP."""
    if device.protocol is DeviceProtocol.MQTT and mqtt:
        return "mqtt"
    if device.protocol is DeviceProtocol.COAP and coap:
        return "coap"
    if device.protocol is DeviceProtocol.MODBUS and modbus:
        return MODBUS_ROUTE
    if device.protocol is DeviceProtocol.OPCUA and opcua:
        return OPCUA_ROUTE
    return "http"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Session:
    """One ``flatgigs simulate`` run: provision, backfill, live run, with counters to display."""

    def __init__(
        self,
        options: SimOptions,
        *,
        wall_clock: Callable[[], float] = time.time,
        transport: httpx.AsyncBaseTransport | None = None,
        on_note: Callable[[str], None] | None = None,
    ) -> None:
        if options.speed <= 0:
            raise SimulationError("--speed must be positive")
        if options.duration is not None and options.duration < 0:
            raise SimulationError("--duration cannot be negative")
        if options.duration == 0 and not options.backfill:
            raise SimulationError("nothing to do: --duration 0 without --backfill")
        for name, port in (("--modbus-port", options.modbus_port), ("--opcua-port", options.opcua_port)):
            if port is not None and not 1 <= port <= 65535:
                raise SimulationError(f"{name} must be between 1 and 65535")
        if options.modbus_port is not None and options.modbus_port == options.opcua_port:
            raise SimulationError("--modbus-port and --opcua-port must differ")
        if (
            options.modbus_port is not None
            and options.scenario is Scenario.RETAIL
            and options.stores > MAX_UNITS
        ):
            raise SimulationError(
                f"--modbus-port serves at most {MAX_UNITS} stores (one Modbus unit id per power meter)"
            )
        self.options = options
        self.stats = Stats()
        self.wall_clock = wall_clock
        self.transport = transport
        self.on_note = on_note
        self.tenant = ""
        self.fleet: Fleet | None = None
        self.clock: SimClock | None = None
        self.t0 = 0.0
        self.end: float | None = None
        self.routes: dict[str, str] = {}

    def note(self, text: str) -> None:
        """Record (and report) something worth telling the user."""
        self.stats.notes.append(text)
        if self.on_note is not None:
            self.on_note(text)

    def _phase(self, phase: str) -> None:
        self.stats.phase = phase

    def _build(self) -> Fleet:
        o = self.options
        self.tenant = tenant_of(o.token)
        self.t0 = live_start(self.wall_clock(), o.speed, o.duration)
        try:
            fleet = build_fleet(
                scenario=o.scenario,
                stores=o.stores,
                generic=o.devices,
                seed=o.seed,
                failures={device: self.t0 + offset for device, offset in o.failures},
                dropouts_per_day=o.dropouts_per_day,
            )
        except FleetError as exc:
            raise SimulationError(str(exc)) from exc
        self.routes = {
            d.id: route_for(
                d,
                mqtt=bool(o.mqtt),
                coap=bool(o.coap),
                modbus=o.modbus_port is not None,
                opcua=o.opcua_port is not None,
            )
            for d in fleet.devices
        }
        protocols = fleet.by_protocol()
        if o.modbus_port is not None and not protocols[DeviceProtocol.MODBUS]:
            self.note("--modbus-port: this fleet has no power meters, nothing to serve over Modbus")
        if o.opcua_port is not None and not protocols[DeviceProtocol.OPCUA]:
            self.note("--opcua-port: this fleet has no PLC (use --scenario plant), nothing to serve")
        if o.duration != 0:
            for route in self.routes.values():
                self.stats.route(route).devices += 1
        return fleet

    async def run(self, stop: asyncio.Event) -> Stats:
        """Run to the end (or until ``stop``); raise SimulationError if it cannot start."""
        try:
            return await self._run(stop)
        except (ProvisioningError, DriverUnavailable) as exc:
            raise SimulationError(str(exc)) from exc
        finally:
            self._phase("done")

    async def _run(self, stop: asyncio.Event) -> Stats:
        o = self.options
        fleet = self.fleet = self._build()
        async with api_client(o.api, o.token, transport=self.transport) as api:
            if o.provision:
                self._phase("provisioning")
                report = await ensure_fleet(api, fleet)
                self.note(
                    f"{len(fleet)} devices for tenant {self.tenant}: {report.existing_devices} registered, "
                    f"{report.created_devices} created"
                    + (f", types created: {', '.join(report.created_types)}" if report.created_types else "")
                )
                for warning in report.warnings:
                    self.note(f"warning: {warning}")
            credentials = CredentialStore(o.data_dir / CREDENTIALS_FILE, api, self.tenant)
            needing = [d.id for d in fleet.devices if o.backfill or self.routes[d.id] in CREDENTIAL_ROUTES]
            if needing:
                self._phase("credentials")
                issued = await credentials.ensure(needing)
                self.note(
                    f"device credentials: {len(needing) - issued} cached, {issued} issued "
                    f"({credentials.path})"
                )
            drivers = self._drivers(credentials)
            served = contextlib.AsyncExitStack()
            try:
                for driver in drivers.values():
                    try:
                        await driver.start()
                    except SendError as exc:
                        raise SimulationError(str(exc)) from exc
                await self._serve(api, fleet, served)
                if o.backfill and not stop.is_set():
                    self._phase("backfill")
                    self.note(f"backfill: {o.backfill / 3600:g} h of history before the live run, over HTTP")
                    # History has no deadline: wait out the platform's backpressure for long.
                    history = HttpDriver(
                        o.api, credentials, max_connections=8, max_busy_s=600.0, transport=self.transport
                    )
                    try:
                        await backfill(
                            fleet,
                            history,
                            self.stats,
                            start=self.t0 - o.backfill,
                            end=self.t0,
                            stop=stop,
                            concurrency=min(8, o.concurrency),
                        )
                    finally:
                        await history.close()
                if o.duration != 0 and not stop.is_set():
                    self._phase("live")
                    clock_start = self.t0 if o.speed > 1 else max(self.t0, self.wall_clock())
                    self.clock = SimClock(clock_start, o.speed)
                    self.end = None if o.duration is None else clock_start + o.duration * o.speed
                    sent = Fleet([d for d in fleet.devices if self.routes[d.id] in drivers], fleet.types)
                    routes = {d.id: drivers[self.routes[d.id]] for d in sent.devices}
                    simulation = Simulation(
                        sent,
                        routes,
                        self.stats,
                        self.clock,
                        begin=self.t0,
                        end=self.end,
                        concurrency=o.concurrency,
                    )
                    await simulation.run(stop)
            finally:
                self._phase("stopping")
                try:
                    await served.aclose()  # unbinds first (if asked), then stops the servers
                except Exception:  # stopping must go on: the drivers still need closing
                    logger.exception("stopping the simulated servers failed")
                for driver in drivers.values():
                    with contextlib.suppress(Exception):
                        await driver.close()
        return self.stats

    def _served(self, fleet: Fleet, route: str) -> list[SimDevice]:
        if self.options.duration == 0:
            return []
        return [d for d in fleet.devices if self.routes[d.id] == route]

    async def _serve(self, api: httpx.AsyncClient, fleet: Fleet, stack: contextlib.AsyncExitStack) -> None:
        """Start the Modbus and OPC-UA servers of the served devices and bind those devices."""
        o = self.options
        meters = self._served(fleet, MODBUS_ROUTE)
        plcs = self._served(fleet, OPCUA_ROUTE)
        if not meters and not plcs:
            return
        if len(plcs) > 1:
            raise SimulationError(f"--opcua-port serves one PLC, this fleet has {len(plcs)}")
        self._phase("serving")
        if o.bind_host != o.listen_host and _is_loopback(o.listen_host) and not _is_loopback(o.bind_host):
            self.note(
                f"warning: the servers listen on {o.listen_host} only, so a platform connecting to "
                f"--bind-host {o.bind_host} cannot reach them (give --listen-host 0.0.0.0)"
            )
        bindings: list[tuple[str, str, dict[str, Any]]] = []
        if meters:
            assert o.modbus_port is not None
            meter_server = PowerMeterServer(
                meters,
                host=o.listen_host,
                port=o.modbus_port,
                clock=self.wall_clock,
                update_s=o.server_update_s,
                on_read=lambda _device, readings: self.stats.sent(MODBUS_ROUTE, readings),
                on_silent=self._silent,
            )
            try:
                await meter_server.start()
            except ModbusServeError as exc:
                raise SimulationError(str(exc)) from exc
            stack.push_async_callback(meter_server.close)
            for meter in meters:
                config = meter_binding(
                    o.bind_host, o.modbus_port, meter_server.units[meter.id], poll_interval_s=meter.interval_s
                )
                bindings.append((meter.id, "modbus", config))
            self.note(
                f"serving {len(meters)} power meter(s) over Modbus TCP on {o.listen_host}:{o.modbus_port} "
                f"(unit id = store number)"
            )
        for plc in plcs:
            assert o.opcua_port is not None
            plc_server = PlcServer(
                host=o.listen_host,
                port=o.opcua_port,
                signal=plc.signal,
                dropouts=plc.dropouts,
                clock=self.wall_clock,
                update_s=o.server_update_s,
                on_update=lambda readings: self.stats.sent(OPCUA_ROUTE, readings),
                on_silent=self._silent,
            )
            try:
                await plc_server.start()
            except OpcUaServeError as exc:
                raise SimulationError(str(exc)) from exc
            stack.push_async_callback(plc_server.close)
            bindings.append((plc.id, "opcua", plc_binding(endpoint_url(o.bind_host, o.opcua_port))))
            self.note(f"serving {plc.id} over OPC-UA at {plc_server.url}")
        if o.unbind_on_exit:
            stack.push_async_callback(self._unbind, api, [device_id for device_id, _, _ in bindings])
        self._phase("binding")
        changed = 0
        for device_id, kind, config in bindings:
            changed += await ensure_binding(api, device_id, kind, config)
        self.note(
            f"bindings for {o.bind_host}: {changed} created or refreshed, {len(bindings) - changed} unchanged"
            + ("; removed on exit" if o.unbind_on_exit else "; left in place on exit")
        )

    def _silent(self, *_: object) -> None:
        self.stats.silent += 1

    async def _unbind(self, api: httpx.AsyncClient, device_ids: list[str]) -> None:
        removed = 0
        for device_id in device_ids:
            try:
                removed += await remove_binding(api, device_id)
            except ProvisioningError as exc:
                self.note(f"warning: {exc}")
        self.note(f"bindings removed: {removed}")

    def _drivers(self, credentials: CredentialStore) -> dict[str, Driver]:
        o = self.options
        limiter = RateLimiter(o.rate) if o.rate else None
        used = set(self.routes.values()) if o.duration != 0 else set()
        drivers: dict[str, Driver] = {}
        if "http" in used:
            drivers["http"] = HttpDriver(
                o.api, credentials, max_connections=o.concurrency, limiter=limiter, transport=self.transport
            )
        if "mqtt" in used and o.mqtt:
            drivers["mqtt"] = MqttDriver(
                o.mqtt, self.tenant, limiter=limiter, max_inflight=max(20, o.concurrency)
            )
        if "coap" in used and o.coap:
            drivers["coap"] = CoapDriver(o.coap, credentials, limiter=limiter)
        return drivers
