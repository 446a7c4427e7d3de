"""Alarms: list with filters, read with history, acknowledge, clear."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from api.auth import Principal, require
from api.context import api_context
from api.problems import PROBLEM_RESPONSES
from api.routers._schema import PageOut, Resource
from engine.alarms import (
    Alarm,
    AlarmEvent,
    AlarmEventKind,
    AlarmFilter,
    AlarmSeverity,
    AlarmState,
)
from model.errors import InvalidInputError

router = APIRouter(prefix="/alarms", tags=["alarms"], responses=PROBLEM_RESPONSES)


class AlarmOut(Resource):
    """An alarm. ``acknowledged_by`` and ``cleared_by`` hold a user id, or the token id when the
    token has no user; ``cleared_by`` is null when the rule cleared the alarm."""

    id: str
    rule_id: str
    device_id: str
    alarm_type: str
    severity: AlarmSeverity
    state: AlarmState
    active: bool
    acknowledged: bool
    message: str
    raise_count: int
    raised_at: datetime
    last_raised_at: datetime
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    cleared_at: datetime | None
    cleared_by: str | None
    updated_at: datetime


class AlarmEventOut(Resource):
    """One entry of an alarm's history; ``actor`` is null for what the rule engine did."""

    kind: AlarmEventKind
    at: datetime
    actor: str | None
    severity: AlarmSeverity
    message: str


class AlarmDetailOut(AlarmOut):
    """An alarm with its history, oldest event first."""

    events: list[AlarmEventOut]


def _out(alarm: Alarm) -> AlarmOut:
    return AlarmOut.model_validate(alarm)


def _event_out(event: AlarmEvent) -> AlarmEventOut:
    return AlarmEventOut.model_validate(event)


def _actor(principal: Principal) -> str:
    return principal.user_id or principal.token_id


@router.get("", summary="List alarms")
async def list_alarms(
    request: Request,
    principal: Annotated[Principal, Depends(require("alarms:read"))],
    state: Annotated[
        list[AlarmState] | None, Query(description="Only alarms in these states (repeatable).")
    ] = None,
    active: Annotated[bool | None, Query(description="true: not cleared; false: cleared.")] = None,
    acknowledged: Annotated[bool | None, Query(description="Acknowledged or not.")] = None,
    severity: Annotated[
        list[AlarmSeverity] | None, Query(description="Only these severities (repeatable).")
    ] = None,
    device: Annotated[str | None, Query(max_length=128, description="Only this device's alarms.")] = None,
    rule: Annotated[str | None, Query(max_length=40, description="Only alarms raised by this rule.")] = None,
    alarm_type: Annotated[str | None, Query(max_length=63)] = None,
    raised_from: Annotated[datetime | None, Query(description="Raised at or after (inclusive).")] = None,
    raised_to: Annotated[datetime | None, Query(description="Raised before (exclusive).")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> PageOut[AlarmOut]:
    """A keyset page of the tenant's alarms, newest raise first, active and cleared alike unless
    filtered."""
    for name, value in (("raised_from", raised_from), ("raised_to", raised_to)):
        if value is not None and value.tzinfo is None:
            raise InvalidInputError(
                f"{name} needs a time zone (e.g. 2026-11-27T08:00:00Z)",
                errors=[{"loc": ["query", name], "msg": "a time zone is required"}],
            )
    if raised_from is not None and raised_to is not None and raised_from >= raised_to:
        raise InvalidInputError(
            "raised_from must be before raised_to",
            errors=[{"loc": ["query", "raised_to"], "msg": "must be after raised_from"}],
        )
    flt = AlarmFilter(
        states=frozenset(state or ()),
        active=active,
        acknowledged=acknowledged,
        severities=frozenset(severity or ()),
        device_id=device,
        rule_id=rule,
        alarm_type=alarm_type,
        raised_from=raised_from,
        raised_to=raised_to,
    )
    page = await api_context(request).alarm_service().list(principal.tenant, flt, limit=limit, cursor=cursor)
    return PageOut[AlarmOut](items=[_out(a) for a in page.items], next_cursor=page.next_cursor)


@router.get("/{alarm_id}", summary="Read an alarm and its history")
async def get_alarm(
    request: Request, alarm_id: str, principal: Annotated[Principal, Depends(require("alarms:read"))]
) -> AlarmDetailOut:
    """One alarm of the caller's tenant with every event of its history; 404 for an unknown or
    foreign id."""
    found = await api_context(request).alarm_service().get(principal.tenant, alarm_id)
    return AlarmDetailOut(**_out(found.alarm).model_dump(), events=[_event_out(e) for e in found.events])


@router.post("/{alarm_id}/acknowledge", summary="Acknowledge an alarm")
async def acknowledge_alarm(
    request: Request, alarm_id: str, principal: Annotated[Principal, Depends(require("alarms:write"))]
) -> AlarmOut:
    """Record that someone has seen the alarm (active or cleared). Idempotent: acknowledging again
    keeps the first acknowledgement's time and author."""
    ctx = api_context(request)
    service = ctx.alarm_service()
    return _out(await service.acknowledge(principal.tenant, alarm_id, by=_actor(principal)))


@router.post("/{alarm_id}/clear", summary="Clear an alarm")
async def clear_alarm(
    request: Request, alarm_id: str, principal: Annotated[Principal, Depends(require("alarms:write"))]
) -> AlarmOut:
    """End the alarm by hand; if its condition still holds, the rule raises a new alarm.
    Idempotent: clearing a cleared alarm keeps the first clear's time and author."""
    service = api_context(request).alarm_service()
    return _out(await service.clear(principal.tenant, alarm_id, by=_actor(principal)))
