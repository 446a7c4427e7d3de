"""What a node sees while a rule is evaluated: the event, the device, state, and the trace it writes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from enum import StrEnum
from typing import Any

from model.readings import MetricValue, Reading


class EventKind(StrEnum):
    """What made the engine evaluate a rule."""

    READING = "reading"
    STATUS = "status"
    SCHEDULE = "schedule"
    ALARM = "alarm"
    TIMER = "timer"


@dataclass(frozen=True, slots=True)
class Event:
    """One thing that happened to one device (or, for schedules, to the tenant)."""

    kind: EventKind
    tenant_id: str
    device_id: str
    ts: datetime
    reading: Reading | None = None
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DeviceView:
    """The device a rule is evaluated for."""

    id: str
    type_id: str
    labels: Mapping[str, str]
    timezone: tzinfo


@dataclass(slots=True)
class TraceStep:
    """One node's part in a decision: its path, result and why."""

    path: str
    node: str
    result: bool | None
    detail: str
    inputs: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The step as stored and served."""
        return {
            "path": self.path,
            "node": self.node,
            "result": self.result,
            "detail": self.detail,
            "inputs": self.inputs,
        }


@dataclass(slots=True)
class EvalContext:
    """Everything one evaluation of one rule for one device can read and write."""

    event: Event
    device: DeviceView
    values: Mapping[str, MetricValue]
    value_times: Mapping[str, datetime]
    state: dict[str, dict[str, Any]]
    steps: list[TraceStep] = field(default_factory=list)
    wake_at: datetime | None = None

    @property
    def now(self) -> datetime:
        """The time of the event being evaluated (never the wall clock: backtests replay time)."""
        return self.event.ts

    def node_state(self, path: str) -> dict[str, Any]:
        """The persistent state of the node at ``path`` for this rule and device."""
        return self.state.setdefault(path, {})

    def wake(self, at: datetime) -> None:
        """Ask to be evaluated again at ``at`` even if nothing else happens (durations)."""
        if self.wake_at is None or at < self.wake_at:
            self.wake_at = at

    def record(self, path: str, node: str, result: bool | None, detail: str, **inputs: Any) -> None:
        """Add a step to the decision trace."""
        self.steps.append(TraceStep(path, node, result, detail, inputs))
