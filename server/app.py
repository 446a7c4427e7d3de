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
from server.settings import Settings
from storage.database import Database

logger = logging.getLogger(__name__)

API_VERSION = "1.0.0"


def create_app(settings: Settings, database: Database | None = None) -> FastAPI:
    """A flatgigs HTTP application. ``database`` is created from settings unless given."""
    db = database or Database(settings.app_database_url, pool_size=settings.db_pool_size)
    owns_db = database is None

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await db.assert_isolating_role()
        logger.info("flatgigs serving on %s (database: %s)", settings.public_url, db.dialect)
        try:
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
    app.state.api_context = ApiContext(database=db, max_body_bytes=settings.max_body_bytes)
    registry = CollectorRegistry()
    app.state.metrics_registry = registry
    install_problem_handlers(app)
    app.include_router(health.router)
    app.include_router(build_v1_router())
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=HttpMetrics(registry))
    return app
