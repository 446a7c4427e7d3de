"""The live rule engine: readings and status changes in, decisions, actions and traces out.

Rule state is keyed by (tenant, rule, device) and written to the database whenever an evaluation
changes it, with the time of the next timer; a restarted process (or another worker taking the
partition over) reads it back and resumes pending durations on time. A rule that fails at run
time is marked invalid with its reason and taken out of the index; the others keep running.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from devices.catalogue import RegistryCatalogue
from engine.compiler import RULE_STATE, CompiledRule, Decision, compile_rule
from engine.context import compile_context
from engine.document import RuleDocument
from engine.errors import RuleValidationError
from engine.evaluation import DeviceView, Event, EventKind
from engine.index import RuleIndex
from engine.nodes.base import ActionCall
from engine.rules import RuleRepository
from engine.store import RuleStateRepository, TraceRepository, all_timers
from model.errors import PlatformError
from model.readings import MetricValue, Reading
from storage.database import Database
from storage.tenancy import TenantRepository

logger = logging.getLogger(__name__)

TRACES_PER_RULE = 1000
PRUNE_EVERY = 100  # evaluations of a rule between two prunes of its traces


class AlarmPort(Protocol):
    """Where alarm.raise and alarm.clear calls go (the alarm service implements it)."""

    async def raise_alarm(
        self,
        tenant_id: str,
        rule_id: str,
        device_id: str,
        alarm_type: str,
        severity: str,
        message: str,
        at: datetime,
    ) -> Any:
        """Raise (or keep) the alarm of (tenant, rule, device, type)."""
        ...

    async def clear_alarm(
        self, tenant_id: str, rule_id: str, device_id: str, alarm_type: str, *, at: datetime
    ) -> Any:
        """Clear it if active."""
        ...


class RuleEngine:
    """Evaluates published rules for the events of the pipeline."""

    def __init__(
        self,
        database: Database,
        catalogue: RegistryCatalogue,
        *,
        alarms: AlarmPort | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        allow_private_webhooks: bool = False,
    ) -> None:
        self.database = database
        self.catalogue = catalogue
        self.alarms = alarms
        self.clock = clock
        self.allow_private_webhooks = allow_private_webhooks
        self.index = RuleIndex()
        self._values: dict[tuple[str, str], dict[str, MetricValue]] = {}
        self._times: dict[tuple[str, str], dict[str, datetime]] = {}
        self._timers: list[tuple[datetime, str, str, str]] = []
        self._zones: dict[str, ZoneInfo] = {}
        self._timer_wakeup = asyncio.Event()
        self._locks: dict[tuple[str, str, str], asyncio.Lock] = {}
        # The one pending wake time per (tenant, rule, device); heap entries that differ are stale.
        self._scheduled: dict[tuple[str, str, str], datetime] = {}
        self._evaluations: dict[tuple[str, str], int] = {}

    # --- loading ------------------------------------------------------------------------------

    async def load(self) -> None:
        """Compile every published, enabled rule and restore pending timers."""
        async with self.database.platform() as conn:
            tenants = await TenantRepository(conn).list()
        for tenant in tenants:
            self._zones[tenant.id] = ZoneInfo(tenant.timezone)
            async with self.database.tenant(tenant.id) as scope:
                published = await RuleRepository(scope).published()
            for rule, version in published:
                await self._install(tenant.id, rule.id, version.version, version.document)
        for timer in await all_timers(self.database):
            self._schedule(timer.tenant_id, timer.rule_id, timer.device_id, timer.wake_at)
        self._timer_wakeup.set()
        logger.info(
            "rule engine: %d rule(s) indexed, %d timer(s) pending", len(self.index), len(self._timers)
        )

    async def reload(self, tenant_id: str, rule_id: str) -> None:
        """Pick up a publish, enable, disable or delete."""
        self.index.remove(tenant_id, rule_id)
        async with self.database.tenant(tenant_id) as scope:
            repo = RuleRepository(scope)
            try:
                rule = await repo.get(rule_id)
            except PlatformError:
                return
            if rule.published_version is None or not rule.enabled or rule.invalid_reason:
                return
            version = await repo.version(rule_id, rule.published_version)
        await self._install(tenant_id, rule_id, version.version, version.document)

    async def _install(self, tenant_id: str, rule_id: str, version: int, raw: dict[str, Any]) -> None:
        document = RuleDocument.model_validate(raw)
        try:
            async with self.database.tenant(tenant_id) as scope:
                context = await compile_context(
                    scope, document, allow_private_webhooks=self.allow_private_webhooks
                )
            compiled = compile_rule(document, context, rule_id=rule_id, version=version)
        except RuleValidationError as exc:
            # A rule that no longer validates (a metric removed from the catalogue, a device
            # deleted) stays listed, disabled, with the reason: never silently dropped.
            await self._invalidate(tenant_id, rule_id, exc.detail)
            return
        self.index.put(compiled)

    async def _invalidate(self, tenant_id: str, rule_id: str, reason: str) -> None:
        logger.warning("rule %s/%s disabled: %s", tenant_id, rule_id, reason)
        self.index.remove(tenant_id, rule_id)
        async with self.database.tenant(tenant_id) as scope:
            await RuleRepository(scope).update(rule_id, {"invalid_reason": reason[:2000]})

    # --- events -------------------------------------------------------------------------------

    async def on_reading(self, reading: Reading) -> list[Decision]:
        """Evaluate the rules a reading can trigger (a pipeline reading consumer)."""
        # The latest values first: a rule triggered by temp may read door_open, which can come
        # in readings that trigger no rule at all.
        key = (reading.tenant_id, reading.device_id)
        self._values.setdefault(key, {}).update(reading.metrics)
        self._times.setdefault(key, {}).update(dict.fromkeys(reading.metrics, reading.ts))
        if not self.index.for_reading(reading.tenant_id, reading.metrics):
            return []  # no rule of the tenant triggers on these metrics: skip the device lookup
        device = await self._device(reading.tenant_id, reading.device_id)
        if device is None:
            return []
        # Only the rules whose selector can pick this device (by id, label or type), not every
        # rule of the tenant that triggers on the metric.
        rules = self.index.for_device(reading.tenant_id, device, reading.metrics)
        event = Event(EventKind.READING, reading.tenant_id, reading.device_id, reading.ts, reading)
        return await self._dispatch(rules, event, device) if rules else []

    async def on_status(self, tenant_id: str, device_id: str, status: str, at: datetime) -> list[Decision]:
        """Evaluate the rules triggered by a device going online or offline."""
        rules = self.index.for_event(tenant_id, EventKind.STATUS)
        event = Event(EventKind.STATUS, tenant_id, device_id, at, data={"status": status})
        return await self._dispatch(rules, event) if rules else []

    async def fire_due_timers(self, now: datetime | None = None) -> list[Decision]:
        """Evaluate every timer due at ``now`` (durations completing without a new reading)."""
        now = now or self.clock()
        decisions = []
        while self._timers and self._timers[0][0] <= now:
            wake_at, tenant_id, rule_id, device_id = heapq.heappop(self._timers)
            if self._scheduled.get((tenant_id, rule_id, device_id)) != wake_at:
                continue  # superseded by a later schedule for the same key
            del self._scheduled[(tenant_id, rule_id, device_id)]
            rule = self.index.get(tenant_id, rule_id)
            if rule is None:
                continue
            event = Event(EventKind.TIMER, tenant_id, device_id, wake_at)
            decisions.extend(await self._dispatch([rule], event))
        return decisions

    async def run_timers(self, interval: float = 1.0) -> None:
        """Fire due timers until cancelled."""
        while True:
            await self.fire_due_timers()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._timer_wakeup.wait(), interval)
            self._timer_wakeup.clear()

    async def _device(self, tenant_id: str, device_id: str) -> DeviceView | None:
        profiles = await self.catalogue.profiles(tenant_id, [device_id])
        profile = profiles.get(device_id)
        if profile is None:
            return None
        zone = self._zones.get(tenant_id, ZoneInfo("UTC"))
        return DeviceView(profile.device_id, profile.type_id, profile.labels, zone)

    async def _dispatch(
        self, rules: list[CompiledRule], event: Event, device: DeviceView | None = None
    ) -> list[Decision]:
        device = device or await self._device(event.tenant_id, event.device_id)
        if device is None:
            return []
        decisions = []
        for rule in rules:
            if not rule.selects(device.id, device.type_id, device.labels):
                continue
            try:
                decision = await self._evaluate(rule, event, device)
            except Exception as exc:  # one broken rule must never stop the others
                logger.exception("rule %s/%s failed", rule.tenant_id, rule.rule_id)
                await self._invalidate(rule.tenant_id, rule.rule_id, f"failed at run time: {exc}")
                continue
            if decision is not None:
                decisions.append(decision)
        return decisions

    async def _evaluate(self, rule: CompiledRule, event: Event, device: DeviceView) -> Decision | None:
        # One evaluation at a time per (tenant, rule, device): a timer and a reading racing for
        # the same state would otherwise both see "not yet fired" and both fire.
        lock = self._locks.setdefault((event.tenant_id, rule.rule_id, device.id), asyncio.Lock())
        async with lock:
            return await self._evaluate_locked(rule, event, device)

    async def _evaluate_locked(self, rule: CompiledRule, event: Event, device: DeviceView) -> Decision | None:
        key = (event.tenant_id, device.id)
        async with self.database.tenant(event.tenant_id) as scope:
            states = RuleStateRepository(scope)
            state = await states.get(rule.rule_id, device.id)
            seen = state.get(RULE_STATE, {}).get("last_at")
            if event.kind is EventKind.TIMER and seen is not None and event.ts < datetime.fromisoformat(seen):
                return None  # later events already moved this state past the timer
            before = json.dumps(state, sort_keys=True)
            decision = rule.evaluate(
                event, device, self._values.get(key, {}), self._times.get(key, {}), state
            )
            if decision is None:
                return None
            last = state.setdefault(RULE_STATE, {})
            if seen is None or event.ts > datetime.fromisoformat(seen):
                last["last_at"] = event.ts.isoformat()
            if json.dumps(state, sort_keys=True) != before or decision.wake_at is not None:
                await states.put(rule.rule_id, device.id, state, decision.wake_at)
            if decision.fired:
                await RuleRepository(scope).update(rule.rule_id, {"last_fired_at": decision.at})
        outcomes = [await self._run(call, rule, decision) for call in decision.calls]
        async with self.database.tenant(event.tenant_id) as scope:
            traces = TraceRepository(scope)
            await traces.add(decision, outcomes)
            count = self._evaluations.get((event.tenant_id, rule.rule_id), 0) + 1
            self._evaluations[(event.tenant_id, rule.rule_id)] = count
            if count % PRUNE_EVERY == 0:
                await traces.prune(rule.rule_id, TRACES_PER_RULE)
        if decision.wake_at is not None:
            self._schedule(event.tenant_id, rule.rule_id, device.id, decision.wake_at)
        return decision

    def _schedule(self, tenant_id: str, rule_id: str, device_id: str, wake_at: datetime) -> None:
        key = (tenant_id, rule_id, device_id)
        if self._scheduled.get(key) == wake_at:
            return  # already pending: one timer per key, not one per reading
        self._scheduled[key] = wake_at
        heapq.heappush(self._timers, (wake_at, tenant_id, rule_id, device_id))
        self._timer_wakeup.set()

    async def _run(self, call: ActionCall, rule: CompiledRule, decision: Decision) -> dict[str, Any]:
        """Execute one action; its outcome goes into the trace, a failure never stops the rest."""
        outcome: dict[str, Any] = {"path": call.path, "node": call.node}
        if call.tenant_id != rule.tenant_id:  # tenant-scoped at compile time, and again here
            return {**outcome, "status": "refused", "detail": "tenant mismatch"}
        try:
            if call.node == "alarm.raise" and self.alarms is not None:
                o = call.options
                await self.alarms.raise_alarm(
                    call.tenant_id,
                    rule.rule_id,
                    call.device_id,
                    o["alarm_type"],
                    o["severity"],
                    o["message"],
                    decision.at,
                )
                return {**outcome, "status": "done"}
            if call.node == "alarm.clear" and self.alarms is not None:
                await self.alarms.clear_alarm(
                    call.tenant_id, rule.rule_id, call.device_id, call.options["alarm_type"], at=decision.at
                )
                return {**outcome, "status": "done"}
        except Exception as exc:
            logger.exception("action %s of rule %s failed", call.path, rule.rule_id)
            return {**outcome, "status": "failed", "detail": str(exc)[:500]}
        # Notifications, webhooks, publishes and derived metrics get their executors with the
        # notifications and device-control issues; the trace says so instead of pretending.
        return {**outcome, "status": "skipped", "detail": "no executor for this action in this process"}
