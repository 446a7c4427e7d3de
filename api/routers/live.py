"""Live telemetry and status for browsers and mobile clients: Server-Sent Events and WebSocket.

Browsers cannot set an Authorization header on EventSource or WebSocket, so both endpoints also
accept the token as the ``access_token`` query parameter (keep such URLs out of logs and
history; prefer the header where the client can set it).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, WebSocket, status
from fastapi.responses import StreamingResponse

from api.auth import Principal, check_scope, principal_for
from api.context import ApiContext, ServiceUnavailableError, api_context
from api.problems import PROBLEM_RESPONSES
from model.errors import AuthenticationError, PlatformError
from pipeline.live import LiveEvent, LiveHub, Subscription

EventKind = Literal["reading", "status", "alarm", "trace"]

router = APIRouter(prefix="/live", tags=["live"], responses=PROBLEM_RESPONSES)

BUFFER = 256
SCOPE = "telemetry:read"


def _token(authorization: str | None, access_token: str | None) -> str:
    if authorization and authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    if access_token:
        return access_token
    raise AuthenticationError("send a token as 'Authorization: Bearer …' or ?access_token=…")


def _hub(ctx: ApiContext) -> LiveHub:
    if ctx.live is None:
        raise ServiceUnavailableError("live streams are not served by this process")
    return ctx.live


async def _events(
    sub: Subscription, heartbeat: float, authorized: Callable[[], Awaitable[bool]]
) -> AsyncIterator[LiveEvent | None]:
    """The subscription's events, with None as a heartbeat when nothing happens for a while.

    The token is checked again at every heartbeat, so a revoked or expired token (or a
    suspended tenant) ends the stream within one heartbeat interval.
    """
    while True:
        event = await sub.get(heartbeat)
        if event is None and not await authorized():
            return
        yield event


def _recheck(ctx: ApiContext, raw: str) -> Callable[[], Awaitable[bool]]:
    async def authorized() -> bool:
        try:
            check_scope(await principal_for(ctx.database, raw), SCOPE)
        except PlatformError:
            return False
        return True

    return authorized


def _sse(event: LiveEvent | None) -> bytes:
    if event is None:
        return b": heartbeat\n\n"
    return f"event: {event.kind}\ndata: {json.dumps(event.data, separators=(',', ':'))}\n\n".encode()


@router.get(
    "/sse",
    summary="Live readings and status changes (Server-Sent Events)",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "An endless event stream"}},
)
async def sse(
    request: Request,
    device: Annotated[list[str] | None, Query(description="Only these devices (repeatable).")] = None,
    metric: Annotated[list[str] | None, Query(description="Only these metrics (repeatable).")] = None,
    access_token: Annotated[str | None, Query(description="For clients that cannot send headers.")] = None,
    kind: Annotated[
        list[EventKind] | None,
        Query(description="Only these kinds (repeatable); default reading, status and alarm."),
    ] = None,
) -> StreamingResponse:
    """Events `reading`, `status`, `alarm` (an alarm raised, acknowledged or cleared), `trace` (a
    rule decision as stored, only when asked for with `kind=trace`) and `missed` (a slow client
    lost that many old events)."""
    ctx = api_context(request)
    raw = _token(request.headers.get("authorization"), access_token)
    principal = check_scope(await principal_for(ctx.database, raw), SCOPE)
    hub = _hub(ctx)
    sub = hub.subscribe(principal.tenant, devices=device, metrics=metric, capacity=BUFFER, kinds=kind)

    async def stream() -> AsyncIterator[bytes]:
        try:
            yield b": connected\n\n"
            async for event in _events(sub, ctx.live_heartbeat_s, _recheck(ctx, raw)):
                yield _sse(event)
        finally:
            hub.unsubscribe(sub)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


@router.websocket("/ws")
async def websocket(
    ws: WebSocket,
    device: Annotated[list[str] | None, Query()] = None,
    metric: Annotated[list[str] | None, Query()] = None,
    access_token: Annotated[str | None, Query()] = None,
    kind: Annotated[list[EventKind] | None, Query()] = None,
) -> None:
    """The same events as JSON messages `{"type": ..., "data": {...}}`."""
    ctx: ApiContext = ws.app.state.api_context
    try:
        raw = _token(ws.headers.get("authorization"), access_token)
        principal: Principal = check_scope(await principal_for(ctx.database, raw), SCOPE)
        hub = _hub(ctx)
    except PlatformError as exc:
        # 1008 policy violation; the reason says why (no tenant data is revealed).
        await ws.close(code=status.WS_1008_POLICY_VIOLATION, reason=exc.detail[:120])
        return
    await ws.accept()
    sub = hub.subscribe(principal.tenant, devices=device, metrics=metric, capacity=BUFFER, kinds=kind)

    async def forward() -> None:
        async for event in _events(sub, ctx.live_heartbeat_s, _recheck(ctx, raw)):
            message = {"type": "heartbeat"} if event is None else {"type": event.kind, "data": event.data}
            await ws.send_text(json.dumps(message, separators=(",", ":")))

    async def until_closed() -> None:
        # Clients send nothing we act on; reading is how a disconnect is noticed at once
        # instead of at the next send.
        while True:
            await ws.receive_text()

    sender = asyncio.create_task(forward())
    watcher = asyncio.create_task(until_closed())
    try:
        await asyncio.wait({sender, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (sender, watcher):
            task.cancel()
        await asyncio.gather(sender, watcher, return_exceptions=True)
        hub.unsubscribe(sub)
