"""Alarms: one active alarm per (tenant, rule, device, alarm type), its lifecycle and its history.

An alarm is *active* until it is cleared (by its rule, or by a person through the API) and
*unacknowledged* until someone acknowledges it; the two are independent, so an alarm is in one of
four states (``active_unack``, ``active_ack``, ``cleared_unack``, ``cleared_ack``) derived from
``cleared_at`` and ``acknowledged_at``. Raising a key that has an active alarm updates that alarm
(severity, message, count, last raise); raising it after a clear creates a new alarm, and the
cleared one stays as history. A partial unique index on active alarms makes the "one active alarm"
rule hold under concurrent raises, across processes and workers (see ADR 0012).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from model.errors import InvalidCursorError, InvalidInputError, NotFoundError
from model.ids import new_id
from notifiers.port import Notifier
from pipeline.live import LiveEvent, LiveHub
from storage.database import Database, TenantScope
from storage.pagination import decode_cursor, encode_cursor
from storage.tables import ALARM_ACTIVE, alarm_events, alarms
from storage.types import utcnow

MAX_PAGE_SIZE = 500
MAX_MESSAGE_CHARS = 2000
MAX_ACTOR_CHARS = 80


class AlarmSeverity(StrEnum):
    """How bad it is; the values of the ``alarm.raise`` node's ``severity`` option."""

    CRITICAL = "critical"
    MAJOR = "major"
    MINOR = "minor"
    WARNING = "warning"
    INFO = "info"


class AlarmState(StrEnum):
    """Active or cleared, acknowledged or not."""

    ACTIVE_UNACK = "active_unack"
    ACTIVE_ACK = "active_ack"
    CLEARED_UNACK = "cleared_unack"
    CLEARED_ACK = "cleared_ack"


class AlarmEventKind(StrEnum):
    """What happened to an alarm."""

    RAISED = "raised"
    SEVERITY_CHANGED = "severity_changed"
    ACKNOWLEDGED = "acknowledged"
    CLEARED = "cleared"


@dataclass(frozen=True, slots=True)
class Alarm:
    """One alarm. ``*_by`` is a user or token id, or None when the engine acted (a rule's clear)."""

    id: str
    tenant_id: str
    rule_id: str
    device_id: str
    alarm_type: str
    severity: AlarmSeverity
    message: str
    raise_count: int
    raised_at: datetime
    last_raised_at: datetime
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    cleared_at: datetime | None
    cleared_by: str | None
    updated_at: datetime

    @property
    def active(self) -> bool:
        """Not cleared yet."""
        return self.cleared_at is None

    @property
    def acknowledged(self) -> bool:
        """Someone has acknowledged it."""
        return self.acknowledged_at is not None

    @property
    def state(self) -> AlarmState:
        """The lifecycle state, derived from the clear and acknowledge times."""
        if self.active:
            return AlarmState.ACTIVE_ACK if self.acknowledged else AlarmState.ACTIVE_UNACK
        return AlarmState.CLEARED_ACK if self.acknowledged else AlarmState.CLEARED_UNACK


@dataclass(frozen=True, slots=True)
class AlarmEvent:
    """One entry of an alarm's history: what, when, who, and the severity and message after it."""

    id: int
    alarm_id: str
    kind: AlarmEventKind
    at: datetime
    actor: str | None
    severity: AlarmSeverity
    message: str


@dataclass(frozen=True, slots=True)
class AlarmFilter:
    """What an alarm listing is restricted to; every field is optional and they combine with AND.

    ``states`` keeps alarms in any of the given states; ``active`` and ``acknowledged`` narrow
    further. ``raised_from`` is inclusive and ``raised_to`` exclusive.
    """

    states: frozenset[AlarmState] = frozenset()
    active: bool | None = None
    acknowledged: bool | None = None
    severities: frozenset[AlarmSeverity] = frozenset()
    device_id: str | None = None
    rule_id: str | None = None
    alarm_type: str | None = None
    raised_from: datetime | None = None
    raised_to: datetime | None = None


@dataclass(frozen=True, slots=True)
class AlarmPage:
    """One page of alarms, newest first, and the cursor of the next page (None on the last)."""

    items: list[Alarm]
    next_cursor: str | None = None


@dataclass(frozen=True, slots=True)
class AlarmWithEvents:
    """An alarm and its whole history, oldest event first."""

    alarm: Alarm
    events: list[AlarmEvent] = field(default_factory=list)


def _alarm(tenant_id: str, row: sa.Row[Any]) -> Alarm:
    return Alarm(
        id=row.id,
        tenant_id=tenant_id,
        rule_id=row.rule_id,
        device_id=row.device_id,
        alarm_type=row.alarm_type,
        severity=AlarmSeverity(row.severity),
        message=row.message,
        raise_count=row.raise_count,
        raised_at=row.raised_at,
        last_raised_at=row.last_raised_at,
        acknowledged_at=row.acknowledged_at,
        acknowledged_by=row.acknowledged_by,
        cleared_at=row.cleared_at,
        cleared_by=row.cleared_by,
        updated_at=row.updated_at,
    )


def _event(row: sa.Row[Any]) -> AlarmEvent:
    return AlarmEvent(
        id=row.id,
        alarm_id=row.alarm_id,
        kind=AlarmEventKind(row.kind),
        at=row.at,
        actor=row.actor,
        severity=AlarmSeverity(row.severity),
        message=row.message,
    )


def _aware(at: datetime, name: str) -> datetime:
    if at.tzinfo is None:
        raise InvalidInputError(
            f"{name} needs a time zone", errors=[{"loc": [name], "msg": "naive datetime"}]
        )
    return at


def _actor(by: str | None) -> str | None:
    return None if by is None else by[:MAX_ACTOR_CHARS]


def _state_condition(state: AlarmState) -> sa.ColumnElement[bool]:
    cleared = alarms.c.cleared_at.is_not(None)
    acked = alarms.c.acknowledged_at.is_not(None)
    return {
        AlarmState.ACTIVE_UNACK: sa.and_(sa.not_(cleared), sa.not_(acked)),
        AlarmState.ACTIVE_ACK: sa.and_(sa.not_(cleared), acked),
        AlarmState.CLEARED_UNACK: sa.and_(cleared, sa.not_(acked)),
        AlarmState.CLEARED_ACK: sa.and_(cleared, acked),
    }[state]


def _cursor_key(alarm: Alarm) -> str:
    return f"{alarm.raised_at.isoformat()}|{alarm.id}"


def _parse_cursor(cursor: str) -> tuple[datetime, str]:
    raw = decode_cursor(cursor)
    stamp, sep, alarm_id = raw.partition("|")
    try:
        at = datetime.fromisoformat(stamp)
    except ValueError:
        at = None
    if not sep or not alarm_id or at is None or at.tzinfo is None:
        raise InvalidCursorError(f"cursor {cursor[:40]!r} is not a valid page cursor")
    return at, alarm_id


class AlarmRepository:
    """Alarms of the scope's tenant, inside the caller's transaction."""

    def __init__(self, scope: TenantScope, dialect: str) -> None:
        self._scope = scope
        self._dialect = dialect

    # --- reads ------------------------------------------------------------------------------------

    async def get(self, alarm_id: str) -> Alarm:
        """The alarm, or NotFoundError (also for another tenant's alarm)."""
        stmt = self._scope.select(alarms).where(alarms.c.id == alarm_id)
        row = (await self._scope.conn.execute(stmt)).first()
        if row is None:
            raise NotFoundError("alarm", alarm_id)
        return _alarm(self._scope.tenant_id, row)

    async def events(self, alarm_id: str) -> list[AlarmEvent]:
        """The alarm's history, oldest first."""
        stmt = (
            self._scope.select(alarm_events)
            .where(alarm_events.c.alarm_id == alarm_id)
            .order_by(alarm_events.c.id)
        )
        return [_event(r) for r in await self._scope.conn.execute(stmt)]

    async def active(self, rule_id: str, device_id: str, alarm_type: str) -> Alarm | None:
        """The active alarm of a key, locked until the transaction ends (PostgreSQL), or None."""
        stmt = (
            self._scope.select(alarms)
            .where(
                alarms.c.rule_id == rule_id,
                alarms.c.device_id == device_id,
                alarms.c.alarm_type == alarm_type,
                alarms.c.cleared_at.is_(None),
            )
            .with_for_update()
        )
        row = (await self._scope.conn.execute(stmt)).first()
        return None if row is None else _alarm(self._scope.tenant_id, row)

    async def list(self, flt: AlarmFilter, *, limit: int = 50, cursor: str | None = None) -> AlarmPage:
        """A keyset page of alarms, newest raise first (ties broken by id)."""
        limit = max(1, min(limit, MAX_PAGE_SIZE))
        stmt = self._scope.select(alarms)
        if flt.states:
            stmt = stmt.where(sa.or_(*(_state_condition(s) for s in sorted(flt.states))))
        if flt.active is not None:
            stmt = stmt.where(
                alarms.c.cleared_at.is_(None) if flt.active else alarms.c.cleared_at.is_not(None)
            )
        if flt.acknowledged is not None:
            ack = alarms.c.acknowledged_at
            stmt = stmt.where(ack.is_not(None) if flt.acknowledged else ack.is_(None))
        if flt.severities:
            stmt = stmt.where(alarms.c.severity.in_(sorted(s.value for s in flt.severities)))
        if flt.device_id is not None:
            stmt = stmt.where(alarms.c.device_id == flt.device_id)
        if flt.rule_id is not None:
            stmt = stmt.where(alarms.c.rule_id == flt.rule_id)
        if flt.alarm_type is not None:
            stmt = stmt.where(alarms.c.alarm_type == flt.alarm_type)
        if flt.raised_from is not None:
            stmt = stmt.where(alarms.c.raised_at >= flt.raised_from)
        if flt.raised_to is not None:
            stmt = stmt.where(alarms.c.raised_at < flt.raised_to)
        if cursor is not None:
            at, alarm_id = _parse_cursor(cursor)
            stmt = stmt.where(
                sa.or_(
                    alarms.c.raised_at < at,
                    sa.and_(alarms.c.raised_at == at, alarms.c.id < alarm_id),
                )
            )
        stmt = stmt.order_by(alarms.c.raised_at.desc(), alarms.c.id.desc()).limit(limit + 1)
        rows = (await self._scope.conn.execute(stmt)).all()
        items = [_alarm(self._scope.tenant_id, r) for r in rows[:limit]]
        next_cursor = encode_cursor(_cursor_key(items[-1])) if len(rows) > limit else None
        return AlarmPage(items, next_cursor)

    # --- writes -----------------------------------------------------------------------------------

    async def raise_alarm(
        self,
        rule_id: str,
        device_id: str,
        alarm_type: str,
        severity: AlarmSeverity,
        message: str,
        at: datetime,
    ) -> tuple[Alarm, bool]:
        """Create the key's active alarm, or update it; ``changed`` is True for a new alarm or a
        new severity (what deserves a notification), False for a repeat."""
        message = message[:MAX_MESSAGE_CHARS]
        current = await self.active(rule_id, device_id, alarm_type)
        if current is None:
            created = await self._insert_active(rule_id, device_id, alarm_type, severity, message, at)
            if created is not None:
                await self._record(created, AlarmEventKind.RAISED, at, None)
                return created, True
            # Another transaction inserted the key's alarm first. The insert waited for it to
            # commit and then locked it, so no clear can slip in before this read, which sees it
            # (READ COMMITTED): the raise updates the winner and never has to go round again.
            current = await self.active(rule_id, device_id, alarm_type)
            if current is None:
                raise RuntimeError(
                    f"alarm {alarm_type!r} of device {device_id!r}: the active alarm that won the "
                    "insert is gone although this transaction holds its lock"
                )
        return await self._repeat(current, severity, message, at)

    async def _insert_active(
        self,
        rule_id: str,
        device_id: str,
        alarm_type: str,
        severity: AlarmSeverity,
        message: str,
        at: datetime,
    ) -> Alarm | None:
        """INSERT the key's alarm unless an active one exists; the new alarm, or None when another
        won.

        ON CONFLICT on the partial unique index raises no error and aborts nothing. Its DO UPDATE
        never updates (``WHERE false``) but locks the active alarm it ran into, as DO NOTHING would
        not: a clear committed between a lost insert and the re-read would leave the raise
        without an alarm, and a loop that retries it starves while raises and clears interleave.
        """
        alarm_id = new_id("alm")
        values = {
            "tenant_id": self._scope.tenant_id,
            "id": alarm_id,
            "rule_id": rule_id,
            "device_id": device_id,
            "alarm_type": alarm_type,
            "severity": severity.value,
            "message": message,
            "raise_count": 1,
            "raised_at": at,
            "last_raised_at": at,
            "acknowledged_at": None,
            "acknowledged_by": None,
            "cleared_at": None,
            "cleared_by": None,
            "updated_at": utcnow(),
        }
        insert = postgresql.insert if self._dialect == "postgresql" else sqlite.insert
        stmt = (
            insert(alarms)
            .values(values)
            .on_conflict_do_update(
                index_elements=["tenant_id", "rule_id", "device_id", "alarm_type"],
                index_where=ALARM_ACTIVE,
                set_={"updated_at": alarms.c.updated_at},
                where=sa.false(),
            )
        )
        if (await self._scope.conn.execute(stmt)).rowcount == 0:
            return None
        return await self.get(alarm_id)

    async def _repeat(
        self, current: Alarm, severity: AlarmSeverity, message: str, at: datetime
    ) -> tuple[Alarm, bool]:
        escalated = severity != current.severity
        values: dict[str, Any] = {
            "raise_count": alarms.c.raise_count + 1,
            "last_raised_at": max(current.last_raised_at, at),
            "updated_at": utcnow(),
        }
        if escalated:
            values["severity"] = severity.value
        if message and message != current.message:
            values["message"] = message
        await self._scope.conn.execute(
            self._scope.update(alarms).where(alarms.c.id == current.id).values(values)
        )
        alarm = await self.get(current.id)
        if escalated:
            await self._record(alarm, AlarmEventKind.SEVERITY_CHANGED, at, None)
        return alarm, escalated

    async def clear_active(
        self, rule_id: str, device_id: str, alarm_type: str, *, by: str | None, at: datetime
    ) -> Alarm | None:
        """Clear the key's active alarm; None when there is none (nothing to do)."""
        current = await self.active(rule_id, device_id, alarm_type)
        if current is None:
            return None
        return await self._clear(current, by, at)

    async def clear(self, alarm_id: str, *, by: str | None, at: datetime) -> Alarm:
        """Clear an alarm by id; clearing a cleared alarm keeps the first clear (who and when)."""
        current = await self._locked(alarm_id)
        return current if not current.active else await self._clear(current, by, at)

    async def acknowledge(self, alarm_id: str, *, by: str | None, at: datetime) -> Alarm:
        """Acknowledge an alarm, active or cleared; a second acknowledgement keeps the first."""
        current = await self._locked(alarm_id)
        if current.acknowledged:
            return current
        stmt = (
            self._scope.update(alarms)
            .where(alarms.c.id == alarm_id, alarms.c.acknowledged_at.is_(None))
            .values(acknowledged_at=at, acknowledged_by=_actor(by), updated_at=utcnow())
        )
        await self._scope.conn.execute(stmt)
        alarm = await self.get(alarm_id)
        await self._record(alarm, AlarmEventKind.ACKNOWLEDGED, at, by)
        return alarm

    async def _locked(self, alarm_id: str) -> Alarm:
        stmt = self._scope.select(alarms).where(alarms.c.id == alarm_id).with_for_update()
        row = (await self._scope.conn.execute(stmt)).first()
        if row is None:
            raise NotFoundError("alarm", alarm_id)
        return _alarm(self._scope.tenant_id, row)

    async def _clear(self, current: Alarm, by: str | None, at: datetime) -> Alarm:
        stmt = (
            self._scope.update(alarms)
            .where(alarms.c.id == current.id, alarms.c.cleared_at.is_(None))
            .values(cleared_at=at, cleared_by=_actor(by), updated_at=utcnow())
        )
        await self._scope.conn.execute(stmt)
        alarm = await self.get(current.id)
        await self._record(alarm, AlarmEventKind.CLEARED, at, by)
        return alarm

    async def _record(self, alarm: Alarm, kind: AlarmEventKind, at: datetime, by: str | None) -> None:
        await self._scope.insert(
            alarm_events,
            [
                {
                    "alarm_id": alarm.id,
                    "kind": kind.value,
                    "at": at,
                    "actor": _actor(by),
                    "severity": alarm.severity.value,
                    "message": alarm.message,
                }
            ],
        )


def alarm_data(alarm: Alarm) -> dict[str, Any]:
    """An alarm as plain JSON data (live events, templates)."""
    return {
        "id": alarm.id,
        "rule_id": alarm.rule_id,
        "device_id": alarm.device_id,
        "alarm_type": alarm.alarm_type,
        "severity": alarm.severity.value,
        "state": alarm.state.value,
        "message": alarm.message,
        "raise_count": alarm.raise_count,
        "raised_at": alarm.raised_at.isoformat(),
        "last_raised_at": alarm.last_raised_at.isoformat(),
        "acknowledged_at": alarm.acknowledged_at.isoformat() if alarm.acknowledged_at else None,
        "acknowledged_by": alarm.acknowledged_by,
        "cleared_at": alarm.cleared_at.isoformat() if alarm.cleared_at else None,
        "cleared_by": alarm.cleared_by,
    }


class AlarmService:
    """Alarms, each call in a transaction of its own under the tenant's isolation.

    The engine's action runner calls ``raise_alarm`` and ``clear_alarm`` for ``alarm.raise`` and
    ``alarm.clear`` calls; the API calls ``acknowledge``, ``clear``, ``get`` and ``list``.
    """

    def __init__(
        self, database: Database, *, notifier: Notifier | None = None, live: LiveHub | None = None
    ) -> None:
        self._database = database
        self._notifier = notifier  # told about acknowledgements: they stop reminders and escalation
        self._live = live  # every change goes out as an "alarm" event on the tenant's live stream

    def _publish(self, alarm: Alarm | None) -> None:
        if self._live is not None and alarm is not None:
            self._live.publish(alarm.tenant_id, alarm.device_id, LiveEvent("alarm", alarm_data(alarm)))

    async def raise_alarm(
        self,
        tenant_id: str,
        rule_id: str,
        device_id: str,
        alarm_type: str,
        severity: AlarmSeverity | str,
        message: str,
        at: datetime,
    ) -> tuple[Alarm, bool]:
        """Raise (or keep raising) the alarm of (rule, device, type): ``(alarm, changed)``, where
        ``changed`` is True when the alarm is new or its severity changed."""
        level = AlarmSeverity(severity)
        at = _aware(at, "at")
        async with self._database.tenant(tenant_id) as scope:
            alarm, changed = await self._repo(scope).raise_alarm(
                rule_id, device_id, alarm_type, level, message, at
            )
        self._publish(alarm)
        return alarm, changed

    async def clear_alarm(
        self,
        tenant_id: str,
        rule_id: str,
        device_id: str,
        alarm_type: str,
        *,
        by: str | None = None,
        at: datetime,
    ) -> Alarm | None:
        """Clear the active alarm of (rule, device, type); None when none is active."""
        at = _aware(at, "at")
        async with self._database.tenant(tenant_id) as scope:
            alarm = await self._repo(scope).clear_active(rule_id, device_id, alarm_type, by=by, at=at)
        self._publish(alarm)
        return alarm

    async def acknowledge(
        self, tenant_id: str, alarm_id: str, *, by: str | None, at: datetime | None = None
    ) -> Alarm:
        """Acknowledge; idempotent (the first acknowledgement's who and when are kept)."""
        when = _aware(at, "at") if at is not None else utcnow()
        async with self._database.tenant(tenant_id) as scope:
            alarm = await self._repo(scope).acknowledge(alarm_id, by=by, at=when)
        self._publish(alarm)
        if self._notifier is not None and alarm.active:
            await self._notifier.alarm_acknowledged(
                tenant_id, alarm.rule_id, alarm.device_id, alarm.alarm_type, alarm.acknowledged_at or when
            )
        return alarm

    async def clear(
        self, tenant_id: str, alarm_id: str, *, by: str | None, at: datetime | None = None
    ) -> Alarm:
        """Clear by hand; idempotent (the first clear's who and when are kept)."""
        when = _aware(at, "at") if at is not None else utcnow()
        async with self._database.tenant(tenant_id) as scope:
            alarm = await self._repo(scope).clear(alarm_id, by=by, at=when)
        self._publish(alarm)
        return alarm

    async def get(self, tenant_id: str, alarm_id: str) -> AlarmWithEvents:
        """The alarm with its history; NotFoundError for an unknown or foreign id."""
        async with self._database.tenant(tenant_id) as scope:
            repo = self._repo(scope)
            alarm = await repo.get(alarm_id)
            return AlarmWithEvents(alarm, await repo.events(alarm_id))

    async def clear_device(
        self, tenant_id: str, device_id: str, *, by: str | None, at: datetime | None = None
    ) -> list[Alarm]:
        """Clear every active alarm of a device (for decommissioning); the cleared alarms."""
        when = _aware(at, "at") if at is not None else utcnow()
        async with self._database.tenant(tenant_id) as scope:
            repo = self._repo(scope)
            stmt = (
                scope.select(alarms, alarms.c.id)
                .where(alarms.c.device_id == device_id, alarms.c.cleared_at.is_(None))
                .order_by(alarms.c.id)
            )
            ids: Sequence[str] = (await scope.conn.execute(stmt)).scalars().all()
            cleared = [await repo.clear(alarm_id, by=by, at=when) for alarm_id in ids]
        for alarm in cleared:
            self._publish(alarm)
        return cleared

    async def list(
        self, tenant_id: str, flt: AlarmFilter | None = None, *, limit: int = 50, cursor: str | None = None
    ) -> AlarmPage:
        """A page of the tenant's alarms, newest first."""
        async with self._database.tenant(tenant_id) as scope:
            return await self._repo(scope).list(flt or AlarmFilter(), limit=limit, cursor=cursor)

    def _repo(self, scope: TenantScope) -> AlarmRepository:
        return AlarmRepository(scope, self._database.dialect)
