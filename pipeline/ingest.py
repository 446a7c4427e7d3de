"""Ingestion: validate readings against the registry, store them in batches, track status, fan out."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Protocol, cast

from prometheus_client import Counter

from model.devices import DataType, DeviceProfile, MetricSpec
from model.errors import BackpressureError, PlatformError
from model.readings import MetricValue, Quality, Reading
from model.rejections import Rejection, RejectReason
from pipeline.bus import ReadingBus
from pipeline.deadletters import DeadLetterRecorder
from pipeline.live import LiveHub
from pipeline.metrics import PipelineMetrics
from pipeline.status import StatusChange, StatusTracker
from storage.telemetry.port import TelemetryStore, TelemetryWriteRejected

logger = logging.getLogger(__name__)


class DeviceCatalogue(Protocol):
    """What ingestion needs from the device registry (wired by the composition root)."""

    async def profiles(self, tenant_id: str, device_ids: Collection[str]) -> dict[str, DeviceProfile]:
        """Profiles of the devices of ``tenant_id`` that exist among ``device_ids``."""
        ...

    async def record_status(self, changes: Sequence[StatusChange]) -> None:
        """Persist status changes (online/offline with the time last seen)."""
        ...

    async def tenant_exists(self, tenant_id: str) -> bool:
        """Whether the tenant exists (readings for an unknown tenant are refused as such)."""
        ...


ReadingConsumer = Callable[[Reading], Awaitable[object]]
StatusConsumer = Callable[[StatusChange], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class _Verdict:
    reading: Reading | None
    rejection: Rejection | None


_NUMBER, _BOOLEAN = DataType.NUMBER, DataType.BOOLEAN


def _type_ok(spec: MetricSpec, value: MetricValue) -> bool:
    if spec.data_type is DataType.BOOLEAN:
        return isinstance(value, bool)
    if spec.data_type is DataType.STRING:
        return isinstance(value, str)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return spec.data_type is DataType.NUMBER or float(value).is_integer()


def _in_range(spec: MetricSpec, value: MetricValue) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return True
    return (spec.min is None or value >= spec.min) and (spec.max is None or value <= spec.max)


def check_reading(
    reading: Reading, profile: DeviceProfile | None, now: datetime, *, tenant_known: bool = True
) -> _Verdict:
    """Accept a reading as declared by its device type's catalogue, or say why not.

    Policy (ADR 0008): an unknown device, a metric missing from the catalogue or a value of the
    wrong type refuses the whole reading; a value outside the catalogue's range is kept with
    quality ``uncertain``, because an implausible value may be the very event a rule looks for.
    """

    def refuse(reason: RejectReason, detail: str) -> _Verdict:
        rejection = Rejection(reading.tenant_id, reading.device_id, reason, detail, reading.source, b"", now)
        return _Verdict(None, rejection)

    if not tenant_known:
        return refuse(RejectReason.UNKNOWN_TENANT, f"tenant {reading.tenant_id!r} does not exist")
    if profile is None:
        return refuse(
            RejectReason.UNKNOWN_DEVICE, f"device {reading.device_id!r} is not registered in this tenant"
        )
    quality = reading.quality
    specs = profile.metrics
    for name, value in reading.metrics.items():
        spec = specs.get(name)
        kind = type(value)
        if spec is not None and spec.data_type is _NUMBER and (kind is float or kind is int):
            # The common case, decided inline: the same rules as _type_ok and _in_range.
            low, high, number = spec.min, spec.max, cast(float, value)
            if (low is not None and number < low) or (high is not None and number > high):
                quality = Quality.UNCERTAIN
            continue
        if spec is not None and kind is bool and spec.data_type is _BOOLEAN:
            continue
        if spec is None:
            known = ", ".join(sorted(profile.metrics)) or "none"
            return refuse(
                RejectReason.UNKNOWN_METRIC,
                f"metric {name!r} is not in the catalogue of type {profile.type_id!r} (known: {known})",
            )
        if not _type_ok(spec, value):
            return refuse(
                RejectReason.WRONG_TYPE, f"metric {name!r} must be {spec.data_type.value}, got {value!r}"
            )
        if not _in_range(spec, value):
            quality = Quality.UNCERTAIN
    return _Verdict(reading if quality is reading.quality else replace(reading, quality=quality), None)


class Ingestor:
    """Moves readings from the bus into the store and out to live clients and consumers."""

    def __init__(
        self,
        bus: ReadingBus,
        store: TelemetryStore,
        catalogue: DeviceCatalogue,
        recorder: DeadLetterRecorder,
        hub: LiveHub,
        metrics: PipelineMetrics,
        *,
        batch_size: int = 500,
        max_wait: float = 0.05,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        max_retry_delay: float = 5.0,
    ) -> None:
        self.bus = bus
        self.store = store
        self.catalogue = catalogue
        self.recorder = recorder
        self.hub = hub
        self.metrics = metrics
        self.batch_size = batch_size
        self.max_wait = max_wait
        self.clock = clock
        self.max_retry_delay = max_retry_delay
        self.status = StatusTracker()
        self._pending_status: list[StatusChange] = []
        self._status_wakeup = asyncio.Event()
        self.reading_consumers: list[ReadingConsumer] = []
        self.status_consumers: list[StatusConsumer] = []
        # Children of the labelled counter, bound once: labels() per reading is a locked lookup.
        self._received_by_kind: dict[str, Counter] = {}

    async def run(self) -> None:
        """Process batches until cancelled."""
        while True:
            batch = await self.bus.next_batch(self.batch_size, self.max_wait)
            started = time.perf_counter()
            try:
                await self.process(batch)
            except Exception:  # a bug in one batch must not stop ingestion for everyone
                logger.exception("ingestion of a batch of %d readings failed", len(batch))
                self._dead_letter_batch(batch, "internal error while ingesting; see the server log")
            self.metrics.batch_seconds.observe(time.perf_counter() - started)

    def _dead_letter_batch(self, batch: Sequence[Reading], detail: str) -> None:
        now = self.clock()
        for r in batch:
            self.recorder.record(
                Rejection(r.tenant_id, r.device_id, RejectReason.INTERNAL_ERROR, detail, r.source, b"", now)
            )

    async def run_status_sweeper(self, interval: float = 5.0) -> None:
        """Mark devices offline when they stay silent past their type's timeout."""
        while True:
            await asyncio.sleep(interval)
            await self.sweep()

    def unreachable(self, tenant_id: str, device_id: str, detail: str) -> None:
        """ConnectivitySink: a polled device stopped answering; mark it offline now."""
        change = self.status.unreachable(tenant_id, device_id, self.clock())
        if change is not None:
            logger.info("device %s/%s unreachable: %s", tenant_id, device_id, detail)
            self._pending_status.append(change)
            self._status_wakeup.set()

    async def run_status_publisher(self) -> None:
        """Publish status changes reported synchronously by connectors."""
        while True:
            await self._status_wakeup.wait()
            self._status_wakeup.clear()
            changes, self._pending_status = self._pending_status, []
            await self._publish_status(changes)

    async def sweep(self) -> list[StatusChange]:
        """One pass of the inactivity check (also called by tests with a controlled clock)."""
        changes = self.status.sweep(self.clock())
        await self._publish_status(changes)
        return changes

    async def process(self, batch: Sequence[Reading]) -> list[Reading]:
        """Validate, store, track and fan out one batch; returns the readings accepted."""
        now = self.clock()
        accepted = await self._validate(batch, now)
        stored = await self._store(accepted, now) if accepted else []
        if not stored:
            return []
        self.metrics.stored.inc(len(stored))
        await self._publish_status(self.status.seen(stored, now))
        self.hub.publish_readings(stored)
        if self.reading_consumers:
            for reading in stored:
                for consumer in self.reading_consumers:
                    try:
                        await consumer(reading)
                    except Exception:  # one failing consumer must not stop ingestion
                        logger.exception(
                            "reading consumer failed for %s/%s", reading.tenant_id, reading.device_id
                        )
        return stored

    def _count_received(self, batch: Sequence[Reading]) -> None:
        kinds: dict[str, int] = {}
        for reading in batch:
            kind = reading.source.kind
            kinds[kind] = kinds.get(kind, 0) + 1
        for kind, count in kinds.items():
            child = self._received_by_kind.get(kind)
            if child is None:
                child = self._received_by_kind[kind] = self.metrics.received.labels(kind)
            child.inc(count)

    async def _validate(self, batch: Sequence[Reading], now: datetime) -> list[Reading]:
        self._count_received(batch)
        by_tenant: dict[str, set[str]] = {}
        for reading in batch:
            devices = by_tenant.get(reading.tenant_id)
            if devices is None:
                devices = by_tenant[reading.tenant_id] = set()
            devices.add(reading.device_id)
        profiles: dict[tuple[str, str], DeviceProfile] = {}
        unknown_tenants: set[str] = set()
        for tenant_id, device_ids in by_tenant.items():
            found = await self.catalogue.profiles(tenant_id, device_ids)
            if not found and not await self.catalogue.tenant_exists(tenant_id):
                unknown_tenants.add(tenant_id)
            profiles.update({(tenant_id, d): p for d, p in found.items()})
            self.status.learn(tenant_id, found.values())
        accepted = []
        for reading in batch:
            verdict = check_reading(
                reading,
                profiles.get((reading.tenant_id, reading.device_id)),
                now,
                tenant_known=reading.tenant_id not in unknown_tenants,
            )
            if verdict.rejection is not None:
                self.recorder.record(verdict.rejection)
            elif verdict.reading is not None:
                accepted.append(verdict.reading)
        return accepted

    async def _store(self, readings: list[Reading], now: datetime) -> list[Reading]:
        """Write with retries while the store pushes back (the bus fills meanwhile: backpressure).

        Returns what was stored: samples the store refused are dead-lettered and taken out, so
        live clients and rules never see a value that history does not have.
        """
        delay = 0.1
        while True:
            try:
                await self.store.write(readings)
                return readings
            except BackpressureError as exc:
                self.metrics.store_retries.inc()
                logger.warning(
                    "telemetry store pushes back (%s); retrying %d readings", exc.detail, len(readings)
                )
                await asyncio.sleep(min(max(delay, 0.05), exc.retry_after, self.max_retry_delay))
                delay = min(delay * 2, self.max_retry_delay)
            except PlatformError as exc:
                if isinstance(exc, TelemetryWriteRejected):
                    self._record_store_rejections(exc, now)
                    return _without_refused(readings, exc)
                # Misconfiguration or a server error: hold the batch and push back rather than
                # drop it; the log and the retry counter say why ingestion stalls.
                self.metrics.store_retries.inc()
                logger.error("telemetry store failed (%s); holding %d readings", exc.detail, len(readings))
                await asyncio.sleep(self.max_retry_delay)

    def _record_store_rejections(self, exc: TelemetryWriteRejected, now: datetime) -> None:
        # The store kept everything else of the batch; only these samples are refused.
        for reading, reason in exc.rejected:
            self.recorder.record(
                Rejection(
                    reading.tenant_id,
                    reading.device_id,
                    RejectReason.STORE_REJECTED,
                    f"{', '.join(reading.metrics)}: {reason}",
                    reading.source,
                    b"",
                    now,
                )
            )

    async def _publish_status(self, changes: Sequence[StatusChange]) -> None:
        if not changes:
            return
        await self.catalogue.record_status(changes)
        for change in changes:
            self.metrics.status_changes.labels(change.status).inc()
            self.hub.publish_status(change.tenant_id, change.device_id, change.status, change.at)
            for consumer in self.status_consumers:
                try:
                    await consumer(change)
                except Exception:
                    logger.exception("status consumer failed for %s/%s", change.tenant_id, change.device_id)


def _without_refused(readings: list[Reading], exc: TelemetryWriteRejected) -> list[Reading]:
    """``readings`` minus the samples the store refused (readings left empty are dropped)."""
    refused = {(r.tenant_id, r.device_id, r.ts, m) for r, _ in exc.rejected for m in r.metrics}
    kept = []
    for reading in readings:
        metrics = {
            k: v
            for k, v in reading.metrics.items()
            if (reading.tenant_id, reading.device_id, reading.ts, k) not in refused
        }
        if len(metrics) == len(reading.metrics):
            kept.append(reading)
        elif metrics:
            kept.append(replace(reading, metrics=metrics))
    return kept
