"""Durable rule state and decision traces, per tenant."""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite

from storage.database import Database, TenantScope
from storage.tables import rule_state, rule_traces
from storage.tenancy import TenantRepository
from storage.types import utcnow


@dataclass(frozen=True, slots=True)
class PendingTimer:
    """A duration waiting to complete for one (tenant, rule, device)."""

    tenant_id: str
    rule_id: str
    device_id: str
    wake_at: datetime


@dataclass(frozen=True, slots=True)
class StateRow:
    """The stored state of one (rule, device) of a tenant."""

    rule_id: str
    device_id: str
    state: dict[str, Any]
    wake_at: datetime | None


class RuleStateRepository:
    """Rule state of the scope's tenant, keyed by (rule, device)."""

    def __init__(self, scope: TenantScope) -> None:
        self._scope = scope

    async def get(self, rule_id: str, device_id: str) -> dict[str, dict[str, Any]]:
        """The state, or an empty one."""
        stmt = self._scope.select(rule_state, rule_state.c.state).where(
            rule_state.c.rule_id == rule_id, rule_state.c.device_id == device_id
        )
        found = (await self._scope.conn.execute(stmt)).scalar()
        return dict(found) if found else {}

    async def put(
        self, rule_id: str, device_id: str, state: dict[str, Any], wake_at: datetime | None
    ) -> None:
        """Write the state (insert or replace)."""
        now = utcnow()
        updated = await self._scope.conn.execute(
            self._scope.update(rule_state)
            .where(rule_state.c.rule_id == rule_id, rule_state.c.device_id == device_id)
            .values(state=state, wake_at=wake_at, updated_at=now)
        )
        if updated.rowcount == 0:
            await self._scope.insert(
                rule_state,
                [
                    {
                        "rule_id": rule_id,
                        "device_id": device_id,
                        "state": state,
                        "wake_at": wake_at,
                        "updated_at": now,
                    }
                ],
            )

    async def for_device(self, device_id: str) -> list[StateRow]:
        """The state of every rule for one device (read once, when the engine first sees it)."""
        stmt = self._scope.select(
            rule_state, rule_state.c.rule_id, rule_state.c.state, rule_state.c.wake_at
        ).where(rule_state.c.device_id == device_id)
        return [
            StateRow(r.rule_id, device_id, dict(r.state), r.wake_at)
            for r in await self._scope.conn.execute(stmt)
        ]

    async def put_many(self, rows: builtins.list[StateRow]) -> None:
        """Insert or replace many states in one statement."""
        if not rows:
            return
        now = utcnow()
        values = [
            {
                "tenant_id": self._scope.tenant_id,
                "rule_id": r.rule_id,
                "device_id": r.device_id,
                "state": r.state,
                "wake_at": r.wake_at,
                "updated_at": now,
            }
            for r in rows
        ]
        dialect = postgresql if self._scope.conn.dialect.name == "postgresql" else sqlite
        stmt = dialect.insert(rule_state)
        stmt = stmt.on_conflict_do_update(
            index_elements=["tenant_id", "rule_id", "device_id"],
            set_={"state": stmt.excluded.state, "wake_at": stmt.excluded.wake_at, "updated_at": now},
        )
        await self._scope.conn.execute(stmt, values)

    async def delete_device(self, device_id: str) -> None:
        """Drop the state of every rule for a device (it was decommissioned)."""
        await self._scope.conn.execute(
            self._scope.delete(rule_state).where(rule_state.c.device_id == device_id)
        )

    async def timers(self) -> builtins.list[PendingTimer]:
        """Every pending timer of the tenant."""
        stmt = self._scope.select(
            rule_state, rule_state.c.rule_id, rule_state.c.device_id, rule_state.c.wake_at
        ).where(rule_state.c.wake_at.is_not(None))
        return [
            PendingTimer(self._scope.tenant_id, r.rule_id, r.device_id, r.wake_at)
            for r in await self._scope.conn.execute(stmt)
        ]


async def all_timers(database: Database) -> list[PendingTimer]:
    """Pending timers of every tenant (at start-up), each read under its tenant's isolation."""
    async with database.platform() as conn:
        tenants = await TenantRepository(conn).list()
    found: list[PendingTimer] = []
    for tenant in tenants:
        async with database.tenant(tenant.id) as scope:
            found.extend(await RuleStateRepository(scope).timers())
    return found


class TraceRepository:
    """Decision traces of the scope's tenant."""

    def __init__(self, scope: TenantScope) -> None:
        self._scope = scope

    async def add_many(self, rows: builtins.list[dict[str, Any]]) -> None:
        """Store many traces (rows as the engine buffers them) in one statement."""
        await self._scope.insert(rule_traces, rows)

    async def list(
        self,
        rule_id: str,
        *,
        device_id: str | None = None,
        outcome: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        before_id: int | None = None,
        limit: int = 50,
    ) -> builtins.list[dict[str, Any]]:
        """Traces of a rule, newest first."""
        stmt = self._scope.select(rule_traces).where(rule_traces.c.rule_id == rule_id)
        if device_id is not None:
            stmt = stmt.where(rule_traces.c.device_id == device_id)
        if outcome is not None:
            stmt = stmt.where(rule_traces.c.outcome == outcome)
        if since is not None:
            stmt = stmt.where(rule_traces.c.at >= since)
        if until is not None:
            stmt = stmt.where(rule_traces.c.at < until)
        if before_id is not None:
            stmt = stmt.where(rule_traces.c.id < before_id)
        stmt = stmt.order_by(rule_traces.c.id.desc()).limit(limit)
        return [
            {
                "id": r.id,
                "rule_id": r.rule_id,
                "rule_version": r.rule_version,
                "device_id": r.device_id,
                "at": r.at,
                "event": r.event,
                "outcome": r.outcome,
                "steps": r.steps,
                "actions": r.actions,
            }
            for r in await self._scope.conn.execute(stmt)
        ]

    async def prune(self, rule_id: str, keep: int) -> None:
        """Keep the newest ``keep`` traces of a rule."""
        cutoff = (
            await self._scope.conn.execute(
                self._scope.select(rule_traces, rule_traces.c.id)
                .where(rule_traces.c.rule_id == rule_id)
                .order_by(rule_traces.c.id.desc())
                .offset(keep)
                .limit(1)
            )
        ).scalar()
        if cutoff is not None:
            await self._scope.conn.execute(
                self._scope.delete(rule_traces).where(
                    rule_traces.c.rule_id == rule_id, rule_traces.c.id <= cutoff
                )
            )
