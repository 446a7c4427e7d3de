"""Live fan-out of readings, status changes, alarms and rule traces to WebSocket/SSE subscribers.

Events are per tenant. A subscription chooses its kinds (``reading``, ``status``, ``alarm`` by
default; ``trace`` only when asked, it is the rule engine's high-volume debugging view) and may
narrow them to some devices and metrics.

A slow subscriber has a bounded buffer: the oldest events are dropped and the subscriber is told
how many it missed. Publishing never waits, so no client can slow ingestion down.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from model.readings import Reading


@dataclass(frozen=True, slots=True)
class LiveEvent:
    """One event on a live stream: a reading, a status change, or a note of missed events."""

    kind: str  # "reading" | "status" | "alarm" | "trace" | "missed"
    data: dict[str, Any]


def reading_event(reading: Reading, metrics: Iterable[str] | None = None) -> LiveEvent:
    """The live event of a reading, optionally restricted to some metrics."""
    wanted = set(metrics) if metrics else None
    values = {k: v for k, v in reading.metrics.items() if wanted is None or k in wanted}
    return LiveEvent(
        "reading",
        {
            "tenant_id": reading.tenant_id,
            "device_id": reading.device_id,
            "ts": reading.ts.isoformat(),
            "metrics": values,
            "source": {"kind": reading.source.kind, "instance": reading.source.instance},
            "quality": reading.quality.value,
        },
    )


KINDS = frozenset({"reading", "status", "alarm", "trace"})
DEFAULT_KINDS = frozenset({"reading", "status", "alarm"})


@dataclass(eq=False)
class Subscription:
    """One subscriber's filtered, bounded view of a tenant's live events."""

    tenant_id: str
    devices: frozenset[str] | None
    metrics: frozenset[str] | None
    capacity: int
    kinds: frozenset[str] = field(default_factory=lambda: DEFAULT_KINDS)
    _events: deque[LiveEvent] = field(init=False)
    _wakeup: asyncio.Event = field(init=False, default_factory=asyncio.Event)
    missed: int = 0
    _unreported: int = 0

    def __post_init__(self) -> None:
        self._events = deque(maxlen=self.capacity)

    def wants(self, device_id: str) -> bool:
        """Whether events of ``device_id`` pass this subscription's device filter."""
        return self.devices is None or device_id in self.devices

    def push(self, event: LiveEvent) -> None:
        """Queue an event, dropping the oldest when full (never blocks)."""
        if len(self._events) == self.capacity:
            self.missed += 1
            self._unreported += 1
        self._events.append(event)
        self._wakeup.set()

    async def get(self, timeout: float | None = None) -> LiveEvent | None:  # noqa: ASYNC109
        """The next event, or None if none arrives within ``timeout`` seconds.

        Waiting is on an Event, not on a generator, so a timeout cancels nothing but the wait.
        """
        while not self._events and not self._unreported:
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout)
            except TimeoutError:
                return None
        if self._unreported:
            missed = LiveEvent("missed", {"count": self._unreported})
            self._unreported = 0
            return missed
        return self._events.popleft()

    async def __aiter__(self) -> AsyncIterator[LiveEvent]:
        while True:
            event = await self.get()
            if event is not None:
                yield event


class LiveHub:
    """Routes events to the subscriptions of their tenant."""

    def __init__(self) -> None:
        self._subscriptions: dict[str, set[Subscription]] = {}

    def subscribe(
        self,
        tenant_id: str,
        *,
        devices: Iterable[str] | None = None,
        metrics: Iterable[str] | None = None,
        capacity: int = 256,
        kinds: Iterable[str] | None = None,
    ) -> Subscription:
        """A new subscription; call ``unsubscribe`` when the client goes away."""
        wanted = frozenset(kinds) if kinds else DEFAULT_KINDS
        if not wanted <= KINDS:
            raise ValueError(f"unknown event kinds: {sorted(wanted - KINDS)}")
        sub = Subscription(
            tenant_id,
            frozenset(devices) if devices else None,
            frozenset(metrics) if metrics else None,
            capacity,
            wanted,
        )
        self._subscriptions.setdefault(tenant_id, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Forget a subscription."""
        subs = self._subscriptions.get(sub.tenant_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subscriptions[sub.tenant_id]

    def subscribers(self, tenant_id: str) -> int:
        """How many subscriptions a tenant has."""
        return len(self._subscriptions.get(tenant_id, ()))

    def wants(self, tenant_id: str, kind: str) -> bool:
        """Whether any subscription of the tenant takes events of ``kind`` (skip building them)."""
        return any(kind in sub.kinds for sub in self._subscriptions.get(tenant_id, ()))

    def publish(self, tenant_id: str, device_id: str, event: LiveEvent) -> None:
        """Deliver an event about one device (an alarm, a trace) to the tenant's subscriptions."""
        for sub in self._subscriptions.get(tenant_id, ()):
            if event.kind in sub.kinds and sub.wants(device_id):
                sub.push(event)

    def publish_readings(self, readings: Iterable[Reading]) -> None:
        """``publish_reading`` for each reading; nothing to do while no one is subscribed."""
        if self._subscriptions:
            for reading in readings:
                self.publish_reading(reading)

    def publish_reading(self, reading: Reading) -> None:
        """Deliver a reading to every interested subscription of its tenant."""
        for sub in self._subscriptions.get(reading.tenant_id, ()):
            if "reading" not in sub.kinds or not sub.wants(reading.device_id):
                continue
            if sub.metrics is not None and not sub.metrics.intersection(reading.metrics):
                continue
            sub.push(reading_event(reading, sub.metrics))

    def publish_status(self, tenant_id: str, device_id: str, status: str, at: datetime) -> None:
        """Deliver a device status change."""
        event = LiveEvent("status", {"device_id": device_id, "status": status, "at": at.isoformat()})
        self.publish(tenant_id, device_id, event)
