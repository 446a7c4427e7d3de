"""Backtests: what a rule (a saved version, or a draft the editor has not saved) would have done
over the tenant's stored telemetry, with no side effect.

Reading telemetry through a backtest needs ``rules:read`` only, as the decision traces do: what
comes back is the rule's decisions, with the inputs they were made on, and a chart series of the
metric the rule watches.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from api.auth import Principal, require
from api.context import api_context
from api.problems import PROBLEM_RESPONSES
from api.routers._schema import RequestBody
from engine.backtest import backtest
from engine.backtest_plan import MAX_DEVICES, BacktestPlan, BacktestRange, backtest_range, plan_backtest
from engine.document import RuleDocument
from engine.rules import RuleRepository
from model.devices import ObjectId
from storage.tenancy import TenantRepository
from storage.types import utcnow

router = APIRouter(tags=["rules"], responses=PROBLEM_RESPONSES)


class BacktestWindow(RequestBody):
    """The range and the devices to replay, and how much detail to send back."""

    range_: BacktestRange | None = Field(
        default=None,
        alias="range",
        description="A range ending at `until` (default: now). Without `range` and `since`: last_day.",
    )
    since: datetime | None = Field(default=None, description="Start of the range (with a time zone).")
    until: datetime | None = Field(default=None, description="End of the range; default and at most: now.")
    device_ids: list[ObjectId] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_DEVICES,
        description=f"Only these devices (default: every device the rule selects, at most {MAX_DEVICES}).",
    )
    series_points: int = Field(
        default=500, ge=0, le=1000, description="Chart points per device (lowest and highest per bucket)."
    )
    max_transitions: int = Field(
        default=100, ge=0, le=1000, description="Firings and clears listed per device (all are counted)."
    )


class RuleBacktestIn(BacktestWindow):
    """A backtest of a saved version."""

    version: int | None = Field(default=None, ge=1, description="Default: the latest version.")


class DraftBacktestIn(BacktestWindow):
    """A backtest of a document that is not saved yet."""

    document: RuleDocument


class StepOut(BaseModel):
    """One node's part in a decision."""

    path: str
    node: str
    result: bool | None
    detail: str
    inputs: dict[str, Any]


class TransitionOut(BaseModel):
    """When the rule would have fired or cleared for a device, on which event, and why."""

    at: datetime
    device_id: str
    event: str
    summary: str
    calls: list[str] = Field(description="The node keys of the actions that would have run.")
    steps: list[StepOut]


class AlarmSpanOut(BaseModel):
    """An alarm the rule would have raised, and when it would have cleared (null: still active)."""

    device_id: str
    alarm_type: str
    severity: str
    raised_at: datetime
    cleared_at: datetime | None


class DeviceBacktestOut(BaseModel):
    """What the rule would have done for one device."""

    device_id: str
    readings: int
    evaluations: int
    timer_evaluations: int
    unchanged: int = Field(
        description="Readings not evaluated: they could not change the rule's outcome (its guard)."
    )
    fired: int
    cleared: int
    throttled: int
    notifications: int
    firings: list[TransitionOut]
    clears: list[TransitionOut]
    alarms: list[AlarmSpanOut]
    series: list[tuple[datetime, float]] = Field(description="[time, value] of the charted metric.")


class BacktestTotals(BaseModel):
    """All devices together."""

    devices: int
    readings: int
    evaluations: int
    unchanged: int = Field(
        description="Readings not evaluated: they could not change the rule's outcome (its guard)."
    )
    fired: int
    cleared: int
    throttled: int
    alarms_raised: int
    alarms_cleared: int
    notifications: int = Field(description="`notify` calls after the rule's throttle.")


class BacktestOut(BaseModel):
    """What the rule would have done over [start, end)."""

    rule_id: str
    rule_version: int = Field(description="0 for an unsaved draft.")
    start: datetime
    end: datetime
    metric: str | None = Field(description="The metric charted in each device's series.")
    totals: BacktestTotals
    devices: list[DeviceBacktestOut]
    skipped: list[str] = Field(description="Devices asked for that the rule's selector does not pick.")


async def _run(
    request: Request,
    principal: Principal,
    body: BacktestWindow,
    *,
    rule_id: str | None = None,
    version: int | None = None,
    document: RuleDocument | None = None,
) -> BacktestOut:
    ctx = api_context(request)
    store = ctx.require_telemetry()
    start, end = backtest_range(utcnow(), range_=body.range_, since=body.since, until=body.until)
    async with ctx.database.platform() as conn:
        zone = ZoneInfo((await TenantRepository(conn).get(principal.tenant)).timezone)
    async with ctx.database.tenant(principal.tenant) as scope:
        if rule_id is not None:
            repo = RuleRepository(scope)
            rule = await repo.get(rule_id)
            stored = await repo.version(rule_id, version or rule.latest_version)
            document, version = RuleDocument.model_validate(stored.document), stored.version
        assert document is not None
        plan: BacktestPlan = await plan_backtest(
            scope,
            document,
            start,
            end,
            timezone=zone,
            rule_id=rule_id or "draft",
            version=version or 0,
            device_ids=body.device_ids,
            allow_private_webhooks=ctx.allow_private_webhooks,
        )
    # The transaction is over: the replay reads only the telemetry store.
    report = await backtest(
        plan.rule,
        store,
        plan.devices,
        plan.start,
        plan.end,
        series_points=body.series_points,
        keep=body.max_transitions,
    )
    return BacktestOut.model_validate(report.as_dict())


@router.post("/rules/backtest", summary="Backtest a draft without saving it")
async def backtest_draft(
    request: Request, body: DraftBacktestIn, principal: Annotated[Principal, Depends(require("rules:read"))]
) -> BacktestOut:
    """Replay stored telemetry through an unsaved rule document: when it would have fired and
    cleared, the alarms it would have raised, the notifications it would have sent. Nothing runs.
    422 for a document that does not compile, an unusable range or too many devices."""
    return await _run(request, principal, body, document=body.document)


@router.post("/rules/{rule_id}/backtest", summary="Backtest a saved version against history")
async def backtest_rule(
    request: Request,
    rule_id: str,
    body: RuleBacktestIn,
    principal: Annotated[Principal, Depends(require("rules:read"))],
) -> BacktestOut:
    """Replay stored telemetry through a saved version (default: the latest, usually the draft
    being edited) with no side effect. 404 for an unknown or foreign rule or version; 422 for an
    unusable range (more than 7 days, or ending before it starts), unknown devices, or a rule that
    selects more than 100 devices without ``device_ids``."""
    return await _run(request, principal, body, rule_id=rule_id, version=body.version)
