"""Dead letters: refused messages kept per tenant, newest first, pruned to a bound."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from model.readings import Source
from model.rejections import Rejection, RejectReason
from storage.database import TenantScope
from storage.tables import dead_letters


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A stored rejection."""

    id: int
    device_id: str | None
    reason: RejectReason
    detail: str
    source: Source
    payload: bytes
    received_at: datetime


def _letter(row: sa.Row[Any]) -> DeadLetter:
    return DeadLetter(
        id=row.id,
        device_id=row.device_id,
        reason=RejectReason(row.reason),
        detail=row.detail,
        source=Source(row.source_kind, row.source_instance),
        payload=row.payload,
        received_at=row.received_at,
    )


class DeadLetterRepository:
    """The dead letters of the scope's tenant."""

    def __init__(self, scope: TenantScope) -> None:
        self._scope = scope

    async def add(self, rejections: Sequence[Rejection]) -> None:
        """Store rejections of this tenant."""
        await self._scope.insert(
            dead_letters,
            [
                {
                    "device_id": r.device_id,
                    "reason": r.reason.value,
                    "detail": r.detail[:2000],
                    "source_kind": r.source.kind[:16],
                    "source_instance": r.source.instance[:128],
                    "payload": Rejection.excerpt(r.payload),
                    "received_at": r.at,
                }
                for r in rejections
            ],
        )

    async def list(
        self, *, limit: int = 50, before_id: int | None = None, reason: RejectReason | None = None
    ) -> list[DeadLetter]:
        """Newest first; pass the last id as ``before_id`` for the next page."""
        stmt = self._scope.select(dead_letters)
        if before_id is not None:
            stmt = stmt.where(dead_letters.c.id < before_id)
        if reason is not None:
            stmt = stmt.where(dead_letters.c.reason == reason.value)
        stmt = stmt.order_by(dead_letters.c.id.desc()).limit(limit)
        return [_letter(r) for r in await self._scope.conn.execute(stmt)]

    async def prune(self, keep: int) -> int:
        """Delete all but the newest ``keep`` dead letters; returns how many were deleted."""
        cutoff = (
            await self._scope.conn.execute(
                self._scope.select(dead_letters, dead_letters.c.id)
                .order_by(dead_letters.c.id.desc())
                .offset(keep)
                .limit(1)
            )
        ).scalar()
        if cutoff is None:
            return 0
        result = await self._scope.conn.execute(
            self._scope.delete(dead_letters).where(dead_letters.c.id <= cutoff)
        )
        return int(result.rowcount)
