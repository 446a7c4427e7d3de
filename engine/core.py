"""The engine's synchronous core: what a reading reaches, what each evaluation decides, timers.

``RuleEngine`` (engine/runner.py) wraps this with everything that waits: looking devices up,
loading stored states, writing state and traces behind, running actions. ``bench/engine.py``
drives the same core, so what it measures is the code the live engine runs per reading.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from engine.compiler import RULE_STATE, CompiledRule, Decision
from engine.document import TraceMode
from engine.evaluation import DeviceView, Event, EventKind
from engine.executors import DERIVED_SOURCE_KIND
from engine.guards import LevelGroup, Memory, Seen, StateKey, remember, worth_evaluating
from engine.index import RuleIndex
from model.readings import MetricValue, Reading

DeviceKey = tuple[str, str]  # tenant, device
MAX_PLANS = 200_000  # cached (device, metric set) plans; beyond, plans and groups start afresh


@dataclass(slots=True)
class _Plan:
    """How a reading of a device with a metric set finds its rules: ``single`` are checked one by
    one, the others through their metric's level group."""

    generation: int
    drops: int
    type_id: str
    labels: dict[str, str]
    single: list[CompiledRule]
    group: LevelGroup | None


class EngineCore:
    """Rule state, latest values and timers in memory, and the evaluation of one rule for one event.

    * ``values`` / ``times``: the latest value (and its time) of every metric per device: a rule
      triggered by temp may read door_open, which came in a reading that triggered nothing.
    * ``states``: per (tenant, rule, device), the nodes' state (plain JSON, what is persisted).
    * ``seen``: per guarded (tenant, rule, device), what its last evaluation saw (engine.guards).
    * ``scheduled``: the one pending wake time per key; ``timers`` is the heap behind it, where an
      entry that differs from ``scheduled`` is stale.
    """

    def __init__(self, index: RuleIndex | None = None) -> None:
        self.index = index if index is not None else RuleIndex()
        self.values: dict[DeviceKey, dict[str, MetricValue]] = {}
        self.times: dict[DeviceKey, dict[str, datetime]] = {}
        self.states: dict[StateKey, dict[str, Any]] = {}
        self.seen: dict[StateKey, Seen] = {}
        self.scheduled: dict[StateKey, datetime] = {}
        self.timers: list[tuple[datetime, str, str, str]] = []
        self.memory = Memory(self.seen, self.scheduled, self.states)  # what guards read
        self.evaluations = 0
        self.skipped = 0  # guarded evaluations a reading did not need
        # Per (tenant, device, metric set): which rules a reading checks one by one and which in
        # its level group (engine.guards.LevelGroup); per device, its groups by metric set.
        self._plans: dict[tuple[str, str, tuple[str, ...]], _Plan] = {}
        self._groups: dict[DeviceKey, dict[tuple[str, ...], LevelGroup]] = {}
        self._drops = 0  # changes whenever remembered signatures are dropped: groups start afresh

    # --- readings -------------------------------------------------------------------------------

    def take(self, reading: Reading) -> bool:
        """Keep the reading's values; whether any rule of its tenant triggers on its metrics."""
        key = (reading.tenant_id, reading.device_id)
        values = self.values.get(key)
        if values is None:
            values = self.values[key] = {}
            self.times[key] = {}
        values.update(reading.metrics)
        self.times[key].update(dict.fromkeys(reading.metrics, reading.ts))
        return self.index.triggers_on(reading.tenant_id, reading.metrics)

    def rules_for(self, reading: Reading, device: DeviceView) -> list[CompiledRule]:
        """The rules to evaluate for a reading (already taken) of ``device``.

        Only the rules whose selector can pick the device (by id, label or type); threshold
        rules in banks only when this reading's values can flip them (which needs the device's
        stored states loaded, to know which are active); guarded rules only when their inputs
        moved past a level, a count is running or a timer is due.
        """
        tenant_id, device_id, states = reading.tenant_id, device.id, self.states
        metrics = reading.metrics
        plan = self._plan(tenant_id, device, metrics)
        banked = self.index.banked(
            tenant_id, device, metrics, lambda rule_id: (tenant_id, rule_id, device_id) in states
        )
        single = plan.single
        if reading.source.kind == DERIVED_SOURCE_KIND:
            # A derived metric never re-triggers the rule that wrote it (no loops); rules that
            # write derived metrics are never in level groups.
            writer = reading.source.instance
            banked = [r for r in banked if r.rule_id != writer]
            single = [r for r in single if r.rule_id != writer]
        values, at, memory = self.values[(tenant_id, device_id)], reading.ts, self.memory
        picked = worth_evaluating(single, tenant_id, device_id, values, at, memory)
        checked = len(single)
        group = plan.group
        if group is not None:
            checked += len(group.rules)
            picked += group.candidates(values, at, memory)
        self.skipped += checked - len(picked)
        return banked + picked if banked else picked

    def _plan(self, tenant_id: str, device: DeviceView, metrics: Mapping[str, object]) -> _Plan:
        key = (tenant_id, device.id, tuple(metrics))
        plan = self._plans.get(key)
        if (
            plan is not None
            and plan.generation == self.index.generation
            and plan.drops == self._drops
            and plan.type_id == device.type_id
            and plan.labels == device.labels
        ):
            return plan
        if len(self._plans) >= MAX_PLANS:
            self._plans.clear()
            self._groups.clear()
        # Every reading with this metric set triggers the guarded rules whose one trigger metric
        # is in it: they form the plan's level group. A rule is in the group of every metric set
        # that reaches it; each group keeps its own last values.
        present = set(key[2])
        selected = self.index.for_device(tenant_id, device, key[2])
        members = [r for r in selected if r.guard is not None and r.guard.trigger in present]
        grouped = {r.rule_id for r in members}
        single = [r for r in selected if r.rule_id not in grouped]
        groups = self._groups.setdefault((tenant_id, device.id), {})
        group = None
        if members:
            group = groups[key[2]] = LevelGroup(tenant_id, device.id, members)
        else:
            groups.pop(key[2], None)
        plan = _Plan(self.index.generation, self._drops, device.type_id, dict(device.labels), single, group)
        self._plans[key] = plan
        return plan

    # --- evaluation -----------------------------------------------------------------------------

    def evaluate(self, rule: CompiledRule, event: Event, device: DeviceView) -> Decision | None:
        """Evaluate ``rule`` for the event's device; None when no trigger matched (or the event
        is a timer that later events made stale). Updates the state, the banks and the guard
        memory; ``decision.traced`` says whether the decision should be stored as a trace."""
        key = (event.tenant_id, rule.rule_id, device.id)
        state = self.memory.state(key)
        last = state.get(RULE_STATE)
        last_at = last.get("last_at") if last else None
        if (
            event.kind is EventKind.TIMER
            and last_at is not None
            and event.ts < datetime.fromisoformat(last_at)
        ):
            return None  # later events already moved this state past the timer
        values_key = (event.tenant_id, device.id)
        values = self.values.get(values_key)
        if values is None:
            values = self.values[values_key] = {}
            self.times[values_key] = {}
        decision = rule.evaluate(event, device, values, self.times[values_key], state)
        if decision is None:
            return None
        last = state[RULE_STATE]  # evaluate made it
        if decision.wake_at is None:
            # The pending timer is the one the last evaluation asked for (as persisted): a
            # duration that stopped before its timer came due needs no evaluation at that time.
            self.scheduled.pop(key, None)
        if last_at is None or event.ts > datetime.fromisoformat(last_at):
            last["last_at"] = event.ts.isoformat()
        self.index.banks.observe(rule, device.id, state)
        guard = rule.guard
        if guard is not None:
            memo = self.seen[key] = remember(guard, values, state, decision.result)
            if guard.trigger is not None:
                for group in self._groups.get((key[0], key[2]), {}).values():
                    if group.rules.get(rule.rule_id) is rule:
                        group.note(rule.rule_id, memo)
        # Traces: every firing, clear and throttle, and every change of result for the device
        # (the first evaluation included), so "why not?" always has an answer; the evaluations
        # in between change nothing and are counted, not stored, unless the rule traces all.
        result = decision.result_word
        decision.traced = (
            rule.document.trace is TraceMode.ALL
            or result != last.get("last_result")
            or decision.fired
            or decision.cleared
            or decision.throttled
        )
        last["last_result"] = result
        last.pop("last_outcome", None)  # what states kept before guards (ADR 0026)
        self.evaluations += 1
        return decision

    # --- timers ---------------------------------------------------------------------------------

    def schedule(self, key: StateKey, wake_at: datetime) -> bool:
        """Ask for a timer event at ``wake_at`` (one pending per key); whether it is new."""
        if self.scheduled.get(key) == wake_at:
            return False  # already pending: one timer per key, not one per reading
        self.scheduled[key] = wake_at
        heapq.heappush(self.timers, (wake_at, *key))
        tenant_id, rule_id, device_id = key
        rule = self.index.get(tenant_id, rule_id)
        if rule is not None and rule.guard is not None and rule.guard.trigger is not None:
            for group in self._groups.get((tenant_id, device_id), {}).values():
                if rule_id in group.rules:
                    group.timer(rule_id, wake_at)
        return True

    def due(self, now: datetime) -> Iterator[tuple[StateKey, datetime]]:
        """Pop the timers due at ``now`` (each key with its wake time), oldest first."""
        timers, scheduled = self.timers, self.scheduled
        while timers and timers[0][0] <= now:
            wake_at, tenant_id, rule_id, device_id = heapq.heappop(timers)
            key = (tenant_id, rule_id, device_id)
            if scheduled.get(key) != wake_at:
                continue  # superseded by a later schedule for the same key
            del scheduled[key]
            yield key, wake_at

    def next_timer(self) -> datetime | None:
        """When the next timer is due (stale heap entries included: they cost one wake-up)."""
        return self.timers[0][0] if self.timers else None

    # --- forgetting -----------------------------------------------------------------------------

    def drop(self, key: StateKey) -> None:
        """Forget the state, guard memory and pending timer of one (tenant, rule, device)."""
        self.states.pop(key, None)
        self.seen.pop(key, None)
        self.scheduled.pop(key, None)
        self._drops += 1  # level groups start afresh: they keep signatures and windows' states

    def forget_device(self, tenant_id: str, device_id: str) -> list[StateKey]:
        """Forget a decommissioned device; the keys dropped."""
        self.values.pop((tenant_id, device_id), None)
        self.times.pop((tenant_id, device_id), None)
        keys = [k for k in self.states if k[0] == tenant_id and k[2] == device_id]
        for key in keys:
            self.drop(key)
        self.index.banks.forget_device(tenant_id, device_id)
        self._drops += 1
        self._groups.pop((tenant_id, device_id), None)
        for cached in [k for k in self._plans if k[0] == tenant_id and k[1] == device_id]:
            del self._plans[cached]
        return keys

    def forget_rule(self, tenant_id: str, rule_id: str) -> list[StateKey]:
        """Forget every device's state of a rule; the keys dropped."""
        keys = [k for k in self.states if k[0] == tenant_id and k[1] == rule_id]
        for key in keys:
            self.drop(key)
        return keys
