"""Tenant isolation matrix: every /api/v1 route against every way of being the wrong caller.

``ROUTES`` maps each route to the scope it needs (or ``OPERATOR``), the seeded object that fills its
path parameter and how to build a valid body; ``test_matrix_names_every_v1_route`` fails as soon as
the app serves a route the matrix does not know. Every route then runs these cases on both backends
(test ids read ``<METHOD> <path template>-<case>``).

Tenant routes, calling as tenant A unless said otherwise:

* ``own``: a token holding exactly the required scope succeeds (2xx).
* ``foreign``: tenant B's object id in the path answers 404; B's object and B as a whole are unchanged.
* ``no-token``, ``malformed``, ``expired``, ``revoked``: 401.
* ``forged``: A's valid key and secret presented as tenant B's token: 401.
* ``no-scope``: a token with every scope but the required one: 403.
* ``operator``: a platform operator token: 403.
* ``list``: list routes never show one of B's objects, filtered or not.
* ``tenant-id-body``: a POST/PATCH body naming B in ``tenant_id``: 422, nothing changes in A or B.

Operator routes (/tenants): ``operator`` succeeds; ``tenant-token`` (an all-scopes tenant token)
gets 403; ``no-token`` and ``malformed`` get 401; ``tenant-id-body`` gets 422.

A refused write changes nothing: the state of the tenant (or of the platform) is compared before and
after. Every error is ``application/problem+json`` with a ``urn:flatgigs:problem:`` type.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import fastapi.routing
import httpx
import pytest
import pytest_asyncio
from _pytest.mark import ParameterSet
from fastapi import FastAPI

from model.scopes import ALL_SCOPES
from storage.database import Database
from storage.types import utcnow
from tests.conftest import TenantFactory, TenantHandle, bearer

API = "/api/v1"
OPERATOR = "operator"
PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE_PREFIX = "urn:flatgigs:problem:"
PASSWORD = "correct horse battery staple"
WRITE_METHODS = frozenset({"POST", "PATCH", "PUT", "DELETE"})
BODY_METHODS = frozenset({"POST", "PATCH", "PUT"})
_PATH_PARAM = re.compile(r"\{[^}]+\}")


# --- the world: an "own" tenant A and a "foreign" tenant B, seeded alike -----------------------


@dataclass(frozen=True, slots=True)
class Seeded:
    """A tenant with one object of every kind; device and type ids and emails contain the tenant id."""

    handle: TenantHandle
    ids: dict[str, str]

    @property
    def id(self) -> str:
        """The tenant id."""
        return self.handle.id

    @property
    def headers(self) -> dict[str, str]:
        """Headers of the tenant's all-scopes admin token."""
        return self.handle.headers

    @property
    def token_ids(self) -> set[str]:
        """Ids of the tokens seeded for this tenant (they do not contain the tenant id)."""
        return {token_id(self.handle.token), self.ids["token"]}

    def owns(self, item: dict[str, Any]) -> bool:
        """Whether a listed item is one of this tenant's seeded objects (or mentions the tenant)."""
        return item.get("id") in self.token_ids or self.id in json.dumps(item)


@dataclass(frozen=True, slots=True)
class World:
    """Tenants A (own) and B (foreign), an operator and the factory for more tokens."""

    own: Seeded
    foreign: Seeded
    operator_headers: dict[str, str]
    factory: TenantFactory


def token_id(bearer_token: str) -> str:
    """The key id of a tenant bearer token ``fg.<tenant>.<key>.<secret>``."""
    return bearer_token.split(".")[2]


def suffix() -> str:
    """A short random suffix for objects created during a test."""
    return secrets.token_hex(4)


async def created(client: httpx.AsyncClient, path: str, headers: dict[str, str], body: dict[str, Any]) -> str:
    """POST ``body`` to ``path``, insist on 201 and return the new object's id."""
    response = await client.post(path, json=body, headers=headers)
    assert response.status_code == 201, response.text
    new_id: str = response.json()["id"]
    return new_id


async def seed(client: httpx.AsyncClient, factory: TenantFactory, prefix: str) -> Seeded:
    """A fresh tenant with a device type, an unused device type, a device, a user and a token."""
    handle = await factory.create(prefix)
    tid, headers = handle.id, handle.headers
    type_id = await created(client, f"{API}/device-types", headers, {"id": f"type-of-{tid}", "name": tid})
    spare = await created(client, f"{API}/device-types", headers, {"id": f"spare-of-{tid}", "name": tid})
    device = await created(
        client,
        f"{API}/devices",
        headers,
        {"id": f"dev-of-{tid}", "type_id": type_id, "name": f"Device of {tid}", "labels": {"owner": tid}},
    )
    user = await created(
        client, f"{API}/users", headers, {"email": f"user@{tid}.example.com", "password": PASSWORD}
    )
    token = token_id(await factory.token(tid, ["devices:read"]))
    ids = {
        "tenant": tid,
        "device_type": type_id,
        "spare_device_type": spare,
        "device": device,
        "user": user,
        "token": token,
    }
    return Seeded(handle, ids)


@asynccontextmanager
async def in_process_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client talking to ``app`` in-process."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


@pytest_asyncio.fixture(scope="module")
async def world(app: FastAPI, database: Database) -> World:
    """Two seeded tenants per backend, shared by the module: tests only add objects, never break them."""
    factory = TenantFactory(database)
    async with in_process_client(app) as http:
        own = await seed(http, factory, "iso-own")
        foreign = await seed(http, factory, "iso-foreign")
    return World(own, foreign, bearer(await factory.operator_token()), factory)


# --- the route matrix --------------------------------------------------------------------------

BodyFactory = Callable[[World], dict[str, Any]]
Filters = Callable[[World], list[dict[str, str]]]


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


@dataclass(frozen=True, slots=True)
class Route:
    """What a route needs: scope (or OPERATOR), the seeded object it acts on, a valid body."""

    scope: str
    success: int
    target: str  # key of Seeded.ids: fills the path parameter, or the kind a collection route lists
    body: BodyFactory | None = None
    fresh_target: bool = False  # the successful call destroys or suspends its target: use a new one
    filters: Filters | None = None  # extra query strings for the "list" case


ROUTES: dict[tuple[str, str], Route] = {
    ("GET", "/api/v1/tenants"): Route(OPERATOR, 200, "tenant"),
    ("POST", "/api/v1/tenants"): Route(OPERATOR, 201, "tenant", body=new_tenant),
    ("GET", "/api/v1/tenants/{tenant_id}"): Route(OPERATOR, 200, "tenant"),
    ("PATCH", "/api/v1/tenants/{tenant_id}"): Route(OPERATOR, 200, "tenant", body=rename, fresh_target=True),
    ("GET", "/api/v1/users"): Route("users:read", 200, "user"),
    ("POST", "/api/v1/users"): Route("users:write", 201, "user", body=new_user),
    ("GET", "/api/v1/users/{user_id}"): Route("users:read", 200, "user"),
    ("PATCH", "/api/v1/users/{user_id}"): Route("users:write", 200, "user", body=rename_user),
    ("DELETE", "/api/v1/users/{user_id}"): Route("users:write", 204, "user", fresh_target=True),
    ("GET", "/api/v1/tokens"): Route("tokens:read", 200, "token"),
    ("POST", "/api/v1/tokens"): Route("tokens:write", 201, "token", body=new_token),
    ("GET", "/api/v1/tokens/{token_id}"): Route("tokens:read", 200, "token"),
    ("DELETE", "/api/v1/tokens/{token_id}"): Route("tokens:write", 200, "token", fresh_target=True),
    ("GET", "/api/v1/device-types"): Route("devices:read", 200, "device_type"),
    ("POST", "/api/v1/device-types"): Route("devices:write", 201, "device_type", body=new_device_type),
    ("GET", "/api/v1/device-types/{type_id}"): Route("devices:read", 200, "device_type"),
    ("PATCH", "/api/v1/device-types/{type_id}"): Route("devices:write", 200, "device_type", body=rename),
    # An unused type: deleting the one with a device would answer 409 whatever the isolation.
    ("DELETE", "/api/v1/device-types/{type_id}"): Route(
        "devices:write", 204, "spare_device_type", fresh_target=True
    ),
    ("GET", "/api/v1/devices"): Route("devices:read", 200, "device", filters=device_filters),
    ("POST", "/api/v1/devices"): Route("devices:write", 201, "device", body=new_device),
    ("GET", "/api/v1/devices/{device_id}"): Route("devices:read", 200, "device"),
    ("PATCH", "/api/v1/devices/{device_id}"): Route("devices:write", 200, "device", body=rename),
    ("DELETE", "/api/v1/devices/{device_id}"): Route("devices:write", 204, "device", fresh_target=True),
}

# The listings that make up a tenant's data, with their query strings.
TENANT_COLLECTIONS: dict[str, dict[str, str]] = {
    f"{API}/users": {},
    f"{API}/tokens": {},
    f"{API}/device-types": {},
    f"{API}/devices": {"limit": "500"},
}


def served_v1_routes(app: FastAPI) -> set[tuple[str, str]]:
    """(method, path template) of every route the app serves under /api/v1."""
    # Recent FastAPI keeps included routers nested in app.routes; iter_route_contexts flattens them.
    flatten: Callable[[Any], Iterable[Any]] | None = getattr(fastapi.routing, "iter_route_contexts", None)
    routes: Iterable[Any] = flatten(app.routes) if flatten is not None else app.routes
    served: set[tuple[str, str]] = set()
    for route in routes:
        path = getattr(route, "path", None)
        if isinstance(path, str) and path.startswith(API + "/"):
            served.update((method, path) for method in getattr(route, "methods", None) or ())
    return served


# --- helpers shared by the cases ----------------------------------------------------------------


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """``response`` is an RFC 9457 problem with ``status`` and a flatgigs problem type."""
    assert response.status_code == status, f"expected {status}, got {response.status_code}: {response.text}"
    content_type = response.headers.get("content-type", "")
    assert content_type.startswith(PROBLEM_MEDIA_TYPE), f"not problem+json: {content_type!r}"
    problem: dict[str, Any] = response.json()
    assert str(problem.get("type", "")).startswith(PROBLEM_TYPE_PREFIX), problem
    assert problem.get("status") == status, problem
    return problem


def _stable(item: dict[str, Any]) -> dict[str, Any]:
    # last_used_at moves whenever a token authenticates (a refused 403 call uses its token too).
    return {k: v for k, v in item.items() if k != "last_used_at"}


def by_id(items: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Items keyed by id, volatile fields dropped (order-independent comparison)."""
    return {item["id"]: _stable(item) for item in items}


def fill(template: str, object_id: str | None) -> str:
    """The path with its one parameter replaced by ``object_id``."""
    if not _PATH_PARAM.search(template):
        return template
    assert object_id is not None, f"{template} needs an object id"
    return _PATH_PARAM.sub(lambda _: object_id, template)


@dataclass(frozen=True, slots=True)
class Call:
    """One route under test, with the world it runs in."""

    client: httpx.AsyncClient
    world: World
    method: str
    template: str
    route: Route

    @property
    def is_operator_route(self) -> bool:
        return self.route.scope == OPERATOR

    @property
    def has_param(self) -> bool:
        return bool(_PATH_PARAM.search(self.template))

    @property
    def writes(self) -> bool:
        return self.method in WRITE_METHODS

    def body(self) -> dict[str, Any] | None:
        """A fresh valid body, or None for routes without one."""
        return self.route.body(self.world) if self.route.body is not None else None

    async def send(
        self, headers: dict[str, str], object_id: str | None = None, body: dict[str, Any] | None = None
    ) -> httpx.Response:
        """The request, with ``object_id`` in the path."""
        path = fill(self.template, object_id)
        return await self.client.request(self.method, path, headers=headers, json=body)

    async def token(self, scopes: Iterable[str], **kwargs: Any) -> dict[str, str]:
        """Headers of a new tenant-A token with ``scopes``."""
        return bearer(await self.world.factory.token(self.world.own.id, scopes, **kwargs))

    async def own_target(self, *, fresh: bool = False) -> str | None:
        """Tenant A's object for the path (a new one when the route destroys it and ``fresh``)."""
        if not self.has_param:
            return None
        if fresh and self.route.fresh_target:
            return await FRESH[self.route.target](self.client, self.world)
        return self.world.own.ids[self.route.target]

    async def read(self, tenant: Seeded, object_id: str) -> dict[str, Any]:
        """The object as its own tenant (or the operator, for tenants) reads it."""
        headers = self.world.operator_headers if self.is_operator_route else tenant.headers
        response = await self.client.get(fill(self.template, object_id), headers=headers)
        assert response.status_code == 200, response.text
        return _stable(response.json())

    async def collection_state(self, tenant: Seeded, path: str) -> dict[str, Any]:
        """One listing of ``tenant`` as its admin sees it, keyed by id."""
        response = await self.client.get(path, headers=tenant.headers, params=TENANT_COLLECTIONS[path])
        assert response.status_code == 200, response.text
        payload = response.json()
        if isinstance(payload, dict):  # a keyset page
            assert payload["next_cursor"] is None, f"more than one page of {path}"
            payload = payload["items"]
        return by_id(payload)

    async def tenant_state(self, tenant: Seeded) -> dict[str, Any]:
        """Everything ``tenant`` owns as its admin sees it, and its tenant record."""
        state = {path: await self.collection_state(tenant, path) for path in TENANT_COLLECTIONS}
        response = await self.client.get(f"{API}/tenants/{tenant.id}", headers=self.world.operator_headers)
        assert response.status_code == 200, response.text
        state["tenant"] = response.json()
        return state

    async def platform_state(self) -> dict[str, Any]:
        """Every tenant record, as the operator sees them."""
        response = await self.client.get(f"{API}/tenants", headers=self.world.operator_headers)
        assert response.status_code == 200, response.text
        return by_id(response.json())

    async def state(self) -> dict[str, Any]:
        """What a refused call to this route must leave alone: the collection it belongs to.

        (Refusals happen before the handler runs; the foreign and tenant-id-body cases compare
        whole tenants instead.)
        """
        if self.is_operator_route:
            return await self.platform_state()
        return await self.collection_state(self.world.own, _PATH_PARAM.sub("", self.template).rstrip("/"))


async def _fresh_tenant(_: httpx.AsyncClient, w: World) -> str:
    return (await w.factory.create("iso-fresh")).id


async def _fresh_type(client: httpx.AsyncClient, w: World) -> str:
    return await created(client, f"{API}/device-types", w.own.headers, new_device_type(w))


async def _fresh_device(client: httpx.AsyncClient, w: World) -> str:
    return await created(client, f"{API}/devices", w.own.headers, new_device(w))


async def _fresh_user(client: httpx.AsyncClient, w: World) -> str:
    return await created(client, f"{API}/users", w.own.headers, new_user(w))


async def _fresh_token(_: httpx.AsyncClient, w: World) -> str:
    return token_id(await w.factory.token(w.own.id, ["devices:read"]))


FRESH: dict[str, Callable[[httpx.AsyncClient, World], Awaitable[str]]] = {
    "tenant": _fresh_tenant,
    "spare_device_type": _fresh_type,
    "device": _fresh_device,
    "user": _fresh_user,
    "token": _fresh_token,
}


async def refused(c: Call, headers: dict[str, str], status: int) -> None:
    """A call with ``headers`` is refused with ``status`` and, for writes, changes nothing."""
    target = await c.own_target()
    before = await c.state() if c.writes else None
    assert_problem(await c.send(headers, target, c.body()), status)
    if c.writes:
        assert await c.state() == before, "a refused call changed data"


# --- the cases ----------------------------------------------------------------------------------


async def own(c: Call) -> None:
    """Tenant A with exactly the required scope: 2xx."""
    target = await c.own_target(fresh=True)
    response = await c.send(await c.token([c.route.scope]), target, c.body())
    assert response.status_code == c.route.success, response.text
    if response.status_code != 204:
        assert response.headers["content-type"].startswith("application/json")
    if target is not None and c.method == "GET":
        assert response.json()["id"] == target


async def foreign(c: Call) -> None:
    """B's object id in A's request: 404, and B's object and B's data unchanged."""
    b = c.world.foreign
    object_id = b.ids[c.route.target]
    object_before, state_before = await c.read(b, object_id), await c.tenant_state(b)
    response = await c.send(await c.token([c.route.scope]), object_id, c.body())
    assert_problem(response, 404)
    assert await c.read(b, object_id) == object_before, "the foreign object changed"
    assert await c.tenant_state(b) == state_before, "the foreign tenant's data changed"


async def no_token(c: Call) -> None:
    await refused(c, {}, 401)


async def malformed(c: Call) -> None:
    await refused(c, bearer("fg.not-a-token"), 401)


async def forged(c: Call) -> None:
    """A's valid key id and secret, presented as a token of tenant B."""
    _, _, key, secret = (await c.token([c.route.scope]))["Authorization"].removeprefix("Bearer ").split(".")
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
    headers = await c.token([c.route.scope])
    queries: list[dict[str, str]] = [{}, *(c.route.filters(c.world) if c.route.filters else [])]
    for params in queries:
        response = await c.client.get(c.template, headers=headers, params=params)
        assert response.status_code == 200, response.text
        payload = response.json()
        items: list[dict[str, Any]] = payload["items"] if isinstance(payload, dict) else payload
        leaked = [item for item in items if b.owns(item)]
        assert leaked == [], f"{params or 'unfiltered'}: tenant B's items leaked to A: {leaked}"
        if not params:
            assert a.ids[c.route.target] in {item["id"] for item in items}


async def tenant_id_body(c: Call) -> None:
    """``tenant_id`` naming B in the body: 422 on that field, nothing changed in A, B or the platform."""
    w = c.world
    headers = w.operator_headers if c.is_operator_route else w.own.headers
    body = {**(c.body() or {}), "tenant_id": w.foreign.id}
    target = await c.own_target()

    async def everything() -> list[dict[str, Any]]:
        return [await c.platform_state(), await c.tenant_state(w.own), await c.tenant_state(w.foreign)]

    before = await everything()
    problem = assert_problem(await c.send(headers, target, body), 422)
    assert ["tenant_id"] in [error.get("loc") for error in problem.get("errors", [])], problem
    assert await everything() == before, "a refused body changed data"


async def operator_allowed(c: Call) -> None:
    """The operator token manages tenants."""
    target = await c.own_target(fresh=True)
    response = await c.send(c.world.operator_headers, target, c.body())
    assert response.status_code == c.route.success, response.text
    if c.method == "GET" and not c.has_param:
        listed = {item["id"] for item in response.json()}
        assert {c.world.own.id, c.world.foreign.id} <= listed


async def tenant_token(c: Call) -> None:
    await refused(c, c.world.own.headers, 403)


def _always(_: str, __: str) -> bool:
    return True


def _has_param(_: str, template: str) -> bool:
    return bool(_PATH_PARAM.search(template))


def _is_list(method: str, template: str) -> bool:
    return method == "GET" and not _has_param(method, template)


def _has_body(method: str, _: str) -> bool:
    return method in BODY_METHODS


Case = tuple[Callable[[Call], Awaitable[None]], Callable[[str, str], bool]]

TENANT_CASES: dict[str, Case] = {
    "own": (own, _always),
    "foreign": (foreign, _has_param),
    "no-token": (no_token, _always),
    "malformed": (malformed, _always),
    "forged": (forged, _always),
    "expired": (expired, _always),
    "revoked": (revoked, _always),
    "no-scope": (no_scope, _always),
    "operator": (operator_refused, _always),
    "list": (list_case, _is_list),
    "tenant-id-body": (tenant_id_body, _has_body),
}

OPERATOR_CASES: dict[str, Case] = {
    "operator": (operator_allowed, _always),
    "tenant-token": (tenant_token, _always),
    "no-token": (no_token, _always),
    "malformed": (malformed, _always),
    "tenant-id-body": (tenant_id_body, _has_body),
}


def cases_of(route: Route) -> dict[str, Case]:
    return OPERATOR_CASES if route.scope == OPERATOR else TENANT_CASES


def matrix() -> Iterator[ParameterSet]:
    for (method, template), route in ROUTES.items():
        for name, (_, applies) in cases_of(route).items():
            if applies(method, template):
                yield pytest.param(method, template, name, id=f"{method} {template}-{name}")


# --- the tests ----------------------------------------------------------------------------------


def test_matrix_is_well_formed() -> None:
    """Bodies where the method takes one, a known scope, a GET sibling to re-read path objects."""
    for (method, template), route in ROUTES.items():
        assert (route.body is not None) == (method in BODY_METHODS), (method, template)
        assert route.scope == OPERATOR or route.scope in ALL_SCOPES, (method, template)
        if _PATH_PARAM.search(template):
            assert ("GET", template) in ROUTES, f"{template} has no GET to re-read its object"
            assert len(_PATH_PARAM.findall(template)) == 1, f"{template}: one path parameter only"
        if route.fresh_target:
            assert route.target in FRESH, (method, template)
        if route.scope != OPERATOR:
            collection = _PATH_PARAM.sub("", template).rstrip("/")
            assert collection in TENANT_COLLECTIONS, f"{collection} is missing from TENANT_COLLECTIONS"


async def test_matrix_names_every_v1_route(app: FastAPI) -> None:
    served = served_v1_routes(app)
    missing = sorted(served - ROUTES.keys())
    stale = sorted(ROUTES.keys() - served)
    assert not missing, f"routes without an isolation matrix entry: {missing}"
    assert not stale, f"matrix entries for routes the app does not serve: {stale}"


@pytest.mark.parametrize(("method", "template", "case"), list(matrix()))
async def test_isolation(
    method: str, template: str, case: str, client: httpx.AsyncClient, world: World
) -> None:
    route = ROUTES[(method, template)]
    run, _ = cases_of(route)[case]
    await run(Call(client, world, method, template, route))
