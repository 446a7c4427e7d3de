"""API tokens of a tenant: issued once, stored hashed, scoped, expiring, revocable."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response, status
from pydantic import Field, field_validator

from api.auth import Principal, require
from api.context import api_context
from api.problems import PROBLEM_RESPONSES
from api.routers._schema import RequestBody, Resource
from model.devices import Name
from model.errors import PermissionDeniedError
from model.scopes import ALL_SCOPES
from storage.tenancy import ApiToken, TokenRepository
from storage.types import utcnow

router = APIRouter(prefix="/tokens", tags=["tokens"], responses=PROBLEM_RESPONSES)


class TokenIn(RequestBody):
    """A token to issue. Its scopes must be a subset of the caller's."""

    name: Name
    scopes: list[str] = Field(min_length=1, max_length=len(ALL_SCOPES), examples=[["devices:read"]])
    expires_in_days: int | None = Field(
        default=90,
        ge=1,
        le=3650,
        description="Days until expiry; null for a token that never expires.",
    )

    @field_validator("scopes")
    @classmethod
    def _known_scopes(cls, scopes: list[str]) -> list[str]:
        unknown = sorted(set(scopes) - ALL_SCOPES)
        if unknown:
            raise ValueError(f"unknown scope(s) {unknown}; known scopes: {sorted(ALL_SCOPES)}")
        return sorted(set(scopes))


class TokenOut(Resource):
    """A token as stored (no secret)."""

    id: str
    name: str
    scopes: list[str]
    user_id: str | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


class IssuedTokenOut(TokenOut):
    """A newly issued token; ``token`` is shown this once and cannot be read again."""

    token: str


def _out(token: ApiToken) -> TokenOut:
    return TokenOut.model_validate({**_fields(token), "scopes": sorted(token.scopes)})


def _fields(token: ApiToken) -> dict[str, object]:
    return {name: getattr(token, name) for name in TokenOut.model_fields}


@router.get("", summary="List tokens")
async def list_tokens(
    request: Request, principal: Annotated[Principal, Depends(require("tokens:read"))]
) -> list[TokenOut]:
    """Every token of the tenant, newest first, without secrets."""
    async with api_context(request).database.tenant(principal.tenant) as scope:
        return [_out(t) for t in await TokenRepository(scope).list()]


@router.post("", status_code=status.HTTP_201_CREATED, summary="Issue a token")
async def issue_token(
    request: Request,
    response: Response,
    body: TokenIn,
    principal: Annotated[Principal, Depends(require("tokens:write"))],
) -> IssuedTokenOut:
    """Issue a token with at most the caller's scopes; the secret is in this response only."""
    beyond = sorted(set(body.scopes) - principal.scopes)
    if beyond:
        raise PermissionDeniedError(f"a token cannot grant scopes its creator lacks: {beyond}", scopes=beyond)
    expires_at = utcnow() + timedelta(days=body.expires_in_days) if body.expires_in_days else None
    async with api_context(request).database.tenant(principal.tenant) as scope:
        issued = await TokenRepository(scope).issue(
            name=body.name, scopes=body.scopes, user_id=principal.user_id, expires_at=expires_at
        )
    response.headers["Location"] = f"{request.url.path}/{issued.token.id}"
    response.headers["Cache-Control"] = "no-store"
    return IssuedTokenOut.model_validate({**_out(issued.token).model_dump(), "token": issued.bearer})


@router.get("/{token_id}", summary="Read a token")
async def get_token(
    request: Request,
    token_id: str,
    principal: Annotated[Principal, Depends(require("tokens:read"))],
) -> TokenOut:
    """One token without its secret; 404 for an unknown or foreign id."""
    async with api_context(request).database.tenant(principal.tenant) as scope:
        return _out(await TokenRepository(scope).get(token_id))


@router.delete("/{token_id}", summary="Revoke a token")
async def revoke_token(
    request: Request,
    token_id: str,
    principal: Annotated[Principal, Depends(require("tokens:write"))],
) -> TokenOut:
    """Revoke a token at once; it is kept (revoked) for the audit trail."""
    async with api_context(request).database.tenant(principal.tenant) as scope:
        return _out(await TokenRepository(scope).revoke(token_id))
