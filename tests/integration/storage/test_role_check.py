"""Start-up refuses a PostgreSQL role that would bypass row-level security."""

from __future__ import annotations

import asyncio

import pytest

from model.errors import ConfigurationError
from storage.database import Database
from tests.conftest import DbTarget, migrated_postgres
from tests.harness.postgres import PostgresServer


async def test_app_role_is_accepted(db_target: DbTarget) -> None:
    db = Database(db_target.app_url)
    try:
        await db.assert_isolating_role()
    finally:
        await db.dispose()


async def test_owner_and_superuser_are_refused(postgres_server: PostgresServer) -> None:
    target = await asyncio.to_thread(migrated_postgres, postgres_server, "rc")
    superuser = postgres_server.superuser_dsn().replace("postgresql://", "postgresql+asyncpg://", 1)
    for url, reason in ((target.owner_url, "owns .* table"), (superuser, "is a superuser")):
        db = Database(url)
        try:
            with pytest.raises(ConfigurationError, match=reason):
                await db.assert_isolating_role()
        finally:
            await db.dispose()
