"""Async senders: one per protocol, each delivering a device's JSON payload to the platform.

- ``MqttDriver``: one aiomqtt client (MQTT 5, QoS 1) publishing for every device on
  ``<prefix>/<tenant>/<device>/telemetry``; reconnects after a lost connection.
- ``HttpDriver``: ``POST /api/v1/ingest`` with the device's credential; follows ``Retry-After``
  on 503/429 and asks for a new credential once on 401.
- ``CoapDriver``: ``POST coap://host:port/telemetry?k=<device credential>`` with aiocoap, which is
  imported only when CoAP is asked for (``DriverUnavailable`` says what to install).

Payloads are the shapes of connectors/payload.py: one ``{"ts": ..., "values": {...}}`` per
sample, a JSON list of them for a batch. Every driver raises ``SendError`` when a payload could
not be delivered; the caller counts it and goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import secrets
from collections.abc import Iterable, Iterator
from types import ModuleType
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

import httpx

from server.simulator.signals import Metrics

logger = logging.getLogger(__name__)

JSON_CONTENT_FORMAT = 50  # CoAP Content-Format of application/json
MAX_BATCH_SAMPLES = 1000  # connectors/payload.py MAX_BATCH
DEFAULT_MAX_BYTES = 60_000  # under the default FLATGIGS_DEVICE_PAYLOAD_BYTES (65536)

Sample = tuple[float, Metrics]


class SendError(Exception):
    """A payload that could not be delivered (after the driver's own retries)."""


class DriverUnavailable(Exception):
    """A driver that cannot run here: a missing package or an unusable URL."""


class Credentials(Protocol):
    """Device credentials (``fgd.…`` bearer strings) for HTTP and CoAP."""

    def token(self, device_id: str) -> str:
        """The device's current credential; KeyError if it has none."""
        ...

    async def refresh(self, device_id: str, stale: str) -> str:
        """A new credential for the device, replacing ``stale`` (which the platform refused)."""
        ...


class Driver(Protocol):
    """What the runner needs of a sender."""

    name: str

    async def start(self) -> None:
        """Connect (raise DriverUnavailable or SendError when that is impossible)."""
        ...

    async def send(self, device_id: str, payload: bytes) -> None:
        """Deliver one payload of ``device_id``; SendError if it could not be delivered."""
        ...

    async def close(self) -> None:
        """Disconnect; safe to call more than once."""
        ...


# --- payloads ------------------------------------------------------------------------------------


def _sample_json(ts: float, metrics: Metrics) -> str:
    return json.dumps({"ts": round(ts, 3), "values": metrics}, separators=(",", ":"))


def encode(samples: Iterable[Sample]) -> bytes:
    """One payload: a timestamped object for one sample, a list of them for several."""
    parts = [_sample_json(ts, m) for ts, m in samples]
    if not parts:
        raise ValueError("no samples to encode")
    return (parts[0] if len(parts) == 1 else "[" + ",".join(parts) + "]").encode()


def encode_batches(
    samples: Iterable[Sample], *, max_bytes: int = DEFAULT_MAX_BYTES, max_samples: int = MAX_BATCH_SAMPLES
) -> Iterator[tuple[bytes, int]]:
    """Payloads of at most ``max_bytes`` and ``max_samples`` each, with their sample counts."""
    parts: list[str] = []
    size = 2
    for ts, metrics in samples:
        part = _sample_json(ts, metrics)
        if parts and (size + len(part) + 1 > max_bytes or len(parts) >= max_samples):
            yield _join(parts), len(parts)
            parts, size = [], 2
        parts.append(part)
        size += len(part) + 1
    if parts:
        yield _join(parts), len(parts)


def _join(parts: list[str]) -> bytes:
    return (parts[0] if len(parts) == 1 else "[" + ",".join(parts) + "]").encode()


# --- rate limiting -------------------------------------------------------------------------------


class RateLimiter:
    """At most ``per_second`` messages a second, spaced evenly (shared by all drivers)."""

    def __init__(self, per_second: float) -> None:
        if per_second <= 0:
            raise ValueError("the rate must be positive")
        self.interval = 1.0 / per_second
        self._next = 0.0

    async def acquire(self) -> None:
        """Wait for the next free slot."""
        now = asyncio.get_running_loop().time()
        slot = max(now, self._next)
        self._next = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)


# --- MQTT ----------------------------------------------------------------------------------------


class MqttDriver:
    """Publishes every device's telemetry through one MQTT 5 connection, at QoS 1.

    ``publish`` returns once the broker acknowledged (PUBACK), so a message counted as sent is in
    the broker. After a lost connection the next send reconnects (at most every ``retry_s``).
    """

    name = "mqtt"

    def __init__(
        self,
        url: str,
        tenant: str,
        *,
        topic_prefix: str = "fg",
        client_id: str | None = None,
        qos: int = 1,
        timeout: float = 10.0,
        max_inflight: int = 100,
        limiter: RateLimiter | None = None,
        retry_s: float = 2.0,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme != "mqtt" or not parts.hostname:
            raise DriverUnavailable(f"MQTT URL {url!r} must look like mqtt://host:port")
        self.host = parts.hostname
        self.port = parts.port or 1883
        self.username = parts.username
        self.password = parts.password
        self.tenant = tenant
        self.topic_prefix = topic_prefix.rstrip("/")
        self.client_id = client_id or f"flatgigs-sim-{secrets.token_hex(4)}"
        self.qos = qos
        self.timeout = timeout
        self.max_inflight = max_inflight
        self.limiter = limiter
        self.retry_s = retry_s
        self._client: Any = None
        self._lock = asyncio.Lock()
        self._failed_at: float | None = None
        self._last_error = ""

    @property
    def url(self) -> str:
        """Where the driver publishes."""
        return f"mqtt://{self.host}:{self.port}"

    def topic(self, device_id: str) -> str:
        """The telemetry topic of a device."""
        return f"{self.topic_prefix}/{self.tenant}/{device_id}/telemetry"

    async def start(self) -> None:
        """Connect now, so a wrong broker address is reported before the run starts."""
        await self._connection()

    async def _connection(self) -> Any:
        if self._client is not None:
            return self._client
        async with self._lock:
            if self._client is not None:
                return self._client
            loop = asyncio.get_running_loop()
            if self._failed_at is not None and loop.time() - self._failed_at < self.retry_s:
                raise SendError(f"MQTT broker {self.url} unreachable: {self._last_error}")
            import aiomqtt

            client = aiomqtt.Client(
                self.host,
                self.port,
                identifier=self.client_id,
                username=self.username,
                password=self.password,
                protocol=aiomqtt.ProtocolVersion.V5,
                clean_start=True,
                timeout=self.timeout,
                max_inflight_messages=self.max_inflight,
            )
            client.pending_calls_threshold = 10 * self.max_inflight
            try:
                await client.__aenter__()
            except aiomqtt.MqttError as exc:
                self._failed_at = loop.time()
                self._last_error = str(exc) or type(exc).__name__
                raise SendError(f"cannot connect to the MQTT broker {self.url}: {self._last_error}") from exc
            self._failed_at = None
            self._client = client
            logger.info("simulator connected to %s as %s", self.url, self.client_id)
            return client

    async def send(self, device_id: str, payload: bytes) -> None:
        """Publish one payload on the device's topic and wait for the broker's PUBACK."""
        import aiomqtt

        if self.limiter is not None:
            await self.limiter.acquire()
        client = await self._connection()
        try:
            await client.publish(self.topic(device_id), payload, qos=self.qos, timeout=self.timeout)
        except aiomqtt.MqttError as exc:
            await self._drop(client)
            raise SendError(f"MQTT publish failed: {exc}") from exc

    async def _drop(self, client: Any) -> None:
        import aiomqtt

        if self._client is client:
            self._client = None
            self._failed_at = asyncio.get_running_loop().time()
            self._last_error = "connection lost"
            with contextlib.suppress(aiomqtt.MqttError):
                await client.__aexit__(None, None, None)

    async def close(self) -> None:
        """Disconnect cleanly."""
        if self._client is not None:
            await self._drop(self._client)


# --- HTTP ----------------------------------------------------------------------------------------


def _problem_detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("title") or body)[:200]
    return str(body)[:200]


class HttpDriver:
    """Sends payloads to ``POST /api/v1/ingest`` with each device's own credential."""

    name = "http"

    def __init__(
        self,
        base_url: str,
        credentials: Credentials,
        *,
        timeout: float = 15.0,
        max_connections: int = 32,
        retries: int = 3,
        max_busy_s: float = 60.0,
        limiter: RateLimiter | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        name: str = "http",
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.credentials = credentials
        self.timeout = timeout
        self.max_connections = max_connections
        self.retries = retries
        self.max_busy_s = max_busy_s
        self.limiter = limiter
        self.transport = transport
        self.name = name
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        """Open the connection pool."""
        if self._client is None:
            self._client = httpx.AsyncClient(
                base_url=self.base_url,
                timeout=self.timeout,
                limits=httpx.Limits(
                    max_connections=self.max_connections, max_keepalive_connections=self.max_connections
                ),
                transport=self.transport,
            )

    async def send(self, device_id: str, payload: bytes) -> None:
        """Post one payload; refreshes a refused credential once.

        A busy platform (503/429, its backpressure) is waited for, following ``Retry-After``, for up
        to ``max_busy_s`` in all; network errors and 502/504 are retried ``retries`` times.
        """
        if self._client is None:
            await self.start()
        assert self._client is not None
        if self.limiter is not None:
            await self.limiter.acquire()
        try:
            token = self.credentials.token(device_id)
        except KeyError as exc:
            raise SendError(f"{device_id} has no device credential") from exc
        refreshed = False
        attempt = 0
        busy_for = 0.0
        while True:
            try:
                response = await self._client.post(
                    "/api/v1/ingest",
                    content=payload,
                    headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                )
            except httpx.HTTPError as exc:
                if attempt >= self.retries:
                    raise SendError(f"HTTP {type(exc).__name__}: {exc or 'no detail'}") from exc
                await asyncio.sleep(0.5 * 2**attempt)
                attempt += 1
                continue
            if response.status_code in (200, 202):
                return
            if response.status_code == 401 and not refreshed:
                refreshed = True
                token = await self._refresh(device_id, token)
                continue
            if response.status_code in (429, 503) and busy_for < self.max_busy_s:
                delay = self._retry_after(response, attempt)
                busy_for += delay
                await asyncio.sleep(delay)
                continue
            if response.status_code in (502, 504) and attempt < self.retries:
                await asyncio.sleep(0.5 * 2**attempt)
                attempt += 1
                continue
            raise SendError(f"HTTP {response.status_code}: {_problem_detail(response)}")

    async def _refresh(self, device_id: str, stale: str) -> str:
        try:
            return await self.credentials.refresh(device_id, stale)
        except Exception as exc:
            raise SendError(f"credential of {device_id} refused and not renewable: {exc}") from exc

    @staticmethod
    def _retry_after(response: httpx.Response, attempt: int) -> float:
        try:
            return min(10.0, max(0.1, float(response.headers.get("retry-after", ""))))
        except ValueError:
            return 0.5 * 2.0**attempt

    async def close(self) -> None:
        """Close the connection pool."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None


# --- CoAP ----------------------------------------------------------------------------------------


def load_aiocoap() -> ModuleType:
    """The aiocoap module, or DriverUnavailable saying how to get it."""
    try:
        return importlib.import_module("aiocoap")
    except ImportError as exc:
        raise DriverUnavailable(
            "CoAP needs the 'aiocoap' package, which is not installed: run `pip install aiocoap`, "
            "or leave out --coap (battery sensors then send over HTTP)"
        ) from exc


class CoapDriver:
    """Posts payloads to ``coap://host:port/telemetry?k=<device credential>`` (confirmable)."""

    name = "coap"

    def __init__(
        self,
        url: str,
        credentials: Credentials,
        *,
        path: str = "telemetry",
        timeout: float = 15.0,
        max_busy_s: float = 60.0,
        limiter: RateLimiter | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme != "coap" or not parts.hostname:
            raise DriverUnavailable(f"CoAP URL {url!r} must look like coap://host:port")
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        self.base = f"coap://{host}:{parts.port or 5683}"
        self.path = path.strip("/")
        self.credentials = credentials
        self.timeout = timeout
        self.max_busy_s = max_busy_s
        self.limiter = limiter
        self._aiocoap: ModuleType | None = None
        self._context: Any = None

    def uri(self, token: str) -> str:
        """The request URI for a device credential."""
        return f"{self.base}/{self.path}?k={quote(token, safe='')}"

    async def start(self) -> None:
        """Import aiocoap and open a client context."""
        if self._context is None:
            self._aiocoap = load_aiocoap()
            self._context = await self._aiocoap.Context.create_client_context()

    async def send(self, device_id: str, payload: bytes) -> None:
        """POST one payload; a new credential once on 4.01, waits for a busy platform on 5.03."""
        if self._context is None:
            await self.start()
        coap = self._aiocoap
        assert coap is not None
        if self.limiter is not None:
            await self.limiter.acquire()
        try:
            token = self.credentials.token(device_id)
        except KeyError as exc:
            raise SendError(f"{device_id} has no device credential") from exc
        refreshed = False
        busy_for = 0.0
        while True:
            request = coap.Message(
                code=coap.POST, uri=self.uri(token), payload=payload, content_format=JSON_CONTENT_FORMAT
            )
            try:
                async with asyncio.timeout(self.timeout):
                    response = await self._context.request(request).response
            except TimeoutError as exc:
                raise SendError(f"CoAP request to {self.base} timed out") from exc
            except coap.error.Error as exc:
                raise SendError(f"CoAP {type(exc).__name__}: {exc}") from exc
            if response.code.is_successful():
                return
            if response.code == coap.UNAUTHORIZED and not refreshed:
                refreshed = True
                try:
                    token = await self.credentials.refresh(device_id, token)
                except Exception as exc:
                    raise SendError(f"credential of {device_id} refused and not renewable: {exc}") from exc
                continue
            if response.code == coap.SERVICE_UNAVAILABLE and busy_for < self.max_busy_s:
                # The platform's backpressure: Max-Age says when to resend (docs/devices/coap.md).
                delay = min(10.0, max(0.1, float(response.opt.max_age or 1)))
                busy_for += delay
                await asyncio.sleep(delay)
                continue
            detail = bytes(response.payload[:200]).decode("utf-8", "replace")
            raise SendError(f"CoAP {response.code}: {detail}")

    async def close(self) -> None:
        """Shut the client context down."""
        if self._context is not None:
            context, self._context = self._context, None
            await context.shutdown()
