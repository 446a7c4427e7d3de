"""Tenants: created and administered by platform operators only."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated
from zoneinfo import available_timezones

from fastapi import APIRouter, Depends, Request, Response, status
from pydantic import EmailStr, Field, StringConstraints, field_validator

from api.auth import Principal, require_operator
from api.context import api_context
from api.problems import PROBLEM_RESPONSES
from api.routers._schema import RequestBody, Resource, changes
from api.routers.users import Password
from model.devices import Name
from model.ids import TENANT_ID_PATTERN
from model.scopes import Role
from storage.tenancy import Tenant, TenantRepository, TenantStatus, UserRepository

router = APIRouter(prefix="/tenants", tags=["tenants"], responses=PROBLEM_RESPONSES)

TenantId = Annotated[str, StringConstraints(pattern=TENANT_ID_PATTERN)]


def _check_timezone(value: str | None) -> str | None:
    if value is not None and value not in available_timezones():
        raise ValueError(f"unknown time zone {value!r} (use an IANA name like 'Europe/Berlin')")
    return value


class FirstAdmin(RequestBody):
    """The tenant's first administrator."""

    email: EmailStr
    password: Password


class TenantIn(RequestBody):
    """A tenant to create, optionally with its first administrator."""

    id: TenantId
    name: Name
    timezone: str = "UTC"
    admin: FirstAdmin | None = None

    _tz = field_validator("timezone")(_check_timezone)


class TenantPatch(RequestBody):
    """Fields to change; ``status: suspended`` stops every token of the tenant."""

    name: Name | None = None
    status: TenantStatus | None = None
    timezone: str | None = Field(default=None)

    _tz = field_validator("timezone")(_check_timezone)


class TenantOut(Resource):
    """A tenant."""

    id: str
    name: str
    status: TenantStatus
    timezone: str
    created_at: datetime
    updated_at: datetime


def _out(tenant: Tenant) -> TenantOut:
    return TenantOut.model_validate(tenant)


@router.get("", summary="List tenants")
async def list_tenants(
    request: Request, _: Annotated[Principal, Depends(require_operator)]
) -> list[TenantOut]:
    """Every tenant of the platform."""
    async with api_context(request).database.platform() as conn:
        return [_out(t) for t in await TenantRepository(conn).list()]


@router.post("", status_code=status.HTTP_201_CREATED, summary="Create a tenant")
async def create_tenant(
    request: Request,
    response: Response,
    body: TenantIn,
    _: Annotated[Principal, Depends(require_operator)],
) -> TenantOut:
    """Create a tenant (and its first admin user when ``admin`` is given); 409 if the id is taken."""
    db = api_context(request).database
    async with db.platform() as conn:
        tenant = await TenantRepository(conn).create(body.id, name=body.name, timezone=body.timezone)
    if body.admin is not None:
        async with db.tenant(tenant.id) as scope:
            await UserRepository(scope).create(
                email=body.admin.email, password=body.admin.password, role=Role.ADMIN
            )
    response.headers["Location"] = f"{request.url.path}/{tenant.id}"
    return _out(tenant)


@router.get("/{tenant_id}", summary="Read a tenant")
async def get_tenant(
    request: Request, tenant_id: str, _: Annotated[Principal, Depends(require_operator)]
) -> TenantOut:
    """One tenant."""
    async with api_context(request).database.platform() as conn:
        return _out(await TenantRepository(conn).get(tenant_id))


@router.patch("/{tenant_id}", summary="Change a tenant")
async def update_tenant(
    request: Request,
    tenant_id: str,
    body: TenantPatch,
    _: Annotated[Principal, Depends(require_operator)],
) -> TenantOut:
    """Rename, suspend, reactivate or change the time zone."""
    values = {k: v for k, v in changes(body).items() if v is not None}
    async with api_context(request).database.platform() as conn:
        return _out(await TenantRepository(conn).update(tenant_id, values))
