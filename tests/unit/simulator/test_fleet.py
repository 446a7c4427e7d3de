"""The fleet plan: the demo tenant of server/bootstrap.py by default, scalable, with forced failures."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import pytest

from server.bootstrap import _demo_device_types, _demo_devices
from server.simulator.fleet import (
    DEVICE_TYPES,
    DeviceProtocol,
    FleetError,
    Scenario,
    build_fleet,
)
from server.simulator.signals import HOUR, FreezerSignal

T0 = datetime(2026, 11, 27, 8, tzinfo=UTC).timestamp()


def test_default_fleet_is_the_demo_tenant_of_bootstrap() -> None:
    fleet = build_fleet(seed=0)
    demo = {str(d["id"]): d for d in _demo_devices()}
    assert len(fleet) == 40 * 9 == len(demo)
    for device in fleet.devices:
        row = demo[device.id]
        assert (device.type_id, device.labels, device.name) == (row["type_id"], row["labels"], row["name"])
    for type_id, (name, metrics) in _demo_device_types().items():
        ours = DEVICE_TYPES[type_id]
        assert ours.name == name
        assert [m.to_json() for m in ours.metrics] == [
            m.model_dump(include={"name", "data_type", "unit", "min", "max"}, exclude_none=True, mode="json")
            for m in metrics
        ]
    assert set(fleet.types) == set(_demo_device_types())


def test_each_kind_has_its_protocol_and_interval() -> None:
    fleet = build_fleet(stores=2)
    kinds = {d.type_id: (d.protocol, d.interval_s, d.send_every) for d in fleet.devices}
    assert kinds == {
        "freezer": (DeviceProtocol.MQTT, 10.0, 1),
        "power-meter": (DeviceProtocol.MODBUS, 5.0, 1),
        "battery-sensor": (DeviceProtocol.COAP, 60.0, 1),
        "gateway": (DeviceProtocol.HTTP, 60.0, 5),
    }
    assert fleet.by_protocol() == {
        DeviceProtocol.MQTT: 12,
        DeviceProtocol.MODBUS: 2,
        DeviceProtocol.COAP: 2,
        DeviceProtocol.HTTP: 2,
    }
    assert fleet.get("meter-02").labels == {"store": "store-02", "region": "north"}
    assert build_fleet(stores=21).get("gw-21").labels["region"] == "south"
    assert fleet.readings_per_second() == pytest.approx(12 / 10 + 2 / 5 + 2 / 60 + 2 / 60)


def test_scales_to_n_generic_freezers() -> None:
    fleet = build_fleet(stores=0, generic=1000)
    assert len(fleet) == 1000 and {d.type_id for d in fleet.devices} == {"freezer"}
    assert fleet.devices[0].id == "sim-freezer-00001" and fleet.devices[-1].id == "sim-freezer-01000"
    assert len(build_fleet(stores=3, generic=5)) == 27 + 5


def test_plant_scenario_plays_the_plc() -> None:
    fleet = build_fleet(scenario=Scenario.PLANT)
    (line,) = fleet.devices
    assert (line.id, line.type_id, line.protocol) == ("line1-plc", "plc-line", DeviceProtocol.OPCUA)
    assert set(line.signal.sample(T0)) == {"speed", "temperature", "state"}
    assert set(fleet.types) == {"plc-line"}


def test_forced_failures_go_to_the_named_freezer() -> None:
    fleet = build_fleet(stores=3, failures={"freezer-03-2": T0 + 120})
    signal = fleet.get("freezer-03-2").signal
    assert isinstance(signal, FreezerSignal) and signal.fail_at == T0 + 120
    other = fleet.get("freezer-03-1").signal
    assert isinstance(other, FreezerSignal) and other.fail_at is None
    with pytest.raises(FleetError, match="meter-01"):
        build_fleet(stores=3, failures={"meter-01": T0})
    with pytest.raises(FleetError, match="freezer-09-1"):
        build_fleet(stores=3, failures={"freezer-09-1": T0})
    with pytest.raises(FleetError, match="empty"):
        build_fleet(stores=0)


def test_devices_sample_on_their_own_grid() -> None:
    fleet = build_fleet(stores=1, dropouts_per_day=0)
    phases = {d.phase_s for d in fleet.devices}
    assert len(phases) == len(fleet.devices), "devices are spread over their interval"
    freezer = fleet.get("freezer-01-1")
    times = list(freezer.sample_times(T0, T0 + 60))
    assert len(times) == 6 and all(round(b - a, 6) == 10.0 for a, b in itertools.pairwise(times))
    assert all(round((t - freezer.phase_s) / 10.0, 6).is_integer() for t in times)
    assert freezer.first_sample_at(times[2]) == times[2]
    assert list(freezer.samples(T0, T0 + 60)) == [(t, freezer.signal.sample(t)) for t in times]
    assert freezer.to_json() == {
        "id": "freezer-01-1",
        "name": "Freezer 1, store 01",
        "type_id": "freezer",
        "labels": {"store": "store-01", "region": "north"},
    }


def test_same_seed_same_fleet() -> None:
    a, b, c = build_fleet(stores=1, seed=3), build_fleet(stores=1, seed=3), build_fleet(stores=1, seed=4)
    sample = [d.signal.sample(T0 + HOUR) for d in a.devices]
    assert sample == [d.signal.sample(T0 + HOUR) for d in b.devices]
    assert sample != [d.signal.sample(T0 + HOUR) for d in c.devices]
    assert [d.phase_s for d in a.devices] == [d.phase_s for d in b.devices]


def test_dropouts_skip_samples() -> None:
    fleet = build_fleet(stores=1, dropouts_per_day=4.0)
    freezer = fleet.get("freezer-01-1")
    assert freezer.dropouts is not None
    start, end = T0, T0 + 7 * 24 * HOUR
    silence = freezer.dropouts.silences(start, end)[0]
    sent = [t for t, _ in freezer.samples(silence[0] - 300, silence[1] + 300)]
    assert sent and not any(silence[0] <= t < silence[1] for t in sent)
    assert build_fleet(stores=1, dropouts_per_day=0).get("freezer-01-1").dropouts is None
