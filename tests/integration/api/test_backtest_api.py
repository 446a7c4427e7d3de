"""Backtests through the API: readings written to the app's real telemetry store, replayed through a
saved version or an unsaved draft, with the firings, clears, alarms and notifications worked out by
hand from the readings; ranges and device limits refused with 422; another tenant's rules,
devices and telemetry never reached.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI

from devices.registry import DeviceRepository
from engine.backtest_plan import MAX_DEVICES
from engine.examples import freezer_rule
from model.readings import Reading, Source
from server.app import create_app
from server.settings import Settings
from storage.database import Database
from storage.telemetry.embedded import EmbeddedTelemetryStore
from storage.types import utcnow
from tests.conftest import TenantFactory, TenantHandle, bearer

EVERY = timedelta(seconds=10)
SOURCE = Source("test", "backtest-api")
# Whole seconds: the readings of the test and the range the API answers with line up exactly.
START = (utcnow() - timedelta(hours=3)).replace(minute=0, second=0, microsecond=0)


def olivia(value: float = -10, clear_at: float = -12) -> dict[str, Any]:
    """Above ``value`` for 5 minutes: major alarm and notification; below ``clear_at`` for 2 minutes: clear"""
    return freezer_rule(value=value, clear_at=clear_at)


# Per device, one reading every 10 s from START for an hour: (first index, count, temperature).
FAILING = [(0, 60, -18.0), (60, 90, -5.0), (150, 210, -18.0)]  # 15 minutes warm from START+10min
DOOR = [(0, 100, -18.0), (100, 12, -5.0), (112, 248, -18.0)]  # a door open for 2 minutes
WARM = [(0, 360, -5.0)]  # warm all hour


def temps(pattern: list[tuple[int, int, float]]) -> list[float]:
    return [t for _, count, t in pattern for _ in range(count)]


def at(index: int) -> datetime:
    return START + index * EVERY


def iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


HOUR = {"since": iso(START), "until": iso(START + timedelta(hours=1))}
STEPS = ["when/0", "if/0/0", "if/0"]  # the timer, the threshold it read, the duration that fired


@pytest_asyncio.fixture(scope="module")
async def store(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[EmbeddedTelemetryStore]:
    """The real embedded store the app reads (tests write their readings straight into it)."""
    telemetry = EmbeddedTelemetryStore(tmp_path_factory.mktemp("backtest-api") / "telemetry.sqlite")
    yield telemetry
    await telemetry.close()


@pytest.fixture(scope="module")
def app(settings: Settings, database: Database, store: EmbeddedTelemetryStore) -> FastAPI:
    return create_app(settings, database, telemetry=store)


async def write(
    store: EmbeddedTelemetryStore, tenant_id: str, device_id: str, pattern: list[tuple[int, int, float]]
) -> None:
    readings = [
        Reading(tenant_id, device_id, at(i), {"temp": t, "door_open": False}, SOURCE)
        for i, t in enumerate(temps(pattern))
    ]
    await store.write(readings)


async def fleet(client: httpx.AsyncClient, tenant: TenantHandle, devices: dict[str, str]) -> None:
    """The night-shift channel the rules notify, a freezer type and ``devices`` (id -> region)."""
    channel = {"name": "night-shift", "urls": [f"json://hooks.example.com/{tenant.id}"]}
    r = await client.post("/api/v1/notifications/channels", json=channel, headers=tenant.headers)
    assert r.status_code == 201, r.text
    metrics = [{"name": "temp"}, {"name": "door_open", "data_type": "boolean"}]
    body = {"id": "freezer", "name": "Freezer", "metrics": metrics}
    r = await client.post("/api/v1/device-types", json=body, headers=tenant.headers)
    assert r.status_code == 201, r.text
    for device_id, region in devices.items():
        body = {"id": device_id, "type_id": "freezer", "labels": {"region": region}}
        r = await client.post("/api/v1/devices", json=body, headers=tenant.headers)
        assert r.status_code == 201, r.text


async def create_rule(client: httpx.AsyncClient, tenant: TenantHandle, document: dict[str, Any]) -> str:
    r = await client.post("/api/v1/rules", json={"document": document}, headers=tenant.headers)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


@pytest.fixture
async def acme(
    store: EmbeddedTelemetryStore, client: httpx.AsyncClient, tenants: TenantFactory
) -> TenantHandle:
    """A tenant with two freezers in the north (one fails, one has its door opened) and one in
    the south (warm all hour), and an hour of their readings in the store."""
    tenant = await tenants.create("acme")
    await fleet(client, tenant, {"fz-failing": "north", "fz-door": "north", "fz-south": "south"})
    for device_id, pattern in (("fz-failing", FAILING), ("fz-door", DOOR), ("fz-south", WARM)):
        await write(store, tenant.id, device_id, pattern)
    return tenant


async def backtest(
    client: httpx.AsyncClient, tenant: TenantHandle, rule_id: str | None, **body: Any
) -> httpx.Response:
    path = f"/api/v1/rules/{rule_id}/backtest" if rule_id else "/api/v1/rules/backtest"
    return await client.post(path, json=body, headers=tenant.headers)


def assert_problem(response: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem: dict[str, Any] = response.json()
    assert problem["type"] == f"urn:flatgigs:problem:{slug}", problem
    return problem


async def test_a_saved_rule_fires_and_clears_where_the_readings_say(
    client: httpx.AsyncClient, acme: TenantHandle
) -> None:
    rule_id = await create_rule(client, acme, olivia())
    r = await backtest(client, acme, rule_id, **HOUR)
    assert r.status_code == 200, r.text
    report = r.json()
    assert (report["rule_id"], report["rule_version"]) == (rule_id, 1)
    assert (report["start"], report["end"]) == (iso(START), iso(START + timedelta(hours=1)))
    assert report["metric"] == "temp"
    # The south freezer is not the rule's: never replayed. The door opening never lasts 5 minutes.
    assert sorted(d["device_id"] for d in report["devices"]) == ["fz-door", "fz-failing"]
    failing = next(d for d in report["devices"] if d["device_id"] == "fz-failing")
    door = next(d for d in report["devices"] if d["device_id"] == "fz-door")
    assert (door["fired"], door["cleared"], door["alarms"]) == (0, 0, [])
    assert failing["readings"] == door["readings"] == 360
    # Warm from index 60: fires 5 minutes later, on the timer; cold from index 150 (below -12):
    # clears 2 minutes later.
    [firing] = failing["firings"]
    assert firing["at"] == iso(at(60 + 30)) and firing["event"] == "timer"
    assert firing["calls"] == ["alarm.raise", "notify"]
    assert [s["path"] for s in firing["steps"]] == STEPS
    assert firing["summary"].startswith("if/0/0: ")
    [clear] = failing["clears"]
    assert clear["at"] == iso(at(150 + 12)) and clear["calls"] == ["alarm.clear"]
    assert failing["alarms"] == [
        {
            "device_id": "fz-failing",
            "alarm_type": "freezer-warm",
            "severity": "major",
            "raised_at": firing["at"],
            "cleared_at": clear["at"],
        }
    ]
    assert report["totals"] == {
        "devices": 2,
        "readings": 720,
        "evaluations": report["totals"]["evaluations"],
        "unchanged": report["totals"]["unchanged"],
        "fired": 1,
        "cleared": 1,
        "throttled": 0,
        "alarms_raised": 1,
        "alarms_cleared": 1,
        "notifications": 1,
    }
    totals = report["totals"]
    # Every reading is evaluated or could not have changed anything; most could not (a guard).
    assert totals["evaluations"] + totals["unchanged"] >= 720 and totals["unchanged"] > 700
    assert report["skipped"] == []
    series = failing["series"]
    assert 0 < len(series) <= 500 and max(v for _, v in series) == -5.0 and min(v for _, v in series) == -18.0


async def test_the_version_defaults_to_the_latest_and_can_be_chosen(
    client: httpx.AsyncClient, acme: TenantHandle
) -> None:
    rule_id = await create_rule(client, acme, olivia())
    saved = await client.put(
        f"/api/v1/rules/{rule_id}",
        json={"document": olivia(-20, clear_at=-25), "base_version": 1},
        headers=acme.headers,
    )
    assert saved.status_code == 200, saved.text
    latest = (await backtest(client, acme, rule_id, **HOUR)).json()
    first = (await backtest(client, acme, rule_id, version=1, **HOUR)).json()
    assert (latest["rule_version"], first["rule_version"]) == (2, 1)
    # Above -20 is always: both north freezers fire 5 minutes after the first reading.
    assert [f["at"] for f in sorted(latest["devices"], key=lambda d: d["device_id"])[0]["firings"]] == [
        iso(at(30))
    ]
    assert (latest["totals"]["fired"], first["totals"]["fired"]) == (2, 1)
    assert_problem(await backtest(client, acme, rule_id, version=3, **HOUR), 404, "not-found")


async def test_a_draft_is_backtested_without_saving_anything(
    client: httpx.AsyncClient, acme: TenantHandle
) -> None:
    before = (await client.get("/api/v1/rules", headers=acme.headers)).json()
    r = await backtest(client, acme, None, document=olivia(), **HOUR)
    assert r.status_code == 200, r.text
    draft = r.json()
    assert (draft["rule_id"], draft["rule_version"]) == ("draft", 0)
    failing = next(d for d in draft["devices"] if d["device_id"] == "fz-failing")
    assert [f["at"] for f in failing["firings"]] == [iso(at(90))]
    assert (await client.get("/api/v1/rules", headers=acme.headers)).json() == before
    # A draft that does not compile points at the node, as on save.
    broken = olivia()
    broken["then"][1]["options"]["channels"] = []
    problem = assert_problem(await backtest(client, acme, None, document=broken, **HOUR), 422, "invalid-rule")
    assert problem["errors"][0]["path"] == "then/1"


async def test_device_ids_narrow_the_replay_and_unpicked_devices_are_listed_as_skipped(
    client: httpx.AsyncClient, acme: TenantHandle
) -> None:
    rule_id = await create_rule(client, acme, olivia())
    r = await backtest(client, acme, rule_id, device_ids=["fz-failing", "fz-south", "fz-failing"], **HOUR)
    assert r.status_code == 200, r.text
    report = r.json()
    assert [d["device_id"] for d in report["devices"]] == ["fz-failing"]
    assert report["skipped"] == ["fz-south"]  # warm all hour, but not in the north
    assert report["totals"]["fired"] == 1


async def test_the_range_shorthand_ends_now(
    store: EmbeddedTelemetryStore, client: httpx.AsyncClient, tenants: TenantFactory
) -> None:
    tenant = await tenants.create("recent")
    await fleet(client, tenant, {"fz-1": "north"})
    now = utcnow()
    # One reading every minute for the last 70 minutes, warm for the last 30.
    readings = [
        Reading(tenant.id, "fz-1", now - timedelta(minutes=m), {"temp": -5.0 if m <= 30 else -18.0}, SOURCE)
        for m in range(70, 0, -1)
    ]
    await store.write(readings)
    rule_id = await create_rule(client, tenant, olivia())
    r = await backtest(client, tenant, rule_id, range="last_hour")
    assert r.status_code == 200, r.text
    report = r.json()
    start, end = datetime.fromisoformat(report["start"]), datetime.fromisoformat(report["end"])
    assert end - start == timedelta(hours=1) and now <= end <= utcnow()
    assert report["totals"]["readings"] == sum(1 for x in readings if start <= x.ts < end)
    [device] = report["devices"]
    assert [f["at"] for f in device["firings"]] == [iso(now - timedelta(minutes=25))]
    default = (await backtest(client, tenant, rule_id)).json()  # no range at all: the last day
    assert datetime.fromisoformat(default["end"]) - datetime.fromisoformat(default["start"]) == timedelta(
        days=1
    )
    assert default["totals"]["readings"] == 70


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"since": iso(START + timedelta(hours=1)), "until": iso(START)}, "since"),
        ({"since": iso(START - timedelta(days=7)), "until": iso(START + timedelta(seconds=1))}, "since"),
        ({"since": iso(START).removesuffix("Z"), "until": iso(START + timedelta(hours=1))}, "since"),
        ({"range": "last_hour", "since": iso(START)}, "range"),
        ({"range": "last_year"}, "range"),
        ({"device_ids": []}, "device_ids"),
        ({"device_ids": [f"fz-{n}" for n in range(MAX_DEVICES + 1)]}, "device_ids"),
        ({"series_points": 1001}, "series_points"),
    ],
    ids=[
        "ends-before-start",
        "longer-than-a-week",
        "no-time-zone",
        "range-and-since",
        "unknown-range",
        "no-devices",
        "too-many-devices",
        "too-many-points",
    ],
)
async def test_unusable_ranges_and_limits_are_refused(
    client: httpx.AsyncClient, acme: TenantHandle, body: dict[str, Any], field: str
) -> None:
    rule_id = await create_rule(client, acme, olivia())
    for answer in (
        await backtest(client, acme, rule_id, **body),
        await backtest(client, acme, None, document=olivia(), **body),
    ):
        problem = assert_problem(answer, 422, "invalid-input")
        assert [field] in [e["loc"][:1] for e in problem["errors"]], problem


async def test_a_rule_selecting_too_many_devices_needs_device_ids(
    client: httpx.AsyncClient, acme: TenantHandle, database: Database
) -> None:
    async with database.tenant(acme.id) as scope:
        await DeviceRepository(scope).create_many(
            [
                {"id": f"fz-bulk-{n:03}", "type_id": "freezer", "labels": {"region": "north"}}
                for n in range(MAX_DEVICES)
            ]
        )
    rule_id = await create_rule(client, acme, olivia())
    problem = assert_problem(await backtest(client, acme, rule_id, **HOUR), 422, "invalid-input")
    assert problem["errors"][0]["loc"] == ["device_ids"] and f"more than {MAX_DEVICES}" in problem["detail"]
    r = await backtest(client, acme, rule_id, device_ids=["fz-failing", "fz-bulk-000"], **HOUR)
    assert r.status_code == 200, r.text
    assert [d["readings"] for d in r.json()["devices"]] == [360, 0]


async def test_another_tenants_rules_devices_and_telemetry_are_never_reached(
    store: EmbeddedTelemetryStore, client: httpx.AsyncClient, acme: TenantHandle, tenants: TenantFactory
) -> None:
    globex = await tenants.create("globex")
    # Globex has a device with the same id as one of acme's, and one acme does not have; both warm.
    await fleet(client, globex, {"fz-door": "north", "fz-globex": "north"})
    for device_id in ("fz-door", "fz-globex"):
        await write(store, globex.id, device_id, WARM)
    foreign_rule = await create_rule(client, globex, olivia())
    own_rule = await create_rule(client, acme, olivia())

    assert_problem(await backtest(client, acme, foreign_rule, **HOUR), 404, "not-found")
    report = (await backtest(client, acme, own_rule, **HOUR)).json()
    door = next(d for d in report["devices"] if d["device_id"] == "fz-door")
    assert door["fired"] == 0 and min(v for _, v in door["series"]) == -18.0  # acme's door opening only
    assert door["readings"] == 360
    assert "fz-globex" not in str(report)
    for path, extra in ((f"rules/{own_rule}", {}), ("rules", {"document": olivia()})):
        r = await client.post(
            f"/api/v1/{path}/backtest",
            json={"device_ids": ["fz-globex"], **HOUR, **extra},
            headers=acme.headers,
        )
        problem = assert_problem(r, 422, "invalid-input")
        assert problem["errors"] == [
            {"loc": ["device_ids", 0], "msg": "unknown device 'fz-globex'", "type": "value_error"}
        ]
    # A draft naming globex's device in its selector is refused as on save.
    draft = olivia()
    draft["devices"] = {"ids": ["fz-globex"]}
    assert_problem(await backtest(client, acme, None, document=draft, **HOUR), 422, "invalid-rule")
    # Globex's own backtest sees globex's data: both devices warm all hour.
    theirs = (await backtest(client, globex, foreign_rule, **HOUR)).json()
    assert theirs["totals"]["fired"] == 2


async def test_rules_read_is_enough_and_required(
    client: httpx.AsyncClient, acme: TenantHandle, tenants: TenantFactory
) -> None:
    rule_id = await create_rule(client, acme, olivia())
    reader = bearer(await tenants.token(acme.id, ["rules:read"]))
    r = await client.post(f"/api/v1/rules/{rule_id}/backtest", json=HOUR, headers=reader)
    assert r.status_code == 200, r.text
    telemetry_only = bearer(await tenants.token(acme.id, ["telemetry:read"]))
    r = await client.post(f"/api/v1/rules/{rule_id}/backtest", json=HOUR, headers=telemetry_only)
    assert_problem(r, 403, "forbidden")
