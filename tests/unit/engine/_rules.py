"""Helpers to evaluate compiled rules over synthetic readings in tests."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from engine.compiler import CompiledRule, Decision, compile_rule
from engine.document import RuleDocument
from engine.evaluation import DeviceView, Event, EventKind
from engine.nodes.base import CompileContext
from model.devices import DataType, MetricSpec
from model.readings import MetricValue, Reading, Source

T0 = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)


def catalogue(
    numbers: Iterable[str] = (),
    integers: Iterable[str] = (),
    flags: Iterable[str] = (),
    strings: Iterable[str] = (),
) -> dict[str, MetricSpec]:
    """A metric catalogue: the given metric names with their data types."""
    kinds = ((numbers, DataType.NUMBER), (integers, DataType.INTEGER), (flags, DataType.BOOLEAN))
    found = {name: MetricSpec(name=name, data_type=kind) for names, kind in kinds for name in names}
    found.update({name: MetricSpec(name=name, data_type=DataType.STRING) for name in strings})
    return found


FREEZER = {
    "temp": MetricSpec(name="temp", data_type=DataType.NUMBER),
    "door_open": MetricSpec(name="door_open", data_type=DataType.BOOLEAN),
    "mode": MetricSpec(name="mode", data_type=DataType.STRING),
}
CONTEXT = CompileContext("acme", FREEZER)
DEVICE = DeviceView("fz-1", "freezer", {"region": "north"}, ZoneInfo("Europe/Berlin"))


def rule(**document: Any) -> CompiledRule:
    document.setdefault("name", "test")
    document.setdefault("when", [{"type": "telemetry.received", "options": {"metrics": ["temp"]}}])
    return compile_rule(RuleDocument.model_validate(document), CONTEXT)


class Device:
    """One device's latest values and the rule state, as the engine keeps them."""

    def __init__(self, compiled: CompiledRule, state: dict[str, dict[str, Any]] | None = None) -> None:
        self.rule = compiled
        self.values: dict[str, MetricValue] = {}
        self.times: dict[str, datetime] = {}
        self.state: dict[str, dict[str, Any]] = state if state is not None else {}

    def reading(self, at: datetime, **metrics: MetricValue) -> Decision | None:
        reading = Reading("acme", DEVICE.id, at, metrics, Source("test", "t"))
        self.values.update(metrics)
        self.times.update(dict.fromkeys(metrics, at))
        event = Event(EventKind.READING, "acme", DEVICE.id, at, reading)
        return self.rule.evaluate(event, DEVICE, self.values, self.times, self.state)

    def timer(self, at: datetime) -> Decision | None:
        return self.rule.evaluate(
            Event(EventKind.TIMER, "acme", DEVICE.id, at), DEVICE, self.values, self.times, self.state
        )

    def persisted(self) -> dict[str, dict[str, Any]]:
        """The state as it would be written to the database and read back."""
        loaded: dict[str, dict[str, Any]] = json.loads(json.dumps(self.state))
        return loaded


def series(start: datetime, every_s: float, values: Iterable[float]) -> list[tuple[datetime, float]]:
    return [(start + timedelta(seconds=i * every_s), v) for i, v in enumerate(values)]
