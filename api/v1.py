"""The versioned REST API: every router mounted under /api/v1."""

from __future__ import annotations

from fastapi import APIRouter

from api.routers import (
    alarms,
    dead_letters,
    device_bindings,
    device_credentials,
    device_types,
    devices,
    ingest,
    live,
    notifications,
    rule_backtests,
    rule_explain,
    rules,
    telemetry,
    tenants,
    tokens,
    users,
)

API_PREFIX = "/api/v1"


def build_v1_router() -> APIRouter:
    """All /api/v1 routes."""
    router = APIRouter(prefix=API_PREFIX)
    for module in (
        tenants,
        users,
        tokens,
        device_types,
        devices,
        device_credentials,
        device_bindings,
        telemetry,
        dead_letters,
        ingest,
        live,
        rules,
        rule_backtests,
        rule_explain,
        alarms,
        notifications,
    ):
        router.include_router(module.router)
    return router
