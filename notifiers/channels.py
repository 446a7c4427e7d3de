"""Notification channels of a tenant: a name rules refer to, Apprise URLs sealed at rest, quiet hours.

URLs are checked when saved (Apprise must understand them; loopback and private targets are
refused unless FLATGIGS_ALLOW_PRIVATE_WEBHOOKS is on), sealed with the notify keys, and only
ever come back out of this module opened for delivery, never to the API.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from model.errors import ConflictError, InvalidInputError, NotFoundError
from model.ids import new_id
from notifiers import gateway
from notifiers.policy import QuietHours
from notifiers.sealing import UnsealError, UrlSealer
from storage.database import TenantScope
from storage.tables import notification_channels
from storage.types import utcnow

CHANNEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
MAX_URLS = 10
# How often reseal() tries one channel that keeps changing under it before leaving it to a re-run.
RESEAL_ATTEMPTS = 3
_UNSET: Any = object()


@dataclass(frozen=True, slots=True)
class UrlPreview:
    """What may be shown of one channel URL."""

    service: str
    preview: str


@dataclass(frozen=True, slots=True)
class Channel:
    """A channel as shown: its URLs only as previews."""

    id: str
    name: str
    description: str
    urls: tuple[UrlPreview, ...]
    quiet_hours: QuietHours | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class ChannelTarget:
    """A channel ready for delivery: its opened URLs (kept in memory only)."""

    tenant_id: str
    id: str
    name: str
    urls: tuple[str, ...]
    quiet_hours: QuietHours | None
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class SealedTarget:
    """A channel as read for delivery, its URLs still sealed: ``open`` makes the ChannelTarget."""

    tenant_id: str
    id: str
    name: str
    urls_sealed: str
    quiet_hours: QuietHours | None
    updated_at: datetime

    def open(self, sealer: UrlSealer) -> ChannelTarget:
        """The channel with its URLs opened (UnsealError when no configured key opens them)."""
        return ChannelTarget(
            tenant_id=self.tenant_id,
            id=self.id,
            name=self.name,
            urls=tuple(sealer.open(self.urls_sealed)),
            quiet_hours=self.quiet_hours,
            updated_at=self.updated_at,
        )


@dataclass(frozen=True, slots=True)
class ChannelRef:
    """A channel named in a report: its id and name, nothing secret."""

    id: str
    name: str


@dataclass(frozen=True, slots=True)
class ResealReport:
    """What ChannelRepository.reseal() did in one tenant."""

    checked: int
    """Channels looked at."""
    resealed: int
    """Channels re-sealed under the newest key (in a dry run: that would be)."""
    unopenable: tuple[ChannelRef, ...] = ()
    """Channels no configured key opens, left as they are."""
    contested: tuple[ChannelRef, ...] = ()
    """Channels edited again and again while being re-sealed, left for a re-run."""


def check_urls(urls: Sequence[str], *, allow_private: bool) -> list[gateway.ParsedUrl]:
    """Parse a channel's URLs; InvalidInputError naming ``urls[i]`` for the first bad one."""
    if not 1 <= len(urls) <= MAX_URLS:
        raise InvalidInputError(
            f"a channel has 1 to {MAX_URLS} URLs", errors=[{"loc": ["urls"], "msg": "1 to 10 URLs"}]
        )
    parsed = []
    for index, url in enumerate(urls):
        try:
            item = gateway.parse(url)
        except gateway.ChannelUrlProblem as exc:
            raise InvalidInputError(
                f"urls[{index}]: {exc}", errors=[{"loc": ["urls", index], "msg": str(exc)}]
            ) from exc
        if not allow_private:
            for host in item.hosts:
                if problem := gateway.private_address_problem(host):
                    msg = f"{problem}: private targets are not allowed (FLATGIGS_ALLOW_PRIVATE_WEBHOOKS)"
                    raise InvalidInputError(
                        f"urls[{index}]: {msg}", errors=[{"loc": ["urls", index], "msg": msg}]
                    )
        parsed.append(item)
    return parsed


def _channel(row: sa.Row[Any]) -> Channel:
    return Channel(
        id=row.id,
        name=row.name,
        description=row.description,
        urls=tuple(UrlPreview(p["service"], p["preview"]) for p in row.previews),
        quiet_hours=QuietHours.model_validate(row.quiet_hours) if row.quiet_hours else None,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _previews(parsed: Iterable[gateway.ParsedUrl]) -> list[dict[str, str]]:
    return [{"service": p.service, "preview": p.preview} for p in parsed]


class ChannelRepository:
    """The channels of the scope's tenant, inside the caller's transaction."""

    def __init__(self, scope: TenantScope, sealer: UrlSealer) -> None:
        self._scope = scope
        self._sealer = sealer

    async def list(self) -> list[Channel]:
        """Every channel, by name."""
        stmt = self._scope.select(notification_channels).order_by(notification_channels.c.name)
        return [_channel(r) for r in await self._scope.conn.execute(stmt)]

    async def get(self, channel_id: str) -> Channel:
        """The channel, or NotFoundError (also for another tenant's)."""
        return _channel(await self._row(channel_id))

    async def _row(self, channel_id: str) -> sa.Row[Any]:
        stmt = self._scope.select(notification_channels).where(notification_channels.c.id == channel_id)
        row: sa.Row[Any] | None = (await self._scope.conn.execute(stmt)).first()
        if row is None:
            raise NotFoundError("notification channel", channel_id)
        return row

    async def sealed_targets(self) -> dict[str, SealedTarget]:
        """Every channel of the tenant as read for delivery, by name, URLs still sealed (one query:
        the delivery service caches a tenant's channels and opens each when first used)."""
        c = notification_channels.c
        stmt = self._scope.select(
            notification_channels, c.id, c.name, c.urls_sealed, c.quiet_hours, c.updated_at
        )
        return {
            row.name: SealedTarget(
                tenant_id=self._scope.tenant_id,
                id=row.id,
                name=row.name,
                urls_sealed=row.urls_sealed,
                quiet_hours=QuietHours.model_validate(row.quiet_hours) if row.quiet_hours else None,
                updated_at=row.updated_at,
            )
            for row in await self._scope.conn.execute(stmt)
        }

    async def target(self, channel_id: str) -> ChannelTarget:
        """One channel opened for delivery (test sends, re-sends)."""
        return self._target(await self._row(channel_id))

    def _target(self, row: sa.Row[Any]) -> ChannelTarget:
        return ChannelTarget(
            tenant_id=self._scope.tenant_id,
            id=row.id,
            name=row.name,
            urls=tuple(self._sealer.open(row.urls_sealed)),
            quiet_hours=QuietHours.model_validate(row.quiet_hours) if row.quiet_hours else None,
            updated_at=row.updated_at,
        )

    async def create(
        self,
        name: str,
        urls: Sequence[str],
        *,
        description: str = "",
        quiet_hours: QuietHours | None = None,
        allow_private: bool = False,
    ) -> Channel:
        """A new channel; ConflictError if the name is taken."""
        parsed = check_urls(urls, allow_private=allow_private)
        await self._name_is_free(name)
        now = utcnow()
        channel_id = new_id("chn")
        await self._scope.insert(
            notification_channels,
            [
                {
                    "id": channel_id,
                    "name": name,
                    "description": description,
                    "urls_sealed": self._sealer.seal([u.strip() for u in urls]),
                    "previews": _previews(parsed),
                    "quiet_hours": quiet_hours.model_dump(mode="json") if quiet_hours else None,
                    "created_at": now,
                    "updated_at": now,
                }
            ],
        )
        return await self.get(channel_id)

    async def update(
        self,
        channel_id: str,
        *,
        name: str | None = None,
        urls: Sequence[str] | None = None,
        description: str | None = None,
        quiet_hours: QuietHours | None = _UNSET,
        allow_private: bool = False,
    ) -> Channel:
        """Change what is given; URLs are replaced as a whole (they cannot be read back)."""
        current = await self.get(channel_id)
        values: dict[str, Any] = {}
        if name is not None and name != current.name:
            await self._name_is_free(name)
            values["name"] = name
        if urls is not None:
            parsed = check_urls(urls, allow_private=allow_private)
            values["urls_sealed"] = self._sealer.seal([u.strip() for u in urls])
            values["previews"] = _previews(parsed)
        if description is not None:
            values["description"] = description
        if quiet_hours is not _UNSET:
            values["quiet_hours"] = quiet_hours.model_dump(mode="json") if quiet_hours else None
        if values:
            values["updated_at"] = utcnow()
            stmt = (
                self._scope.update(notification_channels)
                .where(notification_channels.c.id == channel_id)
                .values(values)
            )
            await self._scope.conn.execute(stmt)
        return await self.get(channel_id)

    async def delete(self, channel_id: str) -> None:
        """Delete the channel; rules naming it get ``no_channel`` outcomes until changed."""
        await self.get(channel_id)
        stmt = self._scope.delete(notification_channels).where(notification_channels.c.id == channel_id)
        await self._scope.conn.execute(stmt)

    async def reseal(self, *, dry_run: bool = False) -> ResealReport:
        """Re-seal under the newest key every channel sealed with an older one (key rotation).

        A channel no configured key opens is left as it is and listed in ``unopenable``. Each
        write is conditional on the token read, so a channel edited meanwhile (a server saving new
        URLs) is never overwritten with its old URLs: it is read again and re-sealed only if its
        new token needs it too. With ``dry_run`` nothing is written (a read-only scope will do)
        and ``resealed`` counts the channels that would be.
        """
        c = notification_channels.c
        stmt = self._scope.select(notification_channels, c.id, c.name, c.urls_sealed).order_by(c.id)
        rows = (await self._scope.conn.execute(stmt)).all()
        resealed = 0
        unopenable: list[ChannelRef] = []
        contested: list[ChannelRef] = []
        for row in rows:
            ref, token = ChannelRef(row.id, row.name), row.urls_sealed
            for _ in range(RESEAL_ATTEMPTS):
                if not self._sealer.needs_reseal(token):
                    break
                try:
                    fresh = self._sealer.reseal(token)
                except UnsealError:
                    unopenable.append(ref)
                    break
                if dry_run:
                    resealed += 1
                    break
                if await self._swap_token(row.id, token, fresh):
                    resealed += 1
                    break
                # Changed (or deleted) since it was read: look again, as it is now.
                now = (
                    await self._scope.conn.execute(
                        self._scope.select(notification_channels, c.urls_sealed).where(c.id == row.id)
                    )
                ).scalar_one_or_none()
                if now is None:
                    break
                token = now
            else:
                if self._sealer.needs_reseal(token):  # as last read: the latest edit may not need it
                    contested.append(ref)
        return ResealReport(
            checked=len(rows),
            resealed=resealed,
            unopenable=tuple(unopenable),
            contested=tuple(contested),
        )

    async def _swap_token(self, channel_id: str, expected: str, token: str) -> bool:
        """Replace the channel's sealed URLs only if they are still ``expected``; whether they were.

        ``updated_at`` stays: the channel as shown (and as cached for delivery) has not changed.
        """
        c = notification_channels.c
        stmt = (
            self._scope.update(notification_channels)
            .where(c.id == channel_id, c.urls_sealed == expected)
            .values(urls_sealed=token)
        )
        result = await self._scope.conn.execute(stmt)
        return bool(result.rowcount == 1)

    async def _name_is_free(self, name: str) -> None:
        stmt = self._scope.select(notification_channels, notification_channels.c.id).where(
            notification_channels.c.name == name
        )
        if (await self._scope.conn.execute(stmt)).first() is not None:
            raise ConflictError(f"a notification channel named {name!r} already exists", name=name)


async def existing_channel_names(scope: TenantScope, names: Iterable[str]) -> set[str]:
    """The members of ``names`` that are channels of the scope's tenant (for checks at rule save:
    a name of another tenant's channel is simply not there)."""
    wanted = sorted(set(names))
    if not wanted:
        return set()
    stmt = scope.select(notification_channels, notification_channels.c.name).where(
        notification_channels.c.name.in_(wanted)
    )
    return set((await scope.conn.execute(stmt)).scalars().all())
