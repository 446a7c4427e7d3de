"""The registry as ingestion sees it: cached device profiles and persisted status changes."""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Protocol

import sqlalchemy as sa

from model.devices import DeviceProfile, DeviceStatus, MetricSpec
from storage.database import Database
from storage.tables import device_types, devices
from storage.tenancy import TenantRepository


class StatusChangeLike(Protocol):
    """The fields of a status change this module persists (read-only)."""

    @property
    def tenant_id(self) -> str: ...
    @property
    def device_id(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def at(self) -> datetime: ...
    @property
    def last_seen(self) -> datetime: ...


class RegistryCatalogue:
    """Device profiles from the relational registry, cached briefly.

    A known device is cached for ``ttl`` seconds; an unknown one for ``negative_ttl`` (short, so
    a device registered a moment ago is accepted almost at once, while a flood of readings for
    an unknown id does not turn into a flood of queries).
    """

    def __init__(self, database: Database, *, ttl: float = 30.0, negative_ttl: float = 2.0) -> None:
        self._database = database
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._cache: dict[tuple[str, str], tuple[float, DeviceProfile | None]] = {}
        self._tenants: dict[str, tuple[float, bool]] = {}

    async def tenant_exists(self, tenant_id: str) -> bool:
        """Whether the tenant exists (cached like a device profile)."""
        now = time.monotonic()
        cached = self._tenants.get(tenant_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        async with self._database.platform() as conn:
            exists = await TenantRepository(conn).find(tenant_id) is not None
        self._tenants[tenant_id] = (now + (self._ttl if exists else self._negative_ttl), exists)
        return exists

    def invalidate(self, tenant_id: str, device_id: str) -> None:
        """Forget a cached profile (after a device or its type changed)."""
        self._cache.pop((tenant_id, device_id), None)

    async def profiles(self, tenant_id: str, device_ids: Collection[str]) -> dict[str, DeviceProfile]:
        """Profiles of the existing devices among ``device_ids``."""
        now = time.monotonic()
        found: dict[str, DeviceProfile] = {}
        missing = []
        for device_id in device_ids:
            entry = self._cache.get((tenant_id, device_id))
            if entry is not None and entry[0] > now:
                if entry[1] is not None:
                    found[device_id] = entry[1]
            else:
                missing.append(device_id)
        if missing:
            loaded = await self._load(tenant_id, missing)
            for device_id in missing:
                profile = loaded.get(device_id)
                ttl = self._ttl if profile is not None else self._negative_ttl
                self._cache[(tenant_id, device_id)] = (now + ttl, profile)
            found.update(loaded)
        return found

    async def _load(self, tenant_id: str, device_ids: list[str]) -> dict[str, DeviceProfile]:
        async with self._database.tenant(tenant_id, readonly=True) as scope:
            stmt = (
                scope.select(devices, devices.c.id, devices.c.labels, device_types.c.id.label("type_id"))
                .add_columns(device_types.c.metrics, device_types.c.inactivity_timeout_s)
                .join(
                    device_types,
                    sa.and_(
                        device_types.c.tenant_id == devices.c.tenant_id,
                        device_types.c.id == devices.c.type_id,
                    ),
                )
                .where(devices.c.id.in_(device_ids))
            )
            rows = (await scope.conn.execute(stmt)).all()
        profiles = {}
        for row in rows:
            specs = [MetricSpec.model_validate(m) for m in row.metrics]
            profiles[row.id] = DeviceProfile(
                device_id=row.id,
                type_id=row.type_id,
                metrics={m.name: m for m in specs},
                inactivity_timeout_s=row.inactivity_timeout_s,
                labels=dict(row.labels),
            )
        return profiles

    async def record_status(self, changes: Sequence[StatusChangeLike]) -> None:
        """Persist status changes, one transaction per tenant."""
        by_tenant: dict[str, list[StatusChangeLike]] = {}
        for change in changes:
            by_tenant.setdefault(change.tenant_id, []).append(change)
        for tenant_id, items in by_tenant.items():
            async with self._database.tenant(tenant_id) as scope:
                # One statement executed for all rows (a fleet coming online is thousands of them).
                stmt = (
                    scope.update(devices)
                    .where(devices.c.id == sa.bindparam("b_device"))
                    .values(
                        status=sa.bindparam("b_status"),
                        status_changed_at=sa.bindparam("b_at"),
                        last_seen_at=sa.bindparam("b_last_seen"),
                    )
                )
                await scope.conn.execute(
                    stmt,
                    [
                        {
                            "b_device": change.device_id,
                            "b_status": DeviceStatus(change.status).value,
                            "b_at": change.at,
                            "b_last_seen": change.last_seen,
                        }
                        for change in items
                    ],
                )
