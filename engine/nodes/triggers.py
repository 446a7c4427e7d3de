"""Triggers: telemetry received, device status changed, schedule, alarm state changed."""

from __future__ import annotations

from datetime import datetime, tzinfo
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter  # type: ignore[import-untyped]
from pydantic import Field, StringConstraints, field_validator

from engine.evaluation import Event, EventKind
from engine.nodes.base import Options, Trigger
from engine.registry import REGISTRY, NodeKind
from model.devices import METRIC_NAME_PATTERN

MetricName = Annotated[str, StringConstraints(pattern=METRIC_NAME_PATTERN)]


class TelemetryOptions(Options):
    """Which metrics must be in a reading for it to trigger the rule (empty: any reading)."""

    metrics: list[MetricName] = Field(
        default_factory=list, max_length=50, json_schema_extra={"widget": "metrics"}
    )


@REGISTRY.register(
    "telemetry.received",
    NodeKind.TRIGGER,
    options=TelemetryOptions,
    title="Telemetry received",
    examples=({"metrics": ["temp"]},),
)
class TelemetryReceived(Trigger):
    """Runs the rule when a device of the selection reports one of the metrics."""

    options: TelemetryOptions

    def event_kinds(self) -> frozenset[EventKind]:
        return frozenset({EventKind.READING, EventKind.TIMER})

    def metrics(self) -> frozenset[str] | None:
        return frozenset(self.options.metrics) or None

    def matches(self, event: Event) -> bool:
        if event.kind is EventKind.TIMER:
            return True
        if event.kind is not EventKind.READING or event.reading is None:
            return False
        wanted = self.options.metrics
        return not wanted or any(m in event.reading.metrics for m in wanted)


StatusName = Literal["online", "offline"]
AlarmState = Literal["raised", "acknowledged", "cleared"]


def _offline() -> list[StatusName]:
    return ["offline"]


def _raised() -> list[AlarmState]:
    return ["raised"]


class StatusOptions(Options):
    """Which status changes trigger the rule."""

    to: list[StatusName] = Field(default_factory=_offline, min_length=1)


@REGISTRY.register(
    "device.status",
    NodeKind.TRIGGER,
    options=StatusOptions,
    title="Device status changed",
    examples=({"to": ["offline"]},),
)
class DeviceStatusChanged(Trigger):
    """Runs the rule when a device goes online or offline (offline: silent past its timeout)."""

    options: StatusOptions

    def event_kinds(self) -> frozenset[EventKind]:
        return frozenset({EventKind.STATUS, EventKind.TIMER})

    def matches(self, event: Event) -> bool:
        if event.kind is EventKind.TIMER:
            return True
        return event.kind is EventKind.STATUS and event.data.get("status") in self.options.to


class AlarmOptions(Options):
    """Which alarm changes trigger the rule."""

    alarm_types: list[str] = Field(default_factory=list, max_length=20)
    states: list[AlarmState] = Field(default_factory=_raised, min_length=1)


@REGISTRY.register(
    "alarm.changed",
    NodeKind.TRIGGER,
    options=AlarmOptions,
    title="Alarm state changed",
    examples=({"alarm_types": ["freezer-warm"], "states": ["raised"]},),
)
class AlarmChanged(Trigger):
    """Runs the rule when an alarm of the device is raised, acknowledged or cleared."""

    options: AlarmOptions

    def event_kinds(self) -> frozenset[EventKind]:
        return frozenset({EventKind.ALARM})

    def matches(self, event: Event) -> bool:
        if event.kind is not EventKind.ALARM:
            return False
        types = self.options.alarm_types
        return (not types or event.data.get("alarm_type") in types) and event.data.get(
            "state"
        ) in self.options.states


class ScheduleOptions(Options):
    """A cron schedule (five fields: minute hour day month weekday) in a time zone."""

    cron: str = Field(min_length=1, max_length=100, json_schema_extra={"widget": "cron"})
    timezone: str | None = Field(
        default=None, max_length=64, description="IANA time zone; the tenant's when absent."
    )

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        fields = value.split()
        if len(fields) != 5:
            raise ValueError("a cron schedule has five fields: minute hour day month weekday")
        if not croniter.is_valid(value):
            raise ValueError(f"{value!r} is not a valid cron schedule")
        return " ".join(fields)

    @field_validator("timezone")
    @classmethod
    def _valid_zone(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value


@REGISTRY.register(
    "schedule",
    NodeKind.TRIGGER,
    options=ScheduleOptions,
    title="Schedule",
    examples=({"cron": "0 7 * * 1-5", "timezone": "Europe/Berlin"}, {"cron": "*/15 * * * *"}),
)
class Schedule(Trigger):
    """Runs the rule for every selected device at the times of a cron schedule (in a time zone)."""

    options: ScheduleOptions

    def event_kinds(self) -> frozenset[EventKind]:
        return frozenset({EventKind.SCHEDULE, EventKind.TIMER})

    def matches(self, event: Event) -> bool:
        if event.kind is EventKind.TIMER:
            return True
        return event.kind is EventKind.SCHEDULE and event.data.get("trigger") == self.path

    def next_after(self, after: datetime, default_zone: tzinfo) -> datetime:
        """The first scheduled instant strictly after ``after`` (aware, in UTC terms)."""
        zone: Any = ZoneInfo(self.options.timezone) if self.options.timezone else default_zone
        found: datetime = croniter(self.options.cron, after.astimezone(zone)).get_next(datetime)
        return found
