"""ChannelRepository.reseal() beside a running server that edits channels (PostgreSQL).

The race: reseal reads a channel's token, a server saves new URLs for it and commits, reseal then
writes the old URLs re-sealed. Its write is conditional on the token it read, so the edit wins.
The edit is made at that exact moment by a sealer whose ``reseal`` (called between the read and
the write) runs it on a connection of its own in another thread, and commits it: no sleeps.

SQLite cannot interleave there: the re-sealing transaction holds the database's one write lock
from its start (BEGIN IMMEDIATE), so another process's edit waits for it and lands afterwards.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
import pytest_asyncio

from notifiers.channels import RESEAL_ATTEMPTS, ChannelRef, ChannelRepository, ResealReport
from notifiers.sealing import UrlSealer, generate_key
from storage.database import Database
from storage.tables import notification_channels
from storage.tenancy import TenantRepository
from tests.conftest import DbTarget, migrated_postgres
from tests.harness.postgres import PostgresServer

OLD, NEW = generate_key(), generate_key()
BEFORE = ["json://hooks.example.com/before-T0KEN"]
EDITED = ["json://hooks.example.com/edited-T0KEN"]

Edit = Callable[[Database], Awaitable[None]]


@pytest.fixture(scope="module")
def pg_target(postgres_server: PostgresServer) -> DbTarget:
    return migrated_postgres(postgres_server, prefix="rs")


@pytest_asyncio.fixture
async def db(pg_target: DbTarget) -> AsyncIterator[Database]:
    database = Database(pg_target.app_url, pool_size=2)
    yield database
    await database.dispose()


class EditingSealer(UrlSealer):
    """The rotating sealer ([NEW, OLD]); before re-sealing, it lets ``edits`` run one by one, each
    committed by a separate connection (another process, as far as the database can tell)."""

    def __init__(self, app_url: str, edits: list[Edit]) -> None:
        super().__init__([NEW, OLD])
        self._app_url = app_url
        self._edits = edits

    def reseal(self, token: str) -> str:
        if self._edits:
            edit = self._edits.pop(0)
            with ThreadPoolExecutor(1) as thread:
                thread.submit(asyncio.run, self._commit(edit)).result()
        return super().reseal(token)

    async def _commit(self, edit: Edit) -> None:
        other = Database(self._app_url, pool_size=1)
        try:
            await edit(other)
        finally:
            await other.dispose()


async def _channel(db: Database, tenant: str) -> str:
    async with db.platform() as conn:
        await TenantRepository(conn).create(tenant, name=tenant)
    async with db.tenant(tenant) as scope:
        channel = await ChannelRepository(scope, UrlSealer([OLD])).create("ops", BEFORE)
    return channel.id


def _save_urls(tenant: str, channel_id: str, urls: list[str], keys: list[str]) -> Edit:
    """A server with ``keys`` saving new URLs for the channel (PATCH)."""

    async def edit(other: Database) -> None:
        async with other.tenant(tenant) as scope:
            await ChannelRepository(scope, UrlSealer(keys)).update(channel_id, urls=urls)

    return edit


async def _token(db: Database, tenant: str, channel_id: str) -> str | None:
    c = notification_channels.c
    async with db.tenant(tenant, readonly=True) as scope:
        stmt = scope.select(notification_channels, c.urls_sealed).where(c.id == channel_id)
        token: str | None = (await scope.conn.execute(stmt)).scalar_one_or_none()
    return token


async def _reseal(db: Database, sealer: UrlSealer, tenant: str) -> ResealReport:
    async with db.tenant(tenant) as scope:
        return await ChannelRepository(scope, sealer).reseal()


async def test_an_edit_by_a_server_with_the_new_key_is_not_overwritten(
    db: Database, pg_target: DbTarget
) -> None:
    channel_id = await _channel(db, "edited-new")
    sealer = EditingSealer(pg_target.app_url, [_save_urls("edited-new", channel_id, EDITED, [NEW, OLD])])
    report = await _reseal(db, sealer, "edited-new")
    token = await _token(db, "edited-new", channel_id)
    assert token is not None
    assert UrlSealer([NEW]).open(token) == EDITED  # the edit stands; it needed no re-sealing
    assert report == ResealReport(checked=1, resealed=0)


async def test_an_edit_by_a_server_still_on_the_old_key_is_resealed_as_edited(
    db: Database, pg_target: DbTarget
) -> None:
    channel_id = await _channel(db, "edited-old")
    sealer = EditingSealer(pg_target.app_url, [_save_urls("edited-old", channel_id, EDITED, [OLD])])
    report = await _reseal(db, sealer, "edited-old")
    token = await _token(db, "edited-old", channel_id)
    assert token is not None
    assert UrlSealer([NEW]).open(token) == EDITED  # read again, and the edited URLs re-sealed
    assert report == ResealReport(checked=1, resealed=1)


async def test_a_channel_deleted_meanwhile_stays_deleted(db: Database, pg_target: DbTarget) -> None:
    channel_id = await _channel(db, "deleted")

    async def delete(other: Database) -> None:
        async with other.tenant("deleted") as scope:
            await ChannelRepository(scope, UrlSealer([OLD])).delete(channel_id)

    report = await _reseal(db, EditingSealer(pg_target.app_url, [delete]), "deleted")
    assert await _token(db, "deleted", channel_id) is None
    assert report == ResealReport(checked=1, resealed=0)


async def test_a_channel_that_keeps_changing_is_left_as_saved_and_reported(
    db: Database, pg_target: DbTarget
) -> None:
    channel_id = await _channel(db, "busy")
    edits = [
        _save_urls("busy", channel_id, [f"json://hooks.example.com/edit-{i}"], [OLD])
        for i in range(RESEAL_ATTEMPTS)
    ]
    report = await _reseal(db, EditingSealer(pg_target.app_url, edits), "busy")
    token = await _token(db, "busy", channel_id)
    assert token is not None
    assert UrlSealer([OLD]).open(token) == [f"json://hooks.example.com/edit-{RESEAL_ATTEMPTS - 1}"]
    assert report == ResealReport(checked=1, resealed=0, contested=(ChannelRef(channel_id, "ops"),))
