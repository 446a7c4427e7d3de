"""Device bindings: how the platform polls (Modbus) or subscribes to (OPC-UA) a device."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, status
from pydantic import BaseModel

from api.auth import Principal, require
from api.context import api_context
from api.problems import PROBLEM_RESPONSES
from api.routers._schema import RequestBody
from connectors.bindings import BINDING_MODELS, stored_config, validate_binding
from devices.bindings import DeviceBinding, DeviceBindingRepository
from model.errors import NotFoundError

router = APIRouter(
    prefix="/devices/{device_id}/binding", tags=["device bindings"], responses=PROBLEM_RESPONSES
)


class BindingIn(RequestBody):
    """A connector kind and its configuration for this device (see docs/devices/)."""

    kind: str
    config: dict[str, Any]

    model_config = {
        "extra": "forbid",
        "json_schema_extra": {"description": f"kind is one of {sorted(BINDING_MODELS)}"},
    }


class BindingOut(BaseModel):
    """A stored binding."""

    device_id: str
    kind: str
    config: dict[str, Any]
    created_at: datetime
    updated_at: datetime


def _out(binding: DeviceBinding) -> BindingOut:
    return BindingOut(
        device_id=binding.device_id,
        kind=binding.kind,
        config=binding.config,
        created_at=binding.created_at,
        updated_at=binding.updated_at,
    )


@router.get("", summary="Read a device's binding")
async def get_binding(
    request: Request, device_id: str, principal: Annotated[Principal, Depends(require("devices:read"))]
) -> BindingOut:
    """The binding; 404 when the device has none or is not the caller's."""
    async with api_context(request).database.tenant(principal.tenant) as scope:
        return _out(await DeviceBindingRepository(scope).get(device_id))


@router.put("", summary="Bind a device to a connector")
async def put_binding(
    request: Request,
    device_id: str,
    body: BindingIn,
    principal: Annotated[Principal, Depends(require("devices:write"))],
) -> BindingOut:
    """Create or replace the binding; the connector picks the change up at once."""
    config = validate_binding(body.kind, principal.tenant, device_id, body.config)
    ctx = api_context(request)
    async with ctx.database.tenant(principal.tenant) as scope:
        repo = DeviceBindingRepository(scope)
        try:
            previous: str | None = (await repo.get(device_id)).kind
        except NotFoundError:
            previous = None
        binding = await repo.put(device_id, body.kind, stored_config(config))
    await ctx.bindings_changed({k for k in (body.kind, previous) if k is not None})
    return _out(binding)


@router.delete("", status_code=status.HTTP_204_NO_CONTENT, summary="Unbind a device")
async def delete_binding(
    request: Request, device_id: str, principal: Annotated[Principal, Depends(require("devices:write"))]
) -> None:
    """Stop polling or subscribing to the device; it stays registered."""
    ctx = api_context(request)
    async with ctx.database.tenant(principal.tenant) as scope:
        repo = DeviceBindingRepository(scope)
        kind = (await repo.get(device_id)).kind
        await repo.delete(device_id)
    await ctx.bindings_changed({kind})
