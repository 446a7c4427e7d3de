"""The JSON payload devices send over MQTT, HTTP and CoAP, decoded into a timestamp and metrics.

Two shapes are accepted (docs/devices/payloads.md):
- flat: ``{"temp": -18.2, "door_open": false}`` (timestamped on arrival);
- timestamped: ``{"ts": 1764230400.5 | "2026-11-27T08:00:00Z", "values": {...}}``.
A list of timestamped objects is a batch.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from model.readings import MetricValue
from model.rejections import RejectReason

METRIC_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]{0,62}$")
MAX_DEPTH = 4
MAX_METRICS = 256
MAX_BATCH = 1000
MAX_STRING = 1024
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
MAX_CLOCK_SKEW = timedelta(hours=1)


class PayloadError(Exception):
    """A payload that cannot become a reading; carries the rejection reason code."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class DecodedSample:
    """One timestamped set of metrics from a payload."""

    ts: datetime
    metrics: dict[str, MetricValue]


def _refuse_constant(name: str) -> float:
    raise PayloadError(RejectReason.NOT_FINITE, f"{name} is not a number a sensor can report")


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of decoded JSON, stopping early past ``limit``."""
    stack = [(value, 1)]
    deepest = 0
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return deepest


# One decoder for every payload: json.loads(..., parse_constant=...) would build a new one each time.
_JSON = json.JSONDecoder(parse_constant=_refuse_constant)
# Metric names already matched against METRIC_NAME (a fleet repeats the same few names).
_KNOWN_NAMES: set[str] = set()
_KNOWN_NAMES_MAX = 10_000


def _loads(payload: bytes) -> Any:
    """``json.loads(payload)`` with the shared decoder (same encoding detection, same errors)."""
    if len(payload) >= 2 and payload[0] in b"{[" and payload[1]:
        text = payload.decode("utf-8", "surrogatepass")  # what json.detect_encoding would choose
    else:
        text = payload.decode(json.detect_encoding(payload), "surrogatepass")
    return _JSON.decode(text)


def decode(payload: bytes, *, max_bytes: int, now: datetime) -> list[DecodedSample]:
    """Decode a device payload, or raise PayloadError with the reason it is refused."""
    if len(payload) > max_bytes:
        raise PayloadError(RejectReason.TOO_LARGE, f"payload of {len(payload)} bytes exceeds {max_bytes}")
    try:
        data = _loads(payload)
    except PayloadError:
        raise
    except RecursionError as exc:
        raise PayloadError(RejectReason.TOO_DEEP, "payload nests too deeply to parse") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise PayloadError(RejectReason.MALFORMED, f"not JSON: {exc}") from exc
    # Nesting is at most one level per bracket plus the values: with few brackets in the whole
    # payload (bytes inside strings only over-count) there is nothing to walk.
    if payload.count(b"{") + payload.count(b"[") + 1 > MAX_DEPTH and _depth(data, MAX_DEPTH) > MAX_DEPTH:
        raise PayloadError(RejectReason.TOO_DEEP, f"payload nests deeper than {MAX_DEPTH} levels")
    if isinstance(data, list):
        if not data or len(data) > MAX_BATCH:
            raise PayloadError(RejectReason.MALFORMED, f"a batch holds 1 to {MAX_BATCH} samples")
        return [_sample(item, now, timestamped=True) for item in data]
    return [_sample(data, now, timestamped=False)]


def _sample(data: Any, now: datetime, *, timestamped: bool) -> DecodedSample:
    if not isinstance(data, dict):
        raise PayloadError(RejectReason.MALFORMED, "expected a JSON object of metrics")
    if "values" in data or timestamped:
        unknown = not (len(data) == 2 and "ts" in data) and set(data) - {"ts", "values"}
        if unknown or not isinstance(data.get("values"), dict):
            raise PayloadError(RejectReason.MALFORMED, 'a timestamped sample is {"ts": ..., "values": {...}}')
        ts = _timestamp(data["ts"], now) if "ts" in data else now
        return DecodedSample(ts, _metrics(data["values"]))
    return DecodedSample(now, _metrics(data))


def _timestamp(raw: Any, now: datetime) -> datetime:
    try:
        if isinstance(raw, bool):
            raise TypeError
        if isinstance(raw, int | float):
            # Seconds, or milliseconds when the number is too large to be seconds.
            seconds = raw / 1000 if raw > 1e11 else raw
            ts = datetime.fromtimestamp(seconds, UTC)
        elif isinstance(raw, str):
            ts = datetime.fromisoformat(raw.replace("Z", "+00:00"))
            if ts.tzinfo is None:
                raise PayloadError(RejectReason.BAD_TIMESTAMP, f"timestamp {raw!r} has no time zone")
        else:
            raise TypeError
    except PayloadError:
        raise
    except (TypeError, ValueError, OverflowError, OSError) as exc:
        raise PayloadError(RejectReason.BAD_TIMESTAMP, f"unreadable timestamp {str(raw)[:40]!r}") from exc
    if ts < EARLIEST or ts > now + MAX_CLOCK_SKEW:
        raise PayloadError(
            RejectReason.BAD_TIMESTAMP,
            f"timestamp {ts.isoformat()} is before 1970 or more than {MAX_CLOCK_SKEW} in the future",
        )
    return ts.astimezone(UTC)


def _metrics(values: dict[str, Any]) -> dict[str, MetricValue]:
    if not values:
        raise PayloadError(RejectReason.MALFORMED, "no metrics in payload")
    if len(values) > MAX_METRICS:
        raise PayloadError(RejectReason.MALFORMED, f"more than {MAX_METRICS} metrics")
    metrics: dict[str, MetricValue] = {}
    for name, value in values.items():
        if name not in _KNOWN_NAMES:
            if not METRIC_NAME.match(name):
                raise PayloadError(RejectReason.BAD_METRIC_NAME, f"metric name {name[:70]!r} is not allowed")
            if len(_KNOWN_NAMES) >= _KNOWN_NAMES_MAX:
                _KNOWN_NAMES.clear()
            _KNOWN_NAMES.add(name)
        if isinstance(value, bool | int | str):
            if isinstance(value, str) and len(value) > MAX_STRING:
                raise PayloadError(RejectReason.TOO_LARGE, f"string value of {name!r} is too long")
            metrics[name] = value
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise PayloadError(RejectReason.NOT_FINITE, f"metric {name!r} is not finite")
            metrics[name] = value
        else:
            raise PayloadError(RejectReason.WRONG_TYPE, f"metric {name!r} must be a number, bool or string")
    return metrics
