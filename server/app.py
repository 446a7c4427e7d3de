"""The application factory: wires settings, the database and the HTTP surface together."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from api.context import ApiContext
from api.limits import BodySizeLimit
from api.metrics import HttpMetrics, MetricsMiddleware
from api.problems import install_problem_handlers
from api.routers import health
from api.v1 import build_v1_router
from connectors.base import Connector
from editor.app import mount_editor
from editor.throttle import SignInLimits
from engine.registry import REGISTRY, load_node_types
from server.logs import install_redaction
from server.runtime import Runtime
from server.settings import Settings
from storage.database import Database
from storage.telemetry.port import TelemetryStore

logger = logging.getLogger(__name__)

API_VERSION = "1.0.0"


def create_app(
    settings: Settings,
    database: Database | None = None,
    *,
    telemetry: TelemetryStore | None = None,
    connectors: list[Connector] | None = None,
) -> FastAPI:
    """A flatgigs process: HTTP API plus the pipeline, connectors and stores it runs.

    ``database``, ``telemetry`` and ``connectors`` are built from settings unless given.
    Background work (ingestion, connectors) runs for the app's lifespan.
    """
    # Third-party nodes before anything compiles a rule; a duplicate key stops the start-up here.
    if loaded := load_node_types():
        logger.info("rule nodes from packages: %s (%d node types in all)", ", ".join(loaded), len(REGISTRY))
    db = database or Database(settings.app_database_url, pool_size=settings.db_pool_size)
    owns_db = database is None
    registry = CollectorRegistry()
    runtime = Runtime.build(settings, db, registry, telemetry=telemetry, connectors=connectors)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        install_redaction()  # after the server configured its loggers
        await db.assert_isolating_role()
        logger.info("flatgigs serving on %s (database: %s)", settings.public_url, db.dialect)
        try:
            async with runtime.running():
                yield
        finally:
            if owns_db:
                await db.dispose()

    app = FastAPI(
        title="flatgigs",
        version=API_VERSION,
        summary="Multi-tenant IoT platform: devices, telemetry, rules and alerts.",
        description=(
            "Every error is an RFC 9457 problem+json document with a stable `type` "
            "(`urn:flatgigs:problem:<slug>`). Authenticate with `Authorization: Bearer <token>`. "
            "An object of another tenant answers 404."
        ),
        lifespan=lifespan,
    )
    app.state.api_context = ApiContext(
        database=db,
        max_body_bytes=settings.max_body_bytes,
        telemetry=runtime.telemetry,
        sink=runtime.bus,
        live=runtime.hub,
        device_payload_bytes=settings.device_payload_bytes,
        on_bindings_changed=runtime.reload_bindings,
        on_rules_changed=runtime.engine.reload,
        on_device_deleted=runtime.engine.forget_device,
        allow_private_webhooks=settings.allow_private_webhooks,
        notifier=runtime.notifier,
        alarms=runtime.alarms,
    )
    app.state.runtime = runtime
    app.state.metrics_registry = registry
    install_problem_handlers(app)
    app.include_router(health.router)
    app.include_router(build_v1_router())
    mount_editor(
        app,
        secret_key=settings.ensure_secret_key(),
        secure_cookies=(settings.public_url or "").startswith("https://"),
        sign_in_limits=SignInLimits(
            account_failures=settings.sign_in_account_failures,
            address_failures=settings.sign_in_address_failures,
            window_s=settings.sign_in_window_s,
            lockout_s=settings.sign_in_lockout_s,
            lockout_max_s=settings.sign_in_lockout_max_s,
            max_entries=settings.sign_in_throttle_entries,
        ),
    )
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=HttpMetrics(registry))
    return app
