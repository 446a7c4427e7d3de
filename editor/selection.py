"""Which devices a rule's selector picks: counted for the builder, listed for backtests."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from devices.registry import DeviceFilter, DeviceRepository
from engine.evaluation import DeviceView
from storage.database import TenantScope
from storage.tables import device_labels, devices


def _selector_parts(selector: Mapping[str, Any]) -> tuple[list[str], str | None, dict[str, str]]:
    ids = [str(i) for i in selector.get("ids") or []]
    type_id = selector.get("type") or None
    labels = {str(k): str(v) for k, v in (selector.get("labels") or {}).items()}
    return ids, (str(type_id) if type_id else None), labels


async def count_matching(scope: TenantScope, selector: Mapping[str, Any]) -> int:
    """How many of the tenant's devices the selector picks (one indexed COUNT query)."""
    ids, type_id, labels = _selector_parts(selector)
    stmt = scope.select(devices, sa.func.count().label("n"))
    if ids:
        stmt = stmt.where(devices.c.id.in_(ids))
    if type_id:
        stmt = stmt.where(devices.c.type_id == type_id)
    for key, value in sorted(labels.items()):
        label = device_labels.alias()
        stmt = stmt.where(
            sa.exists().where(
                label.c.tenant_id == devices.c.tenant_id,
                label.c.device_id == devices.c.id,
                label.c.key == key,
                label.c.value == value,
            )
        )
    return int((await scope.conn.execute(stmt)).scalar_one())


async def matching_views(
    scope: TenantScope, selector: Mapping[str, Any], timezone: str, *, limit: int
) -> tuple[list[DeviceView], bool]:
    """Up to ``limit`` selected devices as the engine sees them, and whether there were more."""
    ids, type_id, labels = _selector_parts(selector)
    zone = ZoneInfo(timezone)
    repo = DeviceRepository(scope)
    found: list[DeviceView] = []
    cursor: str | None = None
    while True:
        page = await repo.list(DeviceFilter(type_id=type_id, labels=labels), limit=500, cursor=cursor)
        for device in page.items:
            if ids and device.id not in ids:
                continue
            if len(found) == limit:
                return found, True
            found.append(DeviceView(device.id, device.type_id, dict(device.labels), zone))
        cursor = page.next_cursor
        if cursor is None:
            return found, False
