"""The live rule engine: readings, status changes, schedules and alarms in; decisions, actions, traces out.

Rule state is keyed by (tenant, rule, device) and kept in memory, loaded from the database the
first time a device is seen (with its latest values from the telemetry store) and written back
in batches (ADR 0016):

* before any action runs, the state that decided it is written (a firing, a clear, a timer set or
  cancelled): a crash can never make a rule fire twice or lose a pending "for 5 minutes";
* everything else (last event time, window samples, consecutive counts) and the decision traces
  are written behind, every ``flush_interval`` seconds, one transaction per tenant. A crash loses
  at most that interval of such changes, which delays a window or a count by a few readings.

Alarm actions run in order with the evaluation of their (rule, device); the other actions
(notifications, webhooks, MQTT, derived metrics) run as tasks under the rule's run mode, so a slow
receiver never holds up readings. A rule that fails at run time is marked invalid with its reason
and taken out of the index; the others keep running.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import heapq
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from devices.catalogue import RegistryCatalogue
from devices.registry import DeviceFilter, DeviceRepository
from engine.compiler import CompiledRule, Decision, compile_rule
from engine.context import compile_context
from engine.core import EngineCore
from engine.document import RuleDocument, RunMode
from engine.errors import RuleValidationError
from engine.evaluation import DeviceView, Event, EventKind
from engine.executors import (
    ActionContext,
    ActionExecutor,
    AlarmPort,
    is_state_action,
)
from engine.guards import StateKey
from engine.nodes.base import ActionCall
from engine.nodes.triggers import Schedule
from engine.rules import RuleRepository
from engine.store import RuleStateRepository, StateRow, TraceRepository, all_timers
from model.errors import PlatformError
from model.readings import MetricValue, Reading
from pipeline.live import LiveEvent, LiveHub
from storage.database import Database
from storage.telemetry.port import TelemetryStore
from storage.tenancy import TenantRepository

__all__ = ["AlarmPort", "RuleEngine"]

logger = logging.getLogger(__name__)

TRACES_PER_RULE = 1000
PRUNE_EVERY = 200  # traces of a rule between two prunes
MAX_BUFFERED_TRACES = 200_000  # beyond this, traces that decided nothing are dropped (and counted)
MAX_ALARM_DEPTH = 3  # alarm -> rule -> alarm chains stop here
SCHEDULE_PAGE = 500

_alarm_depth: ContextVar[int] = ContextVar("alarm_depth", default=0)


@dataclass(slots=True)
class _Pending:
    """What is waiting to be written for one tenant."""

    traces: list[dict[str, Any]] = field(default_factory=list)
    fired: dict[str, datetime] = field(default_factory=dict)


class RuleEngine:
    """Evaluates published rules for the events of the pipeline."""

    def __init__(
        self,
        database: Database,
        catalogue: RegistryCatalogue,
        *,
        alarms: AlarmPort | None = None,
        executor: ActionExecutor | None = None,
        telemetry: TelemetryStore | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        allow_private_webhooks: bool = False,
        flush_interval: float = 0.2,
        live: LiveHub | None = None,
    ) -> None:
        self.database = database
        self.catalogue = catalogue
        self.executor = executor or ActionExecutor(
            alarms=alarms, allow_private_webhooks=allow_private_webhooks
        )
        self.telemetry = telemetry
        self.clock = clock
        self.allow_private_webhooks = allow_private_webhooks
        self.flush_interval = flush_interval
        self.live = live  # stored traces also go out as "trace" events to whoever asked for them
        self.core = EngineCore()  # states, latest values, timers and evaluation (engine/core.py)
        self.index = self.core.index
        self.traces_dropped = 0
        self._zones: dict[str, ZoneInfo] = {}
        # Devices whose states have been read from the database; wake times as last decided and
        # as last written.
        self._wakes: dict[StateKey, datetime | None] = {}
        self._persisted_wakes: dict[StateKey, datetime | None] = {}
        self._loaded: set[tuple[str, str]] = set()
        self._loading: dict[tuple[str, str], asyncio.Future[None]] = {}
        self._dirty: set[StateKey] = set()
        self._pending: dict[str, _Pending] = defaultdict(_Pending)
        self._buffered_traces = 0
        self._since_prune: dict[tuple[str, str], int] = defaultdict(int)
        self._flush_lock = asyncio.Lock()
        # Schedules: next instant per (tenant, rule, trigger path).
        self._schedule_heap: list[tuple[datetime, str, str, str]] = []
        self._schedules: dict[tuple[str, str, str], datetime] = {}
        self._timer_wakeup = asyncio.Event()
        # Actions: per-key ordering of alarm actions, and the running side-effect task per key.
        self._order: dict[StateKey, tuple[asyncio.Lock, int]] = {}
        self._running: dict[StateKey, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

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
            "rule engine: %d rule(s) indexed, %d timer(s) pending",
            len(self.index),
            len(self.core.scheduled),
        )

    async def reload(self, tenant_id: str, rule_id: str) -> None:
        """Pick up a publish, enable, disable or delete."""
        self.index.remove(tenant_id, rule_id)
        await self.flush()  # what the old version decided is written before the new one runs
        async with self.database.tenant(tenant_id) as scope:
            repo = RuleRepository(scope)
            try:
                rule = await repo.get(rule_id)
            except PlatformError:
                self._forget(tenant_id, rule_id)  # deleted: its state rows went with it
                return
            if rule.published_version is None or not rule.enabled or rule.invalid_reason:
                return
            version = await repo.version(rule_id, rule.published_version)
            if tenant_id not in self._zones:
                tenant = await TenantRepository(scope.conn).get(tenant_id)
                self._zones[tenant_id] = ZoneInfo(tenant.timezone)
        await self._install(tenant_id, rule_id, version.version, version.document)

    async def forget_device(self, tenant_id: str, device_id: str) -> None:
        """A device was decommissioned: drop its cached values, states and pending timers."""
        self._loaded.discard((tenant_id, device_id))
        for key in self.core.forget_device(tenant_id, device_id):
            self._drop(key)

    def _forget(self, tenant_id: str, rule_id: str) -> None:
        for key in self.core.forget_rule(tenant_id, rule_id):
            self._drop(key)

    def _drop(self, key: StateKey) -> None:
        """Forget everything cached and pending for one (tenant, rule, device)."""
        self.core.drop(key)
        self._wakes.pop(key, None)
        self._persisted_wakes.pop(key, None)
        self._dirty.discard(key)

    async def _install(self, tenant_id: str, rule_id: str, version: int, raw: dict[str, Any]) -> None:
        document = RuleDocument.model_validate(raw)
        try:
            async with self.database.tenant(tenant_id) as scope:
                # Channels are checked when a rule is saved; a channel deleted since must not
                # take the rule's alarms down with it (its notifications are logged no_channel).
                context = await compile_context(
                    scope,
                    document,
                    allow_private_webhooks=self.allow_private_webhooks,
                    check_channels=False,
                )
            compiled = compile_rule(document, context, rule_id=rule_id, version=version)
        except RuleValidationError as exc:
            # A rule that no longer validates (a metric removed from the catalogue, a device
            # deleted) stays listed, disabled, with the reason: never silently dropped.
            await self._invalidate(tenant_id, rule_id, exc.detail)
            return
        self.index.put(compiled)
        now = self.clock()
        zone = self._zones.get(tenant_id, ZoneInfo("UTC"))
        for trigger in compiled.triggers:
            if isinstance(trigger, Schedule):
                at = trigger.next_after(now, zone)
                self._schedules[(tenant_id, rule_id, trigger.path)] = at
                heapq.heappush(self._schedule_heap, (at, tenant_id, rule_id, trigger.path))
                self._timer_wakeup.set()

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
        if not self.core.take(reading):
            return []  # no rule of the tenant triggers on these metrics: skip the device lookup
        device = await self._device(reading.tenant_id, reading.device_id)
        if device is None:
            return []
        # The device's stored states must be known to tell which banked rules are active.
        await self._ensure_loaded(reading.tenant_id, device.id)
        rules = self.core.rules_for(reading, device)
        event = Event(EventKind.READING, reading.tenant_id, reading.device_id, reading.ts, reading)
        return await self._dispatch(rules, event, device, selected=True) if rules else []

    async def on_status(self, tenant_id: str, device_id: str, status: str, at: datetime) -> list[Decision]:
        """Evaluate the rules triggered by a device going online or offline."""
        rules = self.index.for_event(tenant_id, EventKind.STATUS)
        event = Event(EventKind.STATUS, tenant_id, device_id, at, data={"status": status})
        return await self._dispatch(rules, event) if rules else []

    async def on_alarm(
        self,
        tenant_id: str,
        device_id: str,
        alarm_type: str,
        state: str,
        at: datetime,
        *,
        cause: str | None = None,
    ) -> list[Decision]:
        """Evaluate the rules triggered by an alarm being raised, acknowledged or cleared."""
        depth = _alarm_depth.get()
        if depth >= MAX_ALARM_DEPTH:
            logger.warning("alarm chain of %s/%s stopped at depth %d", tenant_id, device_id, depth)
            return []
        rules = [r for r in self.index.for_event(tenant_id, EventKind.ALARM) if r.rule_id != cause]
        if not rules:
            return []
        event = Event(
            EventKind.ALARM, tenant_id, device_id, at, data={"alarm_type": alarm_type, "state": state}
        )
        token = _alarm_depth.set(depth + 1)
        try:
            return await self._dispatch(rules, event)
        finally:
            _alarm_depth.reset(token)

    async def fire_due_timers(self, now: datetime | None = None) -> list[Decision]:
        """Evaluate every timer and schedule due at ``now`` (durations completing, cron times)."""
        now = now or self.clock()
        decisions = []
        for (tenant_id, rule_id, device_id), wake_at in list(self.core.due(now)):
            rule = self.index.get(tenant_id, rule_id)
            if rule is None:
                continue
            event = Event(EventKind.TIMER, tenant_id, device_id, wake_at)
            decisions.extend(await self._dispatch([rule], event))
        while self._schedule_heap and self._schedule_heap[0][0] <= now:
            at, tenant_id, rule_id, path = heapq.heappop(self._schedule_heap)
            if self._schedules.get((tenant_id, rule_id, path)) != at:
                continue  # the rule was re-published or removed since
            rule = self.index.get(tenant_id, rule_id)
            if rule is None:
                del self._schedules[(tenant_id, rule_id, path)]
                continue
            decisions.extend(await self._run_schedule(rule, path, at))
            trigger = next(t for t in rule.triggers if t.path == path)
            assert isinstance(trigger, Schedule)
            upcoming = trigger.next_after(max(at, now), self._zones.get(tenant_id, ZoneInfo("UTC")))
            self._schedules[(tenant_id, rule_id, path)] = upcoming
            heapq.heappush(self._schedule_heap, (upcoming, tenant_id, rule_id, path))
        return decisions

    async def _run_schedule(self, rule: CompiledRule, path: str, at: datetime) -> list[Decision]:
        """Evaluate a scheduled rule for every device it selects (missed times are not caught up)."""
        selector = rule.document.devices
        decisions: list[Decision] = []
        cursor: str | None = None
        while True:
            async with self.database.tenant(rule.tenant_id) as scope:
                page = await DeviceRepository(scope).list(
                    DeviceFilter(type_id=selector.type, labels=selector.labels),
                    limit=SCHEDULE_PAGE,
                    cursor=cursor,
                )
            for found in page.items:
                if selector.ids and found.id not in selector.ids:
                    continue
                event = Event(EventKind.SCHEDULE, rule.tenant_id, found.id, at, data={"trigger": path})
                decisions.extend(await self._dispatch([rule], event))
            cursor = page.next_cursor
            if cursor is None:
                return decisions

    def next_wakeup(self) -> datetime | None:
        """When the next timer or schedule is due (None when nothing is pending)."""
        timer = self.core.next_timer()
        candidates = [at for at in (timer, self._schedule_heap[0][0] if self._schedule_heap else None) if at]
        return min(candidates) if candidates else None

    async def run_timers(self, interval: float = 1.0) -> None:
        """Fire due timers and schedules until cancelled."""
        while True:
            await self.fire_due_timers()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._timer_wakeup.wait(), interval)
            self._timer_wakeup.clear()

    async def run_flusher(self) -> None:
        """Write state and traces behind, every ``flush_interval`` seconds, until cancelled."""
        try:
            while True:
                await asyncio.sleep(self.flush_interval)
                try:
                    await self.flush()
                except Exception:  # the next round tries again; the engine keeps evaluating
                    logger.exception("rule engine: writing state and traces failed")
        finally:
            await self.drain()

    async def drain(self, grace_s: float = 10.0) -> None:
        """Let running actions finish (cancelled after ``grace_s``), then write everything."""
        if self._tasks:
            _done, pending = await asyncio.wait(set(self._tasks), timeout=grace_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        await self.flush()

    # --- evaluation ---------------------------------------------------------------------------

    async def _device(self, tenant_id: str, device_id: str) -> DeviceView | None:
        profiles = await self.catalogue.profiles(tenant_id, [device_id])
        profile = profiles.get(device_id)
        if profile is None:
            return None
        zone = self._zones.get(tenant_id, ZoneInfo("UTC"))
        return DeviceView(profile.device_id, profile.type_id, profile.labels, zone)

    async def _dispatch(
        self,
        rules: Iterable[CompiledRule],
        event: Event,
        device: DeviceView | None = None,
        *,
        selected: bool = False,
    ) -> list[Decision]:
        """Evaluate ``rules`` for the event's device (``selected``: the index already checked
        that each rule's selector picks the device)."""
        device = device or await self._device(event.tenant_id, event.device_id)
        if device is None:
            return []
        await self._ensure_loaded(event.tenant_id, device.id)
        decisions = []
        for rule in rules:
            if not selected and not rule.selects(device.id, device.type_id, device.labels):
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

    async def _ensure_loaded(self, tenant_id: str, device_id: str) -> None:
        """Read a device's rule states (and latest values) the first time the device is seen."""
        device_key = (tenant_id, device_id)
        if device_key in self._loaded:
            return
        loading = self._loading.get(device_key)
        if loading is not None:
            await asyncio.shield(loading)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._loading[device_key] = future
        try:
            async with self.database.tenant(tenant_id) as scope:
                stored = await RuleStateRepository(scope).for_device(device_id)
            for row in stored:
                key = (tenant_id, row.rule_id, device_id)
                if key not in self.core.states:  # an evaluation that got here first is newer
                    self.core.states[key] = row.state
                    self._wakes[key] = row.wake_at
                    self._persisted_wakes[key] = row.wake_at
            if self.telemetry is not None:
                await self._restore_values(tenant_id, device_id)
            self._loaded.add(device_key)
            future.set_result(None)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: a later caller retries instead of failing forever
            raise
        finally:
            del self._loading[device_key]

    async def _restore_values(self, tenant_id: str, device_id: str) -> None:
        assert self.telemetry is not None
        try:
            latest = await self.telemetry.latest(tenant_id, device_id)
        except Exception:  # values come back with the next readings; evaluation goes on
            logger.exception("latest values of %s/%s could not be read", tenant_id, device_id)
            return
        values = self.core.values.setdefault((tenant_id, device_id), {})
        times = self.core.times.setdefault((tenant_id, device_id), {})
        for metric, sample in latest.items():
            if metric not in values:  # a reading that arrived meanwhile is newer
                values[metric] = sample.value
                times[metric] = sample.ts

    async def _evaluate(self, rule: CompiledRule, event: Event, device: DeviceView) -> Decision | None:
        # Evaluation is synchronous: no other evaluation of this key can interleave with it.
        decision = self.core.evaluate(rule, event, device)
        if decision is None:
            return None
        key = (event.tenant_id, rule.rule_id, device.id)
        self._dirty.add(key)
        self._wakes[key] = decision.wake_at
        if decision.fired:
            self._pending[event.tenant_id].fired[rule.rule_id] = decision.at
        if decision.calls or decision.wake_at != self._persisted_wakes.get(key):
            # Written before anything acts on it: a crash cannot make it fire twice or forget a
            # pending duration.
            await self._write_states([key])
        if decision.wake_at is not None:
            self._schedule(event.tenant_id, rule.rule_id, device.id, decision.wake_at)
        values = self.core.values.get((event.tenant_id, device.id), {})
        await self._act(rule, decision, device, dict(values), decision.traced)
        return decision

    def _schedule(self, tenant_id: str, rule_id: str, device_id: str, wake_at: datetime) -> None:
        if self.core.schedule((tenant_id, rule_id, device_id), wake_at):
            self._timer_wakeup.set()

    # --- actions ------------------------------------------------------------------------------

    async def _act(
        self,
        rule: CompiledRule,
        decision: Decision,
        device: DeviceView,
        values: dict[str, MetricValue],
        traced: bool = True,
    ) -> None:
        if not decision.calls:
            if traced:
                self._trace(decision, [])
            return
        key = (decision.tenant_id, rule.rule_id, device.id)
        ctx = ActionContext(rule, decision, values, device.type_id, device.labels)
        state_calls = [c for c in decision.calls if is_state_action(c.node)]
        effects = [c for c in decision.calls if not is_state_action(c.node)]
        outcomes: list[dict[str, Any]] = []
        if state_calls:
            async with self._ordered(key):
                for call in state_calls:
                    outcomes.append(await self.executor.run(call, ctx))
            await self._announce_alarms(rule, decision, state_calls, outcomes)
        if not effects:
            self._trace(decision, outcomes)
            return
        previous = self._running.get(key)
        busy = previous is not None and not previous.done()
        mode = rule.document.run_mode
        if busy and mode is RunMode.SINGLE:
            detail = "not run: the previous firing's actions are still running (run mode single)"
            outcomes.extend(_outcome(c, "skipped", detail) for c in effects)
            self._trace(decision, outcomes)
            return
        if busy and mode is RunMode.RESTART and previous is not None:
            previous.cancel()
        after = previous if busy and mode is RunMode.QUEUED else None
        task = asyncio.create_task(
            self._effects(key, decision, ctx, effects, outcomes, after),
            name=f"rule-actions:{rule.rule_id}:{device.id}",
        )
        self._running[key] = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _effects(
        self,
        key: StateKey,
        decision: Decision,
        ctx: ActionContext,
        calls: list[ActionCall],
        outcomes: list[dict[str, Any]],
        after: asyncio.Task[None] | None,
    ) -> None:
        done = 0
        try:
            if after is not None:
                await asyncio.wait({after})  # queued: in order, whatever became of the previous one
            for call in calls:
                outcomes.append(await self.executor.run(call, ctx))
                done += 1
        except asyncio.CancelledError:
            detail = "cancelled: the rule fired again (run mode restart) or the engine stopped"
            outcomes.extend(_outcome(c, "cancelled", detail) for c in calls[done:])
        finally:
            self._trace(decision, outcomes)
            if self._running.get(key) is asyncio.current_task():
                del self._running[key]

    @contextlib.asynccontextmanager
    async def _ordered(self, key: StateKey) -> Any:
        lock, users = self._order.get(key, (asyncio.Lock(), 0))
        self._order[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._order[key]
            if users == 1:
                del self._order[key]
            else:
                self._order[key] = (lock, users - 1)

    async def _announce_alarms(
        self,
        rule: CompiledRule,
        decision: Decision,
        calls: list[ActionCall],
        outcomes: list[dict[str, Any]],
    ) -> None:
        done = {o["path"] for o in outcomes if o.get("status") == "done"}
        for call in calls:
            if call.path in done and call.node in ("alarm.raise", "alarm.clear"):
                state = "raised" if call.node == "alarm.raise" else "cleared"
                await self.on_alarm(
                    decision.tenant_id,
                    decision.device_id,
                    call.options["alarm_type"],
                    state,
                    decision.at,
                    cause=rule.rule_id,
                )

    # --- writing behind -----------------------------------------------------------------------

    def _trace(self, decision: Decision, actions: list[dict[str, Any]]) -> None:
        if self._buffered_traces >= MAX_BUFFERED_TRACES and not (decision.fired or decision.cleared):
            self.traces_dropped += 1
            return
        row = {
            "rule_id": decision.rule_id,
            "rule_version": decision.rule_version,
            "device_id": decision.device_id,
            "at": decision.at,
            "event": decision.event.value,
            "outcome": decision.outcome,
            "steps": [s.as_dict() for s in decision.steps],
            "actions": actions,
        }
        self._pending[decision.tenant_id].traces.append(row)
        self._buffered_traces += 1
        if self.live is not None and self.live.wants(decision.tenant_id, "trace"):
            event = LiveEvent("trace", {**row, "at": decision.at.isoformat()})
            self.live.publish(decision.tenant_id, decision.device_id, event)

    async def _write_states(self, keys: Iterable[StateKey]) -> None:
        """Write these keys' states now (and the tenant's pending last-fired times)."""
        async with self._flush_lock:
            by_tenant: dict[str, list[StateKey]] = defaultdict(list)
            for key in keys:
                if key in self._dirty:
                    self._dirty.discard(key)
                    by_tenant[key[0]].append(key)
            for tenant_id, tenant_keys in by_tenant.items():
                pending = self._pending.get(tenant_id)
                fired: dict[str, datetime] = pending.fired if pending else {}
                traces: list[dict[str, Any]] = []
                if pending:
                    pending.fired = {}
                await self._write(tenant_id, tenant_keys, fired, traces)

    async def flush(self) -> None:
        """Write every changed state, last-fired time and buffered trace now."""
        async with self._flush_lock:
            by_tenant: dict[str, list[StateKey]] = defaultdict(list)
            for key in self._dirty:
                by_tenant[key[0]].append(key)
            self._dirty = set()
            pending, self._pending = self._pending, defaultdict(_Pending)
            self._buffered_traces = 0
            for tenant_id in set(by_tenant) | set(pending):
                work = pending.get(tenant_id, _Pending())
                await self._write(tenant_id, by_tenant.get(tenant_id, []), work.fired, work.traces)

    async def _write(
        self,
        tenant_id: str,
        keys: list[StateKey],
        fired: dict[str, datetime],
        traces: list[dict[str, Any]],
    ) -> None:
        rows = [
            StateRow(key[1], key[2], copy.deepcopy(self.core.states.get(key, {})), self._wakes.get(key))
            for key in keys
        ]
        prune = []
        for trace in traces:
            counter = (tenant_id, trace["rule_id"])
            self._since_prune[counter] += 1
            if self._since_prune[counter] >= PRUNE_EVERY:
                self._since_prune[counter] = 0
                prune.append(trace["rule_id"])
        try:
            async with self.database.tenant(tenant_id) as scope:
                await RuleStateRepository(scope).put_many(rows)
                if traces:
                    await TraceRepository(scope).add_many(traces)
                rules = RuleRepository(scope)
                for rule_id, at in fired.items():
                    await rules.touch_fired(rule_id, at)
                for rule_id in prune:
                    await TraceRepository(scope).prune(rule_id, TRACES_PER_RULE)
        except Exception:
            # Most likely a rule deleted meanwhile (its state rows cascade away): write the
            # others, rule by rule, and drop what belongs to rules that no longer exist.
            logger.warning("rule engine: batch write for tenant %s failed; retrying per rule", tenant_id)
            await self._write_per_rule(tenant_id, rows, fired, traces)
            return
        for key, row in zip(keys, rows, strict=False):
            self._persisted_wakes[key] = row.wake_at

    async def _write_per_rule(
        self,
        tenant_id: str,
        rows: list[StateRow],
        fired: dict[str, datetime],
        traces: list[dict[str, Any]],
    ) -> None:
        by_rule: dict[str, list[StateRow]] = defaultdict(list)
        for row in rows:
            by_rule[row.rule_id].append(row)
        traces_by_rule: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for trace in traces:
            traces_by_rule[trace["rule_id"]].append(trace)
        for rule_id in set(by_rule) | set(traces_by_rule) | set(fired):
            try:
                async with self.database.tenant(tenant_id) as scope:
                    await RuleStateRepository(scope).put_many(by_rule.get(rule_id, []))
                    await TraceRepository(scope).add_many(traces_by_rule.get(rule_id, []))
                    if rule_id in fired:
                        await RuleRepository(scope).touch_fired(rule_id, fired[rule_id])
            except Exception as exc:
                logger.warning("rule engine: state of rule %s/%s dropped: %s", tenant_id, rule_id, exc)
                self._forget(tenant_id, rule_id)
                continue
            for row in by_rule.get(rule_id, []):
                self._persisted_wakes[(tenant_id, rule_id, row.device_id)] = row.wake_at


def _outcome(call: ActionCall, status: str, detail: str) -> dict[str, Any]:
    return {"path": call.path, "node": call.node, "status": status, "detail": detail}
