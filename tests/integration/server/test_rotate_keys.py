"""``flatgigs notifications rotate-keys`` as an operator runs it: a real process, SQLite and PostgreSQL.

Each test gets a database of its own, because the command works on every tenant there is.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography.fernet import Fernet

from notifiers.channels import ChannelRepository
from notifiers.sealing import UnsealError, UrlSealer, derive_key, generate_key
from storage.database import Database
from storage.tables import notification_channels
from storage.tenancy import TenantRepository
from tests.conftest import DbTarget, migrated_postgres, migrated_sqlite

FLATGIGS = [sys.executable, "-m", "server"]
SECRET = "pw-5e1d77c0a2"
T = TypeVar("T")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> DbTarget:
    """A fresh, migrated database (the application role is subject to row-level security)."""
    if request.param == "sqlite":
        return migrated_sqlite(tmp_path)
    return migrated_postgres(request.getfixturevalue("postgres_server"), prefix="rot")


def flatgigs(
    target: DbTarget, data_dir: Path, *args: str, keys: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the CLI against ``target`` with FLATGIGS_NOTIFY_KEYS set to ``keys`` (newest first)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLATGIGS_")}
    env.update(
        FLATGIGS_DATA_DIR=str(data_dir),
        FLATGIGS_DATABASE_URL=target.app_url,
        FLATGIGS_MIGRATION_DATABASE_URL=target.owner_url,
        COLUMNS="200",
        NO_COLOR="1",
    )
    if target.app_role is not None:
        env["FLATGIGS_DB_APP_ROLE"] = target.app_role
    if keys is not None:
        env["FLATGIGS_NOTIFY_KEYS"] = ",".join(keys)
    return subprocess.run(
        [*FLATGIGS, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def on_db(target: DbTarget, work: Callable[[Database], Awaitable[T]]) -> T:
    """Run ``work`` with a connection of the application role, then close it."""

    async def main() -> T:
        db = Database(target.app_url, pool_size=1)
        try:
            return await work(db)
        finally:
            await db.dispose()

    return asyncio.run(main())


@dataclass(frozen=True, slots=True)
class Sealed:
    """A channel as stored: what the test sealed into it and the row's token and timestamp."""

    tenant: str
    id: str
    urls: list[str]
    token: str
    updated_at: datetime


def urls_of(name: str) -> list[str]:
    return [
        f"json://ops:{SECRET}@hooks.example.com/{name}-T0KEN",
        f"mailto://smtp.example.com/{name}@x.example?from=fg@x.example",
    ]


def seed(target: DbTarget, channels: dict[str, list[tuple[str, UrlSealer]]]) -> None:
    """Create the tenants and, in each, channels (name, sealer) sealed with the given sealer."""

    async def work(db: Database) -> None:
        for tenant, named in channels.items():
            async with db.platform() as conn:
                await TenantRepository(conn).create(tenant, name=tenant)
            for name, sealer in named:
                async with db.tenant(tenant) as scope:
                    await ChannelRepository(scope, sealer).create(name, urls_of(name), allow_private=True)

    on_db(target, work)


def stored(target: DbTarget, tenants: list[str]) -> dict[str, Sealed]:
    """Every channel of ``tenants`` by name, as stored (read under each tenant's own scope)."""

    async def work(db: Database) -> dict[str, Sealed]:
        found: dict[str, Sealed] = {}
        c = notification_channels.c
        for tenant in tenants:
            async with db.tenant(tenant, readonly=True) as scope:
                stmt = scope.select(notification_channels, c.id, c.name, c.urls_sealed, c.updated_at)
                for row in await scope.conn.execute(stmt):
                    urls = urls_of(row.name)
                    found[row.name] = Sealed(tenant, row.id, urls, row.urls_sealed, row.updated_at)
        return found

    return on_db(target, work)


def tokens(channels: dict[str, Sealed]) -> dict[str, str]:
    return {name: channel.token for name, channel in channels.items()}


def test_rotate_keys_reseals_every_tenants_channels_under_the_new_key(
    target: DbTarget, tmp_path: Path
) -> None:
    old, new = generate_key(), generate_key()
    by_old, by_new = UrlSealer([old]), UrlSealer([new])
    tenants = ["acme", "globex", "initech"]
    seed(
        target,
        {
            "acme": [("ops-mail", by_old), ("night-shift", by_old), ("already-new", by_new)],
            "globex": [("alerts", by_old), ("pager", by_old)],
            "initech": [],  # a tenant without channels counts as a tenant, nothing more
        },
    )
    before = stored(target, tenants)
    assert len(before) == 5

    # The dry run counts what the real run will do and changes nothing.
    dry = flatgigs(target, tmp_path, "notifications", "rotate-keys", "--dry-run", keys=[new, old])
    assert dry.returncode == 0, dry.stderr
    assert "tenants: 3, channels checked: 5, would be re-sealed: 4" in dry.stdout
    assert "dry run: nothing was changed" in dry.stdout
    assert stored(target, tenants) == before

    run = flatgigs(target, tmp_path, "notifications", "rotate-keys", "--no-progress", keys=[new, old])
    assert run.returncode == 0, run.stderr
    assert "tenants: 3, channels checked: 5, re-sealed: 4" in run.stdout
    assert "now sealed with the newest key" in run.stdout
    after = stored(target, tenants)
    for name, channel in after.items():
        assert by_new.open(channel.token) == channel.urls, name  # the new key alone opens them all
        assert not UrlSealer([new, old]).needs_reseal(channel.token)
        assert channel.updated_at == before[name].updated_at  # the channel as shown did not change
        assert channel.tenant == before[name].tenant and channel.id == before[name].id
    assert after["already-new"].token == before["already-new"].token  # left alone
    for name in ("ops-mail", "night-shift", "alerts", "pager"):
        with pytest.raises(UnsealError):
            by_old.open(after[name].token)
    for output in (dry.stdout + dry.stderr, run.stdout + run.stderr):
        assert SECRET not in output and old not in output and new not in output

    # Idempotent: a second run finds nothing to do and says so (with the bar forced on, too).
    again = flatgigs(target, tmp_path, "notifications", "rotate-keys", "--progress", keys=[new, old])
    assert again.returncode == 0, again.stderr
    assert "tenants: 3, channels checked: 5, re-sealed: 0" in again.stdout
    assert "already sealed with the newest key: nothing to re-seal" in again.stdout
    assert "re-sealing" in again.stderr and "3/3 tenants" in again.stderr
    assert stored(target, tenants) == after
    # Once it has said so, the old key can go: the new key alone still opens every channel.
    alone = flatgigs(target, tmp_path, "notifications", "rotate-keys", "--dry-run", keys=[new])
    assert alone.returncode == 0 and "would be re-sealed: 0" in alone.stdout, alone.stderr


def test_a_channel_no_configured_key_opens_is_reported_and_the_others_are_still_resealed(
    target: DbTarget, tmp_path: Path
) -> None:
    lost, old, new = generate_key(), generate_key(), generate_key()
    tenants = ["alpha", "beta"]
    seed(
        target,
        {
            # "alpha" comes first: the channel that cannot be opened does not stop the others.
            "alpha": [("forgotten", UrlSealer([lost])), ("ops-mail", UrlSealer([old]))],
            "beta": [("alerts", UrlSealer([old]))],
        },
    )
    before = stored(target, tenants)
    forgotten = before["forgotten"]

    dry = flatgigs(target, tmp_path, "notifications", "rotate-keys", "--dry-run", keys=[new, old])
    assert dry.returncode == 1
    assert "tenants: 2, channels checked: 3, would be re-sealed: 2" in dry.stdout
    assert f"tenant alpha: channel {forgotten.id} ('forgotten')" in dry.stderr
    assert stored(target, tenants) == before

    run = flatgigs(target, tmp_path, "notifications", "rotate-keys", keys=[new, old])
    assert run.returncode == 1
    assert "tenants: 2, channels checked: 3, re-sealed: 2" in run.stdout
    assert (
        f"tenant alpha: channel {forgotten.id} ('forgotten') is sealed with a key that is not in "
        "FLATGIGS_NOTIFY_KEYS; left unchanged"
    ) in run.stderr
    assert "1 channel(s) cannot be opened with any configured key" in run.stdout
    assert "do not drop any old key yet" in run.stdout
    assert "Traceback" not in run.stderr
    for output in (dry.stdout + dry.stderr, run.stdout + run.stderr):
        for secret in (SECRET, "T0KEN", lost, old, new, forgotten.token):
            assert secret not in output
    after = stored(target, tenants)
    assert after["forgotten"] == forgotten  # untouched: the key it needs still opens it
    assert UrlSealer([lost]).open(after["forgotten"].token) == forgotten.urls
    for name in ("ops-mail", "alerts"):
        assert UrlSealer([new]).open(after[name].token) == after[name].urls

    # The remedy it names: list the missing key (after the newest) and run it again.
    fixed = flatgigs(target, tmp_path, "notifications", "rotate-keys", keys=[new, old, lost])
    assert fixed.returncode == 0, fixed.stderr
    assert "tenants: 2, channels checked: 3, re-sealed: 1" in fixed.stdout
    for channel in stored(target, tenants).values():
        assert UrlSealer([new]).open(channel.token) == channel.urls


def test_moving_off_the_derived_default_key(tmp_path: Path) -> None:
    """A default install seals with a key derived from the secret key; derived-key prints it so
    it can be listed after a first key of one's own."""
    target = migrated_sqlite(tmp_path)
    data_dir = tmp_path / "data"
    derived_key = flatgigs(target, data_dir, "notifications", "derived-key")
    assert derived_key.returncode == 0, derived_key.stderr
    derived = derived_key.stdout.strip()
    assert derived == derive_key((data_dir / "secret_key").read_text().strip())
    seed(target, {"acme": [("ops-mail", UrlSealer([derived]))]})

    unset = flatgigs(target, data_dir, "notifications", "rotate-keys")
    assert unset.returncode == 0, unset.stderr
    assert "FLATGIGS_NOTIFY_KEYS is not set" in unset.stderr
    assert "nothing to re-seal" in unset.stdout

    new = flatgigs(target, data_dir, "notifications", "new-key").stdout.strip()
    Fernet(new.encode())  # a valid key
    assert new != flatgigs(target, data_dir, "notifications", "new-key").stdout.strip()
    run = flatgigs(target, data_dir, "notifications", "rotate-keys", keys=[new, derived])
    assert run.returncode == 0, run.stderr
    assert "tenants: 1, channels checked: 1, re-sealed: 1" in run.stdout
    (channel,) = stored(target, ["acme"]).values()
    assert UrlSealer([new]).open(channel.token) == channel.urls


def test_bad_keys_fail_clearly_and_help_is_useful(tmp_path: Path) -> None:
    target = migrated_sqlite(tmp_path)
    bad = flatgigs(target, tmp_path, "notifications", "rotate-keys", keys=["not-a-key"])
    assert bad.returncode == 2
    assert "FLATGIGS_NOTIFY_KEYS" in bad.stderr and "Traceback" not in bad.stderr
    out = flatgigs(target, tmp_path, "notifications", "rotate-keys", "--help").stdout
    assert "--dry-run" in out and "--no-progress" in out and "FLATGIGS_NOTIFY_KEYS" in out
