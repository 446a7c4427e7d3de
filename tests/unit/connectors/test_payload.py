"""The device payload decoder shared by MQTT, HTTP and CoAP."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from connectors.payload import MAX_DEPTH, PayloadError, decode
from model.rejections import RejectReason

NOW = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)


def _decode(payload: bytes | str, max_bytes: int = 65536) -> list[tuple[datetime, dict[str, object]]]:
    raw = payload.encode() if isinstance(payload, str) else payload
    return [(s.ts, s.metrics) for s in decode(raw, max_bytes=max_bytes, now=NOW)]


def test_flat_payload_is_timestamped_on_arrival() -> None:
    assert _decode('{"temp": -18.5, "door_open": false, "mode": "eco", "cycles": 3}') == [
        (NOW, {"temp": -18.5, "door_open": False, "mode": "eco", "cycles": 3})
    ]


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        (1764230400, datetime(2025, 11, 27, 8, 0, tzinfo=UTC)),
        (1764230400.25, datetime(2025, 11, 27, 8, 0, 0, 250000, tzinfo=UTC)),
        (1764230400250, datetime(2025, 11, 27, 8, 0, 0, 250000, tzinfo=UTC)),  # milliseconds
        ("2026-11-27T07:59:00Z", datetime(2026, 11, 27, 7, 59, tzinfo=UTC)),
        ("2026-11-27T08:59:00+01:00", datetime(2026, 11, 27, 7, 59, tzinfo=UTC)),
    ],
)
def test_timestamp_forms(ts: object, expected: datetime) -> None:
    [(when, metrics)] = _decode(json.dumps({"ts": ts, "values": {"temp": 1.0}}))
    assert when == expected and when.tzinfo is UTC
    assert metrics == {"temp": 1.0}


def test_batch() -> None:
    batch = [{"ts": 1764230400 + i, "values": {"n": i}} for i in range(3)]
    assert [m["n"] for _, m in _decode(json.dumps(batch))] == [0, 1, 2]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ("not json", RejectReason.MALFORMED),
        (b"\xff\xfe", RejectReason.MALFORMED),
        ('{"temp": NaN}', RejectReason.NOT_FINITE),
        ('{"temp": -Infinity}', RejectReason.NOT_FINITE),
        ("[" * 10_000 + "]" * 10_000, RejectReason.TOO_DEEP),
        ('{"a": {"b": {"c": {"d": {"e": 1}}}}}', RejectReason.TOO_DEEP),
        ("{}", RejectReason.MALFORMED),
        ("[]", RejectReason.MALFORMED),
        ("42", RejectReason.MALFORMED),
        ('{"ts": 1, "values": {}}', RejectReason.MALFORMED),
        ('{"ts": 1, "values": {"a": 1}, "extra": 2}', RejectReason.MALFORMED),
        ('{"ts": -1, "values": {"a": 1}}', RejectReason.BAD_TIMESTAMP),
        ('{"ts": "2026-11-27T08:00:00", "values": {"a": 1}}', RejectReason.BAD_TIMESTAMP),
        ('{"ts": "yesterday", "values": {"a": 1}}', RejectReason.BAD_TIMESTAMP),
        ('{"ts": true, "values": {"a": 1}}', RejectReason.BAD_TIMESTAMP),
        ('{"te mp": 1}', RejectReason.BAD_METRIC_NAME),
        ('{"a,b=c": 1}', RejectReason.BAD_METRIC_NAME),
        ('{"temp": null}', RejectReason.WRONG_TYPE),
        ('{"temp": [1, 2]}', RejectReason.WRONG_TYPE),
        (json.dumps({"s": "x" * 2000}), RejectReason.TOO_LARGE),
    ],
)
def test_refusals(payload: str | bytes, reason: RejectReason) -> None:
    with pytest.raises(PayloadError) as info:
        _decode(payload)
    assert info.value.reason is reason and info.value.detail


def test_future_timestamps_within_skew_are_accepted_beyond_refused() -> None:
    soon = (NOW + timedelta(minutes=59)).isoformat()
    later = (NOW + timedelta(minutes=61)).isoformat()
    assert _decode(json.dumps({"ts": soon, "values": {"a": 1}}))[0][0] == NOW + timedelta(minutes=59)
    with pytest.raises(PayloadError):
        _decode(json.dumps({"ts": later, "values": {"a": 1}}))


def test_size_limit_is_checked_before_parsing() -> None:
    with pytest.raises(PayloadError) as info:
        _decode(b'{"a": 1}' + b" " * 100, max_bytes=50)
    assert info.value.reason is RejectReason.TOO_LARGE


def test_depth_limit_allows_the_documented_shapes() -> None:
    assert MAX_DEPTH >= 3  # list -> sample object -> values object
    assert _decode('[{"ts": 1764230400, "values": {"a": 1}}]')
