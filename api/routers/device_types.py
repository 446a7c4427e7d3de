"""Device types and their metric catalogue."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response, status
from pydantic import Field

from api.auth import Principal, require
from api.context import api_context
from api.problems import PROBLEM_RESPONSES
from api.routers._schema import RequestBody, Resource, changes
from devices.registry import DeviceTypeRepository
from model.devices import DeviceType, MetricSpec, Name, ObjectId

router = APIRouter(prefix="/device-types", tags=["device types"], responses=PROBLEM_RESPONSES)

InactivityTimeout = Annotated[int, Field(ge=10, le=7 * 24 * 3600)]
Metrics = Annotated[list[MetricSpec], Field(max_length=256)]


class DeviceTypeIn(RequestBody):
    """A device type to create."""

    id: ObjectId
    name: Name
    description: str = Field(default="", max_length=2000)
    metrics: Metrics = []
    inactivity_timeout_s: InactivityTimeout = 180


class DeviceTypePatch(RequestBody):
    """Fields to change; ``metrics`` replaces the whole catalogue."""

    name: Name | None = None
    description: str | None = Field(default=None, max_length=2000)
    metrics: Metrics | None = None
    inactivity_timeout_s: InactivityTimeout | None = None


class DeviceTypeOut(Resource):
    """A device type."""

    id: str
    name: str
    description: str
    metrics: list[MetricSpec]
    inactivity_timeout_s: int
    created_at: datetime
    updated_at: datetime


def _out(device_type: DeviceType) -> DeviceTypeOut:
    return DeviceTypeOut.model_validate(device_type)


@router.get("", summary="List device types")
async def list_device_types(
    request: Request, principal: Annotated[Principal, Depends(require("devices:read"))]
) -> list[DeviceTypeOut]:
    """Every device type of the tenant."""
    async with api_context(request).database.tenant(principal.tenant, readonly=True) as scope:
        return [_out(t) for t in await DeviceTypeRepository(scope).list()]


@router.post("", status_code=status.HTTP_201_CREATED, summary="Create a device type")
async def create_device_type(
    request: Request,
    response: Response,
    body: DeviceTypeIn,
    principal: Annotated[Principal, Depends(require("devices:write"))],
) -> DeviceTypeOut:
    """Create a device type with its metric catalogue; 409 if the id is taken."""
    async with api_context(request).database.tenant(principal.tenant) as scope:
        created = await DeviceTypeRepository(scope).create(
            body.id,
            name=body.name,
            description=body.description,
            metrics=body.metrics,
            inactivity_timeout_s=body.inactivity_timeout_s,
        )
    response.headers["Location"] = f"{request.url.path}/{created.id}"
    return _out(created)


@router.get("/{type_id}", summary="Read a device type")
async def get_device_type(
    request: Request,
    type_id: str,
    principal: Annotated[Principal, Depends(require("devices:read"))],
) -> DeviceTypeOut:
    """One device type; 404 for an unknown or foreign id."""
    async with api_context(request).database.tenant(principal.tenant, readonly=True) as scope:
        return _out(await DeviceTypeRepository(scope).get(type_id))


@router.patch("/{type_id}", summary="Change a device type")
async def update_device_type(
    request: Request,
    type_id: str,
    body: DeviceTypePatch,
    principal: Annotated[Principal, Depends(require("devices:write"))],
) -> DeviceTypeOut:
    """Change the name, description, catalogue or inactivity timeout."""
    values = {k: v for k, v in changes(body).items() if v is not None}
    if body.metrics is not None:
        values["metrics"] = body.metrics
    async with api_context(request).database.tenant(principal.tenant) as scope:
        return _out(await DeviceTypeRepository(scope).update(type_id, values))


@router.delete("/{type_id}", status_code=status.HTTP_204_NO_CONTENT, summary="Delete a device type")
async def delete_device_type(
    request: Request,
    type_id: str,
    principal: Annotated[Principal, Depends(require("devices:write"))],
) -> None:
    """Delete a device type no device uses; 409 while devices still have it."""
    async with api_context(request).database.tenant(principal.tenant) as scope:
        await DeviceTypeRepository(scope).delete(type_id)
