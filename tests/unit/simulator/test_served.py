"""A session that serves its power meters over Modbus (against an in-memory API): routes, bindings."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from connectors.modbus import ModbusConnector, ModbusDeviceConfig
from server.simulator.fleet import Scenario, build_fleet
from server.simulator.runner import (
    MODBUS_ROUTE,
    OPCUA_ROUTE,
    Session,
    SimOptions,
    SimulationError,
    route_for,
)
from tests.harness.ports import LOOPBACK, free_port
from tests.unit.simulator.fake_api import API_TOKEN, TENANT, FakeApi
from tests.unit.simulator.test_modbus_server import _Sink


def _options(tmp_path: Path, **changes: object) -> SimOptions:
    defaults: dict[str, object] = {
        "api": "http://api",
        "token": API_TOKEN,
        "stores": 1,
        "dropouts_per_day": 0.0,
        "data_dir": tmp_path,
    }
    return SimOptions(**{**defaults, **changes})  # type: ignore[arg-type]


async def _until_live(session: Session, task: asyncio.Task[object]) -> None:
    async with asyncio.timeout(10):
        while session.stats.phase != "live":
            if task.done():
                task.result()
            await asyncio.sleep(0.01)


def test_served_protocols_get_their_own_routes() -> None:
    retail = {d.type_id: d for d in build_fleet(stores=1).devices}
    plc = build_fleet(scenario=Scenario.PLANT).get("line1-plc")
    assert route_for(retail["power-meter"], mqtt=False, coap=False) == "http"
    assert route_for(retail["power-meter"], mqtt=False, coap=False, modbus=True) == MODBUS_ROUTE
    assert route_for(retail["freezer"], mqtt=False, coap=False, modbus=True, opcua=True) == "http"
    assert route_for(plc, mqtt=True, coap=True, modbus=True) == "http"
    assert route_for(plc, mqtt=False, coap=False, opcua=True) == OPCUA_ROUTE


async def test_meters_are_served_bound_and_counted(tmp_path: Path) -> None:
    api = FakeApi()
    port = free_port()
    options = _options(tmp_path, modbus_port=port, bind_host="127.0.0.1")
    notes: list[str] = []
    session = Session(options, transport=api.transport(), on_note=notes.append)
    stop = asyncio.Event()
    task: asyncio.Task[object] = asyncio.create_task(session.run(stop))
    await _until_live(session, task)

    binding = api.bindings["meter-01"]
    assert binding["kind"] == "modbus"
    assert binding["config"]["host"] == "127.0.0.1" and binding["config"]["port"] == port
    assert binding["config"]["unit_id"] == 1 and binding["config"]["poll_interval_s"] == 5.0
    # What the platform polls is the live server: poll it as the platform's connector does.
    config = ModbusDeviceConfig.model_validate(
        {**binding["config"], "tenant_id": TENANT, "device_id": "meter-01"}
    )
    sink = _Sink()
    connector = ModbusConnector("modbus", sink, sink, [config])
    reading = await connector.poll_once(f"{TENANT}/meter-01")
    for endpoint in connector._endpoints.values():
        endpoint.close()
    assert reading is not None and 200 < reading.metrics["voltage"] < 260  # type: ignore[operator]
    stop.set()
    stats = await asyncio.wait_for(task, 10)

    assert stats.routes[MODBUS_ROUTE].devices == 1 and stats.routes["http"].devices == 8
    assert stats.routes[MODBUS_ROUTE].messages == 1 and stats.routes[MODBUS_ROUTE].readings == 3
    assert "meter-01" not in api.ingested, "a served meter is not also sent over HTTP"
    assert api.issued_for("meter-01") == 0, "nor does it need a device credential"
    assert any(f"Modbus TCP on 127.0.0.1:{port}" in note for note in notes)
    assert any("1 created or refreshed" in note and "left in place" in note for note in notes)
    assert "meter-01" in api.bindings, "bindings stay by default"
    with socket.socket() as probe:
        probe.bind((LOOPBACK, port))  # the server is gone: its port is free again

    # A rerun finds the binding as it wants it and leaves it alone; --unbind-on-exit removes it.
    api.requests.clear()
    notes.clear()
    rerun = Session(
        _options(tmp_path, modbus_port=port, duration=0.2, unbind_on_exit=True),
        transport=api.transport(),
        on_note=notes.append,
    )
    await asyncio.wait_for(rerun.run(asyncio.Event()), 10)
    assert ("PUT", "/api/v1/devices/meter-01/binding") not in api.requests
    assert any("0 created or refreshed, 1 unchanged" in note for note in notes)
    assert ("DELETE", "/api/v1/devices/meter-01/binding") in api.requests
    assert api.bindings == {}


async def test_served_options_are_checked(tmp_path: Path) -> None:
    with pytest.raises(SimulationError, match="must differ"):
        Session(_options(tmp_path, modbus_port=5020, opcua_port=5020))
    with pytest.raises(SimulationError, match="at most 247 stores"):
        Session(_options(tmp_path, modbus_port=5020, stores=248))
    with pytest.raises(SimulationError, match="between 1 and 65535"):
        Session(_options(tmp_path, opcua_port=70000))

    # A taken port stops the run before anything is bound.
    api = FakeApi()
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        session = Session(
            _options(tmp_path, modbus_port=taken.getsockname()[1], duration=1.0), transport=api.transport()
        )
        with pytest.raises(SimulationError, match="cannot serve Modbus"):
            await session.run(asyncio.Event())
    assert api.bindings == {}


async def test_a_port_for_a_protocol_the_fleet_lacks_is_noted(tmp_path: Path) -> None:
    api = FakeApi()
    notes: list[str] = []
    options = _options(
        tmp_path, modbus_port=free_port(), bind_host="10.1.2.3", stores=0, devices=1, duration=0.2
    )
    stats = await Session(options, transport=api.transport(), on_note=notes.append).run(asyncio.Event())
    assert any("no power meters" in note for note in notes)
    assert MODBUS_ROUTE not in stats.routes and api.bindings == {}

    # A platform elsewhere cannot reach servers listening on loopback only: say so.
    notes.clear()
    options = _options(tmp_path, modbus_port=free_port(), bind_host="10.1.2.3", duration=0.2)
    await Session(options, transport=api.transport(), on_note=notes.append).run(asyncio.Event())
    assert any("--listen-host 0.0.0.0" in note for note in notes)
    assert api.bindings["meter-01"]["config"]["host"] == "10.1.2.3"
