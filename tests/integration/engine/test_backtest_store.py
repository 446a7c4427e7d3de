"""A backtest over a stored week of simulated freezers decides exactly what the live engine decides.

A week of 10-second readings from the simulator's freezers (one with a forced compressor failure
and a connection drop while it warms, one restocked often, one in another region) is written to the
embedded telemetry store. The backtest reads it back (per metric, in slices) and replays it; the
"live" run feeds the same readings one by one, interleaved across devices in arrival order, to a
per-device replay of each device the rule selects, as the engine does when they come off the bus.
Last, the hours around the failure go through ``engine.runner.RuleEngine`` itself (state and
traces in the database), one reading at a time with the timers due before each, and the backtest
of the same readings must fire and clear at the same instants on the same events.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
import pytest_asyncio

from devices.catalogue import RegistryCatalogue
from engine.backtest import BacktestReport, DeviceReplay, backtest
from engine.compiler import CompiledRule, compile_rule
from engine.document import RuleDocument
from engine.evaluation import DeviceView, EventKind
from engine.nodes.base import CompileContext
from engine.runner import RuleEngine
from model.devices import DataType, MetricSpec
from model.readings import Reading, Source
from server.app import create_app
from server.settings import load_settings
from server.simulator.signals import HOUR, FreezerSignal, derive_seed
from storage.database import Database
from storage.telemetry.embedded import EmbeddedTelemetryStore
from tests.conftest import TenantFactory
from tests.unit.engine.test_compiler import OLIVIA

pytestmark = pytest.mark.slow

TENANT = "acme-retail"
START = datetime(2026, 11, 2, tzinfo=UTC)  # a Monday
END = START + timedelta(days=7)
EVERY_S = 10.0
FAILURE_AT = START + timedelta(days=2, hours=10)
BERLIN = ZoneInfo("Europe/Berlin")
CATALOGUE = {
    "temp": MetricSpec(name="temp", data_type=DataType.NUMBER),
    "door_open": MetricSpec(name="door_open", data_type=DataType.BOOLEAN),
    "compressor_on": MetricSpec(name="compressor_on", data_type=DataType.BOOLEAN),
}
NORTH = {"store": "store-01", "region": "north"}
FAILING = DeviceView("freezer-01-1", "freezer", NORTH, BERLIN)
RESTOCKED = DeviceView("freezer-01-2", "freezer", NORTH, BERLIN)
SOUTH = DeviceView("freezer-21-1", "freezer", {"store": "store-21", "region": "south"}, BERLIN)
DEVICES = [FAILING, RESTOCKED, SOUTH]

TWO_MINUTES: dict[str, Any] = {
    "name": "Warm for two minutes",
    "devices": {"type": "freezer", "labels": {"store": "store-01"}},
    "when": [{"type": "telemetry.received", "options": {"metrics": ["temp"]}}],
    "if": [
        {
            "type": "duration",
            "options": {"seconds": 120},
            "condition": {"type": "telemetry.threshold", "options": {"metric": "temp", "value": -10}},
        }
    ],
    "then": [
        {"type": "alarm.raise", "options": {"alarm_type": "warm-2min", "severity": "minor"}},
        {"type": "notify", "options": {"channels": ["store-01"]}},
    ],
    "else": [{"type": "alarm.clear", "options": {"alarm_type": "warm-2min"}}],
    "throttle": {"min_interval_s": 1800},
}
DOOR_LEFT_OPEN: dict[str, Any] = {
    "name": "Door left open",
    "devices": {"type": "freezer"},
    "when": [{"type": "telemetry.received", "options": {}}],  # any reading: every metric is loaded
    "if": [
        {
            "type": "consecutive",
            "options": {"count": 6, "clear_count": 2},
            "condition": {"type": "expression", "options": {"expression": "door_open and temp > -16"}},
        }
    ],
    "then": [{"type": "notify", "options": {"channels": ["store-staff"]}}],
}


def _compile(document: dict[str, Any], rule_id: str) -> CompiledRule:
    context = CompileContext(TENANT, CATALOGUE)
    return compile_rule(RuleDocument.model_validate(document), context, rule_id=rule_id, version=1)


RULES = {
    "olivia": _compile(OLIVIA, "olivia"),
    "two-minutes": _compile(TWO_MINUTES, "two-minutes"),
    "door-left-open": _compile(DOOR_LEFT_OPEN, "door-left-open"),
}


@dataclass(frozen=True, slots=True)
class Week:
    """The simulated week: the readings as the devices sent them, and where the failing one went silent."""

    readings: dict[str, list[Reading]]
    due: datetime  # when Olivia's rule fires for the failing freezer, worked out by hand
    silence: tuple[datetime, datetime]


def _simulate() -> Week:
    source = Source("simulator", "backtest-test")
    signals = {
        FAILING.id: FreezerSignal(
            derive_seed(7, FAILING.id),
            fail_at=FAILURE_AT.timestamp(),
            fail_for=2 * HOUR,
            failures_per_day=0.0,
        ),
        RESTOCKED.id: FreezerSignal(derive_seed(7, RESTOCKED.id), restock_share=0.05, failures_per_day=0.0),
        SOUTH.id: FreezerSignal(
            derive_seed(7, SOUTH.id), fail_at=FAILURE_AT.timestamp(), failures_per_day=0.0
        ),
    }
    readings: dict[str, list[Reading]] = {}
    for n, (device_id, signal) in enumerate(signals.items()):
        phase = 1.234567 + 3.3 * n  # off the second: timestamps keep their microseconds
        first = START.timestamp() + phase
        readings[device_id] = [
            Reading(TENANT, device_id, datetime.fromtimestamp(t, UTC), signal.sample(t), source)
            for k in range(int((END - START).total_seconds() / EVERY_S))
            if (t := first + k * EVERY_S) < END.timestamp()
        ]
    # The connection drops four minutes before the failure would fire, for 20 minutes: the
    # 5-minute timer must fire during the silence, as it would live.
    due = _first_firing(readings[FAILING.id])
    assert due is not None and due > FAILURE_AT
    silence = (due - timedelta(minutes=4), due + timedelta(minutes=16))
    readings[FAILING.id] = [r for r in readings[FAILING.id] if not silence[0] <= r.ts < silence[1]]
    return Week(readings, due, silence)


def _first_firing(readings: list[Reading]) -> datetime | None:
    """When Olivia's rule first fires, worked out by hand: above -10 (clear below -12) for 5 minutes."""
    active, since = False, None
    for reading in readings:
        if since is not None and reading.ts >= since + timedelta(minutes=5):
            return since + timedelta(minutes=5)
        temp = float(reading.metrics["temp"])
        active = temp > -10 if not active else temp >= -12
        since = (since or reading.ts) if active else None
    return None


@pytest.fixture(scope="module")
def week() -> Week:
    return _simulate()


@pytest_asyncio.fixture(scope="module")
async def store(
    week: Week, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[EmbeddedTelemetryStore]:
    impl = EmbeddedTelemetryStore(tmp_path_factory.mktemp("backtest") / "telemetry.sqlite")
    try:
        for readings in week.readings.values():
            for i in range(0, len(readings), 5000):
                await impl.write(readings[i : i + 5000])
        yield impl
    finally:
        await impl.close()


def _live(rule: CompiledRule, week: Week, end: datetime = END) -> BacktestReport:
    """The readings fed one by one in arrival order, to the replay of each device the rule selects."""
    replays = {d.id: DeviceReplay(rule, d) for d in DEVICES if rule.selects(d.id, d.type_id, d.labels)}
    for reading in heapq.merge(*week.readings.values(), key=lambda r: r.ts):
        if reading.ts >= end:
            break
        if reading.device_id in replays:
            replays[reading.device_id].feed(reading)
    report = BacktestReport(rule.rule_id, rule.version, rule.tenant_id, START, end)
    report.devices = [r.finish(end) for r in replays.values()]
    return report


def _decided(report: BacktestReport) -> dict[str, Any]:
    return {
        "firings": report.firings,
        "clears": report.clears,
        "alarms": [a.as_dict() for a in report.alarms],
        "notifications": report.notifications,
        "throttled": report.throttled,
        "evaluations": report.evaluations,
        "readings": report.readings,
    }


async def test_olivias_rule_over_a_stored_week_fires_as_live(
    week: Week, store: EmbeddedTelemetryStore
) -> None:
    rule = RULES["olivia"]
    report = await backtest(rule, store, DEVICES, START, END)
    live = _live(rule, week)
    assert _decided(report) == _decided(live)
    assert report.skipped == [SOUTH.id]  # region south: the rule never sees it
    # The failure fires once, exactly five minutes after the first warm reading, on the timer
    # that fires while the freezer is silent; the repair clears it; door openings never fire.
    [firing] = report.firings
    assert firing.device_id == FAILING.id and firing.event is EventKind.TIMER
    assert firing.at == week.due == _first_firing(week.readings[FAILING.id])
    assert week.silence[0] < firing.at < week.silence[1]
    [clear] = report.clears
    assert clear.device_id == FAILING.id and FAILURE_AT + timedelta(hours=2) < clear.at
    [alarm] = report.alarms
    assert (alarm.raised_at, alarm.cleared_at) == (firing.at, clear.at)
    assert report.notifications == 1
    assert report.device(RESTOCKED.id).fired == 0
    stored = sum(len(week.readings[d.id]) for d in (FAILING, RESTOCKED))
    assert report.readings == stored
    series = report.device(FAILING.id).series
    assert 0 < len(series) <= 1000 and max(v for _, v in series) > -10  # the warm-up is on the chart


@pytest.mark.parametrize("rule_id", ["two-minutes", "door-left-open"])
async def test_other_rules_over_the_stored_week_fire_as_live(
    rule_id: str, week: Week, store: EmbeddedTelemetryStore
) -> None:
    rule = RULES[rule_id]
    end = START + timedelta(days=3)  # three days are enough here, and the suite stays quick
    report = await backtest(rule, store, DEVICES, START, end)
    assert _decided(report) == _decided(live := _live(rule, week, end))
    assert report.fired > 0 and report.readings == live.readings
    if rule_id == "two-minutes":  # restocking keeps the cabinet warm for 2-4 minutes
        assert report.device(RESTOCKED.id).fired > 0 and report.throttled >= 0
    else:  # an any-reading rule: every metric was loaded and merged back into readings
        assert len(report.devices) == 3 and report.notifications == report.fired


async def _publish(http: httpx.AsyncClient, headers: dict[str, str], document: dict[str, Any]) -> str:
    metrics = [{"name": n, "data_type": spec.data_type.value} for n, spec in CATALOGUE.items()]
    r = await http.post(
        "/api/v1/device-types", json={"id": "freezer", "name": "F", "metrics": metrics}, headers=headers
    )
    assert r.status_code == 201, r.text
    for device in DEVICES:
        body = {"id": device.id, "type_id": device.type_id, "labels": dict(device.labels)}
        assert (await http.post("/api/v1/devices", json=body, headers=headers)).status_code == 201
    for action in document.get("then", []) + document.get("else", []):
        for name in action["options"].get("channels", []) if action["type"] == "notify" else []:
            channel = {"name": name, "urls": [f"json://hooks.example.com/{name}"]}
            r = await http.post("/api/v1/notifications/channels", json=channel, headers=headers)
            assert r.status_code in (201, 409), r.text
    rule = (await http.post("/api/v1/rules", json={"document": document}, headers=headers)).json()
    r = await http.post(f"/api/v1/rules/{rule['id']}/publish", json={}, headers=headers)
    assert r.status_code == 200, r.text
    return str(rule["id"])


async def test_the_backtest_fires_as_the_live_rule_engine(
    week: Week, database: Database, tenants: TenantFactory, tmp_path: Path
) -> None:
    tenant = await tenants.create()
    application = create_app(load_settings(data_dir=tmp_path), database)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://t") as http:
        rule_id = await _publish(http, tenant.headers, OLIVIA)
    await application.state.runtime.telemetry.close()
    engine = RuleEngine(database, RegistryCatalogue(database))
    await engine.load()
    rule = engine.index.get(tenant.id, rule_id)
    assert rule is not None
    # From before the failure fires (in the silence) until after the repair has cleared it.
    start, end = week.due - timedelta(minutes=15), FAILURE_AT + timedelta(hours=2, minutes=40)
    arriving = [
        dataclasses.replace(r, tenant_id=tenant.id)
        for r in heapq.merge(*week.readings.values(), key=lambda r: r.ts)
        if start <= r.ts < end
    ]
    decisions = []
    for reading in arriving:  # live: the timers due by then, then the reading
        decisions += await engine.fire_due_timers(reading.ts)
        decisions += await engine.on_reading(reading)
    decisions += await engine.fire_due_timers(end - timedelta(microseconds=1))

    telemetry = EmbeddedTelemetryStore(tmp_path / "runner-telemetry.sqlite")
    try:
        await telemetry.write(arriving)
        report = await backtest(rule, telemetry, DEVICES, start, end)
    finally:
        await telemetry.close()
    live = sorted((d.at, d.device_id, d.event, d.outcome) for d in decisions if d.fired or d.cleared)
    replayed = sorted(
        [(f.at, f.device_id, f.event, "fired") for f in report.firings]
        + [(c.at, c.device_id, c.event, "cleared") for c in report.clears]
    )
    assert replayed == live
    assert [(at, device, event) for at, device, event, outcome in live if outcome == "fired"] == [
        (week.due, FAILING.id, EventKind.TIMER)
    ]
    assert [outcome for *_, outcome in live] == ["fired", "cleared"]
    assert report.evaluations == len(decisions)  # timers left pending by door openings included
