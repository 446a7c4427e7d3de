"""What the HTTP layer needs from the composition root, attached to the app's state."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import Request

from connectors.base import ReadingSink
from engine.alarms import AlarmService
from model.errors import PlatformError
from notifiers.service import NotificationService
from pipeline.live import LiveHub
from storage.database import Database
from storage.telemetry.port import TelemetryStore


class ServiceUnavailableError(PlatformError):
    """A part of the platform this route needs is not running in this process."""

    slug = "service-unavailable"
    status = 503
    title = "Service unavailable"


@dataclass(slots=True)
class ApiContext:
    """Services shared by every request of one process."""

    database: Database
    max_body_bytes: int
    telemetry: TelemetryStore | None = None
    sink: ReadingSink | None = None
    live: LiveHub | None = None
    device_payload_bytes: int = 65_536
    live_heartbeat_s: float = 15.0
    on_bindings_changed: Callable[[set[str]], Awaitable[None]] | None = None
    on_rules_changed: Callable[[str, str], Awaitable[None]] | None = None
    on_device_deleted: Callable[[str, str], Awaitable[None]] | None = None
    allow_private_webhooks: bool = False
    notifier: NotificationService | None = None
    alarms: AlarmService | None = None

    def alarm_service(self) -> AlarmService:
        """The process's alarm service: acknowledgements reach the notifier, changes the live hub."""
        if self.alarms is None:
            self.alarms = AlarmService(self.database, notifier=self.notifier, live=self.live)
        return self.alarms

    async def rules_changed(self, tenant_id: str, rule_id: str) -> None:
        """Tell the engine that a rule was published, enabled, disabled or deleted."""
        if self.on_rules_changed is not None:
            await self.on_rules_changed(tenant_id, rule_id)

    async def device_deleted(self, tenant_id: str, device_id: str) -> None:
        """Tell the engine to forget what it keeps in memory for a decommissioned device."""
        if self.on_device_deleted is not None:
            await self.on_device_deleted(tenant_id, device_id)

    async def bindings_changed(self, kinds: set[str]) -> None:
        """Tell the running connectors that device bindings of ``kinds`` changed."""
        if self.on_bindings_changed is not None and kinds:
            await self.on_bindings_changed(kinds)

    def require_notifier(self) -> NotificationService:
        """The notifications service, or 503 if this process has none."""
        if self.notifier is None:
            raise ServiceUnavailableError("notifications are not running in this process")
        return self.notifier

    def require_telemetry(self) -> TelemetryStore:
        """The telemetry store, or 503 if this process has none."""
        if self.telemetry is None:
            raise ServiceUnavailableError("telemetry storage is not configured in this process")
        return self.telemetry

    def require_sink(self) -> ReadingSink:
        """The ingestion sink, or 503 if this process does not ingest."""
        if self.sink is None:
            raise ServiceUnavailableError("ingestion is not running in this process")
        return self.sink


def api_context(request: Request) -> ApiContext:
    """The context the composition root attached to the app."""
    ctx: ApiContext = request.app.state.api_context
    return ctx
