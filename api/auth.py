"""Bearer-token authentication and scope checks: who is calling, for which tenant, allowed to do what."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.context import api_context
from model.errors import AuthenticationError, PermissionDeniedError
from storage.credentials import parse_token
from storage.database import Database
from storage.tenancy import OperatorTokenRepository, TenantRepository, TenantStatus, TokenRepository
from storage.types import utcnow

_bearer = HTTPBearer(auto_error=False, description="`fg.<tenant>.<key>.<secret>` or operator `fgo.…`")


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller: a tenant token with scopes, or a platform operator."""

    tenant_id: str | None
    token_id: str
    scopes: frozenset[str]
    user_id: str | None = None

    @property
    def is_operator(self) -> bool:
        """Whether this is a platform operator (no tenant)."""
        return self.tenant_id is None

    @property
    def tenant(self) -> str:
        """The tenant id of a tenant principal."""
        if self.tenant_id is None:
            raise PermissionDeniedError("an operator token cannot act inside a tenant")
        return self.tenant_id


async def authenticate(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """Resolve the bearer token; 401 for anything that is not a usable token."""
    if credentials is None:
        raise AuthenticationError("send an API token as 'Authorization: Bearer <token>'", reason="missing")
    return await principal_for(api_context(request).database, credentials.credentials)


async def principal_for(db: Database, raw: str) -> Principal:
    """The principal a raw token string stands for; AuthenticationError if none."""
    parts = parse_token(raw)
    if parts is None:
        raise AuthenticationError("the bearer token is not a flatgigs token", reason="malformed")
    now = utcnow()
    if parts.tenant_id is None:
        async with db.platform() as conn:
            if not await OperatorTokenRepository(conn).verify(parts.key_id, parts.secret, now):
                raise _rejected()
        return Principal(tenant_id=None, token_id=parts.key_id, scopes=frozenset())
    async with db.platform() as conn:
        tenant = await TenantRepository(conn).find(parts.tenant_id)
    if tenant is None or tenant.status is not TenantStatus.ACTIVE:
        raise _rejected()
    async with db.tenant(parts.tenant_id) as scope:
        token = await TokenRepository(scope).verify(parts.key_id, parts.secret, now)
    if token is None:
        raise _rejected()
    return Principal(tenant_id=parts.tenant_id, token_id=token.id, scopes=token.scopes, user_id=token.user_id)


def check_scope(principal: Principal, scope: str) -> Principal:
    """The principal if it is a tenant token holding ``scope``; PermissionDeniedError otherwise."""
    if principal.is_operator:
        raise PermissionDeniedError("operator tokens manage tenants; use a tenant token here", required=scope)
    if scope not in principal.scopes:
        raise PermissionDeniedError(f"the token lacks the scope {scope!r}", required=scope)
    return principal


def _rejected() -> AuthenticationError:
    # One answer for unknown, wrong, expired and revoked tokens: no oracle for guessing.
    return AuthenticationError("the token is unknown, expired or revoked", reason="rejected")


def require(scope: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency that admits tenant tokens holding ``scope``."""

    async def dependency(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
        return check_scope(principal, scope)

    return dependency


async def require_operator(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
    """A dependency that admits platform operators only."""
    if not principal.is_operator:
        raise PermissionDeniedError("only a platform operator token may manage tenants")
    return principal
