"""Row-level security holds on its own: raw SQL as the application role, no repository layer.

A fresh migrated database gets tenants A and B and one row of A in every tenant-owned table. Then,
connected as the application role (what the server uses): B, or no tenant at all, sees none of those
rows, cannot change or delete them, and cannot write rows for A; the tenant setting does not outlive
its transaction; and the role itself cannot get around RLS.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest
import pytest_asyncio

from storage.tables import tenant_owned_tables
from tests.conftest import DbTarget, migrated_postgres
from tests.harness.postgres import PostgresServer

TENANT_A = "tenant-a"
TENANT_B = "tenant-b"
NOW = datetime.now(UTC)
RLS_VIOLATION = "row-level security"


def rows_of(tenant: str, tag: str) -> dict[str, dict[str, Any]]:
    """One row per tenant-owned table, in foreign-key order; ``tag`` makes the keys unique."""
    return {
        "device_types": {
            "tenant_id": tenant,
            "id": f"type-{tag}",
            "name": "Freezer",
            "description": "",
            "metrics": "[]",
            "inactivity_timeout_s": 180,
            "created_at": NOW,
            "updated_at": NOW,
        },
        "devices": {
            "tenant_id": tenant,
            "id": f"dev-{tag}",
            "name": "Freezer 1",
            "type_id": "type-1",
            "labels": '{"region": "north"}',
            "attributes": "{}",
            "status": "unknown",
            "last_seen_at": None,
            "status_changed_at": None,
            "created_at": NOW,
            "updated_at": NOW,
        },
        "device_labels": {
            "tenant_id": tenant,
            "device_id": "dev-1",
            "key": f"region-{tag}",
            "value": "north",
        },
        "device_credentials": {
            "tenant_id": tenant,
            "id": f"cred_{tag}",
            "device_id": "dev-1",
            "secret_hash": "0" * 64,
            "created_at": NOW,
            "revoked_at": None,
        },
        "device_bindings": {  # one per device: the rows for A's "dev-1" differ in tenant only
            "tenant_id": tenant,
            "device_id": "dev-1",
            "kind": "modbus",
            "config": '{"unit": 1}',
            "created_at": NOW,
            "updated_at": NOW,
        },
        "dead_letters": {  # the id is a sequence
            "tenant_id": tenant,
            "device_id": "dev-1",
            "reason": "malformed",
            "detail": "not JSON",
            "source_kind": "mqtt",
            "source_instance": "broker-1",
            "payload": b"\x00garbage",
            "received_at": NOW,
        },
        "users": {
            "tenant_id": tenant,
            "id": f"usr_{tag}",
            "email": f"user-{tag}@example.com",
            "display_name": "User",
            "role": "admin",
            "password_hash": "not-a-real-hash",
            "disabled": False,
            "created_at": NOW,
            "updated_at": NOW,
        },
        "api_tokens": {
            "tenant_id": tenant,
            "id": f"tok_{tag}",
            "name": "token",
            "secret_hash": "0" * 64,
            "scopes": '["devices:read"]',
            "user_id": None,
            "created_at": NOW,
            "expires_at": None,
            "revoked_at": None,
            "last_used_at": None,
        },
        "alarms": {
            "tenant_id": tenant,
            "id": f"alm_{tag}",
            "rule_id": "rul_1",
            "device_id": "dev-1",
            "alarm_type": f"too-warm-{tag}",  # one active alarm per rule, device and type
            "severity": "major",
            "message": "",
            "raise_count": 1,
            "raised_at": NOW,
            "last_raised_at": NOW,
            "acknowledged_at": None,
            "acknowledged_by": None,
            "cleared_at": None,
            "cleared_by": None,
            "updated_at": NOW,
        },
        "alarm_events": {  # the id is a sequence
            "tenant_id": tenant,
            "alarm_id": "alm_1",
            "kind": "raised",
            "at": NOW,
            "actor": None,
            "severity": "major",
            "message": "",
        },
        "rules": {
            "tenant_id": tenant,
            "id": f"rul_{tag}",
            "name": "Freezer too warm",
            "enabled": True,
            "latest_version": 1,
            "published_version": None,
            "invalid_reason": None,
            "last_fired_at": None,
            "created_at": NOW,
            "updated_at": NOW,
        },
        "rule_versions": {
            "tenant_id": tenant,
            "rule_id": "rul_1",
            "version": int(tag) + 10 if tag.isdigit() else 10,
            "document": '{"name": "x"}',
            "author": "usr_1",
            "comment": "",
            "created_at": NOW,
        },
        "rule_state": {
            "tenant_id": tenant,
            "rule_id": "rul_1",
            "device_id": f"dev-{tag}",
            "state": "{}",
            "wake_at": None,
            "updated_at": NOW,
        },
        "rule_traces": {  # the id is a sequence
            "tenant_id": tenant,
            "rule_id": "rul_1",
            "rule_version": 1,
            "device_id": "dev-1",
            "at": NOW,
            "event": "reading",
            "outcome": "false",
            "steps": "[]",
            "actions": "[]",
        },
        "notification_channels": {
            "tenant_id": tenant,
            "id": f"chn_{tag}",
            "name": f"night-shift-{tag}",
            "description": "",
            "urls_sealed": "gAAAA-sealed",
            "previews": "[]",
            "quiet_hours": None,
            "created_at": NOW,
            "updated_at": NOW,
        },
        "notification_policies": {  # one row per tenant: the rows for A differ in tenant only
            "tenant_id": tenant,
            "policy": "{}",
            "updated_at": NOW,
        },
        "notification_deliveries": {
            "tenant_id": tenant,
            "id": f"ntf_{tag}",
            "channel_id": "chn_1",
            "channel_name": "night-shift",
            "rule_id": "rul_1",
            "device_id": "dev-1",
            "alarm_type": "too-warm",
            "severity": "major",
            "kind": "fired",
            "dedup_key": "rul_1:dev-1:too-warm",
            "title": "Too warm",
            "body": "",
            "status": "sent",
            "attempts": 1,
            "last_error": None,
            "resent": 0,
            "created_at": NOW,
            "updated_at": NOW,
            "sent_at": NOW,
        },
    }


TABLES = list(rows_of(TENANT_A, "1"))
# A text column of each table that an attacker would like to change.
MUTABLE_COLUMN = {
    "device_types": "name",
    "devices": "name",
    "device_labels": "value",
    "device_credentials": "secret_hash",
    "device_bindings": "kind",
    "dead_letters": "detail",
    "users": "display_name",
    "api_tokens": "name",
    "alarms": "message",
    "alarm_events": "message",
    "rules": "name",
    "rule_versions": "comment",
    "rule_state": "device_id",
    "rule_traces": "outcome",
    "notification_channels": "urls_sealed",
    "notification_policies": "policy",
    "notification_deliveries": "status",
}


def asyncpg_dsn(sqlalchemy_url: str) -> str:
    """The asyncpg form of a ``postgresql+asyncpg://`` URL."""
    return sqlalchemy_url.replace("postgresql+asyncpg://", "postgresql://", 1)


@asynccontextmanager
async def connect(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """One asyncpg connection, always closed."""
    conn = await asyncpg.connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()


async def set_tenant(conn: asyncpg.Connection, tenant: str) -> None:
    """Set the tenant for the current transaction only, as storage.database does."""
    await conn.execute("SELECT set_config('app.tenant_id', $1, true)", tenant)


async def insert(conn: asyncpg.Connection, table: str, row: dict[str, Any]) -> str:
    """INSERT ``row`` into ``table``; the command status."""
    columns = ", ".join(row)
    params = ", ".join(f"${i}" for i in range(1, len(row) + 1))
    status: str = await conn.execute(f"INSERT INTO {table} ({columns}) VALUES ({params})", *row.values())
    return status


async def count_as(conn: asyncpg.Connection, tenant: str, table: str) -> int:
    """Rows of ``table`` visible with ``tenant`` set, in a transaction of its own."""
    async with conn.transaction():
        await set_tenant(conn, tenant)
        rows = await conn.fetch(f"SELECT * FROM {table}")
    return len(rows)


@dataclass(frozen=True, slots=True)
class RlsDb:
    """The fresh database as the application role sees it."""

    app_dsn: str
    app_role: str


@pytest.fixture(scope="module")
def rls_target(postgres_server: PostgresServer) -> DbTarget:
    """A fresh migrated database with its own owner and application roles."""
    return migrated_postgres(postgres_server, prefix="rls")


@pytest_asyncio.fixture(scope="module")
async def rls_db(rls_target: DbTarget) -> RlsDb:
    """Tenants A and B, and one row of A in every tenant-owned table (inserted as the app role)."""
    assert rls_target.app_role is not None
    db = RlsDb(asyncpg_dsn(rls_target.app_url), rls_target.app_role)
    async with connect(db.app_dsn) as conn:
        for tenant in (TENANT_A, TENANT_B):
            await conn.execute(
                "INSERT INTO tenants (id, name, status, timezone, created_at, updated_at) "
                "VALUES ($1, $1, 'active', 'UTC', $2, $2)",
                tenant,
                NOW,
            )
        async with conn.transaction():
            await set_tenant(conn, TENANT_A)
            for table, row in rows_of(TENANT_A, "1").items():
                assert await insert(conn, table, row) == "INSERT 0 1"
    return db


def test_every_tenant_table_is_covered() -> None:
    """A new tenant-owned table needs a row here, so that these tests cover it."""
    declared = {t.name for t in tenant_owned_tables()}
    assert sorted(declared - set(TABLES)) == [], "tenant tables without a row in rows_of()"
    assert sorted(set(TABLES) - declared) == [], "rows_of() names tables that are not tenant-owned"
    assert set(MUTABLE_COLUMN) == set(TABLES)


@pytest.mark.parametrize("table", TABLES)
async def test_owner_tenant_sees_its_row(rls_db: RlsDb, table: str) -> None:
    """The baseline that makes the zero counts below meaningful."""
    async with connect(rls_db.app_dsn) as conn:
        assert await count_as(conn, TENANT_A, table) == 1


@pytest.mark.parametrize("table", TABLES)
async def test_other_tenant_sees_no_rows(rls_db: RlsDb, table: str) -> None:
    async with connect(rls_db.app_dsn) as conn:
        assert await count_as(conn, TENANT_B, table) == 0
        async with conn.transaction():
            await set_tenant(conn, TENANT_B)
            # Naming A explicitly does not help either.
            assert await conn.fetch(f"SELECT * FROM {table} WHERE tenant_id = $1", TENANT_A) == []


@pytest.mark.parametrize("table", TABLES)
async def test_no_tenant_sees_no_rows(rls_db: RlsDb, table: str) -> None:
    async with connect(rls_db.app_dsn) as conn:
        assert await conn.fetchval("SELECT current_setting('app.tenant_id', true)") in (None, "")
        assert await conn.fetch(f"SELECT * FROM {table}") == []


@pytest.mark.parametrize("table", TABLES)
async def test_other_tenant_cannot_update_or_delete(rls_db: RlsDb, table: str) -> None:
    column = MUTABLE_COLUMN[table]
    async with connect(rls_db.app_dsn) as conn:
        tx = conn.transaction()
        await tx.start()
        try:
            await set_tenant(conn, TENANT_B)
            assert await conn.execute(f"UPDATE {table} SET {column} = 'hijacked'") == "UPDATE 0"
            assert (
                await conn.execute(f"UPDATE {table} SET {column} = 'hijacked' WHERE tenant_id = $1", TENANT_A)
                == "UPDATE 0"
            )
            assert await conn.execute(f"DELETE FROM {table}") == "DELETE 0"
            # Still in the same transaction: A's row is there, untouched.
            await set_tenant(conn, TENANT_A)
            assert await conn.fetchval(f"SELECT {column} FROM {table}") != "hijacked"
            assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 1
        finally:
            await tx.rollback()


@pytest.mark.parametrize("table", TABLES)
async def test_other_tenant_cannot_insert_rows_of_a(rls_db: RlsDb, table: str) -> None:
    row = rows_of(TENANT_A, "2")[table]
    async with connect(rls_db.app_dsn) as conn:
        with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError, match=RLS_VIOLATION):
            async with conn.transaction():
                await set_tenant(conn, TENANT_B)
                await insert(conn, table, row)
        assert await count_as(conn, TENANT_A, table) == 1


@pytest.mark.parametrize("table", TABLES)
async def test_no_tenant_cannot_insert(rls_db: RlsDb, table: str) -> None:
    row = rows_of(TENANT_A, "3")[table]
    async with connect(rls_db.app_dsn) as conn:
        with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError, match=RLS_VIOLATION):
            async with conn.transaction():
                await insert(conn, table, row)


@pytest.mark.parametrize("table", TABLES)
async def test_rows_cannot_be_handed_to_another_tenant(rls_db: RlsDb, table: str) -> None:
    async with connect(rls_db.app_dsn) as conn:
        with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError, match=RLS_VIOLATION):
            async with conn.transaction():
                await set_tenant(conn, TENANT_A)
                await conn.execute(f"UPDATE {table} SET tenant_id = $1", TENANT_B)
        assert await count_as(conn, TENANT_A, table) == 1


async def test_tenant_setting_does_not_outlive_its_transaction(rls_db: RlsDb) -> None:
    async with connect(rls_db.app_dsn) as conn:
        async with conn.transaction():
            await set_tenant(conn, TENANT_A)
            assert await conn.fetchval("SELECT count(*) FROM users") == 1
        # Committed: the next transaction on the same connection has no tenant.
        assert await conn.fetchval("SELECT current_setting('app.tenant_id', true)") in (None, "")
        assert await conn.fetchval("SELECT count(*) FROM users") == 0

        tx = conn.transaction()
        await tx.start()
        await set_tenant(conn, TENANT_A)
        await tx.rollback()
        assert await conn.fetchval("SELECT count(*) FROM users") == 0

        # Outside a transaction block the setting lives for that one statement only.
        await set_tenant(conn, TENANT_A)
        assert await conn.fetchval("SELECT count(*) FROM users") == 0


async def test_app_role_cannot_bypass_rls(rls_db: RlsDb) -> None:
    async with connect(rls_db.app_dsn) as conn:
        role = await conn.fetchrow(
            "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = $1", rls_db.app_role
        )
        assert role is not None
        assert role["rolsuper"] is False, "the application role is a superuser"
        assert role["rolbypassrls"] is False, "the application role has BYPASSRLS"
        owned = await conn.fetch("SELECT tablename FROM pg_tables WHERE tableowner = $1", rls_db.app_role)
        assert [r["tablename"] for r in owned] == [], "the application role owns tables"
        # Nor may it act as an owner: membership would let it SET ROLE and turn RLS off.
        owners = await conn.fetch(
            "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public' "
            "AND pg_has_role($1, tableowner, 'MEMBER')",
            rls_db.app_role,
        )
        assert [r["tableowner"] for r in owners] == [], "the application role is a member of a table owner"


@pytest.mark.parametrize(
    "statement",
    [
        "ALTER TABLE {table} DISABLE ROW LEVEL SECURITY",
        "ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY",
        "DROP POLICY tenant_isolation ON {table}",
        "CREATE POLICY open_door ON {table} USING (true)",
    ],
    ids=["disable", "no-force", "drop-policy", "create-policy"],
)
async def test_app_role_cannot_change_rls(rls_db: RlsDb, statement: str) -> None:
    async with connect(rls_db.app_dsn) as conn:
        for table in TABLES:
            with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError, match="must be owner"):
                await conn.execute(statement.format(table=table))


async def test_row_security_off_errors_instead_of_leaking(rls_db: RlsDb) -> None:
    async with connect(rls_db.app_dsn) as conn:
        await conn.execute("SET row_security = off")
        for table in TABLES:
            with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError, match="row-level security"):
                await conn.fetch(f"SELECT * FROM {table}")
