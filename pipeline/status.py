"""Device connectivity: online on a reading, offline after the type's inactivity timeout."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from model.devices import DeviceProfile, DeviceStatus
from model.readings import Reading


@dataclass(frozen=True, slots=True)
class StatusChange:
    """A device went online or offline (an event on the internal bus; rules can trigger on it)."""

    tenant_id: str
    device_id: str
    status: str
    at: datetime
    last_seen: datetime


class StatusTracker:
    """Last-seen times and online state of the devices this process has heard from.

    In a partitioned deployment each worker tracks the devices of its partitions, which is
    exactly the set it hears from.
    """

    def __init__(self) -> None:
        self._last_seen: dict[tuple[str, str], datetime] = {}
        self._online: set[tuple[str, str]] = set()
        self._timeouts: dict[tuple[str, str], timedelta] = {}

    def learn(self, tenant_id: str, profiles: Iterable[DeviceProfile]) -> None:
        """Remember each device's inactivity timeout."""
        for p in profiles:
            self._timeouts[(tenant_id, p.device_id)] = timedelta(seconds=p.inactivity_timeout_s)

    def seen(self, readings: Sequence[Reading], now: datetime) -> list[StatusChange]:
        """Record arrivals; devices not online before become online."""
        changes = []
        for r in readings:
            key = (r.tenant_id, r.device_id)
            # Arrival time, not the device's timestamp: a device replaying old data is still alive.
            self._last_seen[key] = now
            if key not in self._online:
                self._online.add(key)
                changes.append(StatusChange(r.tenant_id, r.device_id, DeviceStatus.ONLINE.value, now, now))
        return changes

    def sweep(self, now: datetime) -> list[StatusChange]:
        """Devices silent past their timeout become offline."""
        changes = []
        for key in list(self._online):
            last = self._last_seen[key]
            if now - last > self._timeouts.get(key, timedelta(minutes=3)):
                self._online.discard(key)
                changes.append(StatusChange(key[0], key[1], DeviceStatus.OFFLINE.value, now, last))
        return changes

    def unreachable(self, tenant_id: str, device_id: str, now: datetime) -> StatusChange | None:
        """A polling connector could not reach the device: offline at once, not after the timeout."""
        key = (tenant_id, device_id)
        if key not in self._online:
            return None
        self._online.discard(key)
        return StatusChange(
            tenant_id, device_id, DeviceStatus.OFFLINE.value, now, self._last_seen.get(key, now)
        )
