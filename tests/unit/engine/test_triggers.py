"""Triggers: what starts an evaluation, and when schedules come due."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from engine.evaluation import Event, EventKind
from engine.nodes.base import CompileContext
from engine.nodes.triggers import DeviceStatusChanged, Schedule, ScheduleOptions, StatusOptions
from engine.registry import REGISTRY
from tests.unit.engine._rules import FREEZER, T0

CONTEXT = CompileContext("acme", FREEZER)


def schedule(**options: object) -> Schedule:
    return Schedule("when/0", ScheduleOptions.model_validate(options), CONTEXT)


def test_schedule_next_time_in_its_own_zone_across_a_dst_change() -> None:
    weekday_seven = schedule(cron="0 7 * * 1-5", timezone="Europe/Berlin")
    # Friday 27 Nov 2026, noon UTC: the next weekday 07:00 in Berlin is Monday, 06:00 UTC.
    assert weekday_seven.next_after(datetime(2026, 11, 27, 12, tzinfo=UTC), ZoneInfo("UTC")) == datetime(
        2026, 11, 30, 6, tzinfo=UTC
    )
    # Summer time: 07:00 in Berlin is 05:00 UTC.
    assert weekday_seven.next_after(datetime(2026, 7, 1, 12, tzinfo=UTC), ZoneInfo("UTC")) == datetime(
        2026, 7, 2, 5, tzinfo=UTC
    )


def test_schedule_without_a_zone_uses_the_tenants() -> None:
    quarter = schedule(cron="*/15 * * * *")
    at = datetime(2026, 11, 27, 10, 7, tzinfo=UTC)
    assert quarter.next_after(at, ZoneInfo("Asia/Kolkata")) == datetime(2026, 11, 27, 10, 15, tzinfo=UTC)
    # Strictly after: a schedule firing at its own instant asks for the next one.
    assert quarter.next_after(datetime(2026, 11, 27, 10, 15, tzinfo=UTC), ZoneInfo("UTC")) == datetime(
        2026, 11, 27, 10, 30, tzinfo=UTC
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cron": "0 7 * *"}, "five fields"),
        ({"cron": "0 7 * * * *"}, "five fields"),
        ({"cron": "61 7 * * *"}, "not a valid cron"),
        ({"cron": "0 7 * * *", "timezone": "Mars/Olympus"}, "unknown time zone"),
        ({"cron": "0 7 * * *", "every": 5}, "Extra inputs"),
    ],
)
def test_bad_schedules_are_refused_with_a_reason(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ScheduleOptions.model_validate(options)


def test_schedule_matches_only_its_own_schedule_events() -> None:
    trigger = schedule(cron="0 7 * * *")
    mine = Event(EventKind.SCHEDULE, "acme", "fz-1", T0, data={"trigger": "when/0"})
    other = Event(EventKind.SCHEDULE, "acme", "fz-1", T0, data={"trigger": "when/1"})
    reading = Event(EventKind.READING, "acme", "fz-1", T0)
    assert trigger.matches(mine) and not trigger.matches(other) and not trigger.matches(reading)
    assert EventKind.SCHEDULE in trigger.event_kinds()
    assert REGISTRY.get("schedule") is not None


def test_status_trigger_matches_the_statuses_it_names() -> None:
    trigger = DeviceStatusChanged("when/0", StatusOptions.model_validate({"to": ["offline"]}), CONTEXT)
    offline = Event(EventKind.STATUS, "acme", "fz-1", T0, data={"status": "offline"})
    online = Event(EventKind.STATUS, "acme", "fz-1", T0, data={"status": "online"})
    assert trigger.matches(offline) and not trigger.matches(online)
