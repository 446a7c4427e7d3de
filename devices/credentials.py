"""Per-device credentials for HTTP and CoAP ingestion: generated, shown once, stored as a hash.

The bearer form is ``fgd.<tenant>.<credential id>.<secret>``: the tenant lets verification run
under that tenant's row-level security, the credential id names the device.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from model.errors import NotFoundError
from model.ids import is_tenant_id, new_id
from storage.credentials import hash_secret, new_secret, secret_matches
from storage.database import Database, TenantScope
from storage.tables import device_credentials, devices
from storage.types import utcnow

PREFIX = "fgd"


@dataclass(frozen=True, slots=True)
class DeviceCredential:
    """A device credential as stored (no secret)."""

    id: str
    device_id: str
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class DeviceToken:
    """A parsed device bearer string."""

    tenant_id: str
    credential_id: str
    secret: str


def parse_device_token(raw: str) -> DeviceToken | None:
    """Split ``fgd.<tenant>.<id>.<secret>``, or None if it is not one."""
    parts = raw.split(".")
    if len(parts) == 4 and parts[0] == PREFIX and all(parts[1:]):
        return DeviceToken(parts[1], parts[2], parts[3])
    return None


def _credential(row: sa.Row[Any]) -> DeviceCredential:
    return DeviceCredential(row.id, row.device_id, row.created_at, row.revoked_at)


class DeviceCredentialRepository:
    """Credentials of the devices of the scope's tenant."""

    def __init__(self, scope: TenantScope) -> None:
        self._scope = scope

    async def issue(self, device_id: str) -> tuple[DeviceCredential, str]:
        """A new credential for ``device_id`` and its bearer string (shown once)."""
        exists = self._scope.select(devices, devices.c.id).where(devices.c.id == device_id)
        if (await self._scope.conn.execute(exists)).first() is None:
            raise NotFoundError("device", device_id)
        credential_id = new_id("dc")
        secret = new_secret()
        await self._scope.insert(
            device_credentials,
            [
                {
                    "id": credential_id,
                    "device_id": device_id,
                    "secret_hash": hash_secret(secret),
                    "created_at": utcnow(),
                    "revoked_at": None,
                }
            ],
        )
        bearer = f"{PREFIX}.{self._scope.tenant_id}.{credential_id}.{secret}"
        return await self.get(device_id, credential_id), bearer

    async def get(self, device_id: str, credential_id: str) -> DeviceCredential:
        """One credential of a device, or NotFoundError."""
        stmt = self._scope.select(device_credentials).where(
            device_credentials.c.id == credential_id, device_credentials.c.device_id == device_id
        )
        row = (await self._scope.conn.execute(stmt)).first()
        if row is None:
            raise NotFoundError("device credential", credential_id)
        return _credential(row)

    async def list(self, device_id: str) -> list[DeviceCredential]:
        """Every credential of a device, newest first."""
        stmt = (
            self._scope.select(device_credentials)
            .where(device_credentials.c.device_id == device_id)
            .order_by(device_credentials.c.created_at.desc())
        )
        return [_credential(r) for r in await self._scope.conn.execute(stmt)]

    async def revoke(self, device_id: str, credential_id: str) -> DeviceCredential:
        """Revoke a credential at once."""
        credential = await self.get(device_id, credential_id)
        if credential.revoked_at is None:
            await self._scope.conn.execute(
                self._scope.update(device_credentials)
                .where(device_credentials.c.id == credential_id)
                .values(revoked_at=utcnow())
            )
        return await self.get(device_id, credential_id)

    async def authenticate(self, credential_id: str, secret: str) -> str | None:
        """The device id the credential belongs to, if the secret matches and it is not revoked."""
        stmt = self._scope.select(device_credentials).where(device_credentials.c.id == credential_id)
        row = (await self._scope.conn.execute(stmt)).first()
        if row is None or row.revoked_at is not None or not secret_matches(row.secret_hash, secret):
            return None
        device_id: str = row.device_id
        return device_id


class CredentialAuthenticator:
    """Verifies device bearer strings for connectors (HTTP, CoAP) under the tenant's isolation."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def authenticate(self, token: str) -> tuple[str, str] | None:
        """``(tenant_id, device_id)`` for a valid, unrevoked credential, else None."""
        parsed = parse_device_token(token)
        if parsed is None or not is_tenant_id(parsed.tenant_id):
            return None
        async with self._database.tenant(parsed.tenant_id) as scope:
            device_id = await DeviceCredentialRepository(scope).authenticate(
                parsed.credential_id, parsed.secret
            )
        return None if device_id is None else (parsed.tenant_id, device_id)
