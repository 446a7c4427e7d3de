"""The tenant's dead-letter list: every message the pipeline refused, with its reason."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel

from api.auth import Principal, require
from api.context import api_context
from api.problems import PROBLEM_RESPONSES
from model.rejections import RejectReason
from storage.deadletters import DeadLetterRepository

router = APIRouter(prefix="/dead-letters", tags=["telemetry"], responses=PROBLEM_RESPONSES)


class DeadLetterOut(BaseModel):
    """A refused message."""

    id: int
    device_id: str | None
    reason: RejectReason
    detail: str
    source: str
    payload_excerpt: str
    received_at: datetime


class DeadLetterPage(BaseModel):
    """Newest first; pass ``next_before`` as ``before`` for older ones."""

    items: list[DeadLetterOut]
    next_before: int | None


@router.get("", summary="List refused messages")
async def list_dead_letters(
    request: Request,
    principal: Annotated[Principal, Depends(require("telemetry:read"))],
    reason: RejectReason | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    before: Annotated[int | None, Query(ge=1)] = None,
) -> DeadLetterPage:
    """Refused messages of the tenant with reason, source and a payload excerpt."""
    async with api_context(request).database.tenant(principal.tenant) as scope:
        letters = await DeadLetterRepository(scope).list(limit=limit, before_id=before, reason=reason)
    items = [
        DeadLetterOut(
            id=d.id,
            device_id=d.device_id,
            reason=d.reason,
            detail=d.detail,
            source=f"{d.source.kind}:{d.source.instance}",
            payload_excerpt=d.payload.decode("utf-8", errors="replace"),
            received_at=d.received_at,
        )
        for d in letters
    ]
    return DeadLetterPage(items=items, next_before=items[-1].id if len(items) == limit else None)
