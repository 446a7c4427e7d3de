"""Migrations create exactly the schema the code declares, and can be walked down and up."""

from __future__ import annotations

import asyncio
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from storage import migrate
from storage.tables import metadata
from tests.conftest import DbTarget


def _diff(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, metadata))


async def _schema_diff(url: str) -> list[Any]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(_diff)
    finally:
        await engine.dispose()


async def test_migrated_schema_matches_the_tables(db_target: DbTarget) -> None:
    diff = await _schema_diff(db_target.owner_url)
    assert diff == [], f"migrations and storage/tables.py disagree: {diff}"


async def test_downgrade_to_base_and_upgrade_again(tmp_path_factory: Any) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('mig') / 'db.sqlite'}"
    await asyncio.to_thread(migrate.upgrade, url)
    await asyncio.to_thread(migrate.downgrade, url, "base")
    await asyncio.to_thread(migrate.upgrade, url)
    assert await _schema_diff(url) == []
