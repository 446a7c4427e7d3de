"""The notifications service: the Notifier the engine calls, and what the API asks of notifications.

``submit`` resolves the tenant's policy, computes the dedup key, lets the PolicyEngine decide,
renders the message and hands one job per channel to the DeliveryPool; it never waits for a
delivery. ``run`` drives the policy timers (reminders, escalation, throttle windows, quiet hours)
and writes the delivery log in batches. Everything reads time from one Clock, so tests replace it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from model.errors import ConflictError
from notifiers import templates
from notifiers.channels import ChannelRepository, ChannelTarget, SealedTarget
from notifiers.clock import Clock, SystemClock
from notifiers.defaults import PolicyDefaults
from notifiers.deliveries import DeliveryLog, DeliveryRecord, DeliveryStatus
from notifiers.delivery import DeliveryPool, DeliverySettings, Job
from notifiers.episodes import PolicyEngine, Release, Send
from notifiers.metrics import NotifyMetrics
from notifiers.policy import DeliveryPolicy, effective_policy
from notifiers.port import NotificationRequest, Outcome
from notifiers.sealing import UrlSealer
from storage.database import Database
from storage.tenancy import TenantRepository

logger = logging.getLogger(__name__)

CACHE_TTL_S = 30.0
FLUSH_EVERY_S = 0.2
FLUSH_BATCH = 500
MAX_PENDING_LOG = 100_000
PRUNE_EVERY_S = 600.0


@dataclass(frozen=True, slots=True)
class TestResult:
    """The outcome of a channel test through one of its URLs."""

    service: str
    preview: str
    ok: bool
    error: str | None


class _RecordIds:
    """Delivery record ids, ``ntf_`` and 16 random hex digits like ``model.ids.new_id``, from
    random bytes drawn 256 ids at a time: ``os.urandom`` releases the interpreter lock, and while
    sender threads are busy, getting it back costs the event loop a wait per call."""

    _BATCH = 256

    def __init__(self) -> None:
        self._bytes = b""
        self._at = 0

    def next(self) -> str:
        if self._at >= len(self._bytes):
            self._bytes, self._at = os.urandom(8 * self._BATCH), 0
        chunk = self._bytes[self._at : self._at + 8]
        self._at += 8
        return f"ntf_{chunk.hex()}"


@dataclass(slots=True)
class _TenantChannels:
    """A tenant's channels as cached for delivery: all of them sealed, the used ones opened."""

    loaded_at: float
    sealed: dict[str, SealedTarget]
    opened: dict[str, ChannelTarget]


@dataclass(slots=True)
class _Held:
    send: Send
    target: ChannelTarget
    record: DeliveryRecord


class NotificationService:
    """Channels, policy and delivery for every tenant of this process (implements notifiers.port.Notifier)."""

    def __init__(
        self,
        database: Database,
        sealer: UrlSealer,
        *,
        settings: DeliverySettings | None = None,
        metrics: NotifyMetrics | None = None,
        clock: Clock | None = None,
        log_keep: int = 10_000,
        public_url: str | None = None,
    ) -> None:
        self.database = database
        self.sealer = sealer
        self.settings = settings or DeliverySettings()
        self.metrics = metrics or NotifyMetrics()
        self.clock = clock or SystemClock()
        self.policy = PolicyEngine()
        self.pool = DeliveryPool(self.settings, self.clock, self.metrics, self._log)
        self._log_keep = log_keep
        self._public_url = public_url
        self._pending: dict[tuple[str, str], DeliveryRecord] = {}
        self._wake = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self._channels: dict[str, _TenantChannels] = {}
        self._policies: dict[str, tuple[float, DeliveryPolicy]] = {}
        self._zones: dict[str, tuple[float, tzinfo]] = {}
        self._pruned: dict[str, float] = {}
        self._ids = _RecordIds()

    # --- the port ---------------------------------------------------------------------------------

    async def submit(self, request: NotificationRequest) -> str:
        """Decide and queue; returns the decision (see notifiers.port.Outcome). Never waits for delivery."""
        now = self.clock.now()
        policy = effective_policy(await self._tenant_policy(request.tenant_id), request.policy)
        key = self._dedup_key(request, policy)
        decision, send = self.policy.submit(request, policy, key, now)
        if send is None:
            self.metrics.decisions.labels(decision).inc()
            self._log_suppressed(request, key, decision, now)
            return decision
        outcome = await self._dispatch(send, now)
        self.metrics.decisions.labels(outcome).inc()
        return outcome

    async def alarm_acknowledged(
        self, tenant_id: str, rule_id: str, device_id: str, alarm_type: str, at: datetime
    ) -> None:
        """Stop reminders and escalation of the alarm (held deliveries of it are cancelled on release)."""
        self.policy.acknowledge(tenant_id, rule_id, device_id, alarm_type)

    # --- running ----------------------------------------------------------------------------------

    async def run(self) -> None:
        """Drive policy timers and the log writer until cancelled."""
        writer = asyncio.create_task(self._write_log(), name="notify-log")
        try:
            await self.recover()
            while True:
                await self.tick()
                due = self.policy.next_due()
                delay = 1.0
                if due is not None:
                    delay = min(1.0, max(0.02, (due - self.clock.now()).total_seconds()))
                await asyncio.sleep(delay)
        finally:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
            await self.pool.close()
            await self.flush()

    async def tick(self) -> int:
        """Act on every policy timer due at the clock's current time; how many produced work."""
        now = self.clock.now()
        items = self.policy.due(now)
        for item in items:
            if isinstance(item, Release):
                held: _Held = item.item
                if self.policy.still_wanted(held.send):
                    held.record.status = DeliveryStatus.QUEUED
                    held.record.updated_at = now
                    self._enqueue(held.record, held.target)
                else:
                    held.record.status = DeliveryStatus.CANCELLED
                    held.record.last_error = "the alarm cleared or was acknowledged during quiet hours"
                    held.record.updated_at = now
                    self._log(held.record)
                    self.metrics.deliveries.labels("cancelled").inc()
            else:
                outcome = await self._dispatch(item, now)
                self.metrics.decisions.labels(outcome).inc()
        return len(items)

    async def wait_idle(self) -> None:
        """Until no delivery is queued or in progress, and the log is written (tests, benchmarks)."""
        await self.pool.wait_idle()
        await self.flush()

    async def recover(self) -> int:
        """Queue again what was queued or retrying when the process stopped; how many."""
        async with self.database.platform() as conn:
            tenant_ids = [t.id for t in await TenantRepository(conn).list()]
        count = 0
        for tenant_id in tenant_ids:
            async with self.database.tenant(tenant_id) as scope:
                records = await DeliveryLog(scope, self.database.dialect).unfinished()
                targets: dict[str, ChannelTarget] = {}
                repo = ChannelRepository(scope, self.sealer)
                for record in records:
                    if record.channel_id and record.channel_id not in targets:
                        try:
                            targets[record.channel_id] = await repo.target(record.channel_id)
                        except Exception as exc:  # deleted channel, or a key dropped too early
                            logger.warning("cannot recover delivery %s: %s", record.id, exc)
            for record in records:
                target = targets.get(record.channel_id or "")
                if target is None:
                    record.status, record.last_error = DeliveryStatus.DEAD, "the channel no longer exists"
                    record.updated_at = self.clock.now()
                    self._log(record)
                else:
                    self._enqueue(record, target)
                    count += 1
        if count:
            logger.info("notifications: %d unfinished deliveries queued again", count)
        return count

    # --- API helpers ------------------------------------------------------------------------------

    def channels_changed(self, tenant_id: str) -> None:
        """Forget cached channels of the tenant (after a create, update or delete)."""
        self._channels.pop(tenant_id, None)

    def policy_changed(self, tenant_id: str) -> None:
        """Forget the tenant's cached default policy."""
        self._policies.pop(tenant_id, None)

    async def test_channel(self, tenant_id: str, channel_id: str, title: str, body: str) -> list[TestResult]:
        """Send one message through each URL of the channel, now, once; the results."""
        async with self.database.tenant(tenant_id) as scope:
            target = await ChannelRepository(scope, self.sealer).target(channel_id)
        results = await self.pool.send_once(target, title, body)
        return [TestResult(service, preview, error is None, error) for service, preview, error in results]

    async def resend(self, tenant_id: str, record_id: str) -> DeliveryRecord:
        """Queue a dead letter again; ConflictError unless it is dead and its channel exists."""
        async with self.database.tenant(tenant_id) as scope:
            log = DeliveryLog(scope, self.database.dialect)
            record = self._pending.get((tenant_id, record_id)) or await log.get(record_id)
            if record.status is not DeliveryStatus.DEAD:
                raise ConflictError(
                    f"delivery {record_id!r} is {record.status.value}, only dead letters can be re-sent",
                    delivery_status=record.status.value,
                )
            if record.channel_id is None:
                raise ConflictError(f"delivery {record_id!r} has no channel to re-send to")
            try:
                target = await ChannelRepository(scope, self.sealer).target(record.channel_id)
            except Exception as exc:
                raise ConflictError(
                    f"the channel of delivery {record_id!r} no longer exists", channel_id=record.channel_id
                ) from exc
            record.status, record.attempts, record.last_error = DeliveryStatus.QUEUED, 0, None
            record.resent += 1
            record.updated_at = self.clock.now()
            await log.upsert([record])
        self.metrics.resent.inc()
        self._enqueue(record, target, log_now=False)
        return record

    async def flush(self) -> None:
        """Write every pending log record now."""
        async with self._flush_lock:
            while self._pending:
                batch: dict[str, list[DeliveryRecord]] = {}
                for ident in list(self._pending)[:FLUSH_BATCH]:
                    record = self._pending.pop(ident)
                    batch.setdefault(record.tenant_id, []).append(record)
                for tenant_id, records in batch.items():
                    try:
                        async with self.database.tenant(tenant_id) as scope:
                            await DeliveryLog(scope, self.database.dialect).upsert(records)
                    except Exception:
                        logger.exception(
                            "delivery log of %s not written (%d records)", tenant_id, len(records)
                        )
                        if len(self._pending) < MAX_PENDING_LOG:
                            for record in records:
                                self._pending.setdefault((tenant_id, record.id), record)
                        raise
                    await self._maybe_prune(tenant_id)
                self.metrics.log_pending.set(len(self._pending))

    # --- internals --------------------------------------------------------------------------------

    def _dedup_key(self, request: NotificationRequest, policy: DeliveryPolicy) -> str:
        if policy.dedup_key is None:
            return f"{request.rule_id}:{request.device_id}:{request.alarm_type or ''}"
        try:
            return templates.render(policy.dedup_key, self._context(request))[:300]
        except templates.TemplateProblem as exc:
            logger.warning("rule %s: dedup key template failed (%s); using the default", request.rule_id, exc)
            return f"{request.rule_id}:{request.device_id}:{request.alarm_type or ''}"

    def _context(
        self, request: NotificationRequest, extra: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        context: dict[str, Any] = {
            "rule": {"id": request.rule_id, "name": request.rule_name},
            "device": {"id": request.device_id},
            "alarm": {"type": request.alarm_type, "severity": request.severity},
            "event": {"kind": request.kind, "at": request.at.isoformat()},
            "links": {"platform": self._public_url} if self._public_url else {},
            "values": {},
        }
        for name, value in request.context.items():
            if isinstance(value, Mapping) and isinstance(context.get(name), dict):
                context[name] = {**context[name], **value}
            else:
                context[name] = value
        if extra:
            context.update(extra)
        return context

    def _render(self, send: Send) -> tuple[str, str]:
        request = send.request
        context = self._context(
            request, {"notification": {"kind": send.kind, "suppressed": send.suppressed, "key": send.key}}
        )
        try:
            title = templates.render(request.title, context)
            body = templates.render(request.body, context)
        except templates.TemplateProblem as exc:
            # Never lose an alert to a template: send a plain one that says what went wrong.
            title = f"{request.rule_name}: {request.kind} on {request.device_id}"
            body = f"(the rule's message template failed: {exc})"
        if send.kind == "repeat":
            title = f"Reminder: {title}"
        elif send.kind == "escalation":
            title = f"Escalated: {title}"
        return title[:1000], body

    async def _dispatch(self, send: Send, now: datetime) -> Outcome:
        request = send.request
        targets = await self._targets(request.tenant_id, send.channels)
        title, body = self._render(send)
        zone: tzinfo | None = None
        queued = held = 0
        for name in send.channels:
            target = targets.get(name)
            record = self._new_record(request, send, name, target, title, body, now)
            if target is None:
                record.status, record.last_error = DeliveryStatus.NO_CHANNEL, f"no channel named {name!r}"
                self._log(record)
                continue
            quiet = target.quiet_hours
            if quiet is not None and not quiet.lets_through(request.severity):
                zone = zone or await self._zone(request.tenant_id)
                until = quiet.quiet_until(now, zone)
                if until is not None:
                    record.status = DeliveryStatus.HELD
                    self._log(record)
                    self.policy.hold(until, _Held(send, target, record))
                    held += 1
                    continue
            self._enqueue(record, target)
            queued += 1
        return "queued" if queued else "held" if held else "no_channel"

    def _new_record(
        self,
        request: NotificationRequest,
        send: Send,
        name: str,
        target: ChannelTarget | None,
        title: str,
        body: str,
        now: datetime,
    ) -> DeliveryRecord:
        return DeliveryRecord(
            id=self._ids.next(),
            tenant_id=request.tenant_id,
            channel_id=target.id if target else None,
            channel_name=name,
            rule_id=request.rule_id,
            device_id=request.device_id,
            alarm_type=request.alarm_type,
            severity=request.severity,
            kind=send.kind,
            dedup_key=send.key,
            title=title,
            body=body,
            status=DeliveryStatus.QUEUED,
            attempts=0,
            last_error=None,
            resent=0,
            created_at=now,
            updated_at=now,
        )

    def _log_suppressed(self, request: NotificationRequest, key: str, decision: str, now: datetime) -> None:
        status = DeliveryStatus(decision)
        for name in request.channels:
            send = Send(request, request.channels, request.kind, key, 0)
            record = self._new_record(request, send, name, None, request.title[:200], "", now)
            record.status = status
            self._log(record)

    def _enqueue(self, record: DeliveryRecord, target: ChannelTarget, *, log_now: bool = True) -> None:
        if log_now:
            self._log(record)
        self.pool.enqueue(Job(record, target, time.monotonic()))

    def _log(self, record: DeliveryRecord) -> None:
        self._pending[(record.tenant_id, record.id)] = record
        if len(self._pending) >= FLUSH_BATCH:
            self._wake.set()

    async def _write_log(self) -> None:
        while True:
            # Short sleeps rather than wait_for(event): on Python 3.11 wait_for can swallow the
            # cancellation that stops this task.
            for _ in range(round(FLUSH_EVERY_S / 0.05)):
                if self._wake.is_set():
                    break
                await asyncio.sleep(0.05)
            self._wake.clear()
            try:
                await self.flush()
            except Exception:  # already logged; the records stay pending and are retried
                await asyncio.sleep(1.0)

    async def _maybe_prune(self, tenant_id: str) -> None:
        now = time.monotonic()
        if now - self._pruned.get(tenant_id, 0.0) < PRUNE_EVERY_S:
            return
        self._pruned[tenant_id] = now
        async with self.database.tenant(tenant_id) as scope:
            await DeliveryLog(scope, self.database.dialect).prune(self._log_keep)

    async def _targets(self, tenant_id: str, names: Iterable[str]) -> dict[str, ChannelTarget]:
        now = time.monotonic()
        cache = self._channels.get(tenant_id)
        if cache is None or now - cache.loaded_at > CACHE_TTL_S:
            # One query for all of the tenant's channels (not one per name on first use); URLs are
            # opened when a channel is first used, and stay open while the channel is unchanged.
            async with self.database.tenant(tenant_id) as scope:
                sealed = await ChannelRepository(scope, self.sealer).sealed_targets()
            kept = cache.opened if cache is not None else {}
            opened = {
                name: target
                for name, target in kept.items()
                if name in sealed
                and sealed[name].updated_at == target.updated_at
                and sealed[name].id == target.id
            }
            cache = self._channels[tenant_id] = _TenantChannels(now, sealed, opened)
        found: dict[str, ChannelTarget] = {}
        for name in names:
            target = cache.opened.get(name)
            if target is None:
                row = cache.sealed.get(name)
                if row is None:
                    continue
                target = cache.opened[name] = row.open(self.sealer)
            found[name] = target
        return found

    async def _tenant_policy(self, tenant_id: str) -> DeliveryPolicy:
        now = time.monotonic()
        cached = self._policies.get(tenant_id)
        if cached is not None and now - cached[0] <= CACHE_TTL_S:
            return cached[1]
        async with self.database.tenant(tenant_id) as scope:
            policy = await PolicyDefaults(scope, self.database.dialect).get()
        self._policies[tenant_id] = (now, policy)
        return policy

    async def _zone(self, tenant_id: str) -> tzinfo:
        now = time.monotonic()
        cached = self._zones.get(tenant_id)
        if cached is not None and now - cached[0] <= CACHE_TTL_S:
            return cached[1]
        async with self.database.platform() as conn:
            tenant = await TenantRepository(conn).find(tenant_id)
        try:
            zone: tzinfo = ZoneInfo(tenant.timezone if tenant else "UTC")
        except (ZoneInfoNotFoundError, ValueError):
            zone = ZoneInfo("UTC")
        self._zones[tenant_id] = (now, zone)
        return zone
