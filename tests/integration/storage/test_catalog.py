"""The PostgreSQL catalog of a freshly migrated database: every tenant table is row-level secured.

A table with a ``tenant_id`` column must have RLS enabled and forced and a policy on
``app.tenant_id``; no permissive policy may let rows through without that filter (permissive
policies are OR-ed together). Tables without ``tenant_id`` are platform tables, and that set is
pinned here: adding one is a conscious decision. The checks return the offending tables, so a
failure names them; the last tests prove the checks do fail on a badly secured table.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import NamedTuple

import asyncpg  # type: ignore[import-untyped]
import pytest

from storage.tables import PLATFORM_TABLES, tenant_owned_tables
from tests.conftest import migrated_postgres
from tests.harness.postgres import PostgresServer

TENANT_SETTING = "app.tenant_id"
EXPECTED_PLATFORM_TABLES = frozenset({"tenants", "operator_tokens", "alembic_version"})


class Offence(NamedTuple):
    """A tenant table and what is wrong with its row-level security."""

    table: str
    reason: str


@pytest.fixture(scope="module")
def owner_dsn(postgres_server: PostgresServer) -> str:
    """The table owner's asyncpg DSN of a fresh migrated database."""
    target = migrated_postgres(postgres_server, prefix="cat")
    return target.owner_url.replace("postgresql+asyncpg://", "postgresql://", 1)


@asynccontextmanager
async def connect(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """One asyncpg connection, always closed."""
    conn = await asyncpg.connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()


@asynccontextmanager
async def rolled_back(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection inside a transaction that is always rolled back (DDL included)."""
    async with connect(dsn) as conn:
        tx = conn.transaction()
        await tx.start()
        try:
            yield conn
        finally:
            await tx.rollback()


async def tenant_tables(conn: asyncpg.Connection) -> set[str]:
    """Tables (plain or partitioned) in schema public with a ``tenant_id`` column."""
    rows = await conn.fetch(
        """
        SELECT c.relname
        FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_attribute a ON a.attrelid = c.oid
        WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
          AND a.attname = 'tenant_id' AND NOT a.attisdropped
        """
    )
    return {r["relname"] for r in rows}


async def tables_without_tenant_id(conn: asyncpg.Connection) -> set[str]:
    """Tables in schema public without a ``tenant_id`` column: the platform tables."""
    rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return {r["tablename"] for r in rows} - await tenant_tables(conn)


async def unsecured_tenant_tables(conn: asyncpg.Connection) -> list[Offence]:
    """Every tenant table whose row-level security is missing, unforced or not on ``app.tenant_id``."""
    tables = await conn.fetch(
        """
        SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity
        FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND c.relname = ANY($1::text[])
        """,
        sorted(await tenant_tables(conn)),
    )
    policies = await conn.fetch(
        "SELECT tablename, policyname, permissive, qual, with_check "
        "FROM pg_policies WHERE schemaname = 'public'"
    )

    def filters(expression: str | None) -> bool:
        return expression is not None and TENANT_SETTING in expression

    offences: list[Offence] = []
    for table in tables:
        name = table["relname"]
        if not table["relrowsecurity"]:
            offences.append(Offence(name, "row level security is not enabled"))
        if not table["relforcerowsecurity"]:
            offences.append(Offence(name, "row level security is not forced (the owner bypasses it)"))
        own = [p for p in policies if p["tablename"] == name]
        if not any(filters(p["qual"]) for p in own):
            offences.append(Offence(name, f"no policy filters on {TENANT_SETTING}"))
        for policy in own:
            # Permissive policies are OR-ed: one without the tenant filter opens the table.
            # (A missing WITH CHECK falls back to the USING expression.)
            checks = [policy["qual"]] + ([policy["with_check"]] if policy["with_check"] is not None else [])
            if policy["permissive"] == "PERMISSIVE" and not all(filters(c) for c in checks):
                offences.append(
                    Offence(
                        name, f"permissive policy {policy['policyname']} does not filter on {TENANT_SETTING}"
                    )
                )
    return sorted(offences)


async def test_every_tenant_table_is_row_level_secured(owner_dsn: str) -> None:
    async with connect(owner_dsn) as conn:
        assert await tenant_tables(conn), "no tenant tables found: is the database migrated?"
        offences = await unsecured_tenant_tables(conn)
    assert offences == [], "tenant tables without proper row-level security:\n" + "\n".join(
        f"  {o.table}: {o.reason}" for o in offences
    )


async def test_platform_tables_are_exactly_the_known_ones(owner_dsn: str) -> None:
    async with connect(owner_dsn) as conn:
        platform = await tables_without_tenant_id(conn)
    assert sorted(platform - EXPECTED_PLATFORM_TABLES) == [], (
        "new tables without tenant_id (platform tables?)"
    )
    assert sorted(EXPECTED_PLATFORM_TABLES - platform) == [], "expected platform tables are missing"
    assert PLATFORM_TABLES | {"alembic_version"} == EXPECTED_PLATFORM_TABLES


async def test_declared_tenant_tables_match_the_database(owner_dsn: str) -> None:
    async with connect(owner_dsn) as conn:
        in_database = await tenant_tables(conn)
    declared = {t.name for t in tenant_owned_tables()}
    assert sorted(in_database - declared) == [], "tenant tables the code does not declare"
    assert sorted(declared - in_database) == [], "declared tenant tables missing from the database"


_POLICY = f"USING (tenant_id = current_setting('{TENANT_SETTING}', true))"


@pytest.mark.parametrize(
    ("setup", "reasons"),
    [
        pytest.param([], ["not enabled", "not forced", "no policy"], id="no-rls"),
        pytest.param(
            ["ENABLE ROW LEVEL SECURITY", f"CREATE POLICY p ON {{t}} {_POLICY}"],
            ["not forced"],
            id="not-forced",
        ),
        pytest.param(
            ["ENABLE ROW LEVEL SECURITY", "FORCE ROW LEVEL SECURITY"], ["no policy"], id="no-policy"
        ),
        pytest.param(
            ["ENABLE ROW LEVEL SECURITY", "FORCE ROW LEVEL SECURITY", "CREATE POLICY p ON {t} USING (true)"],
            ["no policy", "permissive policy p"],
            id="policy-without-tenant",
        ),
        pytest.param(
            [
                "ENABLE ROW LEVEL SECURITY",
                "FORCE ROW LEVEL SECURITY",
                f"CREATE POLICY p ON {{t}} {_POLICY}",
                "CREATE POLICY open_door ON {t} USING (true)",
            ],
            ["permissive policy open_door"],
            id="extra-open-policy",
        ),
        pytest.param(
            [
                "ENABLE ROW LEVEL SECURITY",
                "FORCE ROW LEVEL SECURITY",
                f"CREATE POLICY p ON {{t}} {_POLICY} WITH CHECK (true)",
            ],
            ["permissive policy p"],
            id="unchecked-writes",
        ),
    ],
)
async def test_the_check_reports_a_badly_secured_table(
    owner_dsn: str, setup: list[str], reasons: list[str]
) -> None:
    table = "rogue_readings"
    async with rolled_back(owner_dsn) as conn:
        await conn.execute(f"CREATE TABLE {table} (tenant_id varchar(63) NOT NULL, value text)")
        for clause in setup:
            statement = clause.format(t=table)
            await conn.execute(
                statement if statement.startswith("CREATE") else f"ALTER TABLE {table} {statement}"
            )
        offences = await unsecured_tenant_tables(conn)
    assert {o.table for o in offences} == {table}, offences
    found = [o.reason for o in offences]
    assert len(found) == len(reasons), found
    for expected in reasons:
        assert any(expected in reason for reason in found), f"{expected!r} not in {found}"


async def test_the_check_reports_a_new_platform_table(owner_dsn: str) -> None:
    async with rolled_back(owner_dsn) as conn:
        await conn.execute("CREATE TABLE settings_cache (key text PRIMARY KEY, value text)")
        platform = await tables_without_tenant_id(conn)
    assert platform - EXPECTED_PLATFORM_TABLES == {"settings_cache"}
