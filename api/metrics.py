"""Prometheus metrics of the HTTP surface, kept in a registry per application."""

from __future__ import annotations

import re
import time

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class HttpMetrics:
    """Request counts and latencies labelled by route template (never by raw path: ids would explode)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "flatgigs_http_requests",
            "HTTP requests served",
            ["method", "route", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "flatgigs_http_request_duration_seconds",
            "Time to serve an HTTP request",
            ["method", "route"],
            registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        )


class MetricsMiddleware:
    """Record every HTTP request in ``metrics``."""

    def __init__(self, app: ASGIApp, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = _route_template(scope)
            method = scope["method"]
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - started)


def _route_template(scope: Scope) -> str:
    """The path template a request matched, e.g. ``/api/v1/devices/{device_id}``.

    Templates come from the OpenAPI document (the one complete list of routes, whatever the
    framework's router nesting), compiled once per application.
    """
    app = scope.get("app")
    if app is None:
        return "unmatched"
    patterns: list[tuple[re.Pattern[str], str]] | None = getattr(app.state, "_route_patterns", None)
    if patterns is None:
        patterns = [(compile_path(path)[0], path) for path in app.openapi()["paths"]]
        app.state._route_patterns = patterns
    path = scope["path"]
    for regex, template in patterns:
        if regex.match(path):
            return template
    return "unmatched"
