"""Devices: a filtered, paged list, and a device's page with live values, status and a chart."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from devices.registry import DeviceFilter, DeviceRepository, DeviceTypeRepository
from editor.charts import line_chart
from editor.draft import format_labels
from editor.web import PREFIX, EditorRoute, User, render, services
from model.devices import DataType
from model.errors import InvalidInputError
from storage.telemetry.port import Aggregate

router = APIRouter(route_class=EditorRoute)
CHART_SPAN = timedelta(hours=1)


def _labels(text: str) -> dict[str, str]:
    labels = {}
    for part in (p.strip() for p in text.split(",")):
        key, sep, value = part.partition("=")
        if part and not sep:
            raise InvalidInputError(f"{part!r} is not key=value")
        if part:
            labels[key.strip()] = value.strip()
    return labels


@router.get(f"{PREFIX}/devices", include_in_schema=False)
async def devices_page(
    request: Request,
    user: User,
    q: Annotated[str, Query(max_length=100)] = "",
    type: Annotated[str, Query(max_length=64)] = "",
    labels: Annotated[str, Query(max_length=300)] = "",
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    """A page of 50 devices matching the filters."""
    async with services(request).database.tenant(user.tenant_id) as scope:
        types = await DeviceTypeRepository(scope).list()
        page = await DeviceRepository(scope).list(
            DeviceFilter(type_id=type or None, labels=_labels(labels), text=q or None),
            limit=50,
            cursor=cursor,
        )
    return render(
        request,
        "devices/list.html",
        {
            "user": user,
            "section": "devices",
            "devices": page.items,
            "next_cursor": page.next_cursor,
            "types": types,
            "q": q,
            "type": type,
            "labels": labels,
            "format_labels": format_labels,
        },
    )


@router.get(f"{PREFIX}/devices/{{device_id}}", include_in_schema=False)
async def device_page(request: Request, device_id: str, user: User, metric: str = "") -> Response:
    """The device: status and latest values (live), and a chart of the last hour."""
    ctx = services(request)
    async with ctx.database.tenant(user.tenant_id) as scope:
        device = await DeviceRepository(scope).get(device_id)
        device_type = await DeviceTypeRepository(scope).get(device.type_id)
    numeric = [m.name for m in device_type.metrics if m.data_type is DataType.NUMBER]
    chosen = metric if metric in numeric else (numeric[0] if numeric else "")
    values: dict[str, tuple[object, object]] = {}
    chart = None
    end = datetime.now(UTC)
    if ctx.telemetry is not None:
        for name, sample in (await ctx.telemetry.latest(user.tenant_id, device_id)).items():
            values[name] = (sample.value, sample.ts)
        if chosen:
            samples = await ctx.telemetry.query(
                user.tenant_id,
                device_id,
                chosen,
                end - CHART_SPAN,
                end,
                every=timedelta(seconds=30),
                aggregate=Aggregate.MEAN,
            )
            series = [(s.ts, float(s.value)) for s in samples if isinstance(s.value, int | float)]
            chart = line_chart(chosen, series, end - CHART_SPAN, end)
    return render(
        request,
        "devices/show.html",
        {
            "user": user,
            "section": "devices",
            "device": device,
            "device_type": device_type,
            "values": values,
            "status": device.status.value,
            "chart": chart,
            "numeric": numeric,
            "chosen": chosen,
            "labels_text": format_labels(device.labels),
        },
    )
