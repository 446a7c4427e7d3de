"""A request-body size limit enforced before the body is read into memory."""

from __future__ import annotations

import json

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.problems import PROBLEM_MEDIA_TYPE, TYPE_PREFIX


class BodySizeLimit:
    """Answer 413 problem+json when a request body exceeds ``max_bytes``.

    Declared lengths are refused up front; chunked bodies are counted as they stream, so an
    oversized body never sits in memory whole.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, send)
            return

        received = 0
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not response_started:
                await self._refuse(scope, send)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        body = json.dumps(
            {
                "type": TYPE_PREFIX + "payload-too-large",
                "title": "Payload too large",
                "status": 413,
                "detail": f"the request body exceeds the limit of {self.max_bytes} bytes",
                "instance": scope.get("path"),
                "limit": self.max_bytes,
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _TooLarge(HTTPException):
    """Raised inside the app's receive when the streamed body passes the limit.

    An HTTPException, so the framework's body parsing re-raises it untouched and the problem
    handlers answer 413.
    """

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"the request body exceeds the limit of {max_bytes} bytes")
