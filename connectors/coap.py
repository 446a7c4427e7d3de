"""The CoAP connector: devices POST (or PUT) their JSON telemetry to ``coap://<host>/telemetry``.

Device guide: docs/devices/coap.md. One resource, ``/telemetry``, takes the JSON payload that
connectors/payload.py decodes (the same as over MQTT and HTTP). The device authenticates with its
credential in one URI query option, ``k=fgd.<tenant>.<credential id>.<secret>``; the tenant and the
device come only from that credential (``DeviceAuthenticator``), never from the payload.

Responses (the HTTP ingestion endpoint's semantics, in CoAP codes):

- 2.04 Changed, ``{"accepted": n}`` (application/json): every sample was offered to the pipeline;
- 4.01 Unauthorized: no ``k=`` option, more than one, or a credential that is unknown or revoked
  (nothing is recorded: an unauthenticated sender cannot fill the dead-letter list);
- 4.00 Bad Request, diagnostic text ``<reason>: <detail>``: the decoder refused the payload; the
  message is also recorded with ``sink.reject`` (dead letters);
- 4.13 Request Entity Too Large with Size1 = the limit: the body is over ``max_payload_bytes``
  (announced by Size1, reached while assembling blocks, or a single datagram that was truncated),
  also recorded as a ``too_large`` rejection;
- 4.15 Unsupported Content-Format: a Content-Format other than application/json (recorded too);
- 5.03 Service Unavailable with Max-Age = the retry hint: ``sink.offer`` raised BackpressureError
  (samples of a batch offered before that stay accepted, as over HTTP), or too many block-wise
  uploads are in progress;
- 4.04 for any other path, 4.05 for other methods, 4.08 for a block-wise upload out of sequence,
  5.00 when the authenticator or the sink failed unexpectedly (logged, never with the credential).

Transport: UDP only (``transports=["udp6"]``; aiocoap's default would also open CoAP-over-TCP and
WebSocket listeners), bound to ``host``/``port`` (port 0 picks a free port; ``details()`` and
``bound_port`` report it). CoAP over UDP is cleartext: the credential and the telemetry can be read
and replayed by anyone on the path. Run this connector on a trusted network only, until DTLS or
OSCORE is built.

Sizes and block-wise transfer (RFC 7959): aiocoap receives datagrams into a 4096-byte buffer and
silently truncates longer ones, so a request without Block1 whose datagram fills that buffer is
refused with 4.13 (Size1 tells the device the limit; it must use Block1 above ~1 KiB anyway).
Block1 uploads are assembled here, not by aiocoap: aiocoap's own assembly has no size limit and
would hold any number of unbounded bodies. Every block is authenticated, an assembly is keyed by
the sender's address and the authenticated device, it grows to at most ``max_payload_bytes``, at
most ``max_block_uploads`` are held at once, and an upload idle for ``block_timeout_s`` is dropped.

Only aiocoap internals used: the path from the server context to its UDP socket, to report the
bound port (``_udp_socket``); when it changes, ``bound_port`` falls back to the configured port.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import math
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, NoReturn

import aiocoap  # type: ignore[import-untyped]
import aiocoap.error  # type: ignore[import-untyped]
from aiocoap import resource

from connectors.base import Connector, ConnectorError, DeviceAuthenticator, ReadingSink
from connectors.payload import PayloadError, decode
from model.errors import BackpressureError
from model.readings import Reading, Source
from model.rejections import Rejection, RejectReason

logger = logging.getLogger(__name__)

TELEMETRY_PATH = ("telemetry",)
CREDENTIAL_QUERY = "k="
JSON_CONTENT_FORMAT = 50  # application/json (RFC 7252 section 12.3)
DEFAULT_PORT = 5683
# aiocoap's UDP transport reads datagrams into a buffer of this size and ignores MSG_TRUNC.
DATAGRAM_BUFFER_BYTES = 4096
MAX_BLOCK_SIZE_EXP = 6  # 1024-byte blocks; 7 (BERT) exists only for CoAP over TCP
DEFAULT_BLOCK_TIMEOUT_S = 93.0  # CoAP's MAX_TRANSMIT_WAIT: how long a sender keeps retrying
DIAGNOSTIC_BYTES = 200
MAX_AGE_LIMIT = 2**32 - 1


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _diagnostic(text: str) -> bytes:
    """A short UTF-8 diagnostic payload (RFC 7252 section 5.5.2), cut on a character boundary."""
    return text.encode()[:DIAGNOSTIC_BYTES].decode(errors="ignore").encode()


def _response(code: Any, text: str = "", **options: Any) -> Any:
    message = aiocoap.Message(code=code, payload=_diagnostic(text) if text else b"")
    for name, value in options.items():
        setattr(message.opt, name, value)
    return message


@dataclass(slots=True)
class _Upload:
    """A block-wise request body being assembled."""

    body: bytearray
    expires: float


@dataclass(frozen=True, slots=True)
class _Identity:
    tenant_id: str
    device_id: str


class _Refused(Exception):
    """Ends handling of one request with a ready response."""

    def __init__(self, response: Any) -> None:
        super().__init__(str(response))
        self.response = response


class CoapConnector(Connector):
    """A CoAP server taking device telemetry at ``/telemetry`` and offering it to the pipeline.

    ``ready`` is set while the server listens (``bound_port`` is then known) and cleared when
    ``run()`` ends.
    """

    kind: ClassVar[str] = "coap"

    def __init__(
        self,
        name: str,
        sink: ReadingSink,
        authenticator: DeviceAuthenticator,
        *,
        host: str = "::",
        port: int = DEFAULT_PORT,
        max_payload_bytes: int = 65536,
        max_block_uploads: int = 64,
        block_timeout_s: float = DEFAULT_BLOCK_TIMEOUT_S,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        super().__init__(name)
        if not 0 <= port <= 65535:
            raise ValueError(f"port {port} is not a UDP port (0 picks a free one)")
        if max_payload_bytes < 1:
            raise ValueError("max_payload_bytes must be positive")
        if max_block_uploads < 1 or block_timeout_s <= 0:
            raise ValueError("max_block_uploads and block_timeout_s must be positive")
        self.sink = sink
        self.authenticator = authenticator
        self.host = host
        self.port = port
        self.max_payload_bytes = max_payload_bytes
        self.max_block_uploads = max_block_uploads
        self.block_timeout_s = block_timeout_s
        self.clock = clock
        self.ready = asyncio.Event()
        self._source = Source(self.kind, name)
        self._uploads: dict[tuple[Any, ...], _Upload] = {}
        self._bound_port: int | None = None
        self.requests = 0
        self.readings_accepted = 0
        self.rejected = 0
        self.unauthorized = 0
        self.too_large = 0
        self.busy = 0
        self.failed = 0

    @property
    def bound_port(self) -> int | None:
        """The UDP port the server listens on (None while it is not running)."""
        return self._bound_port

    def details(self) -> dict[str, Any]:
        """Listening state and counters (for health and tests)."""
        return {
            "listening": self.ready.is_set(),
            "bind": f"{self.host}:{self.port}",
            "port": self._bound_port,
            "requests": self.requests,
            "readings_accepted": self.readings_accepted,
            "rejected": self.rejected,
            "unauthorized": self.unauthorized,
            "too_large": self.too_large,
            "busy": self.busy,
            "failed": self.failed,
            "block_uploads": len(self._uploads),
            "max_payload_bytes": self.max_payload_bytes,
        }

    async def run(self) -> None:
        """Serve until cancelled, then close the socket; ConnectorError if it cannot listen."""
        await self._check_port_free()
        try:
            context = await aiocoap.Context.create_server_context(
                _TelemetryResource(self),
                bind=(self.host, self.port),
                transports=["udp6"],
                loggername=f"coap-server.{self.name}",
            )
        except (OSError, aiocoap.error.Error) as exc:
            raise ConnectorError(
                f"CoAP server cannot listen on {self.host}:{self.port}: {exc}",
                bind=f"{self.host}:{self.port}",
            ) from exc
        self._bound_port = _bound_port(context) or self.port
        self.ready.set()
        logger.info("coap connector %s listening on udp %s:%d", self.name, self.host, self._bound_port)
        try:
            await asyncio.Event().wait()  # until cancelled
        finally:
            self.ready.clear()
            self._bound_port = None
            self._uploads.clear()
            await context.shutdown()
            logger.info("coap connector %s stopped", self.name)

    async def _check_port_free(self) -> None:
        """Refuse a port another CoAP server holds: aiocoap sets SO_REUSEPORT, so its bind would
        succeed and the kernel would silently split the devices' datagrams between both servers."""
        if self.port == 0:
            return
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(
                self.host, self.port, family=socket.AF_INET6, type=socket.SOCK_DGRAM, flags=socket.AI_V4MAPPED
            )
        except OSError:
            return  # aiocoap reports unresolvable hosts itself
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            try:
                probe.bind(infos[0][4])
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise ConnectorError(
                        f"UDP port {self.port} on {self.host} is already in use (another CoAP server?)",
                        bind=f"{self.host}:{self.port}",
                    ) from exc
                # other errors (address not local...) are reported by aiocoap's own bind

    async def handle(self, request: Any) -> Any:
        """The response to one request to the telemetry resource."""
        self.requests += 1
        try:
            return await self._handle(request)
        except _Refused as refused:
            return refused.response
        except Exception:
            # Not logging the request: its query holds the device credential.
            self.failed += 1
            logger.exception("coap connector %s: request from %s failed", self.name, request.remote)
            return _response(aiocoap.Code.INTERNAL_SERVER_ERROR, "internal error")

    async def _handle(self, request: Any) -> Any:
        if tuple(request.opt.uri_path) != TELEMETRY_PATH:
            return _response(aiocoap.Code.NOT_FOUND, "the telemetry resource is /telemetry")
        if request.code not in (aiocoap.Code.POST, aiocoap.Code.PUT):
            return _response(aiocoap.Code.METHOD_NOT_ALLOWED, "send telemetry with POST or PUT")
        identity = await self._authenticate(request)
        now = self.clock()
        block1 = request.opt.block1
        if block1 is None:
            body = bytes(request.payload)
            self._check_not_truncated(identity, request, now)
        else:
            assembled = self._assemble(identity, request, now)
            if assembled is None:
                return _response(
                    aiocoap.Code.CONTINUE, block1=(block1.block_number, True, block1.size_exponent)
                )
            body = assembled
        response = self._ingest(identity, request, body, now)
        if block1 is not None:
            response.opt.block1 = (block1.block_number, False, block1.size_exponent)
        return response

    async def _authenticate(self, request: Any) -> _Identity:
        tokens = [q[len(CREDENTIAL_QUERY) :] for q in request.opt.uri_query if q.startswith(CREDENTIAL_QUERY)]
        result = await self.authenticator.authenticate(tokens[0]) if len(tokens) == 1 and tokens[0] else None
        if result is None:
            self.unauthorized += 1
            raise _Refused(
                _response(
                    aiocoap.Code.UNAUTHORIZED,
                    "send one valid, unrevoked device credential as the query k=fgd.<tenant>.<id>.<secret>",
                )
            )
        return _Identity(*result)

    def _check_not_truncated(self, identity: _Identity, request: Any, now: datetime) -> None:
        """A datagram that filled aiocoap's receive buffer was cut: refuse it, never decode half."""
        payload = bytes(request.payload)
        # The datagram's length as received: header, token, options, payload marker and payload
        # (Message.encode refuses incoming messages).
        length = 4 + len(request.token) + len(request.opt.encode()) + (1 + len(payload) if payload else 0)
        if length >= DATAGRAM_BUFFER_BYTES:
            self._too_large(
                identity,
                payload,
                now,
                f"a single datagram of {DATAGRAM_BUFFER_BYTES} bytes or more is truncated: "
                "send payloads over 1024 bytes block-wise (Block1)",
            )

    def _assemble(self, identity: _Identity, request: Any, now: datetime) -> bytes | None:
        """Add one Block1 block; the whole body after the last block, else None (2.31 Continue)."""
        block1 = request.opt.block1
        payload = bytes(request.payload)
        # A block that is not exactly the block size (the last one: at most it) is malformed, and so
        # is BERT (exponent 7, CoAP over TCP only); this also catches a truncated oversized block.
        if block1.size_exponent > MAX_BLOCK_SIZE_EXP or not block1.is_valid_for_payload_size(len(payload)):
            raise _Refused(_response(aiocoap.Code.BAD_REQUEST, "Block1 option does not match the payload"))
        announced = request.opt.size1
        if announced is not None and announced > self.max_payload_bytes:
            self._too_large(
                identity, payload, now, f"payload of {announced} bytes exceeds {self.max_payload_bytes}"
            )
        key = (request.remote.blockwise_key, identity.tenant_id, identity.device_id, int(request.code))
        clock = time.monotonic()
        if block1.block_number == 0:
            self._uploads.pop(key, None)
            self._expire(clock)
            if len(self._uploads) >= self.max_block_uploads:
                self.busy += 1
                soonest = min(u.expires for u in self._uploads.values())
                raise _Refused(
                    _response(
                        aiocoap.Code.SERVICE_UNAVAILABLE,
                        "too many block-wise uploads in progress",
                        max_age=max(1, math.ceil(soonest - clock)),
                    )
                )
            upload = _Upload(bytearray(), clock + self.block_timeout_s)
            self._uploads[key] = upload
        else:
            found = self._uploads.get(key)
            if found is None or found.expires < clock or len(found.body) != block1.start:
                self._uploads.pop(key, None)
                raise _Refused(
                    _response(
                        aiocoap.Code.REQUEST_ENTITY_INCOMPLETE, "block out of sequence: restart at block 0"
                    )
                )
            upload = found
        upload.body += payload
        upload.expires = clock + self.block_timeout_s
        if len(upload.body) > self.max_payload_bytes:
            body = bytes(upload.body)
            del self._uploads[key]
            self._too_large(identity, body, now, f"payload exceeds {self.max_payload_bytes} bytes")
        if block1.more:
            return None
        del self._uploads[key]
        return bytes(upload.body)

    def _expire(self, clock: float) -> None:
        for key in [k for k, u in self._uploads.items() if u.expires < clock]:
            del self._uploads[key]

    def _too_large(self, identity: _Identity, payload: bytes, now: datetime, detail: str) -> NoReturn:
        self.too_large += 1
        self._reject(identity, RejectReason.TOO_LARGE, detail, payload, now)
        raise _Refused(
            _response(
                aiocoap.Code.REQUEST_ENTITY_TOO_LARGE,
                f"{RejectReason.TOO_LARGE.value}: {detail}",
                size1=self.max_payload_bytes,
            )
        )

    def _ingest(self, identity: _Identity, request: Any, body: bytes, now: datetime) -> Any:
        content_format = request.opt.content_format
        if content_format is not None and int(content_format) != JSON_CONTENT_FORMAT:
            detail = f"content format {int(content_format)} is not application/json ({JSON_CONTENT_FORMAT})"
            self._reject(identity, RejectReason.MALFORMED, detail, body, now)
            return _response(
                aiocoap.Code.UNSUPPORTED_CONTENT_FORMAT, f"{RejectReason.MALFORMED.value}: {detail}"
            )
        try:
            samples = decode(body, max_bytes=self.max_payload_bytes, now=now)
        except PayloadError as exc:
            if exc.reason is RejectReason.TOO_LARGE and len(body) > self.max_payload_bytes:
                self._too_large(identity, body, now, exc.detail)
            self._reject(identity, exc.reason, exc.detail, body, now)
            return _response(aiocoap.Code.BAD_REQUEST, f"{exc.reason.value}: {exc.detail}")
        for sample in samples:
            reading = Reading(identity.tenant_id, identity.device_id, sample.ts, sample.metrics, self._source)
            try:
                self.sink.offer(reading)
            except BackpressureError as exc:
                self.busy += 1
                max_age = min(MAX_AGE_LIMIT, max(1, math.ceil(exc.retry_after)))
                return _response(
                    aiocoap.Code.SERVICE_UNAVAILABLE, f"busy: retry after {max_age} s", max_age=max_age
                )
            self.readings_accepted += 1
        payload = json.dumps({"accepted": len(samples)}).encode()
        return aiocoap.Message(code=aiocoap.Code.CHANGED, payload=payload, content_format=JSON_CONTENT_FORMAT)

    def _reject(
        self, identity: _Identity, reason: RejectReason, detail: str, payload: bytes, now: datetime
    ) -> None:
        self.rejected += 1
        self.sink.reject(
            Rejection(
                identity.tenant_id,
                identity.device_id,
                reason,
                detail,
                self._source,
                Rejection.excerpt(payload),
                now,
            )
        )


class _TelemetryResource(resource.Resource):  # type: ignore[misc]
    """The server's root resource: dispatches the path itself so the request stays as received."""

    def __init__(self, connector: CoapConnector) -> None:
        super().__init__()
        self._connector = connector

    async def needs_blockwise_assembly(self, request: Any) -> bool:
        return False  # the connector assembles Block1 bodies itself, within its limits

    async def render(self, request: Any) -> Any:
        response = await self._connector.handle(request)
        if response.opt.no_response is None:
            response.opt.no_response = request.opt.no_response
        return response


def _udp_socket(context: Any) -> socket.socket | None:
    """The server's UDP socket, through aiocoap internals (None if they changed)."""
    with contextlib.suppress(AttributeError, IndexError, TypeError):
        for interface in context.request_interfaces:
            transport = interface.token_interface.message_interface.transport
            sock = transport.get_extra_info("socket")
            if isinstance(sock, socket.socket):
                return sock
    return None


def _bound_port(context: Any) -> int | None:
    sock = _udp_socket(context)
    if sock is None:
        return None
    port: int = sock.getsockname()[1]
    return port
