"""Devices: register, read, change, list with filters, decommission."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response, status

from api.auth import Principal, require
from api.context import api_context
from api.problems import PROBLEM_RESPONSES
from api.routers._schema import PageOut, RequestBody, Resource, changes
from devices.registry import DeviceFilter, DeviceRepository
from engine.store import RuleStateRepository
from model.devices import (
    Attributes,
    Device,
    DeviceSpec,
    DeviceStatus,
    Labels,
    Name,
    ObjectId,
)
from model.errors import MalformedRequestError

router = APIRouter(prefix="/devices", tags=["devices"], responses=PROBLEM_RESPONSES)


class DevicePatch(RequestBody):
    """Fields to change; labels and attributes are replaced whole."""

    name: Name | None = None
    type_id: ObjectId | None = None
    labels: Labels | None = None
    attributes: Attributes | None = None


class DeviceOut(Resource):
    """A registered device."""

    id: str
    name: str
    type_id: str
    labels: dict[str, str]
    attributes: dict[str, str | int | float | bool | None]
    status: DeviceStatus
    last_seen_at: datetime | None
    status_changed_at: datetime | None
    created_at: datetime
    updated_at: datetime


def _out(device: Device) -> DeviceOut:
    return DeviceOut.model_validate(device)


def _parse_labels(raw: list[str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in raw:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise MalformedRequestError(f"label filter {item!r} must look like key=value", parameter="label")
        labels[key] = value
    return labels


@router.get("", summary="List devices")
async def list_devices(
    request: Request,
    principal: Annotated[Principal, Depends(require("devices:read"))],
    type: Annotated[str | None, Query(description="Only devices of this type id.")] = None,
    status_: Annotated[DeviceStatus | None, Query(alias="status")] = None,
    label: Annotated[list[str] | None, Query(description="key=value; repeat to require several.")] = None,
    q: Annotated[str | None, Query(max_length=100, description="Text in id or name.")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> PageOut[DeviceOut]:
    """A keyset page of the tenant's devices in id order, filtered by type, status, labels and text."""
    flt = DeviceFilter(type_id=type, status=status_, labels=_parse_labels(label or []), text=q)
    async with api_context(request).database.tenant(principal.tenant, readonly=True) as scope:
        page = await DeviceRepository(scope).list(flt, limit=limit, cursor=cursor)
    return PageOut[DeviceOut](items=[_out(d) for d in page.items], next_cursor=page.next_cursor)


@router.post("", status_code=status.HTTP_201_CREATED, summary="Register a device")
async def create_device(
    request: Request,
    response: Response,
    body: DeviceSpec,
    principal: Annotated[Principal, Depends(require("devices:write"))],
) -> DeviceOut:
    """Register a device of an existing type; 409 if the id is taken in this tenant."""
    async with api_context(request).database.tenant(principal.tenant) as scope:
        device = await DeviceRepository(scope).create(
            body.id,
            type_id=body.type_id,
            name=body.name or body.id,
            labels=body.labels,
            attributes=body.attributes,
        )
    response.headers["Location"] = f"{request.url.path}/{device.id}"
    return _out(device)


@router.get("/{device_id}", summary="Read a device")
async def get_device(
    request: Request,
    device_id: str,
    principal: Annotated[Principal, Depends(require("devices:read"))],
) -> DeviceOut:
    """One device of the caller's tenant; 404 for an unknown or foreign id."""
    async with api_context(request).database.tenant(principal.tenant, readonly=True) as scope:
        return _out(await DeviceRepository(scope).get(device_id))


@router.patch("/{device_id}", summary="Change a device")
async def update_device(
    request: Request,
    device_id: str,
    body: DevicePatch,
    principal: Annotated[Principal, Depends(require("devices:write"))],
) -> DeviceOut:
    """Change name, type, labels or attributes."""
    values = {k: v for k, v in changes(body).items() if v is not None}
    async with api_context(request).database.tenant(principal.tenant) as scope:
        return _out(await DeviceRepository(scope).update(device_id, values))


@router.delete("/{device_id}", status_code=status.HTTP_204_NO_CONTENT, summary="Decommission a device")
async def delete_device(
    request: Request,
    device_id: str,
    principal: Annotated[Principal, Depends(require("devices:write"))],
) -> None:
    """Remove the device from the registry. Its active alarms are cleared (by the caller; the
    alarm history stays) and the rule state kept for it is dropped, so a device registered again
    under the same id starts afresh."""
    ctx = api_context(request)
    async with ctx.database.tenant(principal.tenant) as scope:
        await DeviceRepository(scope).delete(device_id)
        await RuleStateRepository(scope).delete_device(device_id)
    await ctx.alarm_service().clear_device(
        principal.tenant, device_id, by=principal.user_id or principal.token_id
    )
    await ctx.device_deleted(principal.tenant, device_id)
