"""The live hub: per-tenant routing, filters, and a bounded buffer for slow clients."""

from __future__ import annotations

from datetime import UTC, datetime

from model.readings import Reading, Source
from pipeline.live import LiveEvent, LiveHub

NOW = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)


def _reading(tenant: str, device: str, **metrics: float) -> Reading:
    return Reading(tenant, device, NOW, metrics, Source("test", "t"))


async def _take(sub: object, n: int) -> list[LiveEvent]:
    events = []
    async for event in sub:  # type: ignore[attr-defined]
        events.append(event)
        if len(events) == n:
            return events
    return events


async def test_routes_by_tenant_device_and_metric() -> None:
    hub = LiveHub()
    acme = hub.subscribe("acme", devices=["fz-1"], metrics=["temp"])
    globex = hub.subscribe("globex")
    hub.publish_reading(_reading("acme", "fz-2", temp=1.0))  # other device
    hub.publish_reading(_reading("acme", "fz-1", humidity=40.0))  # other metric
    hub.publish_reading(_reading("acme", "fz-1", temp=-18.0, humidity=40.0))
    hub.publish_reading(_reading("globex", "fz-1", temp=99.0))
    (event,) = await _take(acme, 1)
    assert event.kind == "reading" and event.data["metrics"] == {"temp": -18.0}
    (other,) = await _take(globex, 1)
    assert other.data["tenant_id"] == "globex"
    hub.unsubscribe(acme)
    hub.unsubscribe(globex)
    assert hub.subscribers("acme") == 0


async def test_slow_client_drops_oldest_and_is_told() -> None:
    hub = LiveHub()
    slow = hub.subscribe("acme", capacity=3)
    for i in range(10):
        hub.publish_reading(_reading("acme", "fz-1", temp=float(i)))  # never blocks
    events = await _take(slow, 4)
    assert events[0] == LiveEvent("missed", {"count": 7})
    assert [e.data["metrics"]["temp"] for e in events[1:]] == [7.0, 8.0, 9.0]
    assert slow.missed == 7


async def test_status_events() -> None:
    hub = LiveHub()
    sub = hub.subscribe("acme", devices=["fz-1"])
    hub.publish_status("acme", "fz-2", "online", NOW)
    hub.publish_status("acme", "fz-1", "offline", NOW)
    (event,) = await _take(sub, 1)
    assert event.kind == "status" and event.data["device_id"] == "fz-1" and event.data["status"] == "offline"


async def test_a_quiet_period_does_not_end_the_subscription() -> None:
    # Live streams wait with a heartbeat timeout; a timeout must not close the subscription.
    hub = LiveHub()
    sub = hub.subscribe("acme")
    assert await sub.get(0.01) is None
    assert await sub.get(0.01) is None
    hub.publish_reading(_reading("acme", "fz-1", temp=-18.0))
    event = await sub.get(0.01)
    assert event is not None and event.data["metrics"] == {"temp": -18.0}
