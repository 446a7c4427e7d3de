"""Alarms on both backends: the lifecycle, one active alarm per key under racing raises, history,
and the REST API (list, filter, read, acknowledge, clear, bad input, isolation)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import pytest_asyncio
from sqlalchemy.exc import IntegrityError

from engine.alarms import (
    Alarm,
    AlarmEventKind,
    AlarmFilter,
    AlarmRepository,
    AlarmService,
    AlarmSeverity,
    AlarmState,
)
from model.errors import InvalidCursorError, NotFoundError
from storage.database import Database
from storage.tables import alarms as alarm_table
from storage.tenancy import TokenRepository
from tests.conftest import DbTarget, TenantFactory, TenantHandle, bearer

API = "/api/v1/alarms"
T0 = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)
RULE = "rul_0000000000000001"
PROBLEM = "application/problem+json"


@pytest.fixture
def alarms(database: Database) -> AlarmService:
    return AlarmService(database)


@pytest_asyncio.fixture
async def tenant(tenants: TenantFactory) -> TenantHandle:
    return await tenants.create("alarm")


@pytest_asyncio.fixture
async def second_process(db_target: DbTarget) -> AsyncIterator[Database]:
    """Another connection pool on the same database, with its own in-process SQLite queue: what a
    second worker process would be."""
    db = Database(db_target.app_url, pool_size=5)
    yield db
    await db.dispose()


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


# --- lifecycle -------------------------------------------------------------------------------------


async def test_raise_acknowledge_clear_walks_active_unack_active_ack_cleared_ack(
    alarms: AlarmService, tenant: TenantHandle
) -> None:
    alarm, changed = await alarms.raise_alarm(tenant.id, RULE, "fz-1", "too-warm", "major", "warm", at(0))
    assert changed
    assert alarm.state is AlarmState.ACTIVE_UNACK
    assert (alarm.active, alarm.acknowledged, alarm.raise_count) == (True, False, 1)

    acked = await alarms.acknowledge(tenant.id, alarm.id, by="usr_alice", at=at(1))
    assert acked.state is AlarmState.ACTIVE_ACK
    assert (acked.acknowledged_at, acked.acknowledged_by) == (at(1), "usr_alice")

    cleared = await alarms.clear_alarm(tenant.id, RULE, "fz-1", "too-warm", at=at(2))
    assert cleared is not None and cleared.id == alarm.id
    assert cleared.state is AlarmState.CLEARED_ACK
    assert (cleared.cleared_at, cleared.cleared_by) == (at(2), None)  # the rule cleared it

    found = await alarms.get(tenant.id, alarm.id)
    assert [(e.kind, e.at, e.actor) for e in found.events] == [
        (AlarmEventKind.RAISED, at(0), None),
        (AlarmEventKind.ACKNOWLEDGED, at(1), "usr_alice"),
        (AlarmEventKind.CLEARED, at(2), None),
    ]


async def test_clear_before_acknowledge_walks_cleared_unack_then_cleared_ack(
    alarms: AlarmService, tenant: TenantHandle
) -> None:
    alarm, _ = await alarms.raise_alarm(tenant.id, RULE, "fz-1", "door-open", "minor", "", at(0))
    cleared = await alarms.clear(tenant.id, alarm.id, by="tok_ops", at=at(1))
    assert cleared.state is AlarmState.CLEARED_UNACK
    assert (cleared.cleared_at, cleared.cleared_by) == (at(1), "tok_ops")
    acked = await alarms.acknowledge(tenant.id, alarm.id, by="usr_bob", at=at(2))
    assert acked.state is AlarmState.CLEARED_ACK
    events = (await alarms.get(tenant.id, alarm.id)).events
    assert [(e.kind, e.actor) for e in events] == [
        (AlarmEventKind.RAISED, None),
        (AlarmEventKind.CLEARED, "tok_ops"),
        (AlarmEventKind.ACKNOWLEDGED, "usr_bob"),
    ]


async def test_acknowledge_and_clear_are_idempotent_and_keep_the_first_time(
    alarms: AlarmService, tenant: TenantHandle
) -> None:
    alarm, _ = await alarms.raise_alarm(tenant.id, RULE, "fz-1", "too-warm", "major", "", at(0))
    await alarms.acknowledge(tenant.id, alarm.id, by="usr_alice", at=at(1))
    again = await alarms.acknowledge(tenant.id, alarm.id, by="usr_bob", at=at(2))
    assert (again.acknowledged_at, again.acknowledged_by) == (at(1), "usr_alice")
    await alarms.clear(tenant.id, alarm.id, by="usr_alice", at=at(3))
    again = await alarms.clear(tenant.id, alarm.id, by="usr_bob", at=at(4))
    assert (again.cleared_at, again.cleared_by) == (at(3), "usr_alice")
    # The rule's clear finds nothing active: nothing to do, no event.
    assert await alarms.clear_alarm(tenant.id, RULE, "fz-1", "too-warm", at=at(5)) is None
    kinds = [e.kind for e in (await alarms.get(tenant.id, alarm.id)).events]
    assert kinds == [AlarmEventKind.RAISED, AlarmEventKind.ACKNOWLEDGED, AlarmEventKind.CLEARED]


async def test_repeated_raises_update_one_alarm_and_only_a_new_severity_is_a_change(
    alarms: AlarmService, tenant: TenantHandle
) -> None:
    first, changed = await alarms.raise_alarm(tenant.id, RULE, "fz-1", "too-warm", "minor", "-15", at(0))
    assert changed
    second, changed = await alarms.raise_alarm(tenant.id, RULE, "fz-1", "too-warm", "minor", "-12", at(1))
    assert not changed
    assert (second.id, second.raise_count, second.last_raised_at, second.message) == (
        first.id,
        2,
        at(1),
        "-12",
    )
    third, changed = await alarms.raise_alarm(tenant.id, RULE, "fz-1", "too-warm", "critical", "-5", at(2))
    assert changed
    assert (third.id, third.severity, third.raise_count) == (first.id, AlarmSeverity.CRITICAL, 3)
    # A late reading does not move last_raised_at backwards.
    late, _ = await alarms.raise_alarm(tenant.id, RULE, "fz-1", "too-warm", "critical", "", at(-5))
    assert (late.last_raised_at, late.raised_at, late.message) == (at(2), at(0), "-5")
    events = (await alarms.get(tenant.id, first.id)).events
    assert [(e.kind, e.severity, e.at) for e in events] == [
        (AlarmEventKind.RAISED, AlarmSeverity.MINOR, at(0)),
        (AlarmEventKind.SEVERITY_CHANGED, AlarmSeverity.CRITICAL, at(2)),
    ]


async def test_keys_are_rule_device_and_type(alarms: AlarmService, tenant: TenantHandle) -> None:
    ids = {
        (await alarms.raise_alarm(tenant.id, rule, device, kind, "major", "", at(0)))[0].id
        for rule in (RULE, "rul_other")
        for device in ("fz-1", "fz-2")
        for kind in ("too-warm", "too-cold")
    }
    assert len(ids) == 8


async def test_a_raise_after_a_clear_is_a_new_alarm_and_the_old_one_stays_cleared(
    alarms: AlarmService, tenant: TenantHandle
) -> None:
    old, _ = await alarms.raise_alarm(tenant.id, RULE, "fz-1", "too-warm", "major", "", at(0))
    await alarms.acknowledge(tenant.id, old.id, by="usr_alice", at=at(1))
    await alarms.clear_alarm(tenant.id, RULE, "fz-1", "too-warm", at=at(2))
    new, changed = await alarms.raise_alarm(tenant.id, RULE, "fz-1", "too-warm", "major", "", at(3))
    assert changed
    assert new.id != old.id
    assert new.state is AlarmState.ACTIVE_UNACK  # the old acknowledgement does not carry over
    assert (await alarms.get(tenant.id, old.id)).alarm.state is AlarmState.CLEARED_ACK
    page = await alarms.list(tenant.id)
    assert [a.id for a in page.items] == [new.id, old.id]


async def test_unknown_and_foreign_alarms_are_not_found(
    alarms: AlarmService, tenant: TenantHandle, tenants: TenantFactory
) -> None:
    other = await tenants.create("alarm")
    theirs, _ = await alarms.raise_alarm(other.id, RULE, "fz-1", "too-warm", "major", "", at(0))
    for call in (
        alarms.get(tenant.id, theirs.id),
        alarms.acknowledge(tenant.id, theirs.id, by="usr_x"),
        alarms.clear(tenant.id, theirs.id, by="usr_x"),
        alarms.get(tenant.id, "alm_unknown"),
    ):
        with pytest.raises(NotFoundError):
            await call
    assert (await alarms.list(tenant.id)).items == []
    # The same key in another tenant is another alarm.
    mine, changed = await alarms.raise_alarm(tenant.id, RULE, "fz-1", "too-warm", "major", "", at(0))
    assert changed and mine.id != theirs.id
    unchanged = (await alarms.get(other.id, theirs.id)).alarm
    assert unchanged.state is AlarmState.ACTIVE_UNACK and unchanged.raise_count == 1


async def test_the_database_allows_one_active_alarm_per_key_and_any_number_of_cleared_ones(
    database: Database, alarms: AlarmService, tenant: TenantHandle
) -> None:
    """The guarantee is the partial unique index, not the order in which callers happen to run."""
    alarm, _ = await alarms.raise_alarm(tenant.id, RULE, "fz-1", "too-warm", "major", "", at(0))
    async with database.tenant(tenant.id) as scope:
        (row,) = (
            await scope.conn.execute(scope.select(alarm_table).where(alarm_table.c.id == alarm.id))
        ).all()
    twin = {k: v for k, v in row._mapping.items() if k != "tenant_id"}
    with pytest.raises(IntegrityError):
        async with database.tenant(tenant.id) as scope:
            await scope.insert(alarm_table, [{**twin, "id": "alm_twin"}])
    async with database.tenant(tenant.id) as scope:
        await scope.insert(
            alarm_table,
            [{**twin, "id": f"alm_old{n}", "cleared_at": at(n), "raised_at": at(-n)} for n in (1, 2)],
        )
        repo = AlarmRepository(scope, database.dialect)
        # The raise path's INSERT .. ON CONFLICT yields to the active alarm (and locks it).
        assert await repo._insert_active(RULE, "fz-1", "too-warm", AlarmSeverity.MAJOR, "", at(3)) is None
    assert len((await alarms.list(tenant.id)).items) == 3


# --- races -----------------------------------------------------------------------------------------


async def test_fifty_racing_raises_make_one_alarm(
    alarms: AlarmService, second_process: Database, tenant: TenantHandle
) -> None:
    """Readings milliseconds apart, handled by two workers at once: one alarm, every raise counted."""
    services = (alarms, AlarmService(second_process))
    results = await asyncio.gather(
        *(
            services[n % 2].raise_alarm(
                tenant.id, RULE, "fz-1", "too-warm", "major", f"reading {n}", at(n / 60_000)
            )
            for n in range(50)
        )
    )
    assert len({alarm.id for alarm, _ in results}) == 1
    assert sum(changed for _, changed in results) == 1
    page = await alarms.list(tenant.id)
    assert len(page.items) == 1
    assert page.items[0].raise_count == 50
    assert page.items[0].last_raised_at == at(49 / 60_000)
    events = (await alarms.get(tenant.id, page.items[0].id)).events
    assert [e.kind for e in events] == [AlarmEventKind.RAISED]


async def test_raises_racing_clears_never_leave_two_active_alarms(
    alarms: AlarmService, second_process: Database, tenant: TenantHandle
) -> None:
    other = AlarmService(second_process)

    async def flap(n: int) -> None:
        if n % 3 == 2:
            await other.clear_alarm(tenant.id, RULE, "fz-1", "flap", at=at(n))
        else:
            await (alarms if n % 2 else other).raise_alarm(
                tenant.id, RULE, "fz-1", "flap", "minor", "", at(n)
            )

    await asyncio.gather(*(flap(n) for n in range(60)))
    everything = (await alarms.list(tenant.id, limit=500)).items
    assert len([a for a in everything if a.active]) <= 1
    for alarm in everything:
        kinds = [e.kind for e in (await alarms.get(tenant.id, alarm.id)).events]
        assert kinds[0] is AlarmEventKind.RAISED
        assert kinds.count(AlarmEventKind.CLEARED) == (0 if alarm.active else 1)


# SQLite runs one writing transaction at a time: nothing can interleave there.
@pytest.mark.parametrize("db_target", ["postgres"], indirect=True)
async def test_a_raise_that_loses_the_insert_race_updates_the_winner_before_a_clear_can_take_it(
    database: Database, second_process: Database, tenant: TenantHandle
) -> None:
    """The interleaving behind the flaky race above, made to happen every time: whenever this
    raise finds no active alarm, another worker raises the key just before its insert, and the
    flapping rule's clear then takes that winner unless the raise holds it. A raise that merely
    re-read after losing went round with every such clear and gave up after five rounds with a
    ConflictError; a lost insert must lock the winner, so that the raise updates it at once."""
    other = AlarmService(second_process)
    winners: list[str] = []
    cleared: list[str] = []

    async def clear_unless_held() -> None:
        # The flap's clear, told not to wait: it takes the key's active alarm if no one holds it.
        async with second_process.tenant(tenant.id) as scope:
            stmt = (
                scope.select(alarm_table)
                .where(alarm_table.c.cleared_at.is_(None))
                .with_for_update(skip_locked=True)
            )
            row = (await scope.conn.execute(stmt)).first()
            if row is not None:
                repo = AlarmRepository(scope, second_process.dialect)
                cleared.append((await repo.clear(row.id, by=None, at=at(1))).id)

    class Unlucky(AlarmRepository):
        async def _insert_active(
            self,
            rule_id: str,
            device_id: str,
            alarm_type: str,
            severity: AlarmSeverity,
            message: str,
            when: datetime,
        ) -> Alarm | None:
            if len(winners) < 10:
                winner, _ = await other.raise_alarm(
                    tenant.id, rule_id, device_id, alarm_type, "minor", "", when
                )
                winners.append(winner.id)
                lost = await super()._insert_active(rule_id, device_id, alarm_type, severity, message, when)
                assert lost is None
                await clear_unless_held()
                return lost
            return await super()._insert_active(rule_id, device_id, alarm_type, severity, message, when)

    async with database.tenant(tenant.id) as scope:
        alarm, changed = await Unlucky(scope, database.dialect).raise_alarm(
            RULE, "fz-1", "flap", AlarmSeverity.MAJOR, "mine", at(2)
        )
    assert (winners, cleared) == ([alarm.id], [])
    assert changed  # the winner's severity, minor, became major
    assert (alarm.active, alarm.raise_count, alarm.severity, alarm.message) == (
        True,
        2,
        AlarmSeverity.MAJOR,
        "mine",
    )
    assert [a.id for a in (await other.list(tenant.id)).items] == [alarm.id]


# --- listing ---------------------------------------------------------------------------------------


@pytest_asyncio.fixture
async def history(alarms: AlarmService, tenant: TenantHandle) -> dict[str, str]:
    """Four alarms, one in each state, raised a minute apart: name -> id."""
    ids: dict[str, str] = {}
    specs = [
        ("a", "fz-1", "too-warm", "critical"),
        ("b", "fz-1", "door-open", "minor"),
        ("c", "fz-2", "too-warm", "major"),
        ("d", "fz-3", "too-warm", "critical"),
    ]
    for minute, (name, device, kind, severity) in enumerate(specs):
        alarm, _ = await alarms.raise_alarm(tenant.id, RULE, device, kind, severity, "", at(minute))
        ids[name] = alarm.id
    await alarms.acknowledge(tenant.id, ids["b"], by="usr_alice", at=at(10))
    await alarms.clear(tenant.id, ids["c"], by="usr_alice", at=at(10))
    await alarms.acknowledge(tenant.id, ids["d"], by="usr_alice", at=at(10))
    await alarms.clear(tenant.id, ids["d"], by="usr_alice", at=at(11))
    return ids


@pytest.mark.parametrize(
    ("flt", "expected"),
    [
        (AlarmFilter(), "dcba"),
        (AlarmFilter(states=frozenset({AlarmState.ACTIVE_UNACK})), "a"),
        (AlarmFilter(states=frozenset({AlarmState.ACTIVE_ACK})), "b"),
        (AlarmFilter(states=frozenset({AlarmState.CLEARED_UNACK})), "c"),
        (AlarmFilter(states=frozenset({AlarmState.CLEARED_ACK})), "d"),
        (AlarmFilter(states=frozenset({AlarmState.ACTIVE_UNACK, AlarmState.CLEARED_ACK})), "da"),
        (AlarmFilter(active=True), "ba"),
        (AlarmFilter(active=False), "dc"),
        (AlarmFilter(acknowledged=True), "db"),
        (AlarmFilter(active=True, acknowledged=False), "a"),
        (AlarmFilter(severities=frozenset({AlarmSeverity.CRITICAL})), "da"),
        (AlarmFilter(device_id="fz-1"), "ba"),
        (AlarmFilter(alarm_type="too-warm"), "dca"),
        (AlarmFilter(rule_id=RULE), "dcba"),
        (AlarmFilter(rule_id="rul_other"), ""),
        (AlarmFilter(raised_from=at(1), raised_to=at(3)), "cb"),
        (AlarmFilter(device_id="fz-1", severities=frozenset({AlarmSeverity.MINOR})), "b"),
    ],
)
async def test_filters(
    alarms: AlarmService, tenant: TenantHandle, history: dict[str, str], flt: AlarmFilter, expected: str
) -> None:
    names = {v: k for k, v in history.items()}
    page = await alarms.list(tenant.id, flt)
    assert "".join(names[a.id] for a in page.items) == expected
    assert page.next_cursor is None


async def test_keyset_pages_are_newest_first_and_cover_everything_once(
    alarms: AlarmService, tenant: TenantHandle
) -> None:
    # Pairs raised at the same instant: the id breaks the tie, and no page loses one.
    for n in range(11):
        await alarms.raise_alarm(tenant.id, RULE, f"fz-{n}", "too-warm", "major", "", at(n // 2))
    seen: list[str] = []
    cursor = None
    while True:
        page = await alarms.list(tenant.id, limit=3, cursor=cursor)
        seen += [a.id for a in page.items]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    everything = (await alarms.list(tenant.id, limit=500)).items
    assert seen == [a.id for a in everything]
    assert len(set(seen)) == 11
    keys = [(a.raised_at, a.id) for a in everything]
    assert keys == sorted(keys, reverse=True)


@pytest.mark.parametrize("cursor", ["zzz", "eyJ2IjoxLCJhZnRlciI6Im5vIGJhciJ9"])
async def test_bad_cursors_are_refused(alarms: AlarmService, tenant: TenantHandle, cursor: str) -> None:
    with pytest.raises(InvalidCursorError):
        await alarms.list(tenant.id, cursor=cursor)


# --- the REST API ----------------------------------------------------------------------------------


def problem(r: httpx.Response, status: int) -> dict[str, object]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    body: dict[str, object] = r.json()
    assert body["status"] == status
    return body


async def test_api_lists_filters_reads_acknowledges_and_clears(
    client: httpx.AsyncClient, tenants: TenantFactory, tenant: TenantHandle, history: dict[str, str]
) -> None:
    names = {v: k for k, v in history.items()}

    async def listed(**params: str | int | list[str]) -> str:
        r = await client.get(API, params=params, headers=tenant.headers)
        assert r.status_code == 200, r.text
        return "".join(names[a["id"]] for a in r.json()["items"])

    assert await listed() == "dcba"
    assert await listed(state="active_unack") == "a"
    assert await listed(state=["active_ack", "cleared_unack"]) == "cb"
    assert await listed(active="true") == "ba"
    assert await listed(acknowledged="false") == "ca"
    assert await listed(severity=["critical", "minor"]) == "dba"
    assert await listed(device="fz-1", alarm_type="too-warm") == "a"
    assert await listed(rule=RULE, limit=2) == "dc"
    assert await listed(raised_from="2026-11-27T08:01:00Z", raised_to="2026-11-27T08:03:00+00:00") == "cb"

    r = await client.get(API, params={"limit": 3}, headers=tenant.headers)
    first = r.json()
    assert len(first["items"]) == 3 and first["next_cursor"]
    r = await client.get(API, params={"limit": 3, "cursor": first["next_cursor"]}, headers=tenant.headers)
    assert [names[a["id"]] for a in r.json()["items"]] == ["a"] and r.json()["next_cursor"] is None

    reader = bearer(await tenants.token(tenant.id, ["alarms:read"]))
    writer_token = await tenants.token(tenant.id, ["alarms:write"])
    writer = bearer(writer_token)
    a = history["a"]
    r = await client.get(f"{API}/{a}", headers=reader)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["id"], body["state"], body["severity"], body["device_id"]) == (
        a,
        "active_unack",
        "critical",
        "fz-1",
    )
    assert [e["kind"] for e in body["events"]] == ["raised"]

    problem(await client.post(f"{API}/{a}/acknowledge", headers=reader), 403)
    r = await client.post(f"{API}/{a}/acknowledge", headers=writer)
    assert r.status_code == 200, r.text
    acked = r.json()
    assert acked["state"] == "active_ack"
    key_id = writer_token.split(".")[2]
    assert acked["acknowledged_by"] == key_id  # the token has no user: its id says who
    r = await client.post(f"{API}/{a}/acknowledge", headers=tenant.headers)
    assert (r.json()["acknowledged_at"], r.json()["acknowledged_by"]) == (
        acked["acknowledged_at"],
        key_id,
    )

    r = await client.post(f"{API}/{a}/clear", headers=writer)
    assert r.status_code == 200, r.text
    cleared = r.json()
    assert (cleared["state"], cleared["active"], cleared["cleared_by"]) == ("cleared_ack", False, key_id)
    r = await client.post(f"{API}/{a}/clear", headers=writer)
    assert r.json()["cleared_at"] == cleared["cleared_at"]

    r = await client.get(f"{API}/{a}", headers=reader)
    events = r.json()["events"]
    assert [(e["kind"], e["actor"]) for e in events] == [
        ("raised", None),
        ("acknowledged", key_id),
        ("cleared", key_id),
    ]
    assert events[1]["at"] == acked["acknowledged_at"]
    assert await listed(state="cleared_ack") == "da"


async def test_api_who_is_the_user_when_the_token_has_one(
    client: httpx.AsyncClient, database: Database, alarms: AlarmService, tenant: TenantHandle
) -> None:
    r = await client.post(
        "/api/v1/users",
        json={"email": f"ops@{tenant.id}.example.com", "password": "correct horse battery staple"},
        headers=tenant.headers,
    )
    assert r.status_code == 201, r.text
    user_id = r.json()["id"]
    async with database.tenant(tenant.id) as scope:  # a token that belongs to the user
        issued = await TokenRepository(scope).issue(name="ops", scopes=["alarms:write"], user_id=user_id)
    alarm, _ = await alarms.raise_alarm(tenant.id, RULE, "fz-1", "too-warm", "major", "", at(0))
    r = await client.post(f"{API}/{alarm.id}/acknowledge", headers=bearer(issued.bearer))
    assert r.status_code == 200, r.text
    assert r.json()["acknowledged_by"] == user_id


async def test_api_unknown_and_foreign_alarms_are_404(
    client: httpx.AsyncClient, alarms: AlarmService, tenants: TenantFactory, tenant: TenantHandle
) -> None:
    other = await tenants.create("alarm")
    theirs, _ = await alarms.raise_alarm(other.id, RULE, "fz-1", "too-warm", "major", "", at(0))
    for alarm_id in (theirs.id, "alm_0000000000000000"):
        problem(await client.get(f"{API}/{alarm_id}", headers=tenant.headers), 404)
        problem(await client.post(f"{API}/{alarm_id}/acknowledge", headers=tenant.headers), 404)
        problem(await client.post(f"{API}/{alarm_id}/clear", headers=tenant.headers), 404)
    r = await client.get(API, params={"device": "fz-1"}, headers=tenant.headers)
    assert r.json()["items"] == []
    assert (await alarms.get(other.id, theirs.id)).alarm.state is AlarmState.ACTIVE_UNACK


@pytest.mark.parametrize(
    "params",
    [
        {"severity": "urgent"},
        {"state": "open"},
        {"active": "maybe"},
        {"limit": "0"},
        {"limit": "501"},
        {"raised_from": "yesterday"},
        {"raised_from": "2026-11-27T08:00:00"},  # no time zone
        {"raised_from": "2026-11-27T09:00:00Z", "raised_to": "2026-11-27T08:00:00Z"},
        {"alarm_type": "x" * 64},
    ],
)
async def test_api_bad_filters_are_422(
    client: httpx.AsyncClient, tenant: TenantHandle, params: dict[str, str]
) -> None:
    body = problem(await client.get(API, params=params, headers=tenant.headers), 422)
    assert body["type"] == "urn:flatgigs:problem:invalid-input"
    assert body["errors"]


async def test_api_bad_cursor_is_400(client: httpx.AsyncClient, tenant: TenantHandle) -> None:
    body = problem(await client.get(API, params={"cursor": "zzz"}, headers=tenant.headers), 400)
    assert body["type"] == "urn:flatgigs:problem:invalid-cursor"
