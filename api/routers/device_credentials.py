"""Per-device credentials for HTTP and CoAP ingestion."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response, status

from api.auth import Principal, require
from api.context import api_context
from api.problems import PROBLEM_RESPONSES
from api.routers._schema import Resource
from devices.credentials import DeviceCredential, DeviceCredentialRepository
from devices.registry import DeviceRepository

router = APIRouter(
    prefix="/devices/{device_id}/credentials", tags=["device credentials"], responses=PROBLEM_RESPONSES
)


class CredentialOut(Resource):
    """A device credential (no secret)."""

    id: str
    device_id: str
    created_at: datetime
    revoked_at: datetime | None


class IssuedCredentialOut(CredentialOut):
    """A new credential; ``token`` is shown this once."""

    token: str


def _out(credential: DeviceCredential) -> CredentialOut:
    return CredentialOut.model_validate(credential)


@router.get("", summary="List a device's credentials")
async def list_credentials(
    request: Request, device_id: str, principal: Annotated[Principal, Depends(require("devices:read"))]
) -> list[CredentialOut]:
    """Every credential of the device, newest first, without secrets; 404 for an unknown or foreign device."""
    async with api_context(request).database.tenant(principal.tenant) as scope:
        await DeviceRepository(scope).get(device_id)
        return [_out(c) for c in await DeviceCredentialRepository(scope).list(device_id)]


@router.post("", status_code=status.HTTP_201_CREATED, summary="Issue a device credential")
async def issue_credential(
    request: Request,
    response: Response,
    device_id: str,
    principal: Annotated[Principal, Depends(require("devices:write"))],
) -> IssuedCredentialOut:
    """A new credential for the device; the secret is in this response only."""
    async with api_context(request).database.tenant(principal.tenant) as scope:
        credential, bearer = await DeviceCredentialRepository(scope).issue(device_id)
    response.headers["Cache-Control"] = "no-store"
    return IssuedCredentialOut.model_validate({**_out(credential).model_dump(), "token": bearer})


@router.delete("/{credential_id}", summary="Revoke a device credential")
async def revoke_credential(
    request: Request,
    device_id: str,
    credential_id: str,
    principal: Annotated[Principal, Depends(require("devices:write"))],
) -> CredentialOut:
    """Revoke at once; the credential is kept (revoked) for the audit trail."""
    async with api_context(request).database.tenant(principal.tenant) as scope:
        return _out(await DeviceCredentialRepository(scope).revoke(device_id, credential_id))
