"""The delivery log of a tenant: one record per (notification, channel), its outcome and attempts.

Records with status ``dead`` are the notification dead letters: every attempt failed; they can be
re-sent. The log is written in batches by the delivery service (upserts keyed by id) and pruned to
a bound per tenant.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from model.errors import InvalidCursorError, NotFoundError
from storage.database import TenantScope
from storage.pagination import decode_cursor, encode_cursor
from storage.tables import notification_deliveries as deliveries

MAX_PAGE_SIZE = 500


class DeliveryStatus(StrEnum):
    """Where a delivery stands. queued/retrying/held are on their way; the rest are final."""

    QUEUED = "queued"
    RETRYING = "retrying"
    HELD = "held"
    SENT = "sent"
    DEAD = "dead"
    THROTTLED = "throttled"
    DEDUPLICATED = "deduplicated"
    ACKNOWLEDGED = "acknowledged"
    SKIPPED = "skipped"
    NO_CHANNEL = "no_channel"
    CANCELLED = "cancelled"


@dataclass(slots=True)
class DeliveryRecord:
    """One entry of the log (mutable: the worker updates it as attempts go)."""

    id: str
    tenant_id: str
    channel_id: str | None
    channel_name: str
    rule_id: str | None
    device_id: str | None
    alarm_type: str | None
    severity: str | None
    kind: str
    dedup_key: str | None
    title: str
    body: str
    status: DeliveryStatus
    attempts: int
    last_error: str | None
    resent: int
    created_at: datetime
    updated_at: datetime
    sent_at: datetime | None = None

    def row(self) -> dict[str, Any]:
        """The table row (tenant_id included)."""
        values = {name: getattr(self, name) for name in _FIELDS}  # asdict() deep-copies: too slow here
        values["status"] = self.status.value
        values["channel_name"] = self.channel_name[:63]
        values["dedup_key"] = self.dedup_key[:300] if self.dedup_key else None
        return values


_FIELDS = tuple(f.name for f in fields(DeliveryRecord))


def _record(tenant_id: str, row: sa.Row[Any]) -> DeliveryRecord:
    values = dict(row._mapping)
    values["tenant_id"] = tenant_id
    values["status"] = DeliveryStatus(values["status"])
    return DeliveryRecord(**values)


def _parse_cursor(cursor: str) -> tuple[datetime, str]:
    raw = decode_cursor(cursor)
    stamp, sep, record_id = raw.partition("|")
    try:
        at = datetime.fromisoformat(stamp)
    except ValueError:
        at = None
    if not sep or not record_id or at is None or at.tzinfo is None:
        raise InvalidCursorError(f"cursor {cursor[:40]!r} is not a valid page cursor")
    return at, record_id


@dataclass(frozen=True, slots=True)
class DeliveryPage:
    """Newest first, and the cursor of the next page (None on the last)."""

    items: list[DeliveryRecord]
    next_cursor: str | None = None


class DeliveryLog:
    """The delivery log of the scope's tenant, inside the caller's transaction."""

    def __init__(self, scope: TenantScope, dialect: str) -> None:
        self._scope = scope
        self._dialect = dialect

    async def upsert(self, records: Sequence[DeliveryRecord]) -> None:
        """Insert new records and overwrite known ones (by id)."""
        if not records:
            return
        insert = postgresql.insert if self._dialect == "postgresql" else sqlite.insert
        rows = [{**r.row(), "tenant_id": self._scope.tenant_id} for r in records]
        stmt = insert(deliveries)
        stmt = stmt.on_conflict_do_update(
            index_elements=["tenant_id", "id"],
            set_={
                c: stmt.excluded[c]
                for c in ("status", "attempts", "last_error", "resent", "updated_at", "sent_at")
            },
        )
        await self._scope.conn.execute(stmt, rows)

    async def get(self, record_id: str) -> DeliveryRecord:
        """One record, or NotFoundError (also for another tenant's)."""
        stmt = self._scope.select(deliveries).where(deliveries.c.id == record_id)
        row = (await self._scope.conn.execute(stmt)).first()
        if row is None:
            raise NotFoundError("notification delivery", record_id)
        return _record(self._scope.tenant_id, row)

    async def list(
        self,
        *,
        statuses: Sequence[DeliveryStatus] = (),
        channel_id: str | None = None,
        rule_id: str | None = None,
        device_id: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> DeliveryPage:
        """A keyset page, newest first."""
        limit = max(1, min(limit, MAX_PAGE_SIZE))
        stmt = self._scope.select(deliveries)
        if statuses:
            stmt = stmt.where(deliveries.c.status.in_(sorted(s.value for s in statuses)))
        if channel_id is not None:
            stmt = stmt.where(deliveries.c.channel_id == channel_id)
        if rule_id is not None:
            stmt = stmt.where(deliveries.c.rule_id == rule_id)
        if device_id is not None:
            stmt = stmt.where(deliveries.c.device_id == device_id)
        if cursor is not None:
            at, record_id = _parse_cursor(cursor)
            stmt = stmt.where(
                sa.or_(
                    deliveries.c.created_at < at,
                    sa.and_(deliveries.c.created_at == at, deliveries.c.id < record_id),
                )
            )
        stmt = stmt.order_by(deliveries.c.created_at.desc(), deliveries.c.id.desc()).limit(limit + 1)
        rows = (await self._scope.conn.execute(stmt)).all()
        items = [_record(self._scope.tenant_id, r) for r in rows[:limit]]
        next_cursor = None
        if len(rows) > limit:
            last = items[-1]
            next_cursor = encode_cursor(f"{last.created_at.isoformat()}|{last.id}")
        return DeliveryPage(items, next_cursor)

    async def unfinished(self) -> builtins.list[DeliveryRecord]:
        """Records still queued or retrying (to pick up again after a restart)."""
        stmt = self._scope.select(deliveries).where(
            deliveries.c.status.in_([DeliveryStatus.QUEUED.value, DeliveryStatus.RETRYING.value])
        )
        return [_record(self._scope.tenant_id, r) for r in await self._scope.conn.execute(stmt)]

    async def prune(self, keep: int) -> int:
        """Delete all but the newest ``keep`` records; how many were deleted."""
        stmt = (
            self._scope.select(deliveries, deliveries.c.created_at)
            .order_by(deliveries.c.created_at.desc())
            .offset(keep)
            .limit(1)
        )
        cutoff = (await self._scope.conn.execute(stmt)).scalar()
        if cutoff is None:
            return 0
        result = await self._scope.conn.execute(
            self._scope.delete(deliveries).where(
                deliveries.c.created_at <= cutoff,
                deliveries.c.status.not_in([DeliveryStatus.QUEUED.value, DeliveryStatus.RETRYING.value]),
            )
        )
        return int(result.rowcount)
