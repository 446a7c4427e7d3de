"""An in-process app on its own SQLite database, tenants with users of each role, and a browser-like
client that signs in through the editor's own form."""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlencode

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI

from devices.registry import DeviceRepository, DeviceTypeRepository
from model.devices import DataType, MetricSpec
from model.scopes import Role
from server.app import create_app
from server.settings import Settings
from storage.database import Database
from storage.tenancy import TenantRepository, UserRepository
from tests.conftest import migrated_sqlite

PASSWORD = "correct horse battery staple"
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture(scope="session")
def editor_db_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return migrated_sqlite(tmp_path_factory.mktemp("editor-db")).app_url


@pytest_asyncio.fixture(scope="session")
async def editor_database(editor_db_url: str) -> AsyncIterator[Database]:
    db = Database(editor_db_url, pool_size=5)
    yield db
    await db.dispose()


@pytest_asyncio.fixture(scope="session")
async def editor_app(settings: Settings, editor_database: Database) -> AsyncIterator[FastAPI]:
    app = create_app(settings, editor_database)
    yield app
    await app.state.runtime.telemetry.close()  # no lifespan runs in-process: close what pages opened


@dataclass(frozen=True, slots=True)
class EditorTenant:
    id: str
    users: dict[Role, str]  # role -> email


async def make_tenant(db: Database, prefix: str = "shop") -> EditorTenant:
    tenant_id = f"{prefix}-{secrets.token_hex(4)}"
    async with db.platform() as conn:
        await TenantRepository(conn).create(tenant_id, name=f"Shop {tenant_id}", timezone="Europe/Berlin")
    users = {}
    async with db.tenant(tenant_id) as scope:
        for role in Role:
            email = f"{role.value}@{tenant_id}.example"
            await UserRepository(scope).create(
                email=email, password=PASSWORD, role=role, display_name=role.value.title()
            )
            users[role] = email
        await DeviceTypeRepository(scope).create(
            "freezer",
            name="Freezer controller",
            metrics=[
                MetricSpec(name="temp", data_type=DataType.NUMBER, unit="°C"),
                MetricSpec(name="door_open", data_type=DataType.BOOLEAN),
            ],
        )
        await DeviceRepository(scope).create_many(
            [
                {
                    "id": f"freezer-{i:02d}",
                    "name": f"Freezer {i}",
                    "type_id": "freezer",
                    "labels": {"region": "north" if i <= 3 else "south"},
                }
                for i in range(1, 6)
            ]
        )
    return EditorTenant(tenant_id, users)


@pytest_asyncio.fixture
async def shop(editor_database: Database) -> EditorTenant:
    return await make_tenant(editor_database)


class Browser:
    """An HTTP client keeping cookies, signing in through the form, sending the page's CSRF token."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self.csrf = ""

    async def login(self, tenant: str, email: str, password: str = PASSWORD) -> httpx.Response:
        page = await self.http.get("/app/login")
        token = _CSRF.search(page.text)
        assert token, page.text
        response = await self.http.post(
            "/app/login",
            data={"csrf_token": token.group(1), "tenant": tenant, "email": email, "password": password},
        )
        if response.status_code == 303:
            landing = await self.http.get(response.headers["location"])
            found = _CSRF.search(landing.text)
            assert found
            self.csrf = found.group(1)
        return response

    async def get(self, url: str, **kwargs: object) -> httpx.Response:
        return await self.http.get(url, **kwargs)  # type: ignore[arg-type]

    async def post(
        self,
        url: str,
        data: dict[str, object] | list[tuple[str, str]] | None = None,
        *,
        csrf: bool = True,
        htmx: bool = True,
    ) -> httpx.Response:
        headers = {"HX-Request": "true"} if htmx else {}
        if csrf:
            headers["X-CSRF-Token"] = self.csrf
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        items = list(data.items()) if isinstance(data, dict) else list(data or [])
        return await self.http.post(url, content=urlencode(items), headers=headers)


@pytest_asyncio.fixture
async def browser(editor_app: FastAPI) -> AsyncIterator[Browser]:
    transport = httpx.ASGITransport(app=editor_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield Browser(http)


@pytest_asyncio.fixture
async def other_browser(editor_app: FastAPI) -> AsyncIterator[Browser]:
    transport = httpx.ASGITransport(app=editor_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield Browser(http)
