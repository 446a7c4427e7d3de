"""The relational database: engines, tenant-scoped transactions and the scope that filters every query."""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection as SyncConnection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from model.errors import ConfigurationError
from model.ids import is_tenant_id

logger = logging.getLogger(__name__)

_in_transaction: contextvars.ContextVar[bool] = contextvars.ContextVar("in_transaction", default=False)
_SET_TENANT = sa.text("SELECT set_config('app.tenant_id', :tenant, true)")
# Execution option marking a connection that serves a read-only scope (see Database.tenant).
_READONLY = "flatgigs_readonly"


# The bind parameter that statements built once (tenant_filter) are restricted by; only
# TenantScope.run() supplies it, so such a statement cannot run without a tenant.
TENANT_PARAM = "scope_tenant_id"


class ReadOnlyScopeError(RuntimeError):
    """A write was attempted through a read-only tenant scope (a programming error)."""


def tenant_filter(table: sa.FromClause) -> sa.ColumnElement[bool]:
    """``tenant_id = :scope_tenant_id`` for statements built once and run with TenantScope.run().

    Building a statement costs more than running a primary-key lookup, so hot paths build
    theirs once, with this filter, and every execution binds the scope's tenant.
    """
    return table.c.tenant_id == sa.bindparam(TENANT_PARAM, type_=sa.String())


class TenantScope:
    """A transaction bound to one tenant; every statement built here is filtered by that tenant.

    PostgreSQL also enforces the tenant with row-level security (the tenant is set with
    ``set_config(..., true)``, local to the transaction). SQLite has no RLS, so the filtering done
    here is the enforcement there; on PostgreSQL it is a second, independent guard.
    """

    __slots__ = ("conn", "readonly", "tenant_id")

    def __init__(self, conn: AsyncConnection, tenant_id: str, *, readonly: bool = False) -> None:
        self.conn = conn
        self.tenant_id = tenant_id
        self.readonly = readonly

    def _writable(self) -> None:
        if self.readonly:
            raise ReadOnlyScopeError(f"tenant scope of {self.tenant_id!r} is read-only")

    async def run(self, stmt: sa.Executable, params: Mapping[str, Any] | None = None) -> sa.CursorResult[Any]:
        """Execute a statement built with tenant_filter(), bound to this scope's tenant."""
        values = dict(params) if params else {}
        values[TENANT_PARAM] = self.tenant_id
        return await self.conn.execute(stmt, values)

    def select(self, table: sa.Table, *columns: sa.ColumnElement[Any]) -> sa.Select[Any]:
        """SELECT from ``table`` (all columns unless given), restricted to this tenant."""
        stmt = sa.select(*columns) if columns else sa.select(table)
        return stmt.where(table.c.tenant_id == self.tenant_id)

    def update(self, table: sa.Table) -> sa.Update:
        """UPDATE ``table`` restricted to this tenant."""
        self._writable()
        return sa.update(table).where(table.c.tenant_id == self.tenant_id)

    def delete(self, table: sa.Table) -> sa.Delete:
        """DELETE from ``table`` restricted to this tenant."""
        self._writable()
        return sa.delete(table).where(table.c.tenant_id == self.tenant_id)

    async def insert(self, table: sa.Table, rows: Sequence[Mapping[str, Any]]) -> None:
        """INSERT rows into ``table`` with ``tenant_id`` forced to this tenant."""
        self._writable()
        if not rows:
            return
        values = [{**row, "tenant_id": self.tenant_id} for row in rows]
        await self.conn.execute(sa.insert(table), values)


class Database:
    """One relational database, SQLite (embedded) or PostgreSQL (production)."""

    def __init__(self, url: str, *, pool_size: int = 10, echo: bool = False) -> None:
        self.url = sa.make_url(url)
        # No pre-ping: it costs three round trips per checkout (BEGIN, SELECT 1, ROLLBACK), more
        # than the query it protects. Connections are recycled instead, and a connection that
        # died under us fails one transaction, which callers see as a 5xx and retry.
        kwargs: dict[str, Any] = {"echo": echo, "pool_pre_ping": False}
        if self.url.get_backend_name() == "sqlite":
            kwargs["connect_args"] = {"timeout": 30}
        else:
            kwargs.update(pool_size=pool_size, max_overflow=pool_size, pool_recycle=1800)
        self.engine: AsyncEngine = create_async_engine(self.url, **kwargs)
        self._lock = asyncio.Lock()
        # An in-memory SQLite database has one connection that every scope shares, so readers
        # must queue behind writers there too.
        self._shared_connection = isinstance(self.engine.pool, StaticPool)
        # Read-only scopes check out connections through this view of the same pool: marked as
        # readers and, on PostgreSQL, with the driver in autocommit (the scope sends its own BEGIN).
        reader_options: dict[str, Any] = {_READONLY: True}
        if not self.is_sqlite:
            reader_options["isolation_level"] = "AUTOCOMMIT"
        self._reader_engine = self.engine.execution_options(**reader_options)
        self._releases: set[asyncio.Task[None]] = set()
        if self.is_sqlite:
            _configure_sqlite(self.engine)
        else:
            _configure_postgres(self.engine)

    @property
    def dialect(self) -> str:
        """The backend name: ``sqlite`` or ``postgresql``."""
        return self.url.get_backend_name()

    @property
    def is_sqlite(self) -> bool:
        """Whether this is the embedded SQLite database."""
        return self.dialect == "sqlite"

    @asynccontextmanager
    async def tenant(self, tenant_id: str, *, readonly: bool = False) -> AsyncIterator[TenantScope]:
        """A transaction that can only see and change ``tenant_id``'s rows.

        ``readonly=True`` is for scopes that only read (GET endpoints, lookups): on PostgreSQL a
        ``READ ONLY`` transaction whose BEGIN and tenant setting travel in one message, on SQLite
        no write lock and no explicit transaction (docs/adr/0022). Writes through it fail.
        """
        if readonly:
            async with self._reader(tenant_id) as scope:
                yield scope
            return
        async with self._serialized(), self.engine.begin() as conn:
            if not self.is_sqlite:
                await conn.execute(_SET_TENANT, {"tenant": tenant_id})
            yield TenantScope(conn, tenant_id)

    @asynccontextmanager
    async def _reader(self, tenant_id: str) -> AsyncIterator[TenantScope]:
        """A read-only scope (docs/adr/0022).

        PostgreSQL: ``BEGIN READ ONLY`` and the transaction-local tenant travel in one message
        (_begin_read_only). SQLite: no in-process lock and no BEGIN IMMEDIATE; each statement
        reads a committed snapshot, which is also what PostgreSQL's READ COMMITTED gives each
        statement of a read-only transaction, and WAL lets readers run beside the writer.

        Once the caller has its rows, the transaction is ended and the connection returned to
        the pool in the background: the caller does not wait for the ROLLBACK's round trip, and
        the connection is not back in the pool before it completes (the checkin guard of
        _configure_postgres closes any connection that would arrive there still in one). If the
        body fails, the end is awaited before the error propagates.
        """
        if self._shared_connection:  # in-memory SQLite: one connection, so queue behind writers
            async with self._serialized(), self._reader_engine.connect() as shared:
                yield TenantScope(shared, tenant_id, readonly=True)
            return
        conn = await self._reader_engine.connect()
        raw: Any = None
        done = False
        try:
            if not self.is_sqlite:
                raw = (await conn.get_raw_connection()).driver_connection
                await _begin_read_only(raw, tenant_id)
            yield TenantScope(conn, tenant_id, readonly=True)
            done = True
        finally:
            release = asyncio.get_running_loop().create_task(_release(conn, raw))
            self._releases.add(release)
            release.add_done_callback(self._released)
            if not done:
                # Shielded: a second cancellation of the caller must not interrupt the release.
                with suppress(Exception):
                    await asyncio.shield(release)

    def _released(self, task: asyncio.Task[None]) -> None:
        self._releases.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.warning("releasing a read-only connection failed: %r", exc)

    @asynccontextmanager
    async def platform(self) -> AsyncIterator[AsyncConnection]:
        """A transaction with no tenant set: platform tables only (RLS hides tenant rows)."""
        async with self._serialized(), self.engine.begin() as conn:
            yield conn

    @asynccontextmanager
    async def _serialized(self) -> AsyncIterator[None]:
        """On SQLite, one transaction at a time in this process.

        SQLite has a single writer; concurrent transactions that start reading and then write
        fail with "database is locked" instead of waiting. Queuing them here (and starting each
        with BEGIN IMMEDIATE for other processes) turns that into a short wait. A transaction
        opened inside another one by the same task does not queue behind itself.
        """
        if not self.is_sqlite or _in_transaction.get():
            yield
            return
        async with self._lock:
            token = _in_transaction.set(True)
            try:
                yield
            finally:
                _in_transaction.reset(token)

    async def assert_isolating_role(self) -> None:
        """Refuse a PostgreSQL role that would switch row-level security off.

        A superuser, a role with BYPASSRLS, or the owner of the tables is not subject to the
        tenant policies (FORCE applies to owners, but owners can disable it): connecting as one
        would silently turn isolation into a suggestion.
        """
        if self.is_sqlite:
            return
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.text(
                        "SELECT r.rolname, r.rolsuper, r.rolbypassrls,"
                        " (SELECT count(*) FROM pg_tables t WHERE t.schemaname = 'public'"
                        "  AND t.tableowner = r.rolname) AS owned"
                        " FROM pg_roles r WHERE r.rolname = current_user"
                    )
                )
            ).one()
        problems = [
            text
            for flag, text in (
                (row.rolsuper, "is a superuser"),
                (row.rolbypassrls, "has BYPASSRLS"),
                (row.owned > 0, f"owns {row.owned} table(s)"),
            )
            if flag
        ]
        if problems:
            raise ConfigurationError(
                f"the application's database role {row.rolname!r} {' and '.join(problems)}: it would "
                "bypass row-level security. Connect FLATGIGS_DATABASE_URL as a NOSUPERUSER NOBYPASSRLS "
                "role that owns no table, and run migrations with FLATGIGS_MIGRATION_DATABASE_URL.",
                role=row.rolname,
            )

    async def ping(self) -> None:
        """Raise if the database cannot answer a trivial query."""
        async with self.engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))

    async def settle(self) -> None:
        """Wait until every read-only scope has ended its transaction and returned its connection."""
        while self._releases:
            await asyncio.gather(*self._releases, return_exceptions=True)

    async def dispose(self) -> None:
        """Close every pooled connection (after the read-only scopes still releasing theirs)."""
        await self.settle()
        await self.engine.dispose()


def _configure_sqlite(engine: AsyncEngine) -> None:
    """Foreign keys on, WAL journal, and transactions that SQLAlchemy (not the driver) begins."""

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # The driver's implicit transaction handling would start transactions late and hide
        # BEGIN from SQLAlchemy; take control so every unit of work is one real transaction.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: SyncConnection) -> None:
        if conn.get_execution_options().get(_READONLY):
            return  # a reader: autocommit reads, no write lock (Database._reader)
        # IMMEDIATE: take the write lock up front, so a transaction that reads and then writes
        # waits for another process's writer (busy_timeout) instead of failing midway.
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def _refuse_writes_in_readers(
        conn: SyncConnection, _cursor: Any, statement: str, _params: Any, context: Any, _many: bool
    ) -> None:
        # PostgreSQL refuses writes in a READ ONLY transaction; SQLite readers have no
        # transaction to mark, so compiled INSERT/UPDATE/DELETE are refused here.
        if (
            context is not None
            and (context.isinsert or context.isupdate or context.isdelete)
            and conn.get_execution_options().get(_READONLY)
        ):
            raise ReadOnlyScopeError(f"write in a read-only scope: {statement[:60]!r}")


def _configure_postgres(engine: AsyncEngine) -> None:
    """Never pool a connection that is still inside a transaction.

    SQLAlchemy ends the transactions it began before checkin; read-only scopes begin theirs on
    the raw driver connection and end it themselves. Should one ever reach the pool still open
    (and with it a transaction-local tenant), the connection is closed here instead of reused.
    """

    @event.listens_for(engine.sync_engine, "checkin")
    def _close_if_in_transaction(dbapi_conn: Any, record: Any) -> None:
        driver = getattr(dbapi_conn, "driver_connection", None)
        if driver is not None and not driver.is_closed() and driver.is_in_transaction():
            logger.error("a pooled connection was returned inside a transaction; closing it")
            driver.terminate()
            record.invalidate()


async def _begin_read_only(raw: Any, tenant_id: str) -> None:
    """``BEGIN READ ONLY`` and the transaction-local tenant on an asyncpg connection, in one message.

    A valid tenant id ([a-z0-9-] only) is safe as a literal, so both statements go in one
    simple-protocol message: one round trip (a bound parameter needs a message of its own, and
    ``SET LOCAL`` takes none). ``SET LOCAL`` is ``set_config(..., true)`` without a query to plan:
    the setting ends with the transaction.
    """
    if is_tenant_id(tenant_id):
        await raw.execute(f"BEGIN READ ONLY; SET LOCAL app.tenant_id = '{tenant_id}'")
    else:  # no such tenant can exist; still set it correctly, as a bound parameter
        await raw.execute("BEGIN READ ONLY")
        await raw.execute("SELECT set_config('app.tenant_id', $1, true)", tenant_id)


async def _release(conn: AsyncConnection, raw: Any) -> None:
    """End a reader's transaction and return its connection; close the connection if that fails.

    ROLLBACK is sent even when the driver reports no transaction: after a cancelled command the
    driver's status is stale until the server's answer arrives, and the next command waits for
    it. Only a connection the server reports idle afterwards goes back to the pool.
    """
    try:
        if raw is not None and not raw.is_closed():
            try:
                await raw.execute("ROLLBACK")
            except Exception:
                logger.warning("could not end a read-only transaction; closing its connection", exc_info=True)
        if raw is not None and (raw.is_closed() or raw.is_in_transaction()):
            await conn.invalidate()
    finally:
        await conn.close()
