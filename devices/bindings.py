"""Device bindings: the protocol configuration of devices the platform polls or subscribes to."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from model.errors import NotFoundError
from storage.database import Database, TenantScope
from storage.tables import device_bindings, devices
from storage.tenancy import TenantRepository
from storage.types import utcnow


@dataclass(frozen=True, slots=True)
class DeviceBinding:
    """A device's binding to a connector kind, with that connector's configuration."""

    tenant_id: str
    device_id: str
    kind: str
    config: dict[str, Any]
    created_at: datetime
    updated_at: datetime


def _binding(tenant_id: str, row: sa.Row[Any]) -> DeviceBinding:
    return DeviceBinding(tenant_id, row.device_id, row.kind, dict(row.config), row.created_at, row.updated_at)


class DeviceBindingRepository:
    """Bindings of the scope's tenant (one per device)."""

    def __init__(self, scope: TenantScope) -> None:
        self._scope = scope

    async def put(self, device_id: str, kind: str, config: Mapping[str, Any]) -> DeviceBinding:
        """Create or replace the binding of a device (the config was validated by the caller)."""
        exists = self._scope.select(devices, devices.c.id).where(devices.c.id == device_id)
        if (await self._scope.conn.execute(exists)).first() is None:
            raise NotFoundError("device", device_id)
        now = utcnow()
        updated = await self._scope.conn.execute(
            self._scope.update(device_bindings)
            .where(device_bindings.c.device_id == device_id)
            .values(kind=kind, config=dict(config), updated_at=now)
        )
        if updated.rowcount == 0:
            await self._scope.insert(
                device_bindings,
                [
                    {
                        "device_id": device_id,
                        "kind": kind,
                        "config": dict(config),
                        "created_at": now,
                        "updated_at": now,
                    }
                ],
            )
        return await self.get(device_id)

    async def get(self, device_id: str) -> DeviceBinding:
        """The binding of a device, or NotFoundError."""
        stmt = self._scope.select(device_bindings).where(device_bindings.c.device_id == device_id)
        row = (await self._scope.conn.execute(stmt)).first()
        if row is None:
            raise NotFoundError("device binding", device_id)
        return _binding(self._scope.tenant_id, row)

    async def delete(self, device_id: str) -> None:
        """Remove the binding; the device stays registered."""
        stmt = self._scope.delete(device_bindings).where(device_bindings.c.device_id == device_id)
        if (await self._scope.conn.execute(stmt)).rowcount == 0:
            raise NotFoundError("device binding", device_id)

    async def list(self, kind: str | None = None) -> list[DeviceBinding]:
        """Every binding of the tenant (optionally of one kind)."""
        stmt = self._scope.select(device_bindings)
        if kind is not None:
            stmt = stmt.where(device_bindings.c.kind == kind)
        return [_binding(self._scope.tenant_id, r) for r in await self._scope.conn.execute(stmt)]


async def all_bindings(database: Database, kind: str) -> list[DeviceBinding]:
    """Every binding of ``kind`` across tenants, each read under its own tenant's isolation."""
    async with database.platform() as conn:
        tenants = await TenantRepository(conn).list()
    found: list[DeviceBinding] = []
    for tenant in tenants:
        async with database.tenant(tenant.id) as scope:
            found.extend(await DeviceBindingRepository(scope).list(kind))
    return found
