"""The TelemetryStore port: what the pipeline, the API, the rule engine and backtests need of time series."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import ClassVar, Protocol

from model.errors import PlatformError
from model.readings import MetricValue, Reading


class Aggregate(StrEnum):
    """How the values of one window are combined."""

    MEAN = "mean"
    MIN = "min"
    MAX = "max"
    COUNT = "count"
    LAST = "last"


@dataclass(frozen=True, slots=True)
class Sample:
    """One value of one metric at one instant (or the start of an aggregation window)."""

    ts: datetime
    value: MetricValue


class TelemetryWriteRejected(PlatformError):
    """Some samples were refused by the store; every other sample of the batch was stored.

    Each entry is a reading reduced to the refused metrics, with the server's reason.
    """

    slug = "telemetry-rejected"
    status = 422
    title = "Telemetry rejected"
    max_reported: ClassVar[int] = 20

    def __init__(self, rejected: Sequence[tuple[Reading, str]]) -> None:
        reasons = [reason for _, reason in rejected[: self.max_reported]]
        super().__init__(f"{len(rejected)} reading(s) refused: {reasons}", count=len(rejected))
        self.rejected = list(rejected)


class TelemetryStore(Protocol):
    """Time series of readings, isolated per tenant.

    Implementations raise ``model.errors.BackpressureError`` when they cannot take more writes
    for now, and never write anything a reading did not contain (hostile metric names and
    string values are data, not syntax).
    """

    async def write(self, readings: Sequence[Reading]) -> None:
        """Store a batch of readings (each metric of each reading becomes one sample)."""
        ...

    async def latest(
        self, tenant_id: str, device_id: str, metrics: Sequence[str] | None = None
    ) -> dict[str, Sample]:
        """The most recent sample of each metric of a device (all metrics unless named)."""
        ...

    async def query(
        self,
        tenant_id: str,
        device_id: str,
        metric: str,
        start: datetime,
        end: datetime,
        *,
        every: timedelta | None = None,
        aggregate: Aggregate = Aggregate.MEAN,
    ) -> list[Sample]:
        """Samples in [start, end), raw when ``every`` is None, else one per non-empty window.

        Windows are aligned to the Unix epoch (as InfluxDB's GROUP BY time does); a window's
        sample carries the window start. MEAN, MIN and MAX apply to numbers; COUNT and LAST to
        any type.
        """
        ...

    async def close(self) -> None:
        """Release connections and files."""
        ...
