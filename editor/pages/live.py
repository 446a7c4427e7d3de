"""Live updates as Server-Sent Events of HTML fragments (the htmx SSE extension swaps them).

Readings and status changes come from the pipeline's LiveHub. Traces and alarms are written by
the rule engine to the database and are followed by polling it once a second per open page:
the engine publishes neither on the hub, and it is being reworked, so the editor reads what the
engine stores (ADR 0019 records this and what replaces it).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from datetime import datetime

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from editor.web import PREFIX, EditorRoute, LoginRequired, User, current_user, services, templates
from engine.alarms import AlarmFilter
from engine.rules import RuleRepository
from engine.store import TraceRepository
from pipeline.live import LiveEvent

router = APIRouter(route_class=EditorRoute)
POLL_S = 1.0
HEARTBEAT_S = 15.0
INITIAL_TRACES = 10


def sse(event: str, html: str) -> bytes:
    """One SSE message carrying an HTML fragment (one ``data:`` line per line of HTML)."""
    lines = "".join(f"data: {line}\n" for line in html.splitlines() or [""])
    return f"event: {event}\n{lines}\n".encode()


def fragment(name: str, **context: object) -> str:
    """A template rendered to a string (no request: fragments use no URL helpers)."""
    return templates.get_template(name).render(prefix=PREFIX, **context)


async def still_signed_in(request: Request) -> bool:
    """Whether the session still names an enabled user of an active tenant (checked each heartbeat,
    so signing out elsewhere, a disabled user or a suspended tenant ends the stream)."""
    try:
        await current_user(request)
    except LoginRequired:
        return False
    return True


def _stream(body: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(
        body, media_type="text/event-stream", headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    )


@router.get(f"{PREFIX}/rules/{{rule_id}}/traces/stream", include_in_schema=False)
async def trace_stream(request: Request, rule_id: str, user: User) -> Response:
    """The rule's newest traces, then each new one as the engine stores it."""
    db = services(request).database
    async with db.tenant(user.tenant_id) as scope:
        await RuleRepository(scope).get(rule_id)  # 404 for an unknown or foreign rule

    async def body() -> AsyncIterator[bytes]:
        last_id = 0
        first = True
        idle = 0.0
        yield b": connected\n\n"
        while not await request.is_disconnected():
            async with db.tenant(user.tenant_id) as scope:
                rows = await TraceRepository(scope).list(rule_id, limit=INITIAL_TRACES if first else 50)
            fresh = sorted((r for r in rows if r["id"] > last_id), key=lambda r: r["id"])
            first = False
            for row in fresh:
                last_id = max(last_id, row["id"])
                yield sse("trace", fragment("rules/_trace.html", trace=row, rule_id=rule_id))
            idle += POLL_S
            if idle >= HEARTBEAT_S:  # every 15 s, busy or not: is the session still good?
                idle = 0.0
                if not await still_signed_in(request):
                    return
                yield b": heartbeat\n\n"
            await asyncio.sleep(POLL_S)

    return _stream(body())


async def active_alarms(request: Request, tenant_id: str, rule_id: str | None = None) -> list[object]:
    """The tenant's active alarms, newest first (at most 200)."""
    page = (
        await services(request)
        .alarm_service()
        .list(tenant_id, AlarmFilter(active=True, rule_id=rule_id or None), limit=200)
    )
    return list(page.items)


@router.get(f"{PREFIX}/alarms/stream", include_in_schema=False)
async def alarm_stream(request: Request, user: User, rule: str = "") -> Response:
    """The active alarms table, sent again whenever it changes."""

    async def body() -> AsyncIterator[bytes]:
        last = ""
        idle = 0.0
        yield b": connected\n\n"
        while not await request.is_disconnected():
            items = await active_alarms(request, user.tenant_id, rule)
            html = fragment("alarms/_rows.html", alarms=items, user=user)
            digest = hashlib.sha256(html.encode()).hexdigest()
            if digest != last:
                last = digest
                yield sse("alarms", html)
            idle += POLL_S
            if idle >= HEARTBEAT_S:  # every 15 s, busy or not: is the session still good?
                idle = 0.0
                if not await still_signed_in(request):
                    return
                yield b": heartbeat\n\n"
            await asyncio.sleep(POLL_S)

    return _stream(body())


@router.get(f"{PREFIX}/devices/{{device_id}}/stream", include_in_schema=False)
async def device_stream(request: Request, device_id: str, user: User) -> Response:
    """The device's latest values and status, as readings and status changes arrive."""
    from devices.registry import DeviceRepository

    ctx = services(request)
    async with ctx.database.tenant(user.tenant_id) as scope:
        await DeviceRepository(scope).get(device_id)  # 404 for an unknown or foreign device
    if ctx.live is None:
        return Response(status_code=204)
    hub = ctx.live
    latest: dict[str, tuple[object, datetime | str]] = {}
    if ctx.telemetry is not None:
        for name, sample in (await ctx.telemetry.latest(user.tenant_id, device_id)).items():
            latest[name] = (sample.value, sample.ts)
    sub = hub.subscribe(user.tenant_id, devices=[device_id], capacity=64)

    async def body() -> AsyncIterator[bytes]:
        try:
            yield b": connected\n\n"
            while not await request.is_disconnected():
                event: LiveEvent | None = await sub.get(HEARTBEAT_S)
                if event is None:
                    if not await still_signed_in(request):
                        return
                    yield b": heartbeat\n\n"
                elif event.kind == "reading":
                    for name, value in event.data["metrics"].items():
                        latest[name] = (value, event.data["ts"])
                    yield sse("values", fragment("devices/_values.html", values=latest))
                elif event.kind == "status":
                    yield sse("status", fragment("devices/_status.html", status=event.data["status"]))
        finally:
            hub.unsubscribe(sub)

    return _stream(body())
