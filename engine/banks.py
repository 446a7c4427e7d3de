"""Threshold banks: many threshold rules on one metric, evaluated only when a reading can flip them.

The most common rule is "metric above (or below) a level", often with a second level to clear,
and tenants have many of them on the same metric (one per store, per device, per severity). For a
new value ``v`` of a device, such a rule can only change its outcome if it is not active and
``v`` crosses its level, or it is active and ``v`` crosses its clear level. The bank keeps the
rules of one (tenant, metric) sorted by level and, per device, the set of rules that are active,
so a reading finds the rules it flips with a binary search plus a look at the active ones:
O(log n + flips + active) instead of n evaluations. Those rules, and only those, then go through
the normal evaluation (state, throttle, actions, trace), so behaviour is the same as evaluating
every rule on every reading, minus the evaluations that could not change anything.

Eligible: a rule whose triggers are all "telemetry received" on exactly the metric of its one
condition, a ``telemetry.threshold``, that fires on change and traces changes only (ADR 0023).
The first reading of a device for a bank (after start-up, or after a rule joined it) evaluates
the rules of the bank that have a state for the device, which primes the active set from it, and
those whose level the value crosses; a rule with no state for the device is inactive.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine.compiler import CompiledRule
from engine.document import FireMode, TraceMode
from engine.evaluation import DeviceView
from engine.nodes.conditions import ThresholdCondition
from engine.nodes.triggers import TelemetryReceived


@dataclass(slots=True)
class _Entry:
    rule: CompiledRule
    condition: ThresholdCondition
    generation: int

    def raises(self, value: float) -> bool:
        """Whether an inactive rule turns true at ``value``."""
        o = self.condition.options
        return value > o.value if o.operator == "above" else value < o.value

    def clears(self, value: float) -> bool:
        """Whether an active rule turns false at ``value``."""
        o = self.condition.options
        if o.operator == "above":
            return value < o.clear_at if o.clear_at is not None else not value > o.value
        return value > o.clear_at if o.clear_at is not None else not value < o.value


@dataclass(slots=True)
class _Bank:
    """The banked rules of one (tenant, metric, selector criterion)."""

    generation: int = 0
    entries: dict[str, _Entry] = field(default_factory=dict)
    above: list[tuple[float, str]] = field(default_factory=list)  # (level, rule id), ascending
    below: list[tuple[float, str]] = field(default_factory=list)


Key = tuple[str, str, str]  # tenant, device, metric
MAX_FILED = 200_000  # cached (device, metric) bank lists; beyond, the cache starts afresh
_NONE: frozenset[str] = frozenset()


@dataclass(slots=True)
class _Filed:
    """The banks a device's readings of a metric look at, as of a generation of the banks."""

    version: int  # ThresholdBanks._version when filed
    type_id: str
    labels: dict[str, str]
    banks: list[_Bank]
    newest: int  # the newest generation among them
    entries: dict[str, _Entry]
    above: list[tuple[float, str]]  # the banks' levels, merged
    below: list[tuple[float, str]]
    # Whether each rule looked at so far selects the device (rule.selects, asked once per rule).
    selects: dict[str, bool]

    def picks(self, rule_id: str, device: DeviceView) -> bool:
        """Whether the banked rule ``rule_id`` selects the device."""
        known = self.selects.get(rule_id)
        if known is None:
            known = self.selects[rule_id] = self.entries[rule_id].rule.selects(
                device.id, device.type_id, device.labels
            )
        return known


def bankable(rule: CompiledRule) -> tuple[str, ThresholdCondition] | None:
    """The metric and threshold of a rule the bank can take, or None."""
    doc = rule.document
    if doc.fire is not FireMode.ON_CHANGE or doc.trace is not TraceMode.CHANGES:
        return None
    if len(rule.conditions) != 1 or not isinstance(rule.conditions[0], ThresholdCondition):
        return None
    condition = rule.conditions[0]
    metric = condition.options.metric
    for trigger in rule.triggers:
        if not isinstance(trigger, TelemetryReceived) or trigger.options.metrics != [metric]:
            return None
    return metric, condition


SelectorKey = tuple[str, ...]  # ("id", device) | ("label", key, value) | ("type", type) | ("all",)
BankKey = tuple[str, str, SelectorKey]  # tenant, metric, selector criterion


class ThresholdBanks:
    """Every bank of every tenant, and per (tenant, device, metric) the active rules.

    Banks are filed by (tenant, metric, selector criterion), the criterion being one that every
    device the rule selects has (each of its device ids; else its least-used label; else its
    type; else "all"), as the rule index files ordinary rules: a reading looks only at the banks
    of its device's id, labels, type and "all", so the levels it scans belong to rules that can
    select the device.
    """

    def __init__(self) -> None:
        self._banks: dict[BankKey, _Bank] = {}
        self._where: dict[tuple[str, str], tuple[str, list[SelectorKey]]] = {}  # rule -> its banks
        self._metrics: dict[tuple[str, str], int] = {}  # (tenant, metric) -> banked rules
        self._generation = 0  # one counter for all banks: a bank made anew never reuses a number
        self._version = 0  # changes with every put and remove: devices' filed banks are stale
        self._active: dict[Key, set[str]] = {}
        self._undecided: dict[Key, set[str]] = {}
        self._primed: dict[Key, int] = {}
        self._filed: dict[Key, _Filed] = {}  # per (tenant, device, metric): its banks, cached
        # Per (tenant, device, metric): the open interval of values that flip none of its banked
        # rules, as of its filed banks and active set (see _quiet_band); dropped when they change.
        self._quiet: dict[Key, tuple[float, float, _Filed]] = {}

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self._where

    def put(self, rule: CompiledRule) -> bool:
        """File the rule if it is eligible (True), replacing an older version."""
        self.remove(rule.tenant_id, rule.rule_id)
        self._version += 1
        found = bankable(rule)
        if found is None:
            return False
        metric, condition = found
        keys = self._selector_keys(rule, metric)
        self._generation += 1
        for skey in keys:
            bank = self._banks.setdefault((rule.tenant_id, metric, skey), _Bank())
            bank.generation = self._generation
            bank.entries[rule.rule_id] = _Entry(rule, condition, self._generation)
            side = bank.above if condition.options.operator == "above" else bank.below
            bisect.insort(side, (condition.options.value, rule.rule_id))
        self._where[(rule.tenant_id, rule.rule_id)] = (metric, keys)
        self._metrics[(rule.tenant_id, metric)] = self._metrics.get((rule.tenant_id, metric), 0) + 1
        return True

    def _selector_keys(self, rule: CompiledRule, metric: str) -> list[SelectorKey]:
        selector = rule.document.devices
        if selector.ids:
            return [("id", device_id) for device_id in dict.fromkeys(selector.ids)]
        if selector.labels:
            pairs = sorted(selector.labels.items())
            used = self._banks.get
            k, v = min(
                pairs,
                key=lambda kv: len(b.entries) if (b := used((rule.tenant_id, metric, ("label", *kv)))) else 0,
            )
            return [("label", k, v)]
        if selector.type is not None:
            return [("type", selector.type)]
        return [("all",)]

    def remove(self, tenant_id: str, rule_id: str) -> None:
        """Take a rule out (disabled, deleted, replaced)."""
        where = self._where.pop((tenant_id, rule_id), None)
        if where is None:
            return
        self._version += 1
        metric, keys = where
        for skey in keys:
            bank = self._banks[(tenant_id, metric, skey)]
            entry = bank.entries.pop(rule_id)
            side = bank.above if entry.condition.options.operator == "above" else bank.below
            side.remove((entry.condition.options.value, rule_id))
            if not bank.entries:
                del self._banks[(tenant_id, metric, skey)]
        left = self._metrics[(tenant_id, metric)] - 1
        if left:
            self._metrics[(tenant_id, metric)] = left
        else:
            del self._metrics[(tenant_id, metric)]

    def has(self, tenant_id: str, metrics: Any) -> bool:
        """Whether any bank of the tenant listens to one of these metrics."""
        return any((tenant_id, m) in self._metrics for m in metrics)

    def candidates(
        self,
        tenant_id: str,
        device: DeviceView,
        metric: str,
        value: Any,
        known: Callable[[str], bool] = lambda _rule_id: True,
    ) -> list[CompiledRule]:
        """The banked rules a new value of ``metric`` can flip for ``device``.

        ``known(rule_id)`` says whether the device has a state for that rule (stored or in
        memory); without one, a rule is inactive.
        """
        if (tenant_id, metric) not in self._metrics:
            return []
        key = (tenant_id, device.id, metric)
        filed = self._filed.get(key)
        if (
            filed is None
            or filed.version != self._version
            or filed.type_id != device.type_id
            or filed.labels != device.labels
        ):
            filed = self._file(key, device)
        if not filed.banks:
            return []
        number = None if isinstance(value, bool) or not isinstance(value, int | float) else float(value)
        quiet = self._quiet.get(key)
        if quiet is not None and number is not None and quiet[0] < number < quiet[1] and quiet[2] is filed:
            return []  # the common case: the value stays where it flips nothing
        primed = self._primed.get(key, -1)
        active = self._active.get(key, _NONE)
        undecided = self._undecided.get(key, _NONE)
        ids: list[str] = []
        if primed < filed.newest:
            # Rules new to this device: those with a stored state are evaluated once, which
            # primes the active set from it; a rule with no state is inactive, so it needs
            # evaluating only if this value crosses its level (a tenant's 1,000 rules on a
            # new device cost 1,000 comparisons, not 1,000 evaluations and traces).
            ids = [
                rid
                for bank in filed.banks
                if primed < bank.generation
                for rid, e in bank.entries.items()
                if e.generation > primed and (known(rid) or (number is not None and e.raises(number)))
            ]
        entries = filed.entries
        if number is not None:
            v = number
            above, below = filed.above, filed.below  # the device's banks' levels, merged
            if above and above[0][0] < v:  # some levels below v
                ids += [rid for _, rid in above[: bisect.bisect_left(above, (v, ""))] if rid not in active]
            if below and below[-1][0] > v:  # some levels above v
                crossed = below[bisect.bisect_right(below, (v, "\uffff")) :]
                ids += [rid for _, rid in crossed if rid not in active]
            if active:
                ids += [rid for rid in active if rid in entries and entries[rid].clears(v)]
        if undecided:
            ids += [rid for rid in undecided if rid in entries]
        found: dict[str, CompiledRule] = {}
        for rid in ids:  # an undecided rule may also be among the crossed ones: once each
            if rid not in found and filed.picks(rid, device):
                found[rid] = entries[rid].rule
        if primed < filed.newest:
            self._primed[key] = filed.newest
        if not found and number is not None and not undecided:
            self._quiet[key] = (*_quiet_band(filed, device, active, number), filed)
        return list(found.values())

    def _file(self, key: Key, device: DeviceView) -> _Filed:
        """The banks whose rules can select the device (by its id, type, labels or all)."""
        tenant_id, _device_id, metric = key
        skeys: list[SelectorKey] = [("id", device.id), ("type", device.type_id), ("all",)]
        skeys.extend(("label", k, v) for k, v in device.labels.items())
        banks = [b for skey in skeys if (b := self._banks.get((tenant_id, metric, skey))) is not None]
        newest = max((b.generation for b in banks), default=-1)
        if len(self._filed) >= MAX_FILED:
            self._filed.clear()
            self._quiet.clear()
        # A rule is in one bank per selector criterion it is filed under, and a device matches
        # one of them at most (its one id, type or label value): the entries do not collide.
        entries = {rid: e for b in banks for rid, e in b.entries.items()}
        above = sorted(item for b in banks for item in b.above)
        below = sorted(item for b in banks for item in b.below)
        filed = self._filed[key] = _Filed(
            self._version, device.type_id, dict(device.labels), banks, newest, entries, above, below, {}
        )
        return filed

    def forget_device(self, tenant_id: str, device_id: str) -> None:
        """Drop what is kept for a decommissioned device."""
        for sets in (self._active, self._undecided, self._primed, self._filed, self._quiet):
            for key in [k for k in sets if k[0] == tenant_id and k[1] == device_id]:
                del sets[key]

    def observe(self, rule: CompiledRule, device_id: str, state: dict[str, Any]) -> None:
        """After a banked rule was evaluated for a device: remember whether it is now active."""
        where = self._where.get((rule.tenant_id, rule.rule_id))
        if where is None:
            return
        metric, keys = where
        entry = self._banks[(rule.tenant_id, metric, keys[0])].entries[rule.rule_id]
        key = (rule.tenant_id, device_id, metric)
        node = state.get(entry.condition.path, {})
        _mark(self._undecided, key, rule.rule_id, "active" not in node)
        _mark(self._active, key, rule.rule_id, bool(node.get("active")))
        self._quiet.pop(key, None)


def _quiet_band(
    filed: _Filed, device: DeviceView, active: set[str] | frozenset[str], value: float
) -> tuple[float, float]:
    """The open interval around ``value`` in which ``candidates`` finds no rule, when it found
    none at ``value``: every rule that selects the device stays as it is, active or not.

    An inactive "above" rule raises past its level, so the nearest such level at or above
    ``value`` bounds the interval from above ("below" rules: the nearest at or below, from
    below). An active rule clears past its clear level (or back across its level), which bounds
    it on the other side. Rules that do not select the device are never candidates. A look from
    ``value`` along the sorted levels: O(log n) plus the active rules, not O(n).
    """
    low, high = -math.inf, math.inf
    above, below = filed.above, filed.below
    for at in range(bisect.bisect_left(above, (value, "")), len(above)):
        level, rid = above[at]
        if rid not in active and filed.picks(rid, device):
            high = level
            break
    for at in range(bisect.bisect_right(below, (value, "\uffff")) - 1, -1, -1):
        level, rid = below[at]
        if rid not in active and filed.picks(rid, device):
            low = level
            break
    for rid in active:
        entry = filed.entries.get(rid)
        if entry is None or not filed.picks(rid, device):
            continue
        o = entry.condition.options
        level = o.clear_at if o.clear_at is not None else o.value
        if o.operator == "above":
            low = max(low, level)
        else:
            high = min(high, level)
    return low, high


def _mark(sets: dict[Key, set[str]], key: Key, rule_id: str, on: bool) -> None:
    if on:
        sets.setdefault(key, set()).add(rule_id)
        return
    found = sets.get(key)
    if found is not None:
        found.discard(rule_id)
        if not found:
            del sets[key]
