"""Alarm states derived from the clear and acknowledge times, and the page cursor."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import TypeAdapter

from engine.alarms import Alarm, AlarmSeverity, AlarmState, _cursor_key, _parse_cursor
from engine.nodes.actions import Severity
from model.errors import InvalidCursorError
from storage.pagination import encode_cursor

T0 = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)

RAISED = Alarm(
    id="alm_1",
    tenant_id="t",
    rule_id="rul_1",
    device_id="fz-1",
    alarm_type="too-warm",
    severity=AlarmSeverity.MAJOR,
    message="",
    raise_count=1,
    raised_at=T0,
    last_raised_at=T0,
    acknowledged_at=None,
    acknowledged_by=None,
    cleared_at=None,
    cleared_by=None,
    updated_at=T0,
)


@pytest.mark.parametrize(
    ("acknowledged", "cleared", "state"),
    [
        (False, False, AlarmState.ACTIVE_UNACK),
        (True, False, AlarmState.ACTIVE_ACK),
        (False, True, AlarmState.CLEARED_UNACK),
        (True, True, AlarmState.CLEARED_ACK),
    ],
)
def test_state_is_derived_from_clear_and_acknowledge_times(
    acknowledged: bool, cleared: bool, state: AlarmState
) -> None:
    alarm = replace(
        RAISED,
        acknowledged_at=T0 + timedelta(minutes=1) if acknowledged else None,
        cleared_at=T0 + timedelta(minutes=2) if cleared else None,
    )
    assert alarm.state is state
    assert (alarm.acknowledged, alarm.active) == (acknowledged, not cleared)


def test_severities_are_the_alarm_raise_node_options() -> None:
    adapter: TypeAdapter[str] = TypeAdapter(Severity)
    for severity in AlarmSeverity:
        assert adapter.validate_python(severity.value) == severity.value
    with pytest.raises(ValueError, match="literal"):
        adapter.validate_python("urgent")


def test_cursor_round_trip() -> None:
    assert _parse_cursor(encode_cursor(_cursor_key(RAISED))) == (T0, "alm_1")


@pytest.mark.parametrize(
    "key", ["no bar", "not-a-time|alm_1", "2026-11-27T08:00:00|alm_1", f"{T0.isoformat()}|"]
)
def test_cursor_with_a_bad_key_is_refused(key: str) -> None:
    with pytest.raises(InvalidCursorError):
        _parse_cursor(encode_cursor(key))
