"""Time as the delivery policy sees it: the system clock, or a clock a test moves by hand."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """Where the policy layer gets "now" from (timezone-aware UTC)."""

    def now(self) -> datetime: ...


class SystemClock:
    """The real time."""

    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        return datetime.now(UTC)


class ManualClock:
    """A clock that only moves when told to: policy tests drive hours of time without sleeping."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("ManualClock needs a timezone-aware start")
        self._now = start

    def now(self) -> datetime:
        """The time the clock was last set to."""
        return self._now

    def advance(self, seconds: float) -> datetime:
        """Move forward by ``seconds``; the new time."""
        self._now += timedelta(seconds=seconds)
        return self._now

    def set(self, at: datetime) -> None:
        """Jump to ``at`` (never backwards: the policy's timers assume time only moves on)."""
        if at < self._now:
            raise ValueError("a ManualClock does not go backwards")
        self._now = at
