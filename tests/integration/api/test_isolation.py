"""Tenant isolation matrix: every /api/v1 route against every way of being the wrong caller.

``ROUTES`` maps each route to what it needs: a tenant scope, ``OPERATOR`` or ``DEVICE`` (a device
credential), the kind of data it reads or changes, and how to build a valid request.
``test_matrix_names_every_v1_route`` fails as soon as the app serves a route (WebSockets included)
that the matrix does not know. Every route then runs these cases on both backends; test ids read
``<METHOD> <path template>-<case>``.

Tenant routes, calling as tenant A unless said otherwise:

* ``own``: a token holding exactly the required scope succeeds.
* ``foreign``: tenant B's ids in the path answer 404; B's object (re-read by B) and B's data are
  unchanged. ``mixed`` (nested routes): A's parent with B's child id, 404 as well.
* ``no-token``, ``malformed``, ``expired``, ``revoked``: 401.
* ``forged``: A's valid key and secret presented as a token of tenant B: 401.
* ``no-scope``: a token with every scope but the required one: 403.
* ``operator``: a platform operator token: 403.
* ``list``: list routes never show one of B's objects, filtered or not.
* ``tenant-id-body``: a POST/PATCH body naming B in ``tenant_id``: 422 (body-less routes ignore
  the body, see ``Route.tenant_id_body``); B and the platform are unchanged.
* live streams (SSE, WebSocket): ``access-token`` (the token in the query string also works) and
  ``events`` (A's stream never carries B's readings, even when A names B's device in the filter).

Operator routes (/tenants): ``operator`` succeeds; ``tenant-token`` (an all-scopes tenant token)
gets 403; ``no-token`` and ``malformed`` get 401; ``tenant-id-body`` gets 422.

Device routes (/ingest): ``device`` (A's device credential) succeeds for A's device;
``no-token``, ``malformed``, ``forged``, ``revoked``, ``tenant-token`` and ``operator`` get 401;
``tenant-id-body`` ends up as a dead letter of A and nothing of B's changes.

A refused write changes nothing (the affected data is compared before and after). Every HTTP error
is ``application/problem+json`` with a ``urn:flatgigs:problem:`` type; a refused WebSocket is closed
with 1008 before the handshake completes.

The module runs its own app with its lifespan (pipeline, telemetry store, live hub): the telemetry,
ingestion and live routes need them.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

import fastapi.routing
import httpx
import pytest
import pytest_asyncio
from _pytest.mark import ParameterSet
from fastapi import FastAPI

from engine.alarms import AlarmService
from model.readings import Source
from model.rejections import Rejection, RejectReason
from model.scopes import ALL_SCOPES
from notifiers.deliveries import DeliveryLog, DeliveryRecord, DeliveryStatus
from server.app import create_app
from server.settings import load_settings
from storage.database import Database
from storage.deadletters import DeadLetterRepository
from storage.types import utcnow
from tests.conftest import TenantFactory, TenantHandle, bearer
from tests.harness.ports import LOOPBACK, free_port

API = "/api/v1"
OPERATOR = "operator"
DEVICE = "device credential"
PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE_PREFIX = "urn:flatgigs:problem:"
WS_POLICY_VIOLATION = 1008
WS_ACCEPTED = 101  # Outcome.status of a WebSocket whose handshake was accepted
PASSWORD = "correct horse battery staple"
WEBSOCKET = "WEBSOCKET"
WRITE_METHODS = frozenset({"POST", "PATCH", "PUT", "DELETE"})
BODY_METHODS = frozenset({"POST", "PATCH", "PUT"})
TIMEOUT_S = 10.0
_PATH_PARAM = re.compile(r"\{([^}]+)\}")
# Fields that change without any API call: token use, and device connectivity fed by ingestion.
VOLATILE = frozenset({"last_used_at", "status", "status_changed_at", "last_seen_at", "evaluated_at"})
# Which seeded object fills a path parameter (Route.overrides can say otherwise).
PARAM_KEYS = {
    "tenant_id": "tenant",
    "user_id": "user",
    "token_id": "token",
    "type_id": "device_type",
    "device_id": "device",
    "credential_id": "credential",
    "alarm_id": "alarm",
    "rule_id": "rule",
    "version": "rule_version",
    "channel_id": "channel",
    "delivery_id": "delivery",
}


# --- in-process ASGI connections that stay open (event streams, WebSockets) ---------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a route answered: an HTTP response (for an endless stream: its head and first chunk),
    or a WebSocket handshake (``WS_ACCEPTED``, or status 0 and the close code)."""

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    close_code: int | None = None

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")

    def json(self) -> Any:
        return json.loads(self.body)


def asgi_scope(kind: str, path: str, query: Mapping[str, Any], headers: Mapping[str, str]) -> dict[str, Any]:
    """An ASGI ``http`` (GET) or ``websocket`` connection scope."""
    scope: dict[str, Any] = {
        "type": kind,
        "asgi": {"version": "3.0"},
        "scheme": "http" if kind == "http" else "ws",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": urlencode(query, doseq=True).encode(),
        "headers": [
            (b"host", b"testserver"),
            *((k.lower().encode(), v.encode()) for k, v in headers.items()),
        ],
        "server": ("testserver", 80),
        "client": ("127.0.0.1", 50000),
    }
    if kind == "http":
        scope.update(method="GET", http_version="1.1")
    else:
        scope["subprotocols"] = []
    return scope


class AsgiConnection:
    """One connection to the app whose messages are read one by one, then hung up on."""

    def __init__(
        self, app: FastAPI, scope: dict[str, Any], opening: dict[str, Any], hang_up: dict[str, Any]
    ) -> None:
        self._app = app
        self._scope = scope
        self._inbox = [opening]
        self._hang_up = hang_up
        self._hung_up = asyncio.Event()
        self._outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def _receive(self) -> dict[str, Any]:
        if self._inbox:
            return self._inbox.pop(0)
        await self._hung_up.wait()
        return self._hang_up

    async def _send(self, message: MutableMapping[str, Any]) -> None:
        await self._outbox.put(dict(message))

    async def next(self) -> dict[str, Any]:
        """The next message the app sent."""
        return await asyncio.wait_for(self._outbox.get(), TIMEOUT_S)

    async def __aenter__(self) -> AsgiConnection:
        self._task = asyncio.create_task(self._app(self._scope, self._receive, self._send))
        return self

    async def __aexit__(self, *_: object) -> None:
        self._hung_up.set()
        assert self._task is not None
        await asyncio.wait_for(self._task, TIMEOUT_S)


def sse_connection(
    app: FastAPI, path: str, query: Mapping[str, Any], headers: Mapping[str, str]
) -> AsgiConnection:
    return AsgiConnection(
        app,
        asgi_scope("http", path, query, headers),
        {"type": "http.request", "body": b"", "more_body": False},
        {"type": "http.disconnect"},
    )


def ws_connection(
    app: FastAPI, path: str, query: Mapping[str, Any], headers: Mapping[str, str]
) -> AsgiConnection:
    return AsgiConnection(
        app,
        asgi_scope("websocket", path, query, headers),
        {"type": "websocket.connect"},
        {"type": "websocket.disconnect", "code": 1000},
    )


async def sse_head(conn: AsgiConnection) -> Outcome:
    """Status and headers, then the whole body of an error or the first chunk of a stream."""
    start = await conn.next()
    headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    body = b""
    while True:
        message = await conn.next()
        body += message.get("body", b"")
        if (start["status"] == 200 and body) or not message.get("more_body", False):
            return Outcome(start["status"], headers, body)


async def ws_handshake(conn: AsgiConnection) -> Outcome:
    message = await conn.next()
    if message["type"] == "websocket.accept":
        return Outcome(WS_ACCEPTED)
    assert message["type"] == "websocket.close", message
    return Outcome(0, body=str(message.get("reason", "")).encode(), close_code=message.get("code"))


def sse_event(chunk: bytes) -> dict[str, Any] | None:
    """``{"type", "data"}`` of one SSE event; None for a comment (connected, heartbeat)."""
    kind = data = None
    for line in chunk.decode().splitlines():
        if line.startswith("event: "):
            kind = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data = json.loads(line.removeprefix("data: "))
    return None if kind is None else {"type": kind, "data": data}


# --- the world: an "own" tenant A and a "foreign" tenant B, seeded alike -----------------------


@dataclass(frozen=True, slots=True)
class Seeded:
    """A tenant with one object of every kind; device and type ids and emails contain the tenant id."""

    handle: TenantHandle
    ids: dict[str, str]

    @property
    def id(self) -> str:
        return self.handle.id

    @property
    def headers(self) -> dict[str, str]:
        """Headers of the tenant's all-scopes admin token."""
        return self.handle.headers

    @property
    def opaque_ids(self) -> set[str]:
        """Ids of seeded objects that do not contain the tenant id."""
        return {token_id(self.handle.token), self.ids["token"], self.ids["credential"], self.ids["user"]}

    def owns(self, item: Any) -> bool:
        """Whether a listed item (or event) is one of this tenant's objects, or mentions the tenant."""
        text = json.dumps(item)
        return self.id in text or any(opaque in text for opaque in self.opaque_ids)


@dataclass(frozen=True, slots=True)
class World:
    """Tenants A (own) and B (foreign), an operator, the app and the factory for more tokens."""

    own: Seeded
    foreign: Seeded
    operator_headers: dict[str, str]
    factory: TenantFactory
    app: FastAPI
    client: httpx.AsyncClient
    dead_port: int  # a closed local port: bindings point there, so connectors poll nothing real


def token_id(bearer_token: str) -> str:
    """The key id of a bearer ``fg.<tenant>.<key>.<secret>`` (or ``fgd.`` for devices)."""
    return bearer_token.split(".")[2]


def suffix() -> str:
    """A short random suffix for objects created during a test."""
    return secrets.token_hex(4)


async def created(
    client: httpx.AsyncClient, path: str, headers: dict[str, str], body: Any = None
) -> dict[str, Any]:
    """POST ``body`` to ``path`` and insist on 201."""
    response = await client.post(path, json=body, headers=headers)
    assert response.status_code == 201, response.text
    payload: dict[str, Any] = response.json()
    return payload


async def device_with_credential(client: httpx.AsyncClient, tenant: Seeded) -> tuple[str, str]:
    """A new device of ``tenant`` and the bearer string of a credential for it."""
    device = f"dev-of-{tenant.id}-{suffix()}"
    body = {"id": device, "type_id": tenant.ids["device_type"]}
    await created(client, f"{API}/devices", tenant.headers, body)
    issued = await created(client, f"{API}/devices/{device}/credentials", tenant.headers)
    return device, str(issued["token"])


def binding_body(dead_port: int) -> dict[str, Any]:
    """A Modbus binding to a closed local port, polled once a day."""
    register = {"metric": "temp", "address": 0, "kind": "holding", "data_type": "int16"}
    config = {"host": LOOPBACK, "port": dead_port, "poll_interval_s": 86400, "registers": [register]}
    return {"kind": "modbus", "config": config}


async def bind(client: httpx.AsyncClient, headers: dict[str, str], device: str, dead_port: int) -> None:
    """Bind ``device`` to the unreachable Modbus endpoint."""
    path = f"{API}/devices/{device}/binding"
    response = await client.put(path, json=binding_body(dead_port), headers=headers)
    assert response.status_code == 200, response.text


async def seed(
    client: httpx.AsyncClient, factory: TenantFactory, database: Database, prefix: str, dead_port: int
) -> Seeded:
    """A fresh tenant with device types (one unused), a device with a credential and a binding,
    a user, a token and a dead letter."""
    handle = await factory.create(prefix)
    tid, headers = handle.id, handle.headers
    types = f"{API}/device-types"
    type_id = (
        await created(
            client, types, headers, {"id": f"type-of-{tid}", "name": tid, "metrics": [{"name": "temp"}]}
        )
    )["id"]
    spare = (await created(client, types, headers, {"id": f"spare-of-{tid}", "name": tid}))["id"]
    device_body = {
        "id": f"dev-of-{tid}",
        "type_id": type_id,
        "name": f"Device of {tid}",
        "labels": {"owner": tid},
    }
    device = (await created(client, f"{API}/devices", headers, device_body))["id"]
    credential = (await created(client, f"{API}/devices/{device}/credentials", headers))["id"]
    await bind(client, headers, device, dead_port)
    rule = (await created(client, f"{API}/rules", headers, {"document": rule_document(tid, type_id)}))["id"]
    # B's rule gets more versions than A's, so "A's rule, B's version number" names no version.
    versions = 3 if prefix == "iso-foreign" else 1
    for base in range(1, versions):
        saved = await client.put(
            f"{API}/rules/{rule}",
            json={"document": rule_document(tid, type_id), "base_version": base},
            headers=headers,
        )
        assert saved.status_code == 200, saved.text
    user_body = {"email": f"user@{tid}.example.com", "password": PASSWORD}
    user = (await created(client, f"{API}/users", headers, user_body))["id"]
    token = token_id(await factory.token(tid, ["devices:read"]))
    rejection = Rejection(
        tid, device, RejectReason.MALFORMED, f"seeded for {tid}", Source("http", "api"), b"{", utcnow()
    )
    async with database.tenant(tid) as scope:
        await DeadLetterRepository(scope).add([rejection])
        (letter,) = await DeadLetterRepository(scope).list(limit=1)
    channels = f"{API}/notifications/channels"
    channel = await created(client, channels, headers, channel_body(f"channel-of-{tid}", tid))
    spare_channel = await created(client, channels, headers, channel_body(f"spare-of-{tid}", tid))
    delivery = await dead_delivery(database, tid, channel)
    spare_delivery = await dead_delivery(database, tid, spare_channel)
    # An alarm on the tenant's device (the device id carries the tenant id, so a leak shows).
    alarm, _ = await AlarmService(database).raise_alarm(
        tid, "rul_seeded", device, "too-warm", "major", f"seeded for {tid}", utcnow()
    )
    ids = {
        "tenant": tid,
        "device_type": type_id,
        "spare_device_type": spare,
        "device": device,
        "bound_device": device,
        "credential": credential,
        "user": user,
        "token": token,
        "dead_letter": str(letter.id),
        "alarm": alarm.id,
        "rule": rule,
        "rule_version": str(versions),
        "channel": channel["id"],
        "delivery": delivery,
        "spare_delivery": spare_delivery,
    }
    return Seeded(handle, ids)


def channel_body(name: str, tenant_id: str) -> dict[str, Any]:
    """A channel to a public webhook name (never resolvable here: a test send fails at once)."""
    return {"name": name, "urls": [f"json://hooks.example.com/{tenant_id}"], "description": tenant_id}


async def dead_delivery(database: Database, tenant_id: str, channel: dict[str, Any]) -> str:
    """A notification dead letter of ``channel`` (its name carries the tenant id, so a leak shows)."""
    now = utcnow()
    record = DeliveryRecord(
        id=f"ntf_{secrets.token_hex(8)}",
        tenant_id=tenant_id,
        channel_id=channel["id"],
        channel_name=channel["name"],
        rule_id="rul_seeded",
        device_id=None,
        alarm_type="too-warm",
        severity="major",
        kind="fired",
        dedup_key=None,
        title=f"seeded for {tenant_id}",
        body="",
        status=DeliveryStatus.DEAD,
        attempts=5,
        last_error="seeded",
        resent=0,
        created_at=now,
        updated_at=now,
    )
    async with database.tenant(tenant_id) as scope:
        await DeliveryLog(scope, database.dialect).upsert([record])
    return record.id


@pytest_asyncio.fixture(scope="module")
async def world(database: Database, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    """A running app (lifespan included) and two seeded tenants, per backend, shared by the module:
    tests only add objects, and destroy only objects they created."""
    settings = load_settings(data_dir=tmp_path_factory.mktemp("isolation"), max_body_bytes=64 * 1024)
    app = create_app(settings, database)
    factory = TenantFactory(database)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as http,
    ):
        dead_port = free_port(LOOPBACK)
        own = await seed(http, factory, database, "iso-own", dead_port)
        foreign = await seed(http, factory, database, "iso-foreign", dead_port)
        operator = bearer(await factory.operator_token())
        yield World(own, foreign, operator, factory, app, http, dead_port)


# --- the route matrix --------------------------------------------------------------------------

BodyFactory = Callable[[World], dict[str, Any]]
Filters = Callable[[World], list[dict[str, str]]]


def rule_document(tenant_id: str, type_id: str) -> dict[str, Any]:
    """A valid rule of the tenant (its name carries the tenant id, so listings can be checked)."""
    return {
        "name": f"Rule of {tenant_id}",
        "devices": {"type": type_id},
        "when": [{"type": "telemetry.received", "options": {"metrics": ["temp"]}}],
        "if": [{"type": "telemetry.threshold", "options": {"metric": "temp", "value": 0}}],
        "then": [{"type": "alarm.raise", "options": {"alarm_type": "warm"}}],
    }


def new_rule(w: World) -> dict[str, Any]:
    return {"document": rule_document(w.own.id, w.own.ids["device_type"])}


def save_rule(w: World) -> dict[str, Any]:
    # Always on a fresh rule (Route.fresh), whose latest version is 1.
    return {**new_rule(w), "base_version": 1}


def latest_version(_: World) -> dict[str, Any]:
    return {"version": None}


def first_version(_: World) -> dict[str, Any]:
    return {"version": 1}


def backtest_window(w: World) -> dict[str, Any]:
    # The own tenant's seeded device (named explicitly: the matrix adds devices as it goes).
    return {"range": "last_hour", "device_ids": [w.own.ids["device"]]}


def backtest_draft(w: World) -> dict[str, Any]:
    return {**backtest_window(w), **new_rule(w)}


def new_tenant(_: World) -> dict[str, Any]:
    return {"id": f"iso-new-{suffix()}", "name": "New tenant"}


def rename(_: World) -> dict[str, Any]:
    return {"name": "Renamed"}


def new_user(w: World) -> dict[str, Any]:
    return {"email": f"new-{suffix()}@{w.own.id}.example.com", "password": PASSWORD, "role": "viewer"}


def rename_user(_: World) -> dict[str, Any]:
    return {"display_name": "Renamed"}


def new_token(_: World) -> dict[str, Any]:
    # The "own" caller holds only tokens:write, and a token cannot grant more than its creator has.
    return {"name": "issued", "scopes": ["tokens:write"], "expires_in_days": 1}


def new_device_type(_: World) -> dict[str, Any]:
    return {"id": f"type-{suffix()}", "name": "New type"}


def new_device(w: World) -> dict[str, Any]:
    return {"id": f"dev-{suffix()}", "type_id": w.own.ids["device_type"]}


def binding(w: World) -> dict[str, Any]:
    return binding_body(w.dead_port)


def reading(_: World) -> dict[str, Any]:
    return {"temp": 1.5}


def device_filters(w: World) -> list[dict[str, str]]:
    """Filters aimed at B's device, and one that matches devices of both tenants."""
    b = w.foreign
    return [
        {"type": b.ids["device_type"]},
        {"label": f"owner={b.id}"},
        {"q": b.id},
        {"q": "dev-of-"},
        {"limit": "1"},
    ]


def rule_filters(w: World) -> list[dict[str, str]]:
    return [{"q": w.foreign.id}, {"q": "Rule of"}, {"status": "draft"}]


def dead_letter_filters(_: World) -> list[dict[str, str]]:
    return [{"reason": RejectReason.MALFORMED.value}, {"limit": "1"}]


def alarm_filters(w: World) -> list[dict[str, str]]:
    """Filters aimed at B's device, and ones that match the seeded alarms of both tenants."""
    return [
        {"device": w.foreign.ids["device"]},
        {"rule": "rul_seeded", "alarm_type": "too-warm"},
        {"state": "active_unack"},
        {"severity": "major"},
        {"limit": "1"},
    ]


def new_channel(_: World) -> dict[str, Any]:
    return {"name": f"chan-{suffix()}", "urls": ["json://hooks.example.com/new"]}


def describe_channel(_: World) -> dict[str, Any]:
    return {"description": "Renamed"}


def channel_test_body(_: World) -> dict[str, Any]:
    return {"title": "isolation test"}


def template_preview(_: World) -> dict[str, Any]:
    return {"title": "{{ device.id }} too warm", "body": "{{ values.temp }}"}


def policy_body(_: World) -> dict[str, Any]:
    return {"throttle_s": 120}


def delivery_filters(w: World) -> list[dict[str, str]]:
    return [{"channel": w.foreign.ids["channel"]}, {"status": "dead"}, {"limit": "1"}]


# A fixed range: the default one ends "now", which would make two reads differ.
SERIES_QUERY = {"metric": "temp", "start": "2026-01-01T00:00:00Z", "end": "2026-01-02T00:00:00Z"}


@dataclass(frozen=True, slots=True)
class Route:
    """What a route needs and how to call it."""

    scope: str  # the scope a tenant token needs, OPERATOR or DEVICE
    success: int
    kind: str  # what it reads or changes: a KIND_STATE key, or "tenant"
    body: BodyFactory | None = None
    query: Mapping[str, str] = field(default_factory=dict)  # query string every call carries
    overrides: Mapping[str, str] = field(default_factory=dict)  # path parameter -> Seeded.ids key
    fresh: bool = False  # the successful call destroys its object: give it a new one
    lists: bool = False  # a listing: run the "list" case
    filters: Filters | None = None  # extra query strings for the "list" case
    tenant_id_body: int = 422  # answer to a body naming another tenant
    transport: str = "http"  # "http", "sse" (an endless event stream) or "ws"


ROUTES: dict[tuple[str, str], Route] = {
    ("GET", "/api/v1/tenants"): Route(OPERATOR, 200, "tenant", lists=True),
    ("POST", "/api/v1/tenants"): Route(OPERATOR, 201, "tenant", body=new_tenant),
    ("GET", "/api/v1/tenants/{tenant_id}"): Route(OPERATOR, 200, "tenant"),
    ("PATCH", "/api/v1/tenants/{tenant_id}"): Route(OPERATOR, 200, "tenant", body=rename, fresh=True),
    ("GET", "/api/v1/users"): Route("users:read", 200, "user", lists=True),
    ("POST", "/api/v1/users"): Route("users:write", 201, "user", body=new_user),
    ("GET", "/api/v1/users/{user_id}"): Route("users:read", 200, "user"),
    ("PATCH", "/api/v1/users/{user_id}"): Route("users:write", 200, "user", body=rename_user),
    ("DELETE", "/api/v1/users/{user_id}"): Route("users:write", 204, "user", fresh=True),
    ("GET", "/api/v1/tokens"): Route("tokens:read", 200, "token", lists=True),
    ("POST", "/api/v1/tokens"): Route("tokens:write", 201, "token", body=new_token),
    ("GET", "/api/v1/tokens/{token_id}"): Route("tokens:read", 200, "token"),
    ("DELETE", "/api/v1/tokens/{token_id}"): Route("tokens:write", 200, "token", fresh=True),
    ("GET", "/api/v1/device-types"): Route("devices:read", 200, "device_type", lists=True),
    ("POST", "/api/v1/device-types"): Route("devices:write", 201, "device_type", body=new_device_type),
    ("GET", "/api/v1/device-types/{type_id}"): Route("devices:read", 200, "device_type"),
    ("PATCH", "/api/v1/device-types/{type_id}"): Route("devices:write", 200, "device_type", body=rename),
    # An unused type: deleting the one with a device would answer 409 whatever the isolation.
    ("DELETE", "/api/v1/device-types/{type_id}"): Route(
        "devices:write", 204, "device_type", overrides={"type_id": "spare_device_type"}, fresh=True
    ),
    ("GET", "/api/v1/devices"): Route("devices:read", 200, "device", lists=True, filters=device_filters),
    ("POST", "/api/v1/devices"): Route("devices:write", 201, "device", body=new_device),
    ("GET", "/api/v1/devices/{device_id}"): Route("devices:read", 200, "device"),
    ("PATCH", "/api/v1/devices/{device_id}"): Route("devices:write", 200, "device", body=rename),
    ("DELETE", "/api/v1/devices/{device_id}"): Route("devices:write", 204, "device", fresh=True),
    ("GET", "/api/v1/devices/{device_id}/credentials"): Route("devices:read", 200, "credential", lists=True),
    # Takes no body: one naming another tenant is ignored, the credential is the path's device's.
    ("POST", "/api/v1/devices/{device_id}/credentials"): Route(
        "devices:write", 201, "credential", tenant_id_body=201
    ),
    ("DELETE", "/api/v1/devices/{device_id}/credentials/{credential_id}"): Route(
        "devices:write", 200, "credential", fresh=True
    ),
    ("GET", "/api/v1/devices/{device_id}/binding"): Route("devices:read", 200, "binding"),
    ("PUT", "/api/v1/devices/{device_id}/binding"): Route("devices:write", 200, "binding", body=binding),
    ("DELETE", "/api/v1/devices/{device_id}/binding"): Route(
        "devices:write", 204, "binding", overrides={"device_id": "bound_device"}, fresh=True
    ),
    ("GET", "/api/v1/devices/{device_id}/telemetry"): Route(
        "telemetry:read", 200, "telemetry", query=SERIES_QUERY
    ),
    ("GET", "/api/v1/devices/{device_id}/telemetry/latest"): Route("telemetry:read", 200, "telemetry"),
    ("GET", "/api/v1/dead-letters"): Route(
        "telemetry:read", 200, "dead_letter", lists=True, filters=dead_letter_filters
    ),
    # The payload is telemetry: "tenant_id" in it is a metric missing from the catalogue, which the
    # pipeline refuses into a dead letter of the credential's tenant (the tenant-id-body case).
    ("POST", "/api/v1/ingest"): Route(DEVICE, 202, "telemetry", body=reading, tenant_id_body=202),
    ("GET", "/api/v1/live/sse"): Route("telemetry:read", 200, "telemetry", transport="sse"),
    (WEBSOCKET, "/api/v1/live/ws"): Route("telemetry:read", WS_ACCEPTED, "telemetry", transport="ws"),
    # Alarms. Acknowledge and clear take no body (one naming another tenant is ignored) and are
    # idempotent, so every case can reuse the seeded alarm.
    ("GET", "/api/v1/alarms"): Route("alarms:read", 200, "alarm", lists=True, filters=alarm_filters),
    ("GET", "/api/v1/alarms/{alarm_id}"): Route("alarms:read", 200, "alarm"),
    ("POST", "/api/v1/alarms/{alarm_id}/acknowledge"): Route(
        "alarms:write", 200, "alarm", tenant_id_body=200
    ),
    ("POST", "/api/v1/alarms/{alarm_id}/clear"): Route("alarms:write", 200, "alarm", tenant_id_body=200),
    ("GET", "/api/v1/rule-nodes"): Route("rules:read", 200, "rule"),
    ("GET", "/api/v1/rules/schema"): Route("rules:read", 200, "rule"),
    ("POST", "/api/v1/rules/validate"): Route("rules:read", 200, "rule", body=new_rule),
    ("GET", "/api/v1/rules"): Route("rules:read", 200, "rule", lists=True, filters=rule_filters),
    ("POST", "/api/v1/rules"): Route("rules:write", 201, "rule", body=new_rule),
    ("GET", "/api/v1/rules/{rule_id}"): Route("rules:read", 200, "rule"),
    ("PUT", "/api/v1/rules/{rule_id}"): Route("rules:write", 200, "rule", body=save_rule, fresh=True),
    ("DELETE", "/api/v1/rules/{rule_id}"): Route("rules:write", 204, "rule", fresh=True),
    ("GET", "/api/v1/rules/{rule_id}/versions"): Route("rules:read", 200, "rule"),
    ("GET", "/api/v1/rules/{rule_id}/versions/{version}"): Route("rules:read", 200, "rule"),
    ("GET", "/api/v1/rules/{rule_id}/diff"): Route("rules:read", 200, "rule"),
    ("GET", "/api/v1/rules/{rule_id}/traces"): Route("rules:read", 200, "rule"),
    ("GET", "/api/v1/rules/{rule_id}/explain/{device_id}"): Route("rules:read", 200, "rule"),
    ("POST", "/api/v1/rules/{rule_id}/publish"): Route("rules:write", 200, "rule", body=latest_version),
    ("POST", "/api/v1/rules/{rule_id}/restore"): Route("rules:write", 200, "rule", body=first_version),
    ("POST", "/api/v1/rules/backtest"): Route("rules:read", 200, "rule", body=backtest_draft),
    ("POST", "/api/v1/rules/{rule_id}/backtest"): Route("rules:read", 200, "rule", body=backtest_window),
    # Take no body: one naming another tenant is ignored.
    ("POST", "/api/v1/rules/{rule_id}/enable"): Route("rules:write", 200, "rule", tenant_id_body=200),
    ("POST", "/api/v1/rules/{rule_id}/disable"): Route("rules:write", 200, "rule", tenant_id_body=200),
    # Notifications. The test send goes to an unresolvable public name: 200 with ok false.
    ("GET", "/api/v1/notifications/channels"): Route("channels:read", 200, "channel", lists=True),
    ("POST", "/api/v1/notifications/channels"): Route("channels:write", 201, "channel", body=new_channel),
    ("GET", "/api/v1/notifications/channels/{channel_id}"): Route("channels:read", 200, "channel"),
    ("PATCH", "/api/v1/notifications/channels/{channel_id}"): Route(
        "channels:write", 200, "channel", body=describe_channel
    ),
    ("DELETE", "/api/v1/notifications/channels/{channel_id}"): Route(
        "channels:write", 204, "channel", fresh=True
    ),
    ("POST", "/api/v1/notifications/channels/{channel_id}/test"): Route(
        "channels:write", 200, "channel", body=channel_test_body
    ),
    ("GET", "/api/v1/notifications/channel-kinds"): Route("channels:read", 200, "channel"),
    ("POST", "/api/v1/notifications/templates/preview"): Route(
        "channels:read", 200, "channel", body=template_preview
    ),
    ("GET", "/api/v1/notifications/deliveries"): Route(
        "channels:read", 200, "delivery", lists=True, filters=delivery_filters
    ),
    ("GET", "/api/v1/notifications/deliveries/{delivery_id}"): Route("channels:read", 200, "delivery"),
    ("GET", "/api/v1/notifications/dead-letters"): Route("channels:read", 200, "delivery", lists=True),
    # Re-sends a fresh dead letter of a spare channel (the "delivery" state only shows the seeded
    # channel's log, which background re-sends never touch). Takes no body.
    ("POST", "/api/v1/notifications/dead-letters/{delivery_id}/resend"): Route(
        "channels:write",
        202,
        "delivery",
        overrides={"delivery_id": "spare_delivery"},
        fresh=True,
        tenant_id_body=202,
    ),
    ("GET", "/api/v1/notifications/policy"): Route("channels:read", 200, "policy"),
    ("PUT", "/api/v1/notifications/policy"): Route("channels:write", 200, "policy", body=policy_body),
}

# How to read a tenant's data of each kind (the "tenant" kind is the operator's list of tenants).
KIND_STATE: dict[str, Callable[[Seeded], tuple[str, dict[str, str]]]] = {
    "user": lambda s: (f"{API}/users", {}),
    "token": lambda s: (f"{API}/tokens", {}),
    "device_type": lambda s: (f"{API}/device-types", {}),
    "device": lambda s: (f"{API}/devices", {"limit": "500"}),
    "credential": lambda s: (f"{API}/devices/{s.ids['device']}/credentials", {}),
    "dead_letter": lambda s: (f"{API}/dead-letters", {"limit": "500"}),
    "telemetry": lambda s: (f"{API}/devices/{s.ids['device']}/telemetry/latest", {}),
    "binding": lambda s: (f"{API}/devices/{s.ids['device']}/binding", {}),
    "alarm": lambda s: (f"{API}/alarms", {"limit": "500"}),
    "rule": lambda s: (f"{API}/rules", {}),
    "channel": lambda s: (f"{API}/notifications/channels", {}),
    "delivery": lambda s: (f"{API}/notifications/deliveries", {"channel": s.ids["channel"]}),
    "policy": lambda s: (f"{API}/notifications/policy", {}),
}


def served_v1_routes(app: FastAPI) -> set[tuple[str, str]]:
    """(method, path template) of every route the app serves under /api/v1; WEBSOCKET for sockets."""
    # Recent FastAPI keeps included routers nested in app.routes; iter_route_contexts flattens them.
    flatten: Callable[[Any], Iterable[Any]] | None = getattr(fastapi.routing, "iter_route_contexts", None)
    routes: Iterable[Any] = flatten(app.routes) if flatten is not None else app.routes
    served: set[tuple[str, str]] = set()
    for route in routes:
        path = getattr(route, "path", None)
        if not (isinstance(path, str) and path.startswith(API + "/")):
            continue
        methods = getattr(route, "methods", None)
        if methods:
            served.update((method, path) for method in methods)
        else:  # a WebSocket, or a mount: either way it needs an entry
            name = type(getattr(route, "original_route", route)).__name__
            served.add((WEBSOCKET if "WebSocket" in name else f"<{name}>", path))
    return served


# --- helpers shared by the cases ----------------------------------------------------------------


def assert_problem(outcome: Outcome, status: int) -> dict[str, Any]:
    """``outcome`` is an RFC 9457 problem with ``status`` and a flatgigs problem type."""
    assert outcome.status == status, f"expected {status}, got {outcome.status}: {outcome.text}"
    content_type = outcome.headers.get("content-type", "")
    assert content_type.startswith(PROBLEM_MEDIA_TYPE), f"not problem+json: {content_type!r}"
    problem: dict[str, Any] = outcome.json()
    assert str(problem.get("type", "")).startswith(PROBLEM_TYPE_PREFIX), problem
    assert problem.get("status") == status, problem
    return problem


def stable(value: Any) -> Any:
    """``value`` without the fields that change on their own."""
    if isinstance(value, dict):
        return {k: stable(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [stable(v) for v in value]
    return value


def param_keys(template: str, route: Route) -> dict[str, str]:
    """Path parameter -> the Seeded.ids key that fills it."""
    return {name: route.overrides.get(name, PARAM_KEYS[name]) for name in _PATH_PARAM.findall(template)}


def path_for(template: str, values: Mapping[str, str]) -> str:
    """The path with its parameters filled in."""
    return _PATH_PARAM.sub(lambda m: values[m.group(1)], template)


async def eventually(probe: Callable[[], Awaitable[Any]], what: str) -> Any:
    """Poll ``probe`` until it returns something truthy (the pipeline works in the background)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT_S
    while not (result := await probe()):
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)
    return result


@dataclass(frozen=True, slots=True)
class Call:
    """One route under test, with the world it runs in."""

    world: World
    method: str
    template: str
    route: Route

    @property
    def client(self) -> httpx.AsyncClient:
        return self.world.client

    @property
    def writes(self) -> bool:
        return self.method in WRITE_METHODS

    async def params(self, tenant: Seeded, *, fresh: bool = False) -> dict[str, str]:
        """``tenant``'s ids for the path; with ``fresh``, a new object where the call destroys it."""
        keys = param_keys(self.template, self.route)
        values = {name: tenant.ids[key] for name, key in keys.items()}
        if fresh and self.route.fresh:
            last = list(keys)[-1]
            values[last] = await FRESH[keys[last]](self.client, self.world)
        return values

    def body(self) -> dict[str, Any] | None:
        """A fresh valid body, or None for routes without one."""
        return self.route.body(self.world) if self.route.body is not None else None

    async def send(
        self,
        headers: Mapping[str, str],
        values: Mapping[str, str],
        body: dict[str, Any] | None = None,
        query: Mapping[str, Any] | None = None,
    ) -> Outcome:
        """The request, over the route's transport."""
        path = path_for(self.template, values)
        query = {**self.route.query, **(query or {})}
        if self.route.transport == "sse":
            async with sse_connection(self.world.app, path, query, headers) as conn:
                return await sse_head(conn)
        if self.route.transport == "ws":
            async with ws_connection(self.world.app, path, query, headers) as conn:
                return await ws_handshake(conn)
        response = await self.client.request(
            self.method, path, headers=dict(headers), params=query, json=body
        )
        return Outcome(
            response.status_code, {k.lower(): v for k, v in response.headers.items()}, response.content
        )

    def assert_refused(self, outcome: Outcome, status: int) -> None:
        """An HTTP problem with ``status``, or a WebSocket closed for a policy violation."""
        if self.route.transport == "ws":
            assert outcome.close_code == WS_POLICY_VIOLATION, outcome
        else:
            assert_problem(outcome, status)

    async def token(self, scopes: Iterable[str], **kwargs: Any) -> dict[str, str]:
        """Headers of a new tenant-A token with ``scopes``."""
        return bearer(await self.world.factory.token(self.world.own.id, scopes, **kwargs))

    async def kind_state(self, tenant: Seeded, kind: str | None = None) -> Any:
        """``tenant``'s data of the route's kind, as the tenant (or, for tenants, the operator) reads it."""
        kind = kind or self.route.kind
        if kind == "tenant":
            response = await self.client.get(f"{API}/tenants", headers=self.world.operator_headers)
        else:
            path, params = KIND_STATE[kind](tenant)
            response = await self.client.get(path, headers=tenant.headers, params=params)
        assert response.status_code == 200, response.text
        payload = stable(response.json())
        if isinstance(payload, dict) and "items" in payload:
            assert payload.get("next_cursor") is None and payload.get("next_before") is None, "paged"
            payload = payload["items"]
        return {item["id"]: item for item in payload} if isinstance(payload, list) else payload

    async def state(self) -> Any:
        """What a refused call must leave alone: tenant A's data of the route's kind."""
        return await self.kind_state(self.world.own)

    async def reread(self, tenant: Seeded, values: Mapping[str, str]) -> Any:
        """The object in the path, read by its own tenant through the route's GET (if there is one)."""
        getter = ROUTES.get(("GET", self.template))
        if getter is None:
            return None
        headers = self.world.operator_headers if getter.scope == OPERATOR else tenant.headers
        response = await self.client.get(
            path_for(self.template, values), headers=headers, params=getter.query
        )
        assert response.status_code == 200, response.text
        return stable(response.json())


async def _fresh_tenant(_: httpx.AsyncClient, w: World) -> str:
    return (await w.factory.create("iso-fresh")).id


async def _fresh_type(client: httpx.AsyncClient, w: World) -> str:
    return str((await created(client, f"{API}/device-types", w.own.headers, new_device_type(w)))["id"])


async def _fresh_device(client: httpx.AsyncClient, w: World) -> str:
    return str((await created(client, f"{API}/devices", w.own.headers, new_device(w)))["id"])


async def _fresh_user(client: httpx.AsyncClient, w: World) -> str:
    return str((await created(client, f"{API}/users", w.own.headers, new_user(w)))["id"])


async def _fresh_token(_: httpx.AsyncClient, w: World) -> str:
    return token_id(await w.factory.token(w.own.id, ["devices:read"]))


async def _fresh_credential(client: httpx.AsyncClient, w: World) -> str:
    path = f"{API}/devices/{w.own.ids['device']}/credentials"
    return str((await created(client, path, w.own.headers))["id"])


async def _fresh_rule(client: httpx.AsyncClient, w: World) -> str:
    return str((await created(client, f"{API}/rules", w.own.headers, new_rule(w)))["id"])


async def _fresh_bound_device(client: httpx.AsyncClient, w: World) -> str:
    device = await _fresh_device(client, w)
    await bind(client, w.own.headers, device, w.dead_port)
    return device


async def _fresh_channel(client: httpx.AsyncClient, w: World) -> str:
    return str((await created(client, f"{API}/notifications/channels", w.own.headers, new_channel(w)))["id"])


async def _fresh_spare_delivery(client: httpx.AsyncClient, w: World) -> str:
    path = f"{API}/notifications/channels"
    spare = await created(client, path, w.own.headers, channel_body(f"spare-{suffix()}", w.own.id))
    return await dead_delivery(w.factory.database, w.own.id, spare)


FRESH: dict[str, Callable[[httpx.AsyncClient, World], Awaitable[str]]] = {
    "tenant": _fresh_tenant,
    "spare_device_type": _fresh_type,
    "device": _fresh_device,
    "user": _fresh_user,
    "token": _fresh_token,
    "credential": _fresh_credential,
    "bound_device": _fresh_bound_device,
    "rule": _fresh_rule,
    "channel": _fresh_channel,
    "spare_delivery": _fresh_spare_delivery,
}


async def refused(c: Call, headers: Mapping[str, str], status: int) -> None:
    """A call with ``headers`` is refused with ``status`` and, for writes, changes nothing."""
    values = await c.params(c.world.own)
    before = await c.state() if c.writes else None
    c.assert_refused(await c.send(headers, values, c.body()), status)
    if c.writes:
        assert await c.state() == before, "a refused call changed data"


async def ingest(c: Call, device_token: str, payload: dict[str, Any]) -> dict[str, Any]:
    """POST telemetry as a device and insist on 202."""
    response = await c.client.post(f"{API}/ingest", json=payload, headers=bearer(device_token))
    assert response.status_code == 202, response.text
    accepted: dict[str, Any] = response.json()
    return accepted


# --- tenant-route cases -------------------------------------------------------------------------


async def own(c: Call) -> None:
    """Tenant A with exactly the required scope succeeds."""
    values = await c.params(c.world.own, fresh=True)
    outcome = await c.send(await c.token([c.route.scope]), values, c.body())
    assert outcome.status == c.route.success, outcome.text
    if c.route.transport == "sse":
        assert outcome.headers["content-type"].startswith("text/event-stream")
    elif c.route.transport == "http" and outcome.status != 204:
        assert outcome.headers["content-type"].startswith("application/json")
        if c.method == "GET" and c.template.endswith("}"):
            body = outcome.json()
            # A resource answers with its id; a rule version with its version number; a rule
            # explained for a device with that device.
            last = list(values)[-1]
            answered = body.get("id", body.get("version"))
            if last == "device_id" and "device_id" in body:
                answered = body["device_id"]
            assert str(answered) == values[last]
        elif values.get("device_id") and "device_id" in outcome.json():
            assert outcome.json()["device_id"] == values["device_id"]


async def foreign(c: Call) -> None:
    """B's ids in A's request: 404, and B's object and B's data of that kind unchanged."""
    b = c.world.foreign
    values = await c.params(b)
    object_before, state_before = await c.reread(b, values), await c.kind_state(b)
    outcome = await c.send(await c.token([c.route.scope]), values, c.body())
    assert_problem(outcome, 404)
    assert await c.reread(b, values) == object_before, "the foreign object changed"
    assert await c.kind_state(b) == state_before, "the foreign tenant's data changed"


async def mixed(c: Call) -> None:
    """A's parent object with B's child id: 404, B unchanged."""
    b = c.world.foreign
    values = await c.params(c.world.own)
    last = list(values)[-1]
    values[last] = (await c.params(b))[last]
    state_before = await c.kind_state(b)
    assert_problem(await c.send(await c.token([c.route.scope]), values, c.body()), 404)
    assert await c.kind_state(b) == state_before, "the foreign tenant's data changed"


async def no_token(c: Call) -> None:
    await refused(c, {}, 401)


async def malformed(c: Call) -> None:
    prefix = "fgd" if c.route.scope == DEVICE else "fg"
    await refused(c, bearer(f"{prefix}.not-a-token"), 401)


async def forged(c: Call) -> None:
    """A's valid key id and secret, presented as a token of tenant B."""
    raw = (await c.token([c.route.scope]))["Authorization"].removeprefix("Bearer ")
    _, _, key, secret = raw.split(".")
    await refused(c, bearer(f"fg.{c.world.foreign.id}.{key}.{secret}"), 401)


async def expired(c: Call) -> None:
    await refused(c, await c.token([c.route.scope], expires_at=utcnow() - timedelta(minutes=1)), 401)


async def revoked(c: Call) -> None:
    headers = await c.token([c.route.scope])
    key = token_id(headers["Authorization"].removeprefix("Bearer "))
    response = await c.client.delete(f"{API}/tokens/{key}", headers=c.world.own.headers)
    assert response.status_code == 200, response.text
    assert response.json()["revoked_at"] is not None
    await refused(c, headers, 401)


async def no_scope(c: Call) -> None:
    await refused(c, await c.token(ALL_SCOPES - {c.route.scope}), 403)


async def operator_refused(c: Call) -> None:
    await refused(c, c.world.operator_headers, 403)


async def list_case(c: Call) -> None:
    """A's listing holds A's object and none of B's, with or without filters."""
    a, b = c.world.own, c.world.foreign
    headers = await c.token([c.route.scope]) if c.route.scope != OPERATOR else c.world.operator_headers
    values = await c.params(a)
    queries: list[dict[str, str]] = [{}, *(c.route.filters(c.world) if c.route.filters else [])]
    for query in queries:
        outcome = await c.send(headers, values, query=query)
        assert outcome.status == 200, outcome.text
        payload = outcome.json()
        items: list[dict[str, Any]] = payload["items"] if isinstance(payload, dict) else payload
        listed = {str(item["id"]) for item in items}
        if c.route.scope == OPERATOR:  # the operator sees every tenant
            assert {a.id, b.id} <= listed
            continue
        leaked = [item for item in items if b.owns(item)]
        assert leaked == [], f"{query or 'unfiltered'}: tenant B's items leaked to A: {leaked}"
        if not query:
            assert a.ids[c.route.kind] in listed


async def tenant_id_body(c: Call) -> None:
    """``tenant_id`` naming B in the body is refused on that field (body-less routes ignore it);
    nothing changes in B or the platform."""
    w = c.world
    headers = w.operator_headers if c.route.scope == OPERATOR else w.own.headers
    body = {**(c.body() or {}), "tenant_id": w.foreign.id}
    values = await c.params(w.own)

    async def others() -> list[Any]:
        return [await c.kind_state(w.foreign, "tenant"), await c.kind_state(w.foreign)]

    before, own_before = await others(), await c.kind_state(w.own)
    outcome = await c.send(headers, values, body)
    if c.route.tenant_id_body == 422:
        problem = assert_problem(outcome, 422)
        assert ["tenant_id"] in [error.get("loc") for error in problem.get("errors", [])], problem
        assert await c.kind_state(w.own) == own_before, "a refused body changed data"
    else:
        assert outcome.status == c.route.tenant_id_body, outcome.text
        assert w.foreign.id not in outcome.text
    assert await others() == before, "a body naming another tenant changed that tenant's data"


async def access_token(c: Call) -> None:
    """Streams take the token from the query string too (browsers cannot set headers there)."""
    raw = (await c.token([c.route.scope]))["Authorization"].removeprefix("Bearer ")
    outcome = await c.send({}, {}, query={"access_token": raw})
    assert outcome.status == c.route.success, outcome.text


async def live_events(c: Call) -> None:
    """A's stream carries A's readings only, even when A asks for B's device by name."""
    a, b = c.world.own, c.world.foreign
    a_device, a_token = await device_with_credential(c.client, a)
    b_device, b_token = await device_with_credential(c.client, b)
    query = {"device": [a_device, b_device]}
    headers = await c.token([c.route.scope])
    seen: list[dict[str, Any]] = []

    async def until_a_reports(conn: AsgiConnection, value: float) -> None:
        while not any(e["type"] == "reading" and e["data"]["metrics"].get("temp") == value for e in seen):
            message = await conn.next()
            event: dict[str, Any] | None
            if c.route.transport == "sse":
                event = sse_event(message.get("body", b""))
            else:
                event = json.loads(message["text"])
            if event is not None:
                seen.append(event)

    connect = sse_connection if c.route.transport == "sse" else ws_connection
    async with connect(c.world.app, path_for(c.template, {}), query, headers) as conn:
        if c.route.transport == "sse":
            assert (await sse_head(conn)).status == 200
        else:
            assert (await ws_handshake(conn)).status == WS_ACCEPTED
        for token, value in ((b_token, 1.0), (a_token, 2.0), (b_token, 3.0), (a_token, 4.0)):
            await ingest(c, token, {"temp": value})
        await until_a_reports(conn, 4.0)
        # B's readings were queued before A's last one; one more of A's, in a later batch, proves
        # that whatever the pipeline did with them has been published by now.
        await ingest(c, a_token, {"temp": 5.0})
        await until_a_reports(conn, 5.0)
    leaked = [e for e in seen if b.owns(e) or b_device in json.dumps(e)]
    assert leaked == [], f"B's events on A's stream: {leaked}"
    readings = [e["data"] for e in seen if e["type"] == "reading"]
    assert {r["tenant_id"] for r in readings} == {a.id}
    assert [r["metrics"]["temp"] for r in readings] == [2.0, 4.0, 5.0]


# --- operator-route cases -----------------------------------------------------------------------


async def operator_allowed(c: Call) -> None:
    """The operator token manages tenants."""
    values = await c.params(c.world.own, fresh=True)
    outcome = await c.send(c.world.operator_headers, values, c.body())
    assert outcome.status == c.route.success, outcome.text


async def tenant_token(c: Call) -> None:
    await refused(c, c.world.own.headers, 403)


# --- device-route cases (ingestion with a device credential) ------------------------------------


async def device_allowed(c: Call) -> None:
    """A device credential of A ingests for its own device."""
    device, token = await device_with_credential(c.client, c.world.own)
    outcome = await c.send(bearer(token), {}, c.body())
    assert outcome.status == c.route.success, outcome.text
    assert outcome.json() == {"device_id": device, "accepted": 1}


async def device_forged(c: Call) -> None:
    """A's credential id and secret, presented as a credential of tenant B."""
    _, token = await device_with_credential(c.client, c.world.own)
    _, _, credential, secret = token.split(".")
    await refused(c, bearer(f"fgd.{c.world.foreign.id}.{credential}.{secret}"), 401)


async def device_revoked(c: Call) -> None:
    a = c.world.own
    device, token = await device_with_credential(c.client, a)
    path = f"{API}/devices/{device}/credentials/{token_id(token)}"
    response = await c.client.delete(path, headers=a.headers)
    assert response.status_code == 200, response.text
    await refused(c, bearer(token), 401)


async def device_tenant_token(c: Call) -> None:
    """A tenant API token is not a device credential, whatever its scopes."""
    await refused(c, c.world.own.headers, 401)


async def device_operator(c: Call) -> None:
    await refused(c, c.world.operator_headers, 401)


async def device_tenant_id_body(c: Call) -> None:
    """A payload naming B is telemetry of the credential's device: it ends as a dead letter of A."""
    a, b = c.world.own, c.world.foreign
    device, token = await device_with_credential(c.client, a)

    async def b_data() -> list[Any]:
        return [await c.kind_state(b, "dead_letter"), await c.kind_state(b, "telemetry")]

    before = await b_data()
    outcome = await c.send(bearer(token), {}, {**reading(c.world), "tenant_id": b.id})
    assert outcome.status == c.route.tenant_id_body, outcome.text
    assert outcome.json()["device_id"] == device

    async def letter() -> list[Any]:
        letters = await c.kind_state(a, "dead_letter")
        return [d for d in letters.values() if d["device_id"] == device]

    (dead,) = await eventually(letter, "the dead letter")
    assert "tenant_id" in dead["detail"]
    assert await b_data() == before, "a payload naming another tenant changed that tenant's data"


# --- applicability and the parametrization ------------------------------------------------------

Case = tuple[Callable[[Call], Awaitable[None]], Callable[[str, str, Route], bool]]


def _always(_: str, __: str, ___: Route) -> bool:
    return True


def _has_param(_: str, template: str, __: Route) -> bool:
    return bool(_PATH_PARAM.search(template))


def _nested(_: str, template: str, __: Route) -> bool:
    return len(_PATH_PARAM.findall(template)) > 1


def _lists(_: str, __: str, route: Route) -> bool:
    return route.lists


def _has_body(method: str, _: str, __: Route) -> bool:
    return method in BODY_METHODS


def _streams(_: str, __: str, route: Route) -> bool:
    return route.transport != "http"


TENANT_CASES: dict[str, Case] = {
    "own": (own, _always),
    "foreign": (foreign, _has_param),
    "mixed": (mixed, _nested),
    "no-token": (no_token, _always),
    "malformed": (malformed, _always),
    "forged": (forged, _always),
    "expired": (expired, _always),
    "revoked": (revoked, _always),
    "no-scope": (no_scope, _always),
    "operator": (operator_refused, _always),
    "list": (list_case, _lists),
    "tenant-id-body": (tenant_id_body, _has_body),
    "access-token": (access_token, _streams),
    "events": (live_events, _streams),
}

OPERATOR_CASES: dict[str, Case] = {
    "operator": (operator_allowed, _always),
    "tenant-token": (tenant_token, _always),
    "no-token": (no_token, _always),
    "malformed": (malformed, _always),
    "list": (list_case, _lists),
    "tenant-id-body": (tenant_id_body, _has_body),
}

DEVICE_CASES: dict[str, Case] = {
    "device": (device_allowed, _always),
    "no-token": (no_token, _always),
    "malformed": (malformed, _always),
    "forged": (device_forged, _always),
    "revoked": (device_revoked, _always),
    "tenant-token": (device_tenant_token, _always),
    "operator": (device_operator, _always),
    "tenant-id-body": (device_tenant_id_body, _has_body),
}


def cases_of(route: Route) -> dict[str, Case]:
    if route.scope == OPERATOR:
        return OPERATOR_CASES
    return DEVICE_CASES if route.scope == DEVICE else TENANT_CASES


def matrix() -> Iterator[ParameterSet]:
    for (method, template), route in ROUTES.items():
        for name, (_, applies) in cases_of(route).items():
            if applies(method, template, route):
                yield pytest.param(method, template, name, id=f"{method} {template}-{name}")


# --- the tests ----------------------------------------------------------------------------------


def test_matrix_is_well_formed() -> None:
    """Known scopes, kinds and parameters; bodies where the method takes one; fresh objects known."""
    for (method, template), route in ROUTES.items():
        where = f"{method} {template}"
        assert route.scope in (OPERATOR, DEVICE) or route.scope in ALL_SCOPES, where
        assert route.kind == "tenant" or route.kind in KIND_STATE, where
        assert route.transport in ("http", "sse", "ws"), where
        assert (route.transport == "ws") == (method == WEBSOCKET), where
        names = _PATH_PARAM.findall(template)
        assert set(names) <= PARAM_KEYS.keys(), f"{where}: add the parameter to PARAM_KEYS"
        assert set(route.overrides) <= set(names), where
        if route.body is None and method in BODY_METHODS:
            assert route.tenant_id_body != 422, f"{where}: a body-less route cannot refuse a body field"
        if route.body is not None:
            assert method in BODY_METHODS, where
        if route.fresh:
            assert names and param_keys(template, route)[names[-1]] in FRESH, where


async def test_matrix_names_every_v1_route(app: FastAPI) -> None:
    served = served_v1_routes(app)
    missing = sorted(served - ROUTES.keys())
    stale = sorted(ROUTES.keys() - served)
    assert not missing, f"routes without an isolation matrix entry: {missing}"
    assert not stale, f"matrix entries for routes the app does not serve: {stale}"


@pytest.mark.parametrize(("method", "template", "case"), list(matrix()))
async def test_isolation(method: str, template: str, case: str, world: World) -> None:
    route = ROUTES[(method, template)]
    run, _ = cases_of(route)[case]
    await run(Call(world, method, template, route))
