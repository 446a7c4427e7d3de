"""HTTP ingestion for devices, authenticated by a per-device credential."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel

from api.context import api_context
from api.problems import PROBLEM_RESPONSES
from connectors.payload import PayloadError, decode
from devices.credentials import DeviceCredentialRepository, parse_device_token
from model.errors import AuthenticationError, InvalidInputError, PayloadTooLargeError
from model.readings import Reading, Source
from model.rejections import Rejection, RejectReason
from storage.types import utcnow

router = APIRouter(tags=["ingestion"], responses=PROBLEM_RESPONSES)
_device_bearer = HTTPBearer(auto_error=False, description="A device credential `fgd.<tenant>.<id>.<secret>`")
SOURCE = Source("http", "api")

PAYLOAD_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [
                        {"type": "object", "description": 'Flat metrics, e.g. {"temp": -18.2}'},
                        {
                            "type": "object",
                            "properties": {"ts": {}, "values": {"type": "object"}},
                            "required": ["values"],
                        },
                        {"type": "array", "items": {"type": "object"}},
                    ]
                }
            }
        },
    }
}


class Accepted(BaseModel):
    """How many readings were queued for ingestion."""

    device_id: str
    accepted: int


@router.post(
    "/ingest",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Send telemetry as a device",
    openapi_extra=PAYLOAD_DOC,
    responses={503: {"description": "Ingestion is full; retry after the Retry-After header"}},
)
async def ingest(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_device_bearer)],
) -> Accepted:
    """Queue a device's readings. The device is the credential's: a payload cannot name another."""
    ctx = api_context(request)
    token = parse_device_token(credentials.credentials) if credentials else None
    if token is None:
        raise AuthenticationError("send the device credential as 'Authorization: Bearer fgd.…'")
    async with ctx.database.tenant(token.tenant_id) as scope:
        device_id = await DeviceCredentialRepository(scope).authenticate(token.credential_id, token.secret)
    if device_id is None:
        raise AuthenticationError("the device credential is unknown or revoked")
    sink = ctx.require_sink()
    body = await request.body()
    now = utcnow()
    try:
        samples = decode(body, max_bytes=ctx.device_payload_bytes, now=now)
    except PayloadError as exc:
        sink.reject(
            Rejection(
                token.tenant_id, device_id, exc.reason, exc.detail, SOURCE, Rejection.excerpt(body), now
            )
        )
        if exc.reason is RejectReason.TOO_LARGE and len(body) > ctx.device_payload_bytes:
            raise PayloadTooLargeError(exc.detail, limit=ctx.device_payload_bytes) from exc
        raise InvalidInputError(
            exc.detail, errors=[{"loc": ["body"], "msg": exc.detail, "type": exc.reason.value}]
        ) from exc
    for sample in samples:
        sink.offer(Reading(token.tenant_id, device_id, sample.ts, sample.metrics, SOURCE))
    return Accepted(device_id=device_id, accepted=len(samples))
