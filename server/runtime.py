"""The running platform: database, telemetry store, pipeline and connectors, started and stopped together."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry

from connectors.base import Connector
from connectors.mqtt_publish import MqttPublisher
from connectors.supervisor import ConnectorSupervisor
from devices.catalogue import RegistryCatalogue
from engine.alarms import AlarmService
from engine.executors import ActionExecutor
from engine.runner import RuleEngine
from model.errors import PlatformError
from notifiers.delivery import DeliverySettings
from notifiers.metrics import NotifyMetrics
from notifiers.sealing import UrlSealer
from notifiers.service import NotificationService
from pipeline.bus import ReadingBus
from pipeline.deadletters import DeadLetterRecorder
from pipeline.ingest import Ingestor
from pipeline.live import LiveHub
from pipeline.metrics import PipelineMetrics
from pipeline.status import StatusChange
from server.settings import Settings
from storage.database import Database
from storage.telemetry.port import TelemetryStore

logger = logging.getLogger(__name__)


def build_telemetry_store(settings: Settings) -> TelemetryStore:
    """InfluxDB when FLATGIGS_INFLUX_URL is set, else the embedded store in the data dir."""
    if settings.influx_url:
        from storage.telemetry.influx import InfluxTelemetryStore

        password = settings.influx_password.get_secret_value() if settings.influx_password else None
        return InfluxTelemetryStore(
            settings.influx_url,
            database_prefix=settings.influx_database_prefix,
            username=settings.influx_username,
            password=password,
        )
    from storage.telemetry.embedded import EmbeddedTelemetryStore

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return EmbeddedTelemetryStore(settings.data_dir / "telemetry.db")


def build_publisher(settings: Settings) -> MqttPublisher | None:
    """The broker client rule actions publish with (None without a broker)."""
    if not settings.mqtt_url:
        return None
    from urllib.parse import urlsplit

    parts = urlsplit(settings.mqtt_url)
    return MqttPublisher(
        parts.hostname or "127.0.0.1",
        parts.port or 1883,
        client_id=f"{settings.mqtt_client_id}-rules",
        username=parts.username,
        password=parts.password,
    )


def build_connectors(settings: Settings, bus: ReadingBus, database: Database) -> list[Connector]:
    """The connectors the settings ask for."""
    connectors: list[Connector] = []
    if settings.coap_port is not None:
        from connectors.coap import CoapConnector
        from devices.credentials import CredentialAuthenticator

        connectors.append(
            CoapConnector(
                "coap",
                bus,
                CredentialAuthenticator(database),
                host=settings.coap_host,
                port=settings.coap_port,
                max_payload_bytes=settings.device_payload_bytes,
            )
        )
    if settings.mqtt_url:
        from urllib.parse import urlsplit

        from connectors.mqtt import MqttConnector

        parts = urlsplit(settings.mqtt_url)
        connectors.append(
            MqttConnector(
                "mqtt",
                bus,
                host=parts.hostname or "127.0.0.1",
                port=parts.port or 1883,
                client_id=settings.mqtt_client_id,
                username=parts.username,
                password=parts.password,
                shared_group=settings.mqtt_shared_group,
                max_payload_bytes=settings.device_payload_bytes,
            )
        )
    return connectors


def build_notifier(
    settings: Settings, database: Database, registry: CollectorRegistry
) -> NotificationService:
    """The notifications service: channels sealed with the notify keys, delivery per the settings."""
    keys = settings.notify_keys.get_secret_value() if settings.notify_keys else None
    return NotificationService(
        database,
        UrlSealer.from_setting(keys, settings.ensure_secret_key()),
        settings=DeliverySettings(
            max_attempts=settings.notify_max_attempts,
            backoff_base_s=settings.notify_backoff_s,
            attempt_timeout_s=settings.notify_attempt_timeout_s,
            queue_size=settings.notify_queue_size,
            threads=settings.notify_threads,
            allow_private=settings.allow_private_webhooks,
        ),
        metrics=NotifyMetrics(registry),
        log_keep=settings.notify_log_keep,
        public_url=settings.public_url,
    )


@dataclass
class Runtime:
    """Every long-lived part of one flatgigs process."""

    settings: Settings
    database: Database
    registry: CollectorRegistry
    telemetry: TelemetryStore
    bus: ReadingBus
    hub: LiveHub
    recorder: DeadLetterRecorder
    ingestor: Ingestor
    catalogue: RegistryCatalogue
    supervisor: ConnectorSupervisor
    engine: RuleEngine
    notifier: NotificationService | None = None
    alarms: AlarmService | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    def build(
        cls,
        settings: Settings,
        database: Database,
        registry: CollectorRegistry,
        telemetry: TelemetryStore | None = None,
        connectors: list[Connector] | None = None,
    ) -> Runtime:
        """Wire the pipeline: connectors -> bus -> ingestor -> store, live hub, dead letters."""
        metrics = PipelineMetrics(registry)
        recorder = DeadLetterRecorder(database, metrics)
        bus = ReadingBus(settings.ingest_queue_size, recorder.record)
        metrics.bus_depth.set_function(lambda: bus.depth)
        hub = LiveHub()
        store = telemetry or build_telemetry_store(settings)
        catalogue = RegistryCatalogue(database)
        ingestor = Ingestor(
            bus, store, catalogue, recorder, hub, metrics, batch_size=settings.ingest_batch_size
        )
        supervisor = ConnectorSupervisor(
            connectors if connectors is not None else build_connectors(settings, bus, database)
        )
        notifier = build_notifier(settings, database, registry)
        alarms = AlarmService(database, notifier=notifier, live=hub)
        executor = ActionExecutor(
            alarms=alarms,
            notifier=notifier,
            publisher=build_publisher(settings),
            sink=bus,
            allow_private_webhooks=settings.allow_private_webhooks,
        )
        engine = RuleEngine(
            database,
            catalogue,
            executor=executor,
            telemetry=store,
            allow_private_webhooks=settings.allow_private_webhooks,
            live=hub,
        )
        ingestor.reading_consumers.append(engine.on_reading)

        async def on_status(change: StatusChange) -> None:
            await engine.on_status(change.tenant_id, change.device_id, change.status, change.at)

        ingestor.status_consumers.append(on_status)
        return cls(
            settings,
            database,
            registry,
            store,
            bus,
            hub,
            recorder,
            ingestor,
            catalogue,
            supervisor,
            engine,
            notifier=notifier,
            alarms=alarms,
        )

    async def reload_bindings(self, kinds: set[str] | None = None) -> None:
        """(Re)build the polling and subscribing connectors from the stored device bindings."""
        from connectors.bindings import BINDING_MODELS, binding_connectors, validate_binding
        from devices.bindings import all_bindings

        for kind in sorted(kinds if kinds is not None else set(BINDING_MODELS)):
            configs = []
            for binding in await all_bindings(self.database, kind):
                try:
                    configs.append(
                        validate_binding(kind, binding.tenant_id, binding.device_id, binding.config)
                    )
                except PlatformError as exc:  # a binding that no longer validates is skipped, loudly
                    logger.error(
                        "binding of %s/%s skipped: %s", binding.tenant_id, binding.device_id, exc.detail
                    )
            await self.supervisor.replace(kind, binding_connectors(kind, configs, self.bus, self.ingestor))
            logger.info("%s connector serves %d bound device(s)", kind, len(configs))

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Runtime]:
        """Run the background tasks for the duration of the block."""
        await self.engine.load()
        for name, work in (
            ("rule-timers", self.engine.run_timers()),
            ("rule-writer", self.engine.run_flusher()),
            ("ingestor", self.ingestor.run()),
            ("status-sweeper", self.ingestor.run_status_sweeper()),
            ("status-publisher", self.ingestor.run_status_publisher()),
            ("dead-letters", self.recorder.run()),
            ("connectors", self.supervisor.run()),
            *((("notifications", self.notifier.run()),) if self.notifier else ()),
        ):
            self._tasks.append(asyncio.create_task(work, name=name))
        if self.settings.load_bindings:
            await self.reload_bindings()
        try:
            yield self
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._tasks.clear()
            await self.engine.drain()
            await self.engine.executor.close()
            publisher = self.engine.executor.publisher
            if isinstance(publisher, MqttPublisher):
                await publisher.close()
            await self.recorder.flush()
            await self.telemetry.close()
