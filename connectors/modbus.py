"""The Modbus TCP connector: polls register maps of devices and turns each poll into one Reading.

Configuration (the schema is documented in docs/devices/modbus.md): one ``ModbusDeviceConfig`` per
device (tenant, device id, host, port, unit id, poll interval, timeout) with a list of
``RegisterMapping`` entries, each naming one metric and where and how to read it.

Polling:

- One task per device, on a drift-free schedule: the k-th poll is due at ``start + k * interval``.
  A poll that overruns (slow device, full pipeline, timeout) makes the poller skip the ticks it
  missed instead of firing them in a burst; ``details()`` counts the skipped ticks.
- Devices that share ``host:port`` (units behind one gateway) share one TCP connection, used by one
  request at a time. Mappings of the same kind whose addresses are adjacent or overlapping are read
  in one request (at most ``max_read_registers`` registers, or 2000 coils/discrete inputs); gaps are
  never read across, since a device may refuse an undefined address in between.
- Every poll that succeeds becomes ONE Reading with all metrics of the device, timestamped when the
  poll started, with ``Source("modbus", <connector name>)``. A poll is all-or-nothing: if one block
  fails, no reading is submitted for that tick.

Decoding is done here with ``struct`` (``decode_registers``), not with pymodbus's helpers:
``word_order`` is the order of the 16-bit registers of a multi-register value (``big``: the most
significant register at the lowest address), ``byte_order`` the order of the two bytes inside each
register (``big`` is the Modbus standard). So a float32 ``ABCD`` is big/big, ``CDAB`` little/big,
``BADC`` big/little and ``DCBA`` little/little. The value delivered is ``raw * scale + offset``;
integers stay integers when ``scale == 1`` and ``offset == 0``, otherwise they become floats.
A non-finite float (devices send NaN for "not available") is left out of the reading, which is then
marked ``Quality.UNCERTAIN``.

Failures: a connection refused, a timeout, a dropped connection or a Modbus exception response
(e.g. code 2, illegal data address) fails the poll of that device only. The device is reported to
``ConnectivitySink.unreachable`` once per outage (again only after a successful poll in between);
the poller keeps polling on its schedule. A lost connection is re-established on a later poll with
exponential backoff per ``host:port`` (``reconnect_initial_s`` doubling up to ``reconnect_max_s``);
a timeout also closes the connection, so a late answer can never be taken for the next request's.
Only programming errors escape ``run()``, as ConnectorError, for the supervisor to restart it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException
from pymodbus.pdu import ModbusPDU

from connectors.base import ConnectivitySink, Connector, ConnectorError, ReadingSink
from model.devices import METRIC_NAME_PATTERN
from model.ids import OBJECT_ID_PATTERN, TENANT_ID_PATTERN
from model.readings import MetricValue, Quality, Reading, Source

logger = logging.getLogger(__name__)

MAX_ADDRESS = 65535
# Protocol limits of one read request (Modbus application protocol v1.1b3, 6.1-6.4).
MAX_READ_REGISTERS = 125
MAX_READ_BITS = 2000

EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}


class RegisterKind(StrEnum):
    """The four Modbus data tables."""

    HOLDING = "holding"
    INPUT = "input"
    COIL = "coil"
    DISCRETE = "discrete"

    @property
    def is_bit(self) -> bool:
        """Coils and discrete inputs hold single bits; the others hold 16-bit registers."""
        return self in (RegisterKind.COIL, RegisterKind.DISCRETE)


class DataType(StrEnum):
    """How the raw registers (or the bit) of one metric are interpreted."""

    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    BOOL = "bool"

    @property
    def register_count(self) -> int:
        """How many 16-bit registers (or bits, for bool) one value occupies."""
        return _REGISTER_COUNT[self]


class Order(StrEnum):
    """Byte or word order: big = most significant first."""

    BIG = "big"
    LITTLE = "little"


_REGISTER_COUNT = {
    DataType.INT16: 1,
    DataType.UINT16: 1,
    DataType.INT32: 2,
    DataType.UINT32: 2,
    DataType.FLOAT32: 2,
    DataType.FLOAT64: 4,
    DataType.BOOL: 1,
}
_STRUCT_FORMAT = {
    DataType.INT16: "h",
    DataType.UINT16: "H",
    DataType.INT32: "i",
    DataType.UINT32: "I",
    DataType.FLOAT32: "f",
    DataType.FLOAT64: "d",
}

TenantId = Annotated[str, Field(pattern=TENANT_ID_PATTERN)]
DeviceId = Annotated[str, Field(pattern=OBJECT_ID_PATTERN)]


class RegisterMapping(BaseModel):
    """One metric of a device: where it is in the register map and how to decode it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: str = Field(pattern=METRIC_NAME_PATTERN, examples=["voltage"])
    address: int = Field(ge=0, le=MAX_ADDRESS, description="0-based protocol address")
    kind: RegisterKind
    data_type: DataType
    word_order: Order = Order.BIG
    byte_order: Order = Order.BIG
    scale: float = Field(default=1.0, allow_inf_nan=False)
    offset: float = Field(default=0.0, allow_inf_nan=False)

    @property
    def count(self) -> int:
        """Registers (or bits) this mapping occupies, starting at ``address``."""
        return self.data_type.register_count

    @model_validator(mode="after")
    def _check_type_fits_kind(self) -> Self:
        if self.kind.is_bit and self.data_type is not DataType.BOOL:
            raise ValueError(
                f"data_type {self.data_type.value} needs registers (kind holding or input); "
                f"a {self.kind.value} holds a single bit: use data_type bool"
            )
        if not self.kind.is_bit and self.data_type is DataType.BOOL:
            raise ValueError(
                f"data_type bool is only for kind coil or discrete; a {self.kind.value} register "
                "needs a numeric data_type (int16, uint16, int32, uint32, float32, float64)"
            )
        if self.data_type is DataType.BOOL and (self.scale != 1.0 or self.offset != 0.0):
            raise ValueError("scale and offset cannot be applied to a bool")
        if self.address + self.count - 1 > MAX_ADDRESS:
            raise ValueError(
                f"a {self.data_type.value} at address {self.address} needs {self.count} registers "
                f"and would end past the last address {MAX_ADDRESS}"
            )
        return self


class ModbusDeviceConfig(BaseModel):
    """One Modbus TCP device (a unit id at host:port) and the metrics polled from it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tenant_id: TenantId
    device_id: DeviceId
    host: str = Field(min_length=1, max_length=253)
    port: int = Field(default=502, ge=1, le=65535)
    unit_id: int = Field(default=1, ge=0, le=255, description="Modbus unit (slave) id")
    poll_interval_s: float = Field(default=5.0, ge=0.1, le=86400, allow_inf_nan=False)
    timeout_s: float = Field(default=1.0, gt=0, le=60, allow_inf_nan=False)
    max_read_registers: int = Field(
        default=MAX_READ_REGISTERS,
        ge=4,
        le=MAX_READ_REGISTERS,
        description="largest register block read in one request (some devices accept fewer than 125)",
    )
    registers: list[RegisterMapping] = Field(min_length=1, max_length=256)

    @model_validator(mode="after")
    def _check_unique_metrics(self) -> Self:
        seen: set[str] = set()
        duplicates: set[str] = set()
        for mapping in self.registers:
            (duplicates if mapping.metric in seen else seen).add(mapping.metric)
        if duplicates:
            raise ValueError(
                f"metric names must be unique per device; repeated: {', '.join(sorted(duplicates))}"
            )
        return self

    @property
    def endpoint(self) -> tuple[str, int]:
        """``(host, port)``: devices sharing it share one TCP connection."""
        return (self.host, self.port)

    @property
    def key(self) -> str:
        """``tenant/device``, the key of this device in ``details()``."""
        return f"{self.tenant_id}/{self.device_id}"


# --------------------------------------------------------------------------------------------
# Decoding (pure functions, unit-testable without a server)
# --------------------------------------------------------------------------------------------


def _words_to_bytes(words: Sequence[int], word_order: Order, byte_order: Order) -> bytes:
    ordered = list(words) if word_order is Order.BIG else list(reversed(words))
    return b"".join(word.to_bytes(2, byte_order.value) for word in ordered)


def decode_registers(
    registers: Sequence[int],
    data_type: DataType,
    word_order: Order = Order.BIG,
    byte_order: Order = Order.BIG,
) -> int | float:
    """The value of ``registers`` (as read, lowest address first) interpreted as ``data_type``.

    The registers are rearranged into one big-endian byte string (reversing the registers for a
    little word order, swapping the two bytes of each register for a little byte order) and unpacked
    with ``struct``.
    """
    if data_type is DataType.BOOL:
        raise ValueError("bool values come from coils or discrete inputs, not registers")
    if len(registers) != data_type.register_count:
        raise ValueError(
            f"{data_type.value} needs {data_type.register_count} registers, got {len(registers)}"
        )
    if any(not 0 <= word <= 0xFFFF for word in registers):
        raise ValueError(f"register values must be 0..65535, got {list(registers)}")
    raw = _words_to_bytes(registers, word_order, byte_order)
    value: int | float = struct.unpack(">" + _STRUCT_FORMAT[data_type], raw)[0]
    return value


def encode_registers(
    value: int | float, data_type: DataType, word_order: Order = Order.BIG, byte_order: Order = Order.BIG
) -> list[int]:
    """The registers (lowest address first) a device stores ``value`` in: the inverse of decoding."""
    if data_type is DataType.BOOL:
        raise ValueError("bool values live in coils or discrete inputs, not registers")
    raw = struct.pack(">" + _STRUCT_FORMAT[data_type], value)
    words = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
    if byte_order is Order.LITTLE:
        words = [((word & 0xFF) << 8) | (word >> 8) for word in words]
    return words if word_order is Order.BIG else list(reversed(words))


def apply_scale(raw: int | float | bool, mapping: RegisterMapping) -> MetricValue:
    """``raw * scale + offset``; ints stay ints (and bools bools) when the scaling is the identity."""
    if isinstance(raw, bool):
        return raw
    if mapping.scale == 1.0 and mapping.offset == 0.0:
        return raw
    return float(raw) * mapping.scale + mapping.offset


@dataclass(frozen=True, slots=True)
class ReadBlock:
    """One read request: ``count`` registers (or bits) of ``kind`` from ``address``, and what they hold."""

    kind: RegisterKind
    address: int
    count: int
    mappings: tuple[RegisterMapping, ...]

    def decode(self, values: Sequence[int] | Sequence[bool]) -> dict[str, int | float | bool]:
        """Raw (unscaled) value of each mapping from the block's registers or bits."""
        decoded: dict[str, int | float | bool] = {}
        for mapping in self.mappings:
            start = mapping.address - self.address
            if self.kind.is_bit:
                decoded[mapping.metric] = bool(values[start])
            else:
                words = [int(word) for word in values[start : start + mapping.count]]
                decoded[mapping.metric] = decode_registers(
                    words, mapping.data_type, mapping.word_order, mapping.byte_order
                )
        return decoded


def plan_reads(
    mappings: Sequence[RegisterMapping], max_read_registers: int = MAX_READ_REGISTERS
) -> list[ReadBlock]:
    """Group mappings into as few reads as possible without reading any address no mapping covers.

    Mappings of the same kind are merged while they are adjacent or overlapping and the block stays
    within the per-request limit (``max_read_registers`` registers, 2000 bits).
    """
    blocks: list[ReadBlock] = []
    for kind in RegisterKind:
        limit = MAX_READ_BITS if kind.is_bit else max_read_registers
        members = sorted((m for m in mappings if m.kind is kind), key=lambda m: (m.address, m.count))
        current: list[RegisterMapping] = []
        start = end = 0  # the block covers [start, end)
        for mapping in members:
            mapping_end = mapping.address + mapping.count
            if current and mapping.address <= end and max(end, mapping_end) - start <= limit:
                current.append(mapping)
                end = max(end, mapping_end)
                continue
            if current:
                blocks.append(ReadBlock(kind, start, end - start, tuple(current)))
            current, start, end = [mapping], mapping.address, mapping_end
        if current:
            blocks.append(ReadBlock(kind, start, end - start, tuple(current)))
    return blocks


# --------------------------------------------------------------------------------------------
# The connector
# --------------------------------------------------------------------------------------------


class PollError(Exception):
    """One poll of one device failed (the device stays in the schedule)."""

    def __init__(self, detail: str, *, reset_connection: bool = False) -> None:
        super().__init__(detail)
        self.detail = detail
        self.reset_connection = reset_connection


def _reraise_swallowed_cancellation() -> None:
    """Raise CancelledError if this task was cancelled but the cancellation got lost on the way.

    Python 3.11's ``asyncio.wait_for`` (which pymodbus awaits for every connect and every answer)
    returns the result instead of raising when the awaited future completes in the same loop
    iteration as the cancellation: the task carries on polling and a TaskGroup waiting for it never
    finishes. ``Task.cancelling()`` still counts the request, so it is honoured here, between polls
    (no asyncio.timeout of ours is active at that point, so the count is an outside request).
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _iso(ts: datetime | None) -> str | None:
    return ts.isoformat() if ts is not None else None


@dataclass(slots=True)
class _Endpoint:
    """One TCP connection (host:port), shared by the devices behind it, one request at a time."""

    host: str
    port: int
    timeout_s: float
    backoff_initial_s: float
    backoff_max_s: float
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    client: AsyncModbusTcpClient | None = None
    retry_at: float = 0.0
    backoff_s: float = 0.0
    last_error: str | None = None
    connects: int = 0

    @property
    def name(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def connected(self) -> bool:
        return self.client is not None and self.client.connected

    def _new_client(self) -> AsyncModbusTcpClient:
        # retries=0 and reconnect_delay=0: the connector owns retrying and reconnecting (with its
        # own schedule and backoff); pymodbus's timeout is only a backstop behind asyncio.timeout.
        return AsyncModbusTcpClient(
            self.host, port=self.port, timeout=self.timeout_s + 1.0, retries=0, reconnect_delay=0
        )

    async def ensure_connected(self, timeout_s: float) -> AsyncModbusTcpClient:
        """The connected client, connecting first unless a backoff is running. Call with the lock."""
        if self.client is not None and self.client.connected:
            return self.client
        loop = asyncio.get_running_loop()
        now = loop.time()
        if now < self.retry_at:
            raise PollError(
                f"not connected to {self.name} ({self.last_error}); "
                f"next attempt in {self.retry_at - now:.1f}s"
            )
        self.close()  # a fresh client per connection: nothing left over from the last one
        client = self._new_client()
        started = loop.time()
        try:
            async with asyncio.timeout(timeout_s):
                ok = await client.connect()
        except TimeoutError:
            ok = False
        except BaseException:  # cancelled while connecting: leave no half-open client behind
            client.close()
            raise
        if not ok:
            client.close()
            # pymodbus only logs why; past the timeout it was a timeout, otherwise a refusal/no route.
            reason = "timed out" if loop.time() - started >= timeout_s * 0.99 else "refused or unreachable"
            self.backoff_s = (
                self.backoff_initial_s if self.backoff_s == 0 else min(self.backoff_s * 2, self.backoff_max_s)
            )
            self.retry_at = loop.time() + self.backoff_s
            self.last_error = f"connection to {self.name} {reason}"
            raise PollError(self.last_error)
        self.client = client
        self.backoff_s = 0.0
        self.retry_at = 0.0
        self.last_error = None
        self.connects += 1
        return client

    def reset(self, reason: str) -> None:
        """Drop the connection (after a timeout or I/O error); the next poll reconnects."""
        self.close()
        self.last_error = reason

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None


@dataclass(slots=True)
class _DeviceState:
    config: ModbusDeviceConfig
    blocks: list[ReadBlock]
    endpoint: _Endpoint
    reachable: bool | None = None  # None: not polled yet
    last_poll: datetime | None = None
    last_ok: datetime | None = None
    last_error: str | None = None
    polls_ok: int = 0
    polls_failed: int = 0
    ticks_skipped: int = 0
    unreachable_reports: int = 0

    def details(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint.name,
            "unit_id": self.config.unit_id,
            "reachable": self.reachable,
            "last_poll": _iso(self.last_poll),
            "last_ok": _iso(self.last_ok),
            "last_error": self.last_error,
            "polls_ok": self.polls_ok,
            "polls_failed": self.polls_failed,
            "ticks_skipped": self.ticks_skipped,
            "reads_per_poll": len(self.blocks),
        }


class ModbusConnector(Connector):
    """Polls Modbus TCP devices; one task per device, one Reading per successful poll."""

    kind: ClassVar[str] = "modbus"

    def __init__(
        self,
        name: str,
        sink: ReadingSink,
        connectivity: ConnectivitySink,
        devices: Sequence[ModbusDeviceConfig],
        *,
        clock: Callable[[], datetime] = _utc_now,
        reconnect_initial_s: float = 1.0,
        reconnect_max_s: float = 30.0,
    ) -> None:
        super().__init__(name)
        if not 0 < reconnect_initial_s <= reconnect_max_s:
            raise ValueError("need 0 < reconnect_initial_s <= reconnect_max_s")
        keys = [d.key for d in devices]
        repeated = sorted({k for k in keys if keys.count(k) > 1})
        if repeated:
            raise ValueError(f"devices configured more than once: {', '.join(repeated)}")
        self.sink = sink
        self.connectivity = connectivity
        self.devices = list(devices)
        self.clock = clock
        self.reconnect_initial_s = reconnect_initial_s
        self.reconnect_max_s = reconnect_max_s
        self._source = Source(self.kind, name)
        self._endpoints: dict[tuple[str, int], _Endpoint] = {}
        self._states: dict[str, _DeviceState] = {}
        self._build_state()

    def _build_state(self) -> None:
        # Kept across restarts by the supervisor (counters and outage tracking carry on);
        # only the connections are new in each run().
        for config in self.devices:
            endpoint = self._endpoints.get(config.endpoint)
            if endpoint is None:
                endpoint = _Endpoint(
                    config.host, config.port, 0.0, self.reconnect_initial_s, self.reconnect_max_s
                )
                self._endpoints[config.endpoint] = endpoint
            endpoint.timeout_s = max(endpoint.timeout_s, config.timeout_s)
            blocks = plan_reads(config.registers, config.max_read_registers)
            self._states[config.key] = _DeviceState(config, blocks, endpoint)

    async def run(self) -> None:
        """Poll every device until cancelled."""
        for endpoint in self._endpoints.values():
            endpoint.lock = asyncio.Lock()  # bound to this run's event loop
        try:
            if not self._states:
                await asyncio.Event().wait()  # nothing to poll: idle until cancelled
            async with asyncio.TaskGroup() as group:
                for key, state in self._states.items():
                    group.create_task(self._poll_forever(state), name=f"modbus:{self.name}:{key}")
        except ExceptionGroup as failure:  # a bug, not a device problem: let the supervisor restart us
            raise ConnectorError(
                f"modbus connector {self.name} failed: {failure.exceptions[0]!r}"
            ) from failure
        finally:
            for endpoint in self._endpoints.values():
                endpoint.close()

    def details(self) -> dict[str, Any]:
        """Per device: last poll, last error, polls ok/failed, skipped ticks; per connection: state."""
        return {
            "devices": {key: state.details() for key, state in self._states.items()},
            "endpoints": {
                endpoint.name: {
                    "connected": endpoint.connected,
                    "connects": endpoint.connects,
                    "last_error": endpoint.last_error,
                }
                for endpoint in self._endpoints.values()
            },
        }

    async def _poll_forever(self, state: _DeviceState) -> None:
        loop = asyncio.get_running_loop()
        interval = state.config.poll_interval_s
        start = loop.time()
        tick = 0
        while True:
            delay = start + tick * interval - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await self.poll_once(state.config.key)
            _reraise_swallowed_cancellation()
            # The next tick strictly in the future: ticks missed by a slow poll are skipped.
            next_tick = max(tick + 1, math.floor((loop.time() - start) / interval) + 1)
            state.ticks_skipped += next_tick - tick - 1
            tick = next_tick

    async def poll_once(self, key: str) -> Reading | None:
        """Poll the device ``tenant/device`` once: submit and return its reading, or record the failure."""
        state = self._states[key]
        config = state.config
        ts = self.clock()
        state.last_poll = ts
        try:
            raw = await self._read_device(state)
        except PollError as error:
            self._failed(state, error.detail)
            return None
        metrics: dict[str, MetricValue] = {}
        dropped: list[str] = []
        for mapping in config.registers:
            value = apply_scale(raw[mapping.metric], mapping)
            if isinstance(value, float) and not math.isfinite(value):
                dropped.append(mapping.metric)
                continue
            metrics[mapping.metric] = value
        state.polls_ok += 1
        state.last_ok = ts
        state.reachable = True
        if dropped:
            state.last_error = f"not a finite number, left out: {', '.join(dropped)}"
        else:
            state.last_error = None
        if not metrics:
            return None
        quality = Quality.UNCERTAIN if dropped else Quality.GOOD
        reading = Reading(config.tenant_id, config.device_id, ts, metrics, self._source, quality)
        await self.sink.submit(reading)
        return reading

    def _failed(self, state: _DeviceState, detail: str) -> None:
        state.polls_failed += 1
        state.last_error = detail
        if state.reachable is False:
            return  # this outage was reported already
        state.reachable = False
        state.unreachable_reports += 1
        config = state.config
        logger.warning(
            "modbus device %s (%s unit %d) unreachable: %s",
            config.key,
            state.endpoint.name,
            config.unit_id,
            detail,
        )
        try:
            self.connectivity.unreachable(config.tenant_id, config.device_id, detail)
        except Exception:  # the sink must not stop polling; it promises not to raise anyway
            logger.exception("connectivity sink failed for %s", config.key)

    async def _read_device(self, state: _DeviceState) -> dict[str, int | float | bool]:
        endpoint = state.endpoint
        config = state.config
        raw: dict[str, int | float | bool] = {}
        async with endpoint.lock:
            client = await endpoint.ensure_connected(config.timeout_s)
            for block in state.blocks:
                try:
                    values = await self._read_block(client, block, config)
                except PollError as error:
                    if error.reset_connection:
                        endpoint.reset(error.detail)
                    raise
                raw.update(block.decode(values))
        return raw

    async def _read_block(
        self, client: AsyncModbusTcpClient, block: ReadBlock, config: ModbusDeviceConfig
    ) -> list[int] | list[bool]:
        what = (
            f"{block.kind.value} {block.address}..{block.address + block.count - 1} of unit {config.unit_id}"
        )
        unit = config.unit_id
        try:
            async with asyncio.timeout(config.timeout_s):
                response: ModbusPDU
                if block.kind is RegisterKind.HOLDING:
                    response = await client.read_holding_registers(
                        block.address, count=block.count, device_id=unit
                    )
                elif block.kind is RegisterKind.INPUT:
                    response = await client.read_input_registers(
                        block.address, count=block.count, device_id=unit
                    )
                elif block.kind is RegisterKind.COIL:
                    response = await client.read_coils(block.address, count=block.count, device_id=unit)
                else:
                    response = await client.read_discrete_inputs(
                        block.address, count=block.count, device_id=unit
                    )
        except TimeoutError:
            raise PollError(
                f"no answer reading {what} within {config.timeout_s:g}s", reset_connection=True
            ) from None
        except (ModbusException, OSError) as error:  # connection lost, garbled or mismatched answer
            raise PollError(f"reading {what} failed: {error}", reset_connection=True) from None
        if response.isError():
            code = int(getattr(response, "exception_code", 0))
            name = EXCEPTION_NAMES.get(code, "unknown exception")
            raise PollError(f"Modbus exception {code} ({name}) reading {what}")
        if block.kind.is_bit:
            bits = list(response.bits)  # padded to a multiple of 8
            if len(bits) < block.count:
                raise PollError(f"short answer reading {what}: {len(bits)} bits", reset_connection=True)
            return bits[: block.count]
        registers = list(response.registers)
        if len(registers) != block.count:
            raise PollError(f"short answer reading {what}: {len(registers)} registers", reset_connection=True)
        return registers
