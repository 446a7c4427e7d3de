"""Liveness, readiness and Prometheus metrics (outside /api/v1: they are for machines)."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from api.context import api_context
from api.problems import problem_response

logger = logging.getLogger(__name__)

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="Liveness")
async def healthz() -> dict[str, str]:
    """The process is up and serving."""
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness", responses={503: {"description": "Not ready"}})
async def readyz(request: Request) -> Response:
    """Ready to serve traffic: the database answers; connector states are reported alongside."""
    try:
        await api_context(request).database.ping()
    except Exception as exc:  # any failure means not ready; say which check failed
        logger.warning("readiness check failed: %s", exc)
        return problem_response(
            request,
            status=503,
            slug="not-ready",
            title="Not ready",
            detail=f"database unreachable: {type(exc).__name__}",
            checks={"database": "fail"},
        )
    body: dict[str, object] = {"status": "ready", "checks": {"database": "ok"}}
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is not None:
        # Connectors are reported, not required: a broker outage must not take the API down.
        body["connectors"] = {
            name: {"state": h.state.value, "restarts": h.restarts, "last_error": h.last_error}
            for name, h in runtime.supervisor.health().items()
        }
        body["ingest_queue"] = {"depth": runtime.bus.depth, "capacity": runtime.bus.capacity}
    return JSONResponse(body)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Metrics in the Prometheus text format."""
    registry: CollectorRegistry = request.app.state.metrics_registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
