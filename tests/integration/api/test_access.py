"""Tenants, users and tokens: operators create tenants; tokens are shown once, hashed, scoped, revocable."""

from __future__ import annotations

from datetime import timedelta

import httpx
import sqlalchemy as sa

from storage.database import Database
from storage.tables import api_tokens, users
from storage.types import utcnow
from tests.conftest import TenantFactory, bearer


async def test_operator_creates_a_tenant_with_its_first_admin(
    client: httpx.AsyncClient, tenants: TenantFactory, database: Database
) -> None:
    op = bearer(await tenants.operator_token())
    r = await client.post(
        "/api/v1/tenants",
        json={
            "id": "globex-plant-x1",
            "name": "Globex",
            "timezone": "America/Chicago",
            "admin": {"email": "Hank@Globex.example", "password": "a-long-password-1"},
        },
        headers=op,
    )
    if r.status_code == 409:  # the session database is shared by reruns on both backends
        r = await client.get("/api/v1/tenants/globex-plant-x1", headers=op)
    assert r.status_code in (200, 201), r.text
    assert r.json()["timezone"] == "America/Chicago"
    assert "globex-plant-x1" in [t["id"] for t in (await client.get("/api/v1/tenants", headers=op)).json()]
    async with database.tenant("globex-plant-x1") as scope:
        row = (await scope.conn.execute(scope.select(users))).first()
    assert row is not None and row.email == "hank@globex.example" and row.role == "admin"
    assert row.password_hash.startswith("$argon2id$") and "a-long-password-1" not in row.password_hash


async def test_bad_tenant_input(client: httpx.AsyncClient, tenants: TenantFactory) -> None:
    op = bearer(await tenants.operator_token())
    for body in (
        {"id": "Upper-Case", "name": "x"},
        {"id": "ok-id", "name": "x", "timezone": "Mars/Olympus"},
        {"id": "ok-id", "name": "x", "admin": {"email": "not-an-email", "password": "a-long-password-1"}},
        {"id": "ok-id", "name": "x", "admin": {"email": "a@b.example", "password": "short"}},
    ):
        r = await client.post("/api/v1/tenants", json=body, headers=op)
        assert r.status_code == 422, (body, r.text)
    assert (await client.get("/api/v1/tenants/ok-id", headers=op)).status_code == 404


async def test_suspended_tenant_tokens_stop_working(
    client: httpx.AsyncClient, tenants: TenantFactory
) -> None:
    t = await tenants.create()
    op = bearer(await tenants.operator_token())
    assert (await client.get("/api/v1/devices", headers=t.headers)).status_code == 200
    r = await client.patch(f"/api/v1/tenants/{t.id}", json={"status": "suspended"}, headers=op)
    assert r.status_code == 200 and r.json()["status"] == "suspended"
    assert (await client.get("/api/v1/devices", headers=t.headers)).status_code == 401
    await client.patch(f"/api/v1/tenants/{t.id}", json={"status": "active"}, headers=op)
    assert (await client.get("/api/v1/devices", headers=t.headers)).status_code == 200


async def test_token_is_shown_once_and_stored_hashed(
    client: httpx.AsyncClient, tenants: TenantFactory, database: Database
) -> None:
    t = await tenants.create()
    r = await client.post(
        "/api/v1/tokens",
        json={"name": "erik", "scopes": ["devices:write", "telemetry:read"], "expires_in_days": 30},
        headers=t.headers,
    )
    assert r.status_code == 201, r.text
    assert r.headers["cache-control"] == "no-store"
    issued = r.json()
    secret = issued["token"].split(".")[-1]
    assert issued["scopes"] == ["devices:write", "telemetry:read"]
    listed = (await client.get("/api/v1/tokens", headers=t.headers)).json()
    assert issued["id"] in [x["id"] for x in listed]
    assert all("token" not in x for x in listed)
    one = (await client.get(f"/api/v1/tokens/{issued['id']}", headers=t.headers)).json()
    assert "token" not in one and secret not in str(one)
    async with database.tenant(t.id) as scope:
        rows = (await scope.conn.execute(scope.select(api_tokens))).all()
    assert rows and all(secret not in str(tuple(row)) for row in rows)
    # The new token works, for its scopes only.
    erik = bearer(issued["token"])
    assert (await client.get("/api/v1/devices", headers=erik)).status_code == 403  # devices:read missing
    r = await client.post("/api/v1/device-types", json={"id": "x", "name": "x"}, headers=erik)
    assert r.status_code == 201


async def test_last_used_is_recorded(client: httpx.AsyncClient, tenants: TenantFactory) -> None:
    t = await tenants.create()
    r = await client.post("/api/v1/tokens", json={"name": "n", "scopes": ["devices:read"]}, headers=t.headers)
    issued = r.json()
    assert issued["last_used_at"] is None
    await client.get("/api/v1/devices", headers=bearer(issued["token"]))
    after = (await client.get(f"/api/v1/tokens/{issued['id']}", headers=t.headers)).json()
    assert after["last_used_at"] is not None


async def test_scopes_cannot_be_escalated(client: httpx.AsyncClient, tenants: TenantFactory) -> None:
    t = await tenants.create()
    limited = bearer(await tenants.token(t.id, ["tokens:write", "devices:read"]))
    r = await client.post(
        "/api/v1/tokens", json={"name": "x", "scopes": ["devices:read", "devices:write"]}, headers=limited
    )
    assert r.status_code == 403 and "devices:write" in r.json()["detail"]
    r = await client.post("/api/v1/tokens", json={"name": "x", "scopes": ["root:all"]}, headers=t.headers)
    assert r.status_code == 422


async def test_revoked_and_expired_tokens_are_refused(
    client: httpx.AsyncClient, tenants: TenantFactory
) -> None:
    t = await tenants.create()
    expired = await tenants.token(t.id, ["devices:read"], expires_at=utcnow() - timedelta(seconds=1))
    r = await client.get("/api/v1/devices", headers=bearer(expired))
    assert r.status_code == 401 and r.json()["type"] == "urn:flatgigs:problem:unauthenticated"
    r = await client.post("/api/v1/tokens", json={"name": "n", "scopes": ["devices:read"]}, headers=t.headers)
    token, token_id = r.json()["token"], r.json()["id"]
    assert (await client.get("/api/v1/devices", headers=bearer(token))).status_code == 200
    r = await client.delete(f"/api/v1/tokens/{token_id}", headers=t.headers)
    assert r.status_code == 200 and r.json()["revoked_at"] is not None
    assert (await client.get("/api/v1/devices", headers=bearer(token))).status_code == 401
    # A forged secret for a real key id is refused the same way.
    prefix = token.rsplit(".", 1)[0]
    assert (await client.get("/api/v1/devices", headers=bearer(prefix + ".forged"))).status_code == 401


async def test_users_crud_and_roles(
    client: httpx.AsyncClient, tenants: TenantFactory, database: Database
) -> None:
    t = await tenants.create()
    r = await client.post(
        "/api/v1/users",
        json={"email": "night@acme.example", "password": "night-shift-pass", "role": "viewer"},
        headers=t.headers,
    )
    assert r.status_code == 201, r.text
    user = r.json()
    assert "password" not in user and "password_hash" not in user
    r = await client.post(
        "/api/v1/users",
        json={"email": "NIGHT@acme.example", "password": "another-password"},
        headers=t.headers,
    )
    assert r.status_code == 409
    r = await client.patch(f"/api/v1/users/{user['id']}", json={"role": "editor"}, headers=t.headers)
    assert r.json()["role"] == "editor"
    r = await client.patch(
        f"/api/v1/users/{user['id']}", json={"password": "new-password-123"}, headers=t.headers
    )
    assert r.status_code == 200
    async with database.tenant(t.id) as scope:
        stored = (await scope.conn.execute(scope.select(users).where(users.c.id == user["id"]))).one()
    assert "new-password-123" not in stored.password_hash
    assert [u["email"] for u in (await client.get("/api/v1/users", headers=t.headers)).json()] == [
        "night@acme.example"
    ]
    assert (await client.delete(f"/api/v1/users/{user['id']}", headers=t.headers)).status_code == 204
    assert (await client.get(f"/api/v1/users/{user['id']}", headers=t.headers)).status_code == 404


async def test_deleting_a_user_revokes_their_tokens(database: Database, tenants: TenantFactory) -> None:
    from model.scopes import Role
    from storage.tenancy import TokenRepository, UserRepository

    t = await tenants.create()
    async with database.tenant(t.id) as scope:
        user = await UserRepository(scope).create(email="x@y.example", password="p" * 12, role=Role.EDITOR)
        issued = await TokenRepository(scope).issue(name="n", scopes=["devices:read"], user_id=user.id)
        await UserRepository(scope).delete(user.id)
        token = await TokenRepository(scope).get(issued.token.id)
        count = (await scope.conn.execute(sa.select(sa.func.count()).select_from(users))).scalar()
    assert token.revoked_at is not None
    assert count is not None
