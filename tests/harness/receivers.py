"""Real notification receivers on free loopback ports: an SMTP server and an HTTP webhook endpoint.

Both run in threads of the test process (aiosmtpd's controller, http.server), so they work from
any event loop and are stopped when their context ends. They record what they received;
``wait_for`` polls until the expected count arrived (or fails with what did arrive).

Usage::

    with SmtpReceiver() as smtp, HttpReceiver() as hook:
        urls = [smtp.url("ops@example.com"), hook.url("/alerts", headers={"X-Token": "t"})]
        ...
        (mail,) = await smtp.wait_for(1)
        assert "42.5" in mail.text
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.harness.ports import LOOPBACK, free_port

DEFAULT_WAIT_S = 15.0
_POLL_S = 0.02


@dataclass(frozen=True, slots=True)
class Mail:
    """One message the SMTP receiver accepted."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    subject: str
    text: str  # the text/plain part (or the whole body)
    raw: bytes


@dataclass(frozen=True, slots=True)
class Hit:
    """One HTTP request the webhook receiver got, and the status it answered."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes
    status: int

    def json(self) -> Any:
        return json.loads(self.body)


async def _wait(items: list[Any], lock: threading.Lock, count: int, within_s: float, what: str) -> list[Any]:
    deadline = time.monotonic() + within_s
    while True:
        with lock:
            if len(items) >= count:
                return list(items)
            got = list(items)
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"expected {count} {what} within {within_s}s, got {len(got)}: {got!r}"[:2000]
            )
        await asyncio.sleep(_POLL_S)


class _Handler:
    def __init__(self, receiver: SmtpReceiver) -> None:
        self._receiver = receiver

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        message = email.message_from_bytes(raw, policy=email.policy.default)
        part = message.get_body(preferencelist=("plain",)) if message.is_multipart() else message
        text = part.get_content() if part is not None else ""
        mail = Mail(
            str(envelope.mail_from),
            tuple(str(r) for r in envelope.rcpt_tos),
            str(message.get("Subject", "")),
            str(text),
            raw,
        )
        with self._receiver.lock:
            self._receiver.mails.append(mail)
        return "250 OK"


class SmtpReceiver:
    """A plain SMTP server (no TLS, no auth) on 127.0.0.1 that keeps every message."""

    def __init__(self) -> None:
        self.port = free_port(LOOPBACK)
        self.mails: list[Mail] = []
        self.lock = threading.Lock()
        self._controller = Controller(_Handler(self), hostname=LOOPBACK, port=self.port)

    def url(self, to: str, sender: str = "flatgigs@example.com") -> str:
        """An Apprise ``mailto://`` URL that delivers to this server in plain SMTP."""
        return f"mailto://{LOOPBACK}:{self.port}/{quote(to)}?from={quote(sender)}&mode=insecure"

    async def wait_for(self, count: int, within_s: float = DEFAULT_WAIT_S) -> list[Mail]:
        """The messages, once at least ``count`` arrived."""
        result: list[Mail] = await _wait(self.mails, self.lock, count, within_s, "mails")
        return result

    def __enter__(self) -> SmtpReceiver:
        self._controller.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._controller.stop()


@dataclass
class Behaviour:
    """How the HTTP receiver answers: fail the next ``fail_next`` requests (or all), after a delay."""

    fail_next: int = 0
    always_fail: bool = False
    delay_s: float = 0.0
    fail_status: int = 500
    slow_paths: set[str] = field(default_factory=set)  # only these paths are delayed (all when empty)


class HttpReceiver:
    """An HTTP server on 127.0.0.1 recording every request; it can be told to fail or be slow."""

    def __init__(self) -> None:
        self.hits: list[Hit] = []
        self.lock = threading.Lock()
        self.behaviour = Behaviour()
        self._release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                plan = receiver.behaviour
                if plan.delay_s and (not plan.slow_paths or self.path.split("?")[0] in plan.slow_paths):
                    receiver._release.wait(plan.delay_s)
                with receiver.lock:
                    failing = plan.always_fail or plan.fail_next > 0
                    if plan.fail_next > 0:
                        plan.fail_next -= 1
                    status = plan.fail_status if failing else 200
                    receiver.hits.append(
                        Hit(self.command, self.path, dict(self.headers.items()), body, status)
                    )
                payload = b'{"ok": false}' if failing else b'{"ok": true}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_POST = do_PUT = do_GET = _serve

            def log_message(self, *_: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="http-receiver", daemon=True)

    def url(
        self, path: str = "/hook", *, headers: Mapping[str, str] | None = None, scheme: str = "json"
    ) -> str:
        """An Apprise URL (``json://`` by default) posting to ``path`` here, with extra headers."""
        query = "&".join(f"%2B{quote(k)}={quote(v)}" for k, v in (headers or {}).items())
        return f"{scheme}://{LOOPBACK}:{self.port}{path}" + (f"?{query}" if query else "")

    def ok_hits(self, path: str | None = None) -> list[Hit]:
        """Requests answered 200 (on ``path`` when given)."""
        with self.lock:
            return [
                h for h in self.hits if h.status == 200 and (path is None or h.path.split("?")[0] == path)
            ]

    async def wait_for(
        self, count: int, within_s: float = DEFAULT_WAIT_S, *, path: str | None = None
    ) -> list[Hit]:
        """Every request (or those to ``path``), once at least ``count`` arrived."""
        deadline = time.monotonic() + within_s
        while True:
            with self.lock:
                hits = [h for h in self.hits if path is None or h.path.split("?")[0] == path]
            if len(hits) >= count:
                return hits
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"expected {count} requests within {within_s}s, got {len(hits)}: {hits!r}"[:2000]
                )
            await asyncio.sleep(_POLL_S)

    def release(self) -> None:
        """Let requests held by ``behaviour.delay_s`` finish now (and later ones pass at once)."""
        self._release.set()

    def __enter__(self) -> HttpReceiver:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._release.set()  # let slow handlers finish
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
