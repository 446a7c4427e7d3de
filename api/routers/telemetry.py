"""Telemetry of a device: latest values and time ranges with aggregation windows."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel

from api.auth import Principal, require
from api.context import api_context
from api.problems import PROBLEM_RESPONSES
from devices.registry import DeviceRepository
from model.errors import InvalidInputError
from model.readings import MetricValue
from storage.telemetry.port import Aggregate
from storage.types import utcnow

router = APIRouter(prefix="/devices/{device_id}/telemetry", tags=["telemetry"], responses=PROBLEM_RESPONSES)

MAX_RAW_RANGE = timedelta(days=7)
MAX_WINDOWS = 10_000


class SampleOut(BaseModel):
    """One value at one instant (a window's start for aggregates)."""

    ts: datetime
    value: MetricValue


class LatestOut(BaseModel):
    """The newest sample of each metric of a device."""

    device_id: str
    metrics: dict[str, SampleOut]


class SeriesOut(BaseModel):
    """Samples of one metric over a range."""

    device_id: str
    metric: str
    start: datetime
    end: datetime
    every_s: float | None
    aggregate: Aggregate | None
    samples: list[SampleOut]


@router.get("/latest", summary="Latest values of a device")
async def latest(
    request: Request,
    device_id: str,
    principal: Annotated[Principal, Depends(require("telemetry:read"))],
    metric: Annotated[list[str] | None, Query(description="Only these metrics (repeatable).")] = None,
) -> LatestOut:
    """The most recent value of each metric; 404 for an unknown or foreign device."""
    ctx = api_context(request)
    async with ctx.database.tenant(principal.tenant) as scope:
        await DeviceRepository(scope).get(device_id)
    samples = await ctx.require_telemetry().latest(principal.tenant, device_id, metric)
    return LatestOut(
        device_id=device_id,
        metrics={k: SampleOut(ts=s.ts, value=s.value) for k, s in samples.items()},
    )


@router.get("", summary="A metric over a time range")
async def series(
    request: Request,
    device_id: str,
    principal: Annotated[Principal, Depends(require("telemetry:read"))],
    metric: Annotated[str, Query(min_length=1, max_length=63)],
    start: Annotated[datetime | None, Query(description="Default: one hour before end.")] = None,
    end: Annotated[datetime | None, Query(description="Default: now.")] = None,
    every: Annotated[float | None, Query(gt=0, description="Window in seconds; omit for raw.")] = None,
    aggregate: Aggregate = Aggregate.MEAN,
) -> SeriesOut:
    """Raw samples, or one aggregate per window aligned to the epoch (empty windows omitted)."""
    end = end or utcnow()
    start = start or end - timedelta(hours=1)
    if start.tzinfo is None or end.tzinfo is None:
        raise InvalidInputError("start and end need a time zone (e.g. 2026-11-27T08:00:00Z)")
    if start >= end:
        raise InvalidInputError("start must be before end")
    window = timedelta(seconds=every) if every else None
    if window is None and end - start > MAX_RAW_RANGE:
        raise InvalidInputError(f"raw ranges are limited to {MAX_RAW_RANGE.days} days; set `every`")
    if window is not None and (end - start) / window > MAX_WINDOWS:
        raise InvalidInputError(f"at most {MAX_WINDOWS} windows per query; widen `every`")
    ctx = api_context(request)
    async with ctx.database.tenant(principal.tenant) as scope:
        await DeviceRepository(scope).get(device_id)
    samples = await ctx.require_telemetry().query(
        principal.tenant, device_id, metric, start, end, every=window, aggregate=aggregate
    )
    return SeriesOut(
        device_id=device_id,
        metric=metric,
        start=start,
        end=end,
        every_s=every,
        aggregate=aggregate if window else None,
        samples=[SampleOut(ts=s.ts, value=s.value) for s in samples],
    )
