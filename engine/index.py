"""The rule index: a reading reaches only the rules of its tenant that can care about it."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from engine.banks import ThresholdBanks
from engine.compiler import CompiledRule
from engine.evaluation import DeviceView, EventKind

ANY_READING = ""  # the metric under which rules triggered by any reading are filed
MAX_CACHED = 200_000  # (device, metric set) selections kept; beyond, the cache starts afresh
SelectorKey = tuple[str, ...]  # ("id", device) | ("label", key, value) | ("type", type) | ("all",)


class RuleIndex:
    """Published, enabled rules by tenant, event kind and metric.

    A reading with metrics {temp, door_open} for tenant T finds the rules of T that trigger on
    ``temp`` or ``door_open`` or on any reading; the device selector is then checked per rule.
    Rules are tenant-scoped here, at compile time, and again when an action runs.

    ``for_device`` also uses the device selector as an index: each reading-triggered rule is
    filed, per trigger metric, under the most selective criterion of its selector (each of its
    device ids; else one of its labels, the one with the fewest rules filed when it is added;
    else its device type; else "all"). A device can only be selected by rules filed under its id,
    one of its labels, its type or "all", so a reading looks at (metrics + 1) x (labels + 3)
    buckets and checks the full selector only on the rules found there: the cost follows the
    rules that may apply to the device, not the tenant's rule count. The selection is cached per
    (tenant, device, metric set) until a rule is added or removed or the device's type or labels
    change, so a device's next readings find their rules with one look-up.
    """

    def __init__(self) -> None:
        self._by_metric: dict[str, dict[str, list[CompiledRule]]] = defaultdict(lambda: defaultdict(list))
        self._any_reading: dict[str, list[CompiledRule]] = defaultdict(list)
        self._by_kind: dict[tuple[str, EventKind], list[CompiledRule]] = defaultdict(list)
        self._by_selector: dict[str, dict[tuple[str, SelectorKey], list[CompiledRule]]] = defaultdict(dict)
        self._rules: dict[tuple[str, str], CompiledRule] = {}
        self.banks = ThresholdBanks()
        self._generation = 0  # changes with every put and remove: cached selections are stale
        self._selected: dict[tuple[str, str, tuple[str, ...]], _Selection] = {}

    def __len__(self) -> int:
        return len(self._rules)

    @property
    def generation(self) -> int:
        """A number that changes whenever a rule is added or removed."""
        return self._generation

    def replace_all(self, rules: Iterable[CompiledRule]) -> None:
        """Rebuild from scratch (start-up)."""
        self.__init__()  # type: ignore[misc]
        for rule in rules:
            self.put(rule)

    def put(self, rule: CompiledRule) -> None:
        """Add or replace a rule (a new published version)."""
        self.remove(rule.tenant_id, rule.rule_id)
        self._generation += 1
        self._rules[(rule.tenant_id, rule.rule_id)] = rule
        kinds = rule.event_kinds
        if self.banks.put(rule):
            return  # a threshold rule: found by value through its bank (engine.banks)
        if EventKind.READING in kinds:
            metrics = rule.metrics
            if metrics is None:
                self._any_reading[rule.tenant_id].append(rule)
            else:
                for metric in metrics:
                    self._by_metric[rule.tenant_id][metric].append(rule)
            filed = self._by_selector[rule.tenant_id]
            for metric in sorted(metrics) if metrics is not None else [ANY_READING]:
                for key in _selector_keys(rule, metric, filed):
                    filed.setdefault((metric, key), []).append(rule)
        for kind in kinds - {EventKind.READING, EventKind.TIMER}:
            self._by_kind[(rule.tenant_id, kind)].append(rule)

    def remove(self, tenant_id: str, rule_id: str) -> None:
        """Drop a rule (disabled, deleted or replaced)."""
        old = self._rules.pop((tenant_id, rule_id), None)
        if old is None:
            return
        self._generation += 1
        if (tenant_id, rule_id) in self.banks:
            self.banks.remove(tenant_id, rule_id)
            return
        for bucket in (
            *self._by_metric.get(tenant_id, {}).values(),
            self._any_reading.get(tenant_id, []),
            *(rules for (t, _), rules in self._by_kind.items() if t == tenant_id),
            *self._by_selector.get(tenant_id, {}).values(),
        ):
            if old in bucket:
                bucket.remove(old)

    def get(self, tenant_id: str, rule_id: str) -> CompiledRule | None:
        """One indexed rule."""
        return self._rules.get((tenant_id, rule_id))

    def for_reading(self, tenant_id: str, metrics: Mapping[str, object]) -> list[CompiledRule]:
        """The rules a reading with these metrics can trigger, each once."""
        by_metric = self._by_metric.get(tenant_id)
        found: dict[int, CompiledRule] = {id(r): r for r in self._any_reading.get(tenant_id, ())}
        if by_metric:
            for metric in metrics:
                for rule in by_metric.get(metric, ()):
                    found[id(rule)] = rule
        return list(found.values())

    def triggers_on(self, tenant_id: str, metrics: Mapping[str, object]) -> bool:
        """Whether any rule of the tenant can be triggered by a reading with these metrics."""
        if self._any_reading.get(tenant_id):
            return True
        by_metric = self._by_metric.get(tenant_id)
        if by_metric and any(by_metric.get(m) for m in metrics):
            return True
        return self.banks.has(tenant_id, metrics)

    def for_values(
        self,
        tenant_id: str,
        device: DeviceView,
        values: Mapping[str, object],
        known: Callable[[str], bool] = lambda _rule_id: True,
    ) -> list[CompiledRule]:
        """``for_device`` plus the banked threshold rules these values can flip, each once.

        ``known(rule_id)``: whether the device has a state for the rule (see ThresholdBanks).
        """
        return self.for_device(tenant_id, device, values) + self.banked(tenant_id, device, values, known)

    def banked(
        self,
        tenant_id: str,
        device: DeviceView,
        values: Mapping[str, object],
        known: Callable[[str], bool] = lambda _rule_id: True,
    ) -> list[CompiledRule]:
        """The banked threshold rules these values can flip for the device (engine.banks)."""
        found: list[CompiledRule] = []
        for metric, value in values.items():
            found.extend(self.banks.candidates(tenant_id, device, metric, value, known))
        return found

    def for_device(self, tenant_id: str, device: DeviceView, metrics: Iterable[str]) -> list[CompiledRule]:
        """The rules a reading of ``device`` with these metrics triggers and whose selector picks it.

        The same rules as ``for_reading`` followed by ``selects``, each once (a new list).
        """
        filed = self._by_selector.get(tenant_id)
        if not filed:
            return []
        cache_key = (tenant_id, device.id, tuple(metrics))
        cached = self._selected.get(cache_key)
        if (
            cached is not None
            and cached.generation == self._generation
            and cached.type_id == device.type_id
            and cached.labels == device.labels
        ):
            return list(cached.rules)
        rules = self._select(filed, device, cache_key[2])
        if len(self._selected) >= MAX_CACHED:
            self._selected.clear()
        self._selected[cache_key] = _Selection(self._generation, device.type_id, dict(device.labels), rules)
        return list(rules)

    def _select(
        self,
        filed: Mapping[tuple[str, SelectorKey], list[CompiledRule]],
        device: DeviceView,
        metrics: Iterable[str],
    ) -> list[CompiledRule]:
        keys: list[SelectorKey] = [("id", device.id), ("type", device.type_id), ("all",)]
        keys.extend(("label", k, v) for k, v in device.labels.items())
        found: dict[int, CompiledRule] = {}
        for metric in (*metrics, ANY_READING):
            for key in keys:
                for rule in filed.get((metric, key), ()):
                    found[id(rule)] = rule
        return [r for r in found.values() if r.selects(device.id, device.type_id, device.labels)]

    def for_event(self, tenant_id: str, kind: EventKind) -> list[CompiledRule]:
        """The rules triggered by status, alarm or schedule events of a tenant."""
        return list(self._by_kind.get((tenant_id, kind), ()))


@dataclass(slots=True)
class _Selection:
    """The rules ``for_device`` found for a device and metric set, and what they depend on."""

    generation: int
    type_id: str
    labels: dict[str, str]
    rules: list[CompiledRule]


def _selector_keys(
    rule: CompiledRule, metric: str, filed: Mapping[tuple[str, SelectorKey], list[CompiledRule]]
) -> list[SelectorKey]:
    """Where ``for_device`` looks for the rule: under one criterion every selected device has."""
    selector = rule.document.devices
    if selector.ids:
        return [("id", device_id) for device_id in selector.ids]
    if selector.labels:
        pairs = sorted(selector.labels.items())
        key, value = min(pairs, key=lambda kv: len(filed.get((metric, ("label", *kv)), ())))
        return [("label", key, value)]
    if selector.type is not None:
        return [("type", selector.type)]
    return [("all",)]
