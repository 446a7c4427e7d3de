"""The ingestor with a store that refuses some samples: refused values are dead-lettered, not streamed."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry, generate_latest

from devices.catalogue import RegistryCatalogue
from devices.registry import DeviceRepository, DeviceTypeRepository
from model.devices import MetricSpec
from model.readings import Reading, Source
from pipeline.bus import ReadingBus
from pipeline.deadletters import DeadLetterRecorder
from pipeline.ingest import Ingestor
from pipeline.live import LiveHub
from pipeline.metrics import PipelineMetrics
from storage.database import Database
from storage.telemetry.port import Aggregate, Sample, TelemetryWriteRejected
from tests.conftest import TenantFactory

NOW = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)


class RefusingStore:
    """A telemetry store that keeps everything except metrics named ``refused``."""

    def __init__(self) -> None:
        self.kept: list[Reading] = []

    async def write(self, readings: Sequence[Reading]) -> None:
        refused = []
        for r in readings:
            good = {k: v for k, v in r.metrics.items() if k != "refused"}
            if good:
                self.kept.append(Reading(r.tenant_id, r.device_id, r.ts, good, r.source))
            if "refused" in r.metrics:
                refused.append(
                    (
                        Reading(r.tenant_id, r.device_id, r.ts, {"refused": r.metrics["refused"]}, r.source),
                        "type conflict",
                    )
                )
        if refused:
            raise TelemetryWriteRejected(refused)

    async def latest(
        self, tenant_id: str, device_id: str, metrics: Sequence[str] | None = None
    ) -> dict[str, Sample]:
        return {}

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
        return []

    async def close(self) -> None:
        return None


async def test_refused_samples_are_dead_lettered_and_not_streamed(
    database: Database, tenants: TenantFactory
) -> None:
    t = await tenants.create()
    async with database.tenant(t.id) as scope:
        await DeviceTypeRepository(scope).create(
            "fz", name="F", metrics=[MetricSpec(name="temp"), MetricSpec(name="refused")]
        )
        await DeviceRepository(scope).create("fz-1", type_id="fz")
    registry = CollectorRegistry()
    metrics = PipelineMetrics(registry)
    recorder = DeadLetterRecorder(database, metrics)
    bus = ReadingBus(10, recorder.record)
    hub = LiveHub()
    store = RefusingStore()
    ingestor = Ingestor(bus, store, RegistryCatalogue(database), recorder, hub, metrics, clock=lambda: NOW)
    live = hub.subscribe(t.id)
    source = Source("test", "t")
    stored = await ingestor.process(
        [
            Reading(t.id, "fz-1", NOW, {"temp": -18.0, "refused": 1.0}, source),
            Reading(t.id, "fz-1", NOW + timedelta(seconds=1), {"refused": 2.0}, source),
            Reading("no-such-tenant", "fz-1", NOW, {"temp": 1.0}, source),
        ]
    )
    assert [r.metrics for r in stored] == [{"temp": -18.0}]
    events = []
    async for event in live:
        events.append(event)
        if event.kind == "reading":
            break
    assert events[-1].data["metrics"] == {"temp": -18.0}
    reasons = {line.split("reason=")[1].split(",")[0] for line in _counter_lines(registry)}
    assert reasons == {'"store_rejected"', '"unknown_tenant"'}


def _counter_lines(registry: CollectorRegistry) -> list[str]:
    return [
        line
        for line in generate_latest(registry).decode().splitlines()
        if line.startswith("flatgigs_ingest_rejected_total{") and not line.endswith(" 0.0")
    ]
