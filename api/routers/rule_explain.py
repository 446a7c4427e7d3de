"""Why is a rule (not) firing for a device now: its conditions evaluated on demand, no side effect."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from api.auth import Principal, require
from api.context import api_context
from api.problems import PROBLEM_RESPONSES
from engine.explain import explain
from storage.tenancy import TenantRepository
from storage.types import utcnow

router = APIRouter(tags=["rules"], responses=PROBLEM_RESPONSES)


class ExplainStepOut(BaseModel):
    """One node's part, as in a trace."""

    path: str
    node: str
    result: bool | None
    detail: str
    inputs: dict[str, Any]


class ExplanationOut(BaseModel):
    """The rule's conditions evaluated for one device against its latest stored values."""

    rule_id: str
    version: int
    device_id: str
    evaluated_at: datetime = Field(description="When the conditions were evaluated (now).")
    selected: bool = Field(description="Whether the rule's device selector picks this device.")
    values: dict[str, Any] = Field(description="The device's latest stored value of each metric.")
    value_times: dict[str, datetime]
    result: bool | None = Field(description="The conditions' result now (null: undecided).")
    active: bool = Field(description="Whether the rule has fired for the device and not cleared.")
    steps: list[ExplainStepOut]
    summary: str


@router.get("/rules/{rule_id}/explain/{device_id}", summary="Why a rule is or is not firing for a device now")
async def explain_rule(
    request: Request,
    rule_id: str,
    device_id: str,
    principal: Annotated[Principal, Depends(require("rules:read"))],
    version: Annotated[int | None, Query(ge=1, description="Default: the published version.")] = None,
) -> ExplanationOut:
    """Evaluates the conditions of the rule for one device against the device's latest stored
    values and the rule's stored state, and returns every step with its inputs, as a trace would.
    Nothing is written and no action runs. Traces keep changes of outcome only; this answers for
    now, also for a device no reading has ever moved."""
    ctx = api_context(request)
    store = ctx.require_telemetry()
    async with ctx.database.platform() as conn:
        zone = (await TenantRepository(conn).get(principal.tenant)).timezone
    async with ctx.database.tenant(principal.tenant) as scope:
        found = await explain(
            scope,
            store,
            rule_id,
            device_id,
            at=utcnow(),
            version=version,
            timezone=zone,
            allow_private_webhooks=ctx.allow_private_webhooks,
        )
    return ExplanationOut.model_validate(found.as_dict())
