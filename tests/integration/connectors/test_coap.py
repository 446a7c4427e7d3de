"""The CoAP connector against a real aiocoap client over UDP on loopback, with real device credentials.

Every test starts the connector on a free loopback port, authenticates devices with the real
CredentialAuthenticator on both database backends, and hands readings to a small bounded sink.
Nothing sleeps: each step awaits the CoAP response.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiocoap  # type: ignore[import-untyped]
import pytest

from connectors.base import ConnectorError, DeviceAuthenticator
from connectors.coap import CoapConnector
from devices.credentials import CredentialAuthenticator, DeviceCredentialRepository
from devices.registry import DeviceRepository, DeviceTypeRepository
from model.errors import BackpressureError
from model.readings import Reading, Source
from model.rejections import Rejection, RejectReason
from storage.database import Database
from tests.conftest import TenantFactory
from tests.harness.ports import LOOPBACK, free_port

NOW = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
SOURCE = Source("coap", "coap-test")
RESPONSE_TIMEOUT_S = 10.0


class BoundedSink:
    """A real ReadingSink for tests: a bounded list that refuses readings when full."""

    def __init__(self, capacity: int = 1000, retry_after: float = 2.5) -> None:
        self.capacity = capacity
        self.retry_after = retry_after
        self.readings: list[Reading] = []
        self.rejections: list[Rejection] = []

    async def submit(self, reading: Reading) -> None:
        raise AssertionError("CoAP answers every request at once: it must offer(), never wait in submit()")

    def offer(self, reading: Reading) -> None:
        if len(self.readings) >= self.capacity:
            raise BackpressureError("the test sink is full", retry_after=self.retry_after)
        self.readings.append(reading)

    def reject(self, rejection: Rejection) -> None:
        self.rejections.append(rejection)


class NobodyAuthenticator:
    """Knows no device (for the tests of the server's life cycle, which need no database)."""

    async def authenticate(self, token: str) -> tuple[str, str] | None:
        return None


@dataclass(frozen=True, slots=True)
class CoapDevice:
    tenant_id: str
    device_id: str
    credential_id: str
    token: str

    @property
    def query(self) -> tuple[str, ...]:
        return (f"k={self.token}",)


Start = Callable[..., Awaitable[CoapConnector]]


@pytest.fixture
async def device(database: Database, tenants: TenantFactory) -> CoapDevice:
    tenant = await tenants.create("coap")
    async with database.tenant(tenant.id) as scope:
        await DeviceTypeRepository(scope).create("freezer", name="Freezer")
        await DeviceRepository(scope).create("fz-1", type_id="freezer")
        credential, token = await DeviceCredentialRepository(scope).issue("fz-1")
    return CoapDevice(tenant.id, "fz-1", credential.id, token)


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    """Starts connectors on free loopback ports; stops them all and checks they closed their socket."""
    running: list[tuple[CoapConnector, asyncio.Task[None]]] = []

    async def _start(sink: BoundedSink, authenticator: DeviceAuthenticator, **options: Any) -> CoapConnector:
        options.setdefault("port", free_port())
        options.setdefault("clock", lambda: NOW)
        connector = CoapConnector("coap-test", sink, authenticator, host=LOOPBACK, **options)
        task = asyncio.create_task(connector.run())
        running.append((connector, task))
        ready = asyncio.create_task(connector.ready.wait())
        done, _ = await asyncio.wait({task, ready}, timeout=RESPONSE_TIMEOUT_S, return_when="FIRST_COMPLETED")
        if ready not in done:
            ready.cancel()
            task.result() if task.done() else pytest.fail("the CoAP connector did not start")
        return connector

    yield _start
    for connector, task in running:
        port = connector.bound_port
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert not connector.details()["listening"]
        if port is not None:  # the socket is closed: the port can be bound again without SO_REUSEPORT
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                probe.bind((LOOPBACK, port))


@pytest.fixture
async def client() -> AsyncIterator[Any]:
    context = await aiocoap.Context.create_client_context(transports=["udp6"])
    yield context
    await context.shutdown()


@pytest.fixture
def sink() -> BoundedSink:
    return BoundedSink()


async def send(
    client: Any,
    connector: CoapConnector,
    payload: bytes,
    *,
    query: Sequence[str] = (),
    code: Any = aiocoap.POST,
    path: str = "telemetry",
    content_format: int | None = None,
    block1: tuple[int, bool, int] | None = None,
    reliable: bool = True,
) -> Any:
    """Send one request and await its response (block-wise transfer by aiocoap unless ``block1``)."""
    options: dict[str, Any] = {} if reliable else {"transport_tuning": aiocoap.Unreliable}
    message = aiocoap.Message(
        code=code, uri=f"coap://{LOOPBACK}:{connector.bound_port}/{path}", payload=payload, **options
    )
    message.opt.uri_query = tuple(query)
    if content_format is not None:
        message.opt.content_format = content_format
    if block1 is not None:
        message.opt.block1 = block1
    request = client.request(message, handle_blockwise=block1 is None)
    return await asyncio.wait_for(request.response, RESPONSE_TIMEOUT_S)


def body(response: Any) -> Any:
    assert response.opt.content_format == 50  # application/json
    return json.loads(response.payload)


async def test_a_reading_arrives_with_the_credentials_tenant_and_device(
    start: Start, client: Any, sink: BoundedSink, database: Database, device: CoapDevice
) -> None:
    connector = await start(sink, CredentialAuthenticator(database))
    ts = "2026-11-27T08:00:00.123456Z"
    payload = {"ts": ts, "values": {"temp": -18.5, "door_open": False, "mode": "eco", "count": 3}}

    response = await send(client, connector, json.dumps(payload).encode(), query=device.query)

    assert response.code == aiocoap.CHANGED, response.payload
    assert body(response) == {"accepted": 1}
    assert sink.readings == [
        Reading(
            device.tenant_id,
            device.device_id,
            datetime(2026, 11, 27, 8, 0, 0, 123456, tzinfo=UTC),
            {"temp": -18.5, "door_open": False, "mode": "eco", "count": 3},
            SOURCE,
        )
    ]
    assert sink.rejections == []


async def test_put_flat_payloads_batches_and_non_confirmable_requests_work(
    start: Start, client: Any, sink: BoundedSink, database: Database, device: CoapDevice
) -> None:
    connector = await start(sink, CredentialAuthenticator(database))

    flat = await send(
        client, connector, b'{"temp": -17}', query=device.query, code=aiocoap.PUT, reliable=False
    )
    batch = [{"ts": 1795766400 + i, "values": {"temp": -20.0 + i}} for i in range(2)]
    batched = await send(client, connector, json.dumps(batch).encode(), query=device.query, content_format=50)

    assert flat.code == aiocoap.CHANGED and body(flat) == {"accepted": 1}
    assert batched.code == aiocoap.CHANGED and body(batched) == {"accepted": 2}
    assert [(r.ts, dict(r.metrics)) for r in sink.readings] == [
        (NOW, {"temp": -17}),
        (datetime.fromtimestamp(1795766400, UTC), {"temp": -20.0}),
        (datetime.fromtimestamp(1795766401, UTC), {"temp": -19.0}),
    ]
    assert {(r.tenant_id, r.device_id, r.source) for r in sink.readings} == {
        (device.tenant_id, device.device_id, SOURCE)
    }
    details = connector.details()
    assert details["requests"] == 2 and details["readings_accepted"] == 3 and details["listening"]


async def test_a_large_batch_arrives_block_wise(
    start: Start, client: Any, sink: BoundedSink, database: Database, device: CoapDevice
) -> None:
    connector = await start(sink, CredentialAuthenticator(database))
    batch = [{"ts": 1795766400 + i, "values": {"temp": -20.5, "humidity": 40}} for i in range(60)]
    payload = json.dumps(batch).encode()
    assert len(payload) > 3 * 1024  # four Block1 blocks

    response = await send(client, connector, payload, query=device.query)

    assert response.code == aiocoap.CHANGED, response.payload
    assert body(response) == {"accepted": 60}
    assert [r.ts for r in sink.readings] == [datetime.fromtimestamp(1795766400 + i, UTC) for i in range(60)]
    assert connector.details()["block_uploads"] == 0


@pytest.mark.parametrize(
    "credential",
    ["missing", "empty", "not a token", "wrong secret", "other tenant", "unknown tenant", "twice"],
)
async def test_a_missing_or_bad_credential_is_unauthorized_and_nothing_is_submitted(
    start: Start,
    client: Any,
    sink: BoundedSink,
    database: Database,
    tenants: TenantFactory,
    device: CoapDevice,
    credential: str,
) -> None:
    connector = await start(sink, CredentialAuthenticator(database))
    other = await tenants.create("coap-other")
    prefix, tenant_id, credential_id, secret = device.token.split(".")
    query = {
        "missing": (),
        "empty": ("k=",),
        "not a token": ("k=hello",),
        "wrong secret": (f"k={prefix}.{tenant_id}.{credential_id}.{secret[::-1]}",),
        # The same credential presented under another tenant is not found under that tenant's RLS.
        "other tenant": (f"k={prefix}.{other.id}.{credential_id}.{secret}",),
        "unknown tenant": (f"k={prefix}.no-such-tenant.{credential_id}.{secret}",),
        "twice": device.query * 2,
    }[credential]

    response = await send(client, connector, b'{"temp": -18}', query=query)

    assert response.code == aiocoap.UNAUTHORIZED
    assert sink.readings == [] and sink.rejections == []
    assert connector.details()["unauthorized"] == 1


async def test_a_revoked_credential_is_unauthorized(
    start: Start, client: Any, sink: BoundedSink, database: Database, device: CoapDevice
) -> None:
    connector = await start(sink, CredentialAuthenticator(database))
    before = await send(client, connector, b'{"temp": -18}', query=device.query)
    async with database.tenant(device.tenant_id) as scope:
        await DeviceCredentialRepository(scope).revoke(device.device_id, device.credential_id)

    after = await send(client, connector, b'{"temp": -19}', query=device.query)

    assert before.code == aiocoap.CHANGED
    assert after.code == aiocoap.UNAUTHORIZED
    assert [r.metrics for r in sink.readings] == [{"temp": -18}]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"not json", RejectReason.MALFORMED),
        (b'{"temp": NaN}', RejectReason.NOT_FINITE),
        (b'{"a": {"b": {"c": {"d": {"e": 1}}}}}', RejectReason.TOO_DEEP),
        (b"[" * 3000 + b"]" * 3000, RejectReason.TOO_DEEP),  # block-wise, and deep enough to recurse
        (b'{"ts": -1, "values": {"temp": 1}}', RejectReason.BAD_TIMESTAMP),
    ],
    ids=["malformed", "nan", "too-deep", "too-deep-blockwise", "bad-timestamp"],
)
async def test_a_refused_payload_is_a_bad_request_and_a_rejection_and_the_next_goes_through(
    start: Start,
    client: Any,
    sink: BoundedSink,
    database: Database,
    device: CoapDevice,
    payload: bytes,
    reason: RejectReason,
) -> None:
    connector = await start(sink, CredentialAuthenticator(database))

    refused = await send(client, connector, payload, query=device.query)
    good = await send(client, connector, b'{"temp": -20.5}', query=device.query)

    assert refused.code == aiocoap.BAD_REQUEST
    assert refused.payload.decode().startswith(f"{reason.value}: ")
    assert len(sink.rejections) == 1
    rejection = sink.rejections[0]
    assert (rejection.tenant_id, rejection.device_id, rejection.reason) == (
        device.tenant_id,
        device.device_id,
        reason,
    )
    assert rejection.source == SOURCE and rejection.at == NOW
    assert rejection.payload == Rejection.excerpt(payload)
    assert good.code == aiocoap.CHANGED
    assert [r.metrics for r in sink.readings] == [{"temp": -20.5}]


async def test_an_oversized_payload_is_refused_before_it_is_assembled(
    start: Start, client: Any, sink: BoundedSink, database: Database, device: CoapDevice
) -> None:
    connector = await start(sink, CredentialAuthenticator(database), max_payload_bytes=2048)
    batch = [{"ts": 1795766400 + i, "values": {"temp": -20.5}} for i in range(100)]
    payload = json.dumps(batch).encode()  # aiocoap announces its size (Size1) in the first block

    refused = await send(client, connector, payload, query=device.query)
    good = await send(client, connector, b'{"temp": -20.5}', query=device.query)

    assert refused.code == aiocoap.REQUEST_ENTITY_TOO_LARGE
    assert refused.opt.size1 == 2048
    assert [(r.reason, r.device_id) for r in sink.rejections] == [(RejectReason.TOO_LARGE, device.device_id)]
    assert str(len(payload)) in sink.rejections[0].detail
    assert good.code == aiocoap.CHANGED and len(sink.readings) == 1
    assert connector.details()["too_large"] == 1 and connector.details()["block_uploads"] == 0


async def test_blocks_without_a_size_are_refused_once_the_limit_is_passed(
    start: Start, client: Any, sink: BoundedSink, database: Database, device: CoapDevice
) -> None:
    connector = await start(sink, CredentialAuthenticator(database), max_payload_bytes=2048)
    block = b" " * 1024

    codes = [
        (await send(client, connector, block, query=device.query, block1=(n, True, 6))).code for n in range(4)
    ]

    # 2.31 Continue twice, 4.13 on the block that passes 2048 bytes, then the upload is gone.
    assert codes == [
        aiocoap.CONTINUE,
        aiocoap.CONTINUE,
        aiocoap.REQUEST_ENTITY_TOO_LARGE,
        aiocoap.REQUEST_ENTITY_INCOMPLETE,
    ]
    assert [r.reason for r in sink.rejections] == [RejectReason.TOO_LARGE]
    assert connector.details()["block_uploads"] == 0


async def test_block_wise_uploads_are_bounded_in_number_and_time(
    start: Start, client: Any, sink: BoundedSink, database: Database, device: CoapDevice
) -> None:
    authenticator = CredentialAuthenticator(database)
    bounded = await start(sink, authenticator, max_block_uploads=1)
    fleeting = await start(sink, authenticator, block_timeout_s=1e-6)
    other_client = await aiocoap.Context.create_client_context(transports=["udp6"])
    first, last = b" " * 1024, b'{"temp": 1}'
    try:
        started = await send(client, bounded, first, query=device.query, block1=(0, True, 6))
        crowded = await send(other_client, bounded, first, query=device.query, block1=(0, True, 6))
        finished = await send(client, bounded, last, query=device.query, block1=(1, False, 6))
    finally:
        await other_client.shutdown()
    await send(client, fleeting, first, query=device.query, block1=(0, True, 6))
    expired = await send(client, fleeting, last, query=device.query, block1=(1, False, 6))

    assert started.code == aiocoap.CONTINUE and started.opt.block1 == (0, True, 6)
    assert crowded.code == aiocoap.SERVICE_UNAVAILABLE and 1 <= crowded.opt.max_age <= 93
    assert finished.code == aiocoap.CHANGED and finished.opt.block1 == (1, False, 6)
    assert body(finished) == {"accepted": 1}
    assert expired.code == aiocoap.REQUEST_ENTITY_INCOMPLETE
    assert [r.metrics for r in sink.readings] == [{"temp": 1}]


async def test_a_truncated_datagram_is_refused_not_decoded(
    start: Start, client: Any, sink: BoundedSink, database: Database, device: CoapDevice
) -> None:
    """aiocoap reads datagrams into 4096 bytes and cuts longer ones without telling: refuse them."""
    connector = await start(sink, CredentialAuthenticator(database))
    batch = [{"ts": 1795766400 + i, "values": {"temp": -20.5, "humidity": 40}} for i in range(100)]
    payload = json.dumps(batch).encode()
    assert 4096 < len(payload) < connector.max_payload_bytes

    # One 5 KB datagram instead of Block1 (the way a naive device would send it).
    response = await send(client, connector, payload, query=device.query)
    single = aiocoap.Message(
        code=aiocoap.POST, uri=f"coap://{LOOPBACK}:{connector.bound_port}/telemetry", payload=payload
    )
    single.opt.uri_query = device.query
    truncated = await asyncio.wait_for(
        client.request(single, handle_blockwise=False).response, RESPONSE_TIMEOUT_S
    )

    assert response.code == aiocoap.CHANGED  # the same payload block-wise is fine
    assert truncated.code == aiocoap.REQUEST_ENTITY_TOO_LARGE
    assert truncated.opt.size1 == connector.max_payload_bytes
    assert [r.reason for r in sink.rejections] == [RejectReason.TOO_LARGE]
    assert "datagram" in sink.rejections[0].detail
    assert len(sink.readings) == 100


async def test_a_full_sink_answers_service_unavailable_with_max_age(
    start: Start, client: Any, database: Database, device: CoapDevice
) -> None:
    sink = BoundedSink(capacity=1, retry_after=2.5)
    connector = await start(sink, CredentialAuthenticator(database))

    first = await send(client, connector, b'{"temp": -18}', query=device.query)
    busy = await send(client, connector, b'{"temp": -19}', query=device.query)
    sink.readings.clear()  # the pipeline caught up
    retried = await send(client, connector, b'{"temp": -19}', query=device.query)

    assert first.code == aiocoap.CHANGED
    assert busy.code == aiocoap.SERVICE_UNAVAILABLE
    assert busy.opt.max_age == 3  # the retry hint, rounded up to whole seconds
    assert sink.rejections == []  # busy is not a refusal: the device sends it again
    assert retried.code == aiocoap.CHANGED and [r.metrics for r in sink.readings] == [{"temp": -19}]
    assert connector.details()["busy"] == 1


async def test_other_paths_methods_and_content_formats_are_refused(
    start: Start, client: Any, sink: BoundedSink, database: Database, device: CoapDevice
) -> None:
    connector = await start(sink, CredentialAuthenticator(database))

    wrong_path = await send(client, connector, b'{"temp": 1}', query=device.query, path="status")
    wrong_method = await send(client, connector, b"", query=device.query, code=aiocoap.GET)
    cbor = await send(client, connector, b"\xa1dtemp\x01", query=device.query, content_format=60)
    # A last block longer than its block size (256 bytes): the Block1 option lies.
    bad_block = await send(client, connector, b" " * 300, query=device.query, block1=(0, False, 4))

    assert wrong_path.code == aiocoap.NOT_FOUND
    assert wrong_method.code == aiocoap.METHOD_NOT_ALLOWED
    assert cbor.code == aiocoap.UNSUPPORTED_CONTENT_FORMAT
    assert bad_block.code == aiocoap.BAD_REQUEST
    assert [r.reason for r in sink.rejections] == [RejectReason.MALFORMED]
    assert sink.readings == []


async def test_port_zero_is_reported_and_a_taken_port_is_a_connector_error(
    start: Start, client: Any, sink: BoundedSink
) -> None:
    connector = await start(sink, NobodyAuthenticator(), port=0)
    port = connector.bound_port
    assert port and connector.details()["port"] == port and connector.details()["listening"]
    unauthorized = await send(client, connector, b'{"temp": 1}')
    assert unauthorized.code == aiocoap.UNAUTHORIZED

    # aiocoap binds with SO_REUSEPORT, so a second server would silently share the port's traffic.
    second = CoapConnector("coap-second", sink, NobodyAuthenticator(), host=LOOPBACK, port=port)
    with pytest.raises(ConnectorError, match="already in use"):
        await asyncio.wait_for(second.run(), RESPONSE_TIMEOUT_S)
    assert not second.details()["listening"]


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="port"):
        CoapConnector("c", BoundedSink(), NobodyAuthenticator(), port=70000)
    with pytest.raises(ValueError, match="max_payload_bytes"):
        CoapConnector("c", BoundedSink(), NobodyAuthenticator(), max_payload_bytes=0)
