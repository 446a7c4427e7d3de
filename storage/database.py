"""The relational database: engines, tenant-scoped transactions and the scope that filters every query."""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection as SyncConnection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from model.errors import ConfigurationError

logger = logging.getLogger(__name__)

_in_transaction: contextvars.ContextVar[bool] = contextvars.ContextVar("in_transaction", default=False)
_SET_TENANT = sa.text("SELECT set_config('app.tenant_id', :tenant, true)")


class TenantScope:
    """A transaction bound to one tenant; every statement built here is filtered by that tenant.

    PostgreSQL also enforces the tenant with row-level security (the tenant is set with
    ``set_config(..., true)``, local to the transaction). SQLite has no RLS, so the filtering done
    here is the enforcement there; on PostgreSQL it is a second, independent guard.
    """

    __slots__ = ("conn", "tenant_id")

    def __init__(self, conn: AsyncConnection, tenant_id: str) -> None:
        self.conn = conn
        self.tenant_id = tenant_id

    def select(self, table: sa.Table, *columns: sa.ColumnElement[Any]) -> sa.Select[Any]:
        """SELECT from ``table`` (all columns unless given), restricted to this tenant."""
        stmt = sa.select(*columns) if columns else sa.select(table)
        return stmt.where(table.c.tenant_id == self.tenant_id)

    def update(self, table: sa.Table) -> sa.Update:
        """UPDATE ``table`` restricted to this tenant."""
        return sa.update(table).where(table.c.tenant_id == self.tenant_id)

    def delete(self, table: sa.Table) -> sa.Delete:
        """DELETE from ``table`` restricted to this tenant."""
        return sa.delete(table).where(table.c.tenant_id == self.tenant_id)

    async def insert(self, table: sa.Table, rows: Sequence[Mapping[str, Any]]) -> None:
        """INSERT rows into ``table`` with ``tenant_id`` forced to this tenant."""
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
        if self.is_sqlite:
            _configure_sqlite(self.engine)

    @property
    def dialect(self) -> str:
        """The backend name: ``sqlite`` or ``postgresql``."""
        return self.url.get_backend_name()

    @property
    def is_sqlite(self) -> bool:
        """Whether this is the embedded SQLite database."""
        return self.dialect == "sqlite"

    @asynccontextmanager
    async def tenant(self, tenant_id: str) -> AsyncIterator[TenantScope]:
        """A transaction that can only see and change ``tenant_id``'s rows."""
        async with self._serialized(), self.engine.begin() as conn:
            if not self.is_sqlite:
                await conn.execute(_SET_TENANT, {"tenant": tenant_id})
            yield TenantScope(conn, tenant_id)

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

    async def dispose(self) -> None:
        """Close every pooled connection."""
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
        # IMMEDIATE: take the write lock up front, so a transaction that reads and then writes
        # waits for another process's writer (busy_timeout) instead of failing midway.
        conn.exec_driver_sql("BEGIN IMMEDIATE")
