"""Read-only tenant scopes (ADR 0022) isolate tenants exactly like read-write ones.

On both backends: a reader sees its own tenant's rows only, cannot write, does not wait for a
writer and never sees its uncommitted rows. On PostgreSQL, where the reader begins its own
``READ ONLY`` transaction on the raw driver connection and hands the ROLLBACK to the background:
RLS filters raw SQL in it, its tenant setting ends with it (also when the body fails or is
cancelled), and a connection that reaches the pool still inside a transaction is closed, not reused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from devices.registry import DeviceFilter, DeviceRepository, DeviceTypeRepository
from model.errors import NotFoundError
from storage.database import Database, ReadOnlyScopeError
from storage.tables import devices
from storage.tenancy import TenantRepository
from storage.types import utcnow
from tests.conftest import DbTarget, TenantFactory, migrated_postgres
from tests.harness.postgres import PostgresServer

SETTING = sa.text("SELECT current_setting('app.tenant_id', true)")
BACKEND_PID = sa.text("SELECT pg_backend_pid()")


async def _fleet(database: Database, tenant_id: str, name: str) -> None:
    async with database.tenant(tenant_id) as scope:
        await DeviceTypeRepository(scope).create("freezer", name="Freezer")
        await DeviceRepository(scope).create(
            "dev-1", type_id="freezer", name=name, labels={"region": "north"}
        )


async def _ids(database: Database, tenant_id: str) -> list[str]:
    async with database.tenant(tenant_id, readonly=True) as scope:
        return [d.id for d in (await DeviceRepository(scope).list(DeviceFilter(), limit=500)).items]


# --------------------------------------------------------------------------------------------
# Both backends


async def test_a_reader_sees_its_own_tenant_only(database: Database, tenants: TenantFactory) -> None:
    a, b = await tenants.create("ro"), await tenants.create("ro")
    await _fleet(database, a.id, "A's freezer")
    await _fleet(database, b.id, "B's freezer")
    async with database.tenant(b.id) as scope:
        await DeviceRepository(scope).create("only-b", type_id="freezer")

    async with database.tenant(a.id, readonly=True) as scope:
        repo = DeviceRepository(scope)
        assert (await repo.get("dev-1")).name == "A's freezer"
        with pytest.raises(NotFoundError):
            await repo.get("only-b")
        page = await repo.list(DeviceFilter(labels={"region": "north"}))
        assert [(d.id, d.name) for d in page.items] == [("dev-1", "A's freezer")]
        assert [t.id for t in await DeviceTypeRepository(scope).list()] == ["freezer"]
    assert await _ids(database, b.id) == ["dev-1", "only-b"]


async def test_a_reader_cannot_write(database: Database, tenants: TenantFactory) -> None:
    a = await tenants.create("ro")
    await _fleet(database, a.id, "freezer")
    now = utcnow()
    raw_insert = sa.insert(devices).values(
        tenant_id=a.id,
        id="raw-1",
        name="raw",
        type_id="freezer",
        labels={},
        attributes={},
        status="unknown",
        created_at=now,
        updated_at=now,
    )
    async with database.tenant(a.id, readonly=True) as scope:
        with pytest.raises(ReadOnlyScopeError):
            await DeviceRepository(scope).create("dev-2", type_id="freezer")
    # Past the repository layer: SQLite's reader guard, PostgreSQL's READ ONLY transaction.
    with pytest.raises((ReadOnlyScopeError, DBAPIError), match="read-only"):
        async with database.tenant(a.id, readonly=True) as scope:
            await scope.conn.execute(raw_insert)
    assert await _ids(database, a.id) == ["dev-1"]


async def test_a_reader_neither_waits_for_a_writer_nor_sees_its_uncommitted_rows(
    database: Database, tenants: TenantFactory
) -> None:
    a = await tenants.create("ro")
    await _fleet(database, a.id, "freezer")
    inside, finish = asyncio.Event(), asyncio.Event()

    async def writer() -> None:
        async with database.tenant(a.id) as scope:
            await DeviceRepository(scope).create("uncommitted", type_id="freezer")
            inside.set()
            await finish.wait()

    task = asyncio.create_task(writer())
    try:
        await asyncio.wait_for(inside.wait(), 10)
        # The writer holds SQLite's write lock (and the in-process queue) until `finish`.
        assert await asyncio.wait_for(_ids(database, a.id), 5) == ["dev-1"]
    finally:
        finish.set()
        await task
    assert await _ids(database, a.id) == ["dev-1", "uncommitted"]


async def test_an_error_in_a_reader_propagates_and_the_next_reader_works(
    database: Database, tenants: TenantFactory
) -> None:
    a = await tenants.create("ro")
    await _fleet(database, a.id, "freezer")
    with pytest.raises(ZeroDivisionError):
        async with database.tenant(a.id, readonly=True) as scope:
            await DeviceRepository(scope).get("dev-1")
            _ = 1 / 0
    with pytest.raises(DBAPIError):
        async with database.tenant(a.id, readonly=True) as scope:
            await scope.conn.execute(sa.text("SELECT * FROM no_such_table"))
    assert await _ids(database, a.id) == ["dev-1"]


# --------------------------------------------------------------------------------------------
# PostgreSQL: the raw transaction, the tenant setting and the pool


@pytest.fixture(scope="module")
def pg_target(postgres_server: PostgresServer) -> DbTarget:
    return migrated_postgres(postgres_server, prefix="ro")


@pytest_asyncio.fixture
async def pg(pg_target: DbTarget) -> AsyncIterator[Database]:
    """A Database whose pool holds one connection when used one scope at a time."""
    db = Database(pg_target.app_url, pool_size=1)
    for tenant_id in ("tenant-a", "tenant-b"):
        async with db.platform() as conn:
            new = await TenantRepository(conn).find(tenant_id) is None
            if new:
                await TenantRepository(conn).create(tenant_id, name=tenant_id)
        if new:
            await _fleet(db, tenant_id, f"freezer of {tenant_id}")
    yield db
    await db.dispose()


async def _pooled_state(db: Database) -> tuple[int, bool, str | None]:
    """(backend pid, whether the checked-out connection was inside a transaction, tenant setting)."""
    await db.settle()
    async with db.engine.connect() as conn:
        raw = (await conn.get_raw_connection()).driver_connection
        assert raw is not None
        in_transaction = raw.is_in_transaction()
        pid = (await conn.execute(BACKEND_PID)).scalar_one()
        setting = (await conn.execute(SETTING)).scalar_one()
        await conn.rollback()
    return pid, in_transaction, setting or None


async def test_rls_filters_raw_sql_in_a_reader(pg: Database) -> None:
    async with pg.tenant("tenant-a", readonly=True) as scope:
        rows = await scope.conn.execute(sa.text("SELECT tenant_id, name FROM devices WHERE id = 'dev-1'"))
        assert rows.all() == [("tenant-a", "freezer of tenant-a")]
        assert (await scope.conn.execute(sa.text("SHOW transaction_read_only"))).scalar_one() == "on"


async def test_the_tenant_setting_ends_with_the_reader(pg: Database) -> None:
    async with pg.tenant("tenant-a", readonly=True) as scope:
        assert (await scope.conn.execute(SETTING)).scalar_one() == "tenant-a"
        pid = (await scope.conn.execute(BACKEND_PID)).scalar_one()
    assert await _pooled_state(pg) == (pid, False, None)  # the same connection, clean
    async with pg.tenant("tenant-b", readonly=True) as scope:
        assert (await scope.conn.execute(sa.text("SELECT DISTINCT tenant_id FROM devices"))).all() == [
            ("tenant-b",)
        ]


async def test_a_failed_reader_ends_its_transaction_before_the_error_propagates(pg: Database) -> None:
    with pytest.raises(RuntimeError):
        async with pg.tenant("tenant-a", readonly=True) as scope:
            pid = (await scope.conn.execute(BACKEND_PID)).scalar_one()
            raise RuntimeError("boom")
    assert await _pooled_state(pg) == (pid, False, None)


async def test_a_cancelled_reader_never_pools_its_transaction(pg: Database) -> None:
    started = asyncio.Event()

    async def slow_read() -> None:
        async with pg.tenant("tenant-a", readonly=True) as scope:
            started.set()
            await scope.conn.execute(sa.text("SELECT pg_sleep(30)"))

    task = asyncio.create_task(slow_read())
    await asyncio.wait_for(started.wait(), 10)
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    _pid, in_transaction, setting = await _pooled_state(pg)
    assert (in_transaction, setting) == (False, None)


async def test_readers_cancelled_at_any_point_leave_no_tenant_behind(pg: Database) -> None:
    """Cancel readers after 0, 1, 2, ... event-loop steps (once, or twice in a row): during the
    BEGIN's round trip, the query, or the release. The next user of the pool always starts clean."""

    async def read() -> None:
        async with pg.tenant("tenant-a", readonly=True) as scope:
            await DeviceRepository(scope).get("dev-1")

    for steps in range(40):
        for twice in (False, True):  # a second cancellation lands while the first is handled
            task = asyncio.create_task(read())
            for _ in range(steps):
                await asyncio.sleep(0)
            task.cancel()
            if twice:
                await asyncio.sleep(0)
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            _pid, in_transaction, setting = await _pooled_state(pg)
            assert (steps, twice, in_transaction, setting) == (steps, twice, False, None)


async def test_the_pool_closes_a_connection_returned_inside_a_transaction(
    pg: Database, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="storage.database"):
        async with pg.engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            raw = (await conn.get_raw_connection()).driver_connection
            assert raw is not None
            await raw.execute("BEGIN; SET LOCAL app.tenant_id = 'tenant-a'")
            pid = await raw.fetchval("SELECT pg_backend_pid()")
    assert "returned inside a transaction" in caplog.text
    other_pid, in_transaction, setting = await _pooled_state(pg)
    assert other_pid != pid  # closed at checkin and replaced by a new connection
    assert (in_transaction, setting) == (False, None)


async def test_an_unusual_tenant_id_is_bound_not_spliced(pg: Database) -> None:
    odd = "x'; SET LOCAL app.tenant_id = 'tenant-a"
    async with pg.tenant(odd, readonly=True) as scope:
        assert (await scope.conn.execute(SETTING)).scalar_one() == odd
        assert (await scope.conn.execute(sa.text("SELECT count(*) FROM devices"))).scalar_one() == 0
    assert (await _pooled_state(pg))[1:] == (False, None)
