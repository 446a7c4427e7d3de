"""Why a message was refused: every refused message becomes one visible, counted Rejection."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from model.readings import Source

PAYLOAD_EXCERPT_BYTES = 512


class RejectReason(StrEnum):
    """Stable codes for refused messages (the API and the metrics use them)."""

    MALFORMED = "malformed"
    TOO_LARGE = "too_large"
    TOO_DEEP = "too_deep"
    NOT_FINITE = "not_finite"
    BAD_TIMESTAMP = "bad_timestamp"
    BAD_METRIC_NAME = "bad_metric_name"
    UNKNOWN_TENANT = "unknown_tenant"
    UNKNOWN_DEVICE = "unknown_device"
    UNKNOWN_METRIC = "unknown_metric"
    WRONG_TYPE = "wrong_type"
    STORE_REJECTED = "store_rejected"
    INTERNAL_ERROR = "internal_error"


@dataclass(frozen=True, slots=True)
class Rejection:
    """A refused message: the reason, where it came from and an excerpt of what it said."""

    tenant_id: str | None
    device_id: str | None
    reason: RejectReason
    detail: str
    source: Source
    payload: bytes
    at: datetime

    @staticmethod
    def excerpt(payload: bytes) -> bytes:
        """At most PAYLOAD_EXCERPT_BYTES of a payload: enough to debug, never a memory risk."""
        return payload[:PAYLOAD_EXCERPT_BYTES]
