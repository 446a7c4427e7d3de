"""Tenants, users, API tokens and operator tokens."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from model.errors import ConflictError, NotFoundError
from model.ids import new_id
from model.scopes import Role
from storage.credentials import (
    format_token,
    hash_password,
    hash_secret,
    new_secret,
    secret_matches,
)
from storage.database import TenantScope
from storage.tables import api_tokens, operator_tokens, tenants, users
from storage.types import utcnow

# last_used_at is advisory: write it at most this often per token, not on every request.
LAST_USED_RESOLUTION = timedelta(seconds=60)


class TenantStatus(StrEnum):
    """Whether a tenant's credentials are accepted."""

    ACTIVE = "active"
    SUSPENDED = "suspended"


@dataclass(frozen=True, slots=True)
class Tenant:
    """A customer of the platform; every tenant-owned row points at one."""

    id: str
    name: str
    status: TenantStatus
    timezone: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class User:
    """A person who signs in to one tenant (the password hash never leaves the repository)."""

    id: str
    email: str
    display_name: str
    role: Role
    disabled: bool
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class ApiToken:
    """A tenant API token as stored: its secret exists only as a hash."""

    id: str
    name: str
    scopes: frozenset[str]
    user_id: str | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None

    def usable_at(self, now: datetime) -> bool:
        """Neither revoked nor expired at ``now``."""
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A newly created token with the bearer string, shown once and never again."""

    token: ApiToken
    bearer: str


def _tenant(row: sa.Row[Any]) -> Tenant:
    return Tenant(
        id=row.id,
        name=row.name,
        status=TenantStatus(row.status),
        timezone=row.timezone,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _user(row: sa.Row[Any]) -> User:
    return User(
        id=row.id,
        email=row.email,
        display_name=row.display_name,
        role=Role(row.role),
        disabled=row.disabled,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _token(row: sa.Row[Any]) -> ApiToken:
    return ApiToken(
        id=row.id,
        name=row.name,
        scopes=frozenset(row.scopes),
        user_id=row.user_id,
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        last_used_at=row.last_used_at,
    )


class TenantRepository:
    """The tenants table (a platform table: operators only)."""

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def create(self, tenant_id: str, *, name: str, timezone: str = "UTC") -> Tenant:
        """Create a tenant; ConflictError if the id is taken."""
        now = utcnow()
        try:
            async with self._conn.begin_nested():
                await self._conn.execute(
                    sa.insert(tenants).values(
                        id=tenant_id,
                        name=name,
                        status=TenantStatus.ACTIVE.value,
                        timezone=timezone,
                        created_at=now,
                        updated_at=now,
                    )
                )
        except IntegrityError as exc:
            raise ConflictError(f"tenant {tenant_id!r} already exists", id=tenant_id) from exc
        return await self.get(tenant_id)

    async def get(self, tenant_id: str) -> Tenant:
        """The tenant, or NotFoundError."""
        row = (await self._conn.execute(sa.select(tenants).where(tenants.c.id == tenant_id))).first()
        if row is None:
            raise NotFoundError("tenant", tenant_id)
        return _tenant(row)

    async def find(self, tenant_id: str) -> Tenant | None:
        """The tenant, or None."""
        try:
            return await self.get(tenant_id)
        except NotFoundError:
            return None

    async def list(self) -> list[Tenant]:
        """Every tenant, by id."""
        rows = await self._conn.execute(sa.select(tenants).order_by(tenants.c.id))
        return [_tenant(r) for r in rows]

    async def update(self, tenant_id: str, changes: Mapping[str, Any]) -> Tenant:
        """Rename, suspend/reactivate or change the time zone of a tenant."""
        values = {k: (v.value if isinstance(v, StrEnum) else v) for k, v in changes.items()}
        values["updated_at"] = utcnow()
        result = await self._conn.execute(sa.update(tenants).where(tenants.c.id == tenant_id).values(values))
        if result.rowcount == 0:
            raise NotFoundError("tenant", tenant_id)
        return await self.get(tenant_id)


class UserRepository:
    """Users of the scope's tenant."""

    def __init__(self, scope: TenantScope) -> None:
        self._scope = scope

    async def create(self, *, email: str, password: str, role: Role, display_name: str = "") -> User:
        """Create a user with an Argon2id password hash; ConflictError for a taken email."""
        now = utcnow()
        user_id = new_id("usr")
        row = {
            "id": user_id,
            "email": email.lower(),
            "display_name": display_name or email.split("@")[0],
            "role": role.value,
            "password_hash": hash_password(password),
            "disabled": False,
            "created_at": now,
            "updated_at": now,
        }
        try:
            async with self._scope.conn.begin_nested():
                await self._scope.insert(users, [row])
        except IntegrityError as exc:
            raise ConflictError(f"a user with email {email!r} already exists") from exc
        return await self.get(user_id)

    async def get(self, user_id: str) -> User:
        """The user, or NotFoundError."""
        row = (await self._scope.conn.execute(self._scope.select(users).where(users.c.id == user_id))).first()
        if row is None:
            raise NotFoundError("user", user_id)
        return _user(row)

    async def password_hash_for(self, email: str) -> tuple[User, str] | None:
        """The user with ``email`` and their password hash, for sign-in."""
        stmt = self._scope.select(users).where(users.c.email == email.lower())
        row = (await self._scope.conn.execute(stmt)).first()
        return None if row is None else (_user(row), row.password_hash)

    async def list(self) -> list[User]:
        """Every user of the tenant, by email."""
        rows = await self._scope.conn.execute(self._scope.select(users).order_by(users.c.email))
        return [_user(r) for r in rows]

    async def update(self, user_id: str, changes: Mapping[str, Any]) -> User:
        """Change display name, role, password or the disabled flag."""
        values: dict[str, Any] = {}
        for key, value in changes.items():
            if key == "password":
                values["password_hash"] = hash_password(value)
            else:
                values[key] = value.value if isinstance(value, StrEnum) else value
        values["updated_at"] = utcnow()
        stmt = self._scope.update(users).where(users.c.id == user_id).values(values)
        if (await self._scope.conn.execute(stmt)).rowcount == 0:
            raise NotFoundError("user", user_id)
        return await self.get(user_id)

    async def delete(self, user_id: str) -> None:
        """Remove a user and revoke the tokens they created."""
        stmt = self._scope.delete(users).where(users.c.id == user_id)
        if (await self._scope.conn.execute(stmt)).rowcount == 0:
            raise NotFoundError("user", user_id)
        await self._scope.conn.execute(
            self._scope.update(api_tokens)
            .where(api_tokens.c.user_id == user_id, api_tokens.c.revoked_at.is_(None))
            .values(revoked_at=utcnow())
        )


class TokenRepository:
    """API tokens of the scope's tenant."""

    def __init__(self, scope: TenantScope) -> None:
        self._scope = scope

    async def issue(
        self,
        *,
        name: str,
        scopes: Iterable[str],
        user_id: str | None = None,
        expires_at: datetime | None = None,
    ) -> IssuedToken:
        """Create a token; the bearer string is returned here and stored only as a hash."""
        key_id = new_id("tok")
        secret = new_secret()
        row = {
            "id": key_id,
            "name": name,
            "secret_hash": hash_secret(secret),
            "scopes": sorted(set(scopes)),
            "user_id": user_id,
            "created_at": utcnow(),
            "expires_at": expires_at,
            "revoked_at": None,
            "last_used_at": None,
        }
        await self._scope.insert(api_tokens, [row])
        return IssuedToken(
            token=await self.get(key_id),
            bearer=format_token(self._scope.tenant_id, key_id, secret),
        )

    async def get(self, token_id: str) -> ApiToken:
        """The token, or NotFoundError."""
        stmt = self._scope.select(api_tokens).where(api_tokens.c.id == token_id)
        row = (await self._scope.conn.execute(stmt)).first()
        if row is None:
            raise NotFoundError("token", token_id)
        return _token(row)

    async def list(self) -> list[ApiToken]:
        """Every token of the tenant, newest first."""
        stmt = self._scope.select(api_tokens).order_by(api_tokens.c.created_at.desc())
        return [_token(r) for r in await self._scope.conn.execute(stmt)]

    async def revoke(self, token_id: str) -> ApiToken:
        """Revoke a token (idempotent: revoking twice keeps the first time)."""
        token = await self.get(token_id)
        if token.revoked_at is None:
            await self._scope.conn.execute(
                self._scope.update(api_tokens).where(api_tokens.c.id == token_id).values(revoked_at=utcnow())
            )
        return await self.get(token_id)

    async def verify(self, token_id: str, secret: str, now: datetime) -> ApiToken | None:
        """The token if ``secret`` matches and it is usable at ``now``; records last use."""
        stmt = self._scope.select(api_tokens).where(api_tokens.c.id == token_id)
        row = (await self._scope.conn.execute(stmt)).first()
        if row is None or not secret_matches(row.secret_hash, secret):
            return None
        token = _token(row)
        if not token.usable_at(now):
            return None
        if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
            await self._scope.conn.execute(
                self._scope.update(api_tokens).where(api_tokens.c.id == token_id).values(last_used_at=now)
            )
        return token


class OperatorTokenRepository:
    """Platform operator tokens (a platform table: they act across tenants)."""

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def issue(self, *, name: str, expires_at: datetime | None = None) -> str:
        """Create an operator token and return its bearer string (shown once)."""
        key_id = new_id("op")
        secret = new_secret()
        await self._conn.execute(
            sa.insert(operator_tokens).values(
                id=key_id,
                name=name,
                secret_hash=hash_secret(secret),
                created_at=utcnow(),
                expires_at=expires_at,
            )
        )
        return format_token(None, key_id, secret)

    async def verify(self, token_id: str, secret: str, now: datetime) -> bool:
        """Whether the operator token exists, matches and is usable at ``now``."""
        row = (
            await self._conn.execute(sa.select(operator_tokens).where(operator_tokens.c.id == token_id))
        ).first()
        if row is None or not secret_matches(row.secret_hash, secret):
            return False
        if row.revoked_at is not None or (row.expires_at is not None and now >= row.expires_at):
            return False
        if row.last_used_at is None or now - row.last_used_at > LAST_USED_RESOLUTION:
            await self._conn.execute(
                sa.update(operator_tokens).where(operator_tokens.c.id == token_id).values(last_used_at=now)
            )
        return True
