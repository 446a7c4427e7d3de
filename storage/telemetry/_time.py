"""Time and id helpers shared by the telemetry stores."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from model.errors import InvalidInputError
from model.ids import is_tenant_id

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def to_micros(ts: datetime) -> int:
    """Microseconds since the Unix epoch of an aware datetime (exact integer arithmetic)."""
    return (ts - _EPOCH) // _MICROSECOND


def from_micros(us: int) -> datetime:
    """The UTC datetime ``us`` microseconds after the Unix epoch."""
    return _EPOCH + timedelta(microseconds=us)


def check_tenant(tenant_id: str) -> None:
    """Refuse an invalid tenant id, so no malformed id ever becomes a key or a database name."""
    if not is_tenant_id(tenant_id):
        raise InvalidInputError(f"invalid tenant id {tenant_id!r}")


def every_micros(every: timedelta) -> int:
    """The window length in microseconds; a window must be at least one microsecond long."""
    micros = every // _MICROSECOND
    if micros <= 0:
        raise InvalidInputError(f"the aggregation window must be positive, got {every}")
    return micros
