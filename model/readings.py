"""The normalized reading: what every connector produces and everything downstream consumes."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

MetricValue = float | int | bool | str


class Quality(StrEnum):
    """How far a reading can be trusted (OPC-UA style, coarse)."""

    GOOD = "good"
    UNCERTAIN = "uncertain"
    BAD = "bad"


@dataclass(frozen=True, slots=True)
class Source:
    """Where a reading came from: the connector kind and the instance that produced it."""

    kind: str
    instance: str


@dataclass(frozen=True, slots=True)
class Reading:
    """One device's metrics at one instant, with no trace of the protocol that carried them."""

    tenant_id: str
    device_id: str
    ts: datetime
    metrics: Mapping[str, MetricValue]
    source: Source
    quality: Quality = Quality.GOOD

    def __post_init__(self) -> None:
        if self.ts.tzinfo is None or self.ts.utcoffset() is None:
            raise ValueError("a reading's timestamp must be timezone-aware")
        for name, value in self.metrics.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"metric {name!r} is not a finite number")
