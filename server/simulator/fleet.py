"""The simulated fleet: which devices exist, their type, labels, protocol, interval and signal.

The default is the fleet of SCENARIOS.md as ``server/bootstrap.py`` registers it for the demo
tenant ``acme-retail`` (same ids, types, metric catalogues and labels), so the simulator feeds the
demo without creating anything:

- per store ``SS`` (01..40): freezers ``freezer-SS-1``..``-6`` (MQTT, every 10 s), the power meter
  ``meter-SS`` (Modbus, every 5 s), the battery sensor ``battery-SS`` (CoAP, every minute) and the
  gateway ``gw-SS`` (HTTP, a door count per minute sent in batches of 5);
- ``generic`` more freezers ``sim-freezer-NNNNN`` for load tests;
- the ``plant`` scenario instead plays the PLC of ``globex-plant`` (device ``line1-plc``).

A device's ``protocol`` is how the real device talks; the runner decides how the simulator
actually delivers it (e.g. over HTTP when no broker is given, or when no Modbus or OPC-UA port is
given for the devices the platform polls; with one, the simulator serves them).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from server.simulator.signals import (
    BatterySignal,
    DoorCounterSignal,
    Dropouts,
    FreezerSignal,
    LineSignal,
    Metrics,
    PowerMeterSignal,
    Signal,
    derive_seed,
    uniform_at,
)

DEFAULT_STORES = 40
FREEZERS_PER_STORE = 6
MAX_STORES = 999


class DeviceProtocol(StrEnum):
    """How a real device of this kind talks to the platform."""

    MQTT = "mqtt"
    HTTP = "http"
    COAP = "coap"
    MODBUS = "modbus"
    OPCUA = "opcua"


class Scenario(StrEnum):
    """Which tenant of SCENARIOS.md to play."""

    RETAIL = "retail"
    PLANT = "plant"


class FleetError(ValueError):
    """A fleet that cannot be built (unknown device to fail, no devices, ...)."""


@dataclass(frozen=True, slots=True)
class MetricDef:
    """One metric of a device type's catalogue, as the REST API takes it."""

    name: str
    data_type: str = "number"
    unit: str = ""
    min: float | None = None
    max: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The ``MetricSpec`` body of ``POST /api/v1/device-types``."""
        body: dict[str, Any] = {"name": self.name, "data_type": self.data_type, "unit": self.unit}
        if self.min is not None:
            body["min"] = self.min
        if self.max is not None:
            body["max"] = self.max
        return body


@dataclass(frozen=True, slots=True)
class DeviceTypeDef:
    """A device type the simulated devices need."""

    id: str
    name: str
    metrics: tuple[MetricDef, ...]

    def to_json(self) -> dict[str, Any]:
        """The body of ``POST /api/v1/device-types``."""
        return {"id": self.id, "name": self.name, "metrics": [m.to_json() for m in self.metrics]}


# The demo catalogue of server/bootstrap.py (a unit test keeps the two in step), plus the PLC line.
DEVICE_TYPES: dict[str, DeviceTypeDef] = {
    t.id: t
    for t in (
        DeviceTypeDef(
            "freezer",
            "Freezer controller",
            (
                MetricDef("temp", unit="°C", min=-40, max=20),
                MetricDef("door_open", "boolean"),
                MetricDef("compressor_on", "boolean"),
            ),
        ),
        DeviceTypeDef(
            "power-meter",
            "Power meter (Modbus)",
            (
                MetricDef("voltage", unit="V"),
                MetricDef("current", unit="A"),
                MetricDef("energy_kwh", unit="kWh"),
            ),
        ),
        DeviceTypeDef(
            "battery-sensor",
            "Battery sensor (CoAP)",
            (
                MetricDef("battery_pct", unit="%", min=0, max=100),
                MetricDef("humidity", unit="%", min=0, max=100),
            ),
        ),
        DeviceTypeDef("gateway", "Store gateway (HTTP)", (MetricDef("door_count"),)),
        DeviceTypeDef(
            "plc-line",
            "Production line PLC (OPC-UA)",
            (
                MetricDef("speed", unit="1/min"),
                MetricDef("temperature", unit="°C"),
                MetricDef("state", "string"),
            ),
        ),
    )
}


@dataclass(slots=True)
class SimDevice:
    """One simulated device: what it is, how it talks, how often, and its signal."""

    id: str
    type_id: str
    name: str
    labels: dict[str, str]
    protocol: DeviceProtocol
    interval_s: float
    signal: Signal
    phase_s: float = 0.0
    send_every: int = 1
    dropouts: Dropouts | None = None

    def first_sample_at(self, t: float) -> float:
        """The first instant of the device's sample grid at or after ``t``."""
        k = math.ceil((t - self.phase_s) / self.interval_s - 1e-9)
        return self.phase_s + k * self.interval_s

    def sample_times(self, start: float, end: float) -> Iterator[float]:
        """The device's sampling instants in [start, end), silent periods included."""
        t = self.first_sample_at(start)
        while t < end:
            yield t
            t += self.interval_s

    def samples(self, start: float, end: float) -> Iterator[tuple[float, Metrics]]:
        """What the device reports in [start, end): (timestamp, metrics), except while silent."""
        for t in self.sample_times(start, end):
            if self.dropouts is None or not self.dropouts.silent(t):
                yield t, self.signal.sample(t)

    def to_json(self) -> dict[str, Any]:
        """The body of ``POST /api/v1/devices``."""
        return {"id": self.id, "name": self.name, "type_id": self.type_id, "labels": dict(self.labels)}


@dataclass(slots=True)
class Fleet:
    """The devices to simulate and the types they need."""

    devices: list[SimDevice]
    types: dict[str, DeviceTypeDef] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.types:
            self.types = {d.type_id: DEVICE_TYPES[d.type_id] for d in self.devices}

    def __len__(self) -> int:
        return len(self.devices)

    def get(self, device_id: str) -> SimDevice:
        """The device ``device_id``; KeyError if it is not in the fleet."""
        for device in self.devices:
            if device.id == device_id:
                return device
        raise KeyError(device_id)

    def by_protocol(self) -> Counter[DeviceProtocol]:
        """How many devices speak each protocol."""
        return Counter(d.protocol for d in self.devices)

    def readings_per_second(self) -> float:
        """Readings the whole fleet reports per simulated second (without dropouts)."""
        return sum(1.0 / d.interval_s for d in self.devices)


def _device(
    seed: int,
    device_id: str,
    type_id: str,
    name: str,
    labels: dict[str, str],
    protocol: DeviceProtocol,
    interval_s: float,
    signal: Signal,
    dropouts_per_day: float,
    send_every: int = 1,
) -> SimDevice:
    return SimDevice(
        id=device_id,
        type_id=type_id,
        name=name,
        labels=labels,
        protocol=protocol,
        interval_s=interval_s,
        signal=signal,
        # Spread the devices over their interval, so a store does not send all at once.
        phase_s=uniform_at(derive_seed(seed, device_id, "phase"), 0.0) * interval_s,
        send_every=send_every,
        dropouts=Dropouts(derive_seed(seed, device_id, "dropouts"), per_day=dropouts_per_day)
        if dropouts_per_day > 0
        else None,
    )


def _freezer(
    seed: int,
    device_id: str,
    name: str,
    labels: dict[str, str],
    failures: Mapping[str, float],
    dropouts_per_day: float,
) -> SimDevice:
    signal = FreezerSignal(derive_seed(seed, device_id), fail_at=failures.get(device_id))
    return _device(
        seed, device_id, "freezer", name, labels, DeviceProtocol.MQTT, 10.0, signal, dropouts_per_day
    )


def store_labels(store: int) -> dict[str, str]:
    """The labels of every device of a store (as server/bootstrap.py sets them)."""
    return {"store": f"store-{store:02d}", "region": "north" if store <= 20 else "south"}


def retail_devices(
    stores: int, *, seed: int, failures: Mapping[str, float], dropouts_per_day: float
) -> list[SimDevice]:
    """The acme-retail stores: 6 freezers, a power meter, a battery sensor and a gateway each."""
    devices: list[SimDevice] = []
    for store in range(1, stores + 1):
        labels = store_labels(store)
        ss = f"{store:02d}"
        for n in range(1, FREEZERS_PER_STORE + 1):
            devices.append(
                _freezer(
                    seed, f"freezer-{ss}-{n}", f"Freezer {n}, store {ss}", labels, failures, dropouts_per_day
                )
            )
        devices.append(
            _device(
                seed,
                f"meter-{ss}",
                "power-meter",
                f"power-meter store {ss}",
                labels,
                DeviceProtocol.MODBUS,
                5.0,
                PowerMeterSignal(derive_seed(seed, f"meter-{ss}")),
                dropouts_per_day,
            )
        )
        devices.append(
            _device(
                seed,
                f"battery-{ss}",
                "battery-sensor",
                f"battery-sensor store {ss}",
                labels,
                DeviceProtocol.COAP,
                60.0,
                BatterySignal(derive_seed(seed, f"battery-{ss}")),
                dropouts_per_day,
            )
        )
        devices.append(
            _device(
                seed,
                f"gw-{ss}",
                "gateway",
                f"gateway store {ss}",
                labels,
                DeviceProtocol.HTTP,
                60.0,
                DoorCounterSignal(derive_seed(seed, f"gw-{ss}")),
                dropouts_per_day,
                send_every=5,
            )
        )
    return devices


def generic_freezers(
    count: int, *, seed: int, failures: Mapping[str, float], dropouts_per_day: float
) -> list[SimDevice]:
    """``count`` more freezers (``sim-freezer-00001``...) for load tests."""
    return [
        _freezer(
            seed,
            f"sim-freezer-{i:05d}",
            f"Simulated freezer {i}",
            {"fleet": "simulated", "region": "north" if i % 2 else "south"},
            failures,
            dropouts_per_day,
        )
        for i in range(1, count + 1)
    ]


def plant_devices(*, seed: int, dropouts_per_day: float) -> list[SimDevice]:
    """The globex-plant production line: its PLC's Line1 variables as device ``line1-plc``.

    Metric names as in docs/devices/opcua.md: ``speed``, ``temperature``, ``state``.
    """
    return [
        _device(
            seed,
            "line1-plc",
            "plc-line",
            "Line 1 PLC",
            {"site": "plant", "line": "1"},
            DeviceProtocol.OPCUA,
            5.0,
            LineSignal(derive_seed(seed, "line1-plc")),
            dropouts_per_day,
        )
    ]


def build_fleet(
    *,
    scenario: Scenario = Scenario.RETAIL,
    stores: int = DEFAULT_STORES,
    generic: int = 0,
    seed: int = 0,
    failures: Mapping[str, float] | None = None,
    dropouts_per_day: float = 0.25,
) -> Fleet:
    """The fleet to simulate; ``failures`` maps freezer ids to the epoch second their compressor fails."""
    failures = dict(failures or {})
    if not 0 <= stores <= MAX_STORES:
        raise FleetError(f"--stores must be between 0 and {MAX_STORES}")
    if generic < 0:
        raise FleetError("--devices cannot be negative")
    if scenario is Scenario.PLANT:
        devices = plant_devices(seed=seed, dropouts_per_day=dropouts_per_day)
    else:
        devices = retail_devices(stores, seed=seed, failures=failures, dropouts_per_day=dropouts_per_day)
    devices += generic_freezers(generic, seed=seed, failures=failures, dropouts_per_day=dropouts_per_day)
    if not devices:
        raise FleetError("the fleet is empty: give --stores or --devices")
    freezers = {d.id for d in devices if d.type_id == "freezer"}
    unknown = sorted(set(failures) - freezers)
    if unknown:
        raise FleetError(f"cannot fail {', '.join(unknown)}: not a freezer of this fleet")
    return Fleet(devices)
