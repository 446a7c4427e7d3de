"""Fixtures shared by the whole suite: databases on both backends, the HTTP app, tenants and tokens."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI

from model.scopes import ALL_SCOPES
from server.app import create_app
from server.settings import Settings, load_settings
from storage import migrate
from storage.database import Database
from storage.tenancy import OperatorTokenRepository, TenantRepository, TokenRepository
from tests.harness.postgres import PostgresServer

pytest_plugins = ["tests.harness.plugin"]

BACKENDS = ("sqlite", "postgres")


@dataclass(frozen=True, slots=True)
class DbTarget:
    """A migrated database: the application's URL and the table owner's."""

    backend: str
    app_url: str
    owner_url: str
    app_role: str | None = None


def _asyncpg(dsn: str) -> str:
    return dsn.replace("postgresql://", "postgresql+asyncpg://", 1)


def migrated_postgres(server: PostgresServer, prefix: str = "fg") -> DbTarget:
    """A fresh database with an owner role (migrations) and an application role (no RLS bypass)."""
    suffix = secrets.token_hex(4)
    owner, app_role, dbname = f"{prefix}_owner_{suffix}", f"{prefix}_app_{suffix}", f"{prefix}_{suffix}"
    server.create_role(owner, password="owner-pw")
    server.create_role(app_role, password="app-pw")
    server.create_database(dbname, owner=owner)
    owner_url = _asyncpg(server.dsn(dbname, owner, "owner-pw"))
    migrate.upgrade(owner_url, app_role)
    return DbTarget("postgres", _asyncpg(server.dsn(dbname, app_role, "app-pw")), owner_url, app_role)


def migrated_sqlite(directory: Path) -> DbTarget:
    """A fresh, migrated SQLite file."""
    url = f"sqlite+aiosqlite:///{directory / 'flatgigs.db'}"
    migrate.upgrade(url)
    return DbTarget("sqlite", url, url)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests parametrized onto the PostgreSQL backend carry the ``postgres`` marker."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("db_target") == "postgres":
            item.add_marker("postgres")


@pytest.fixture(scope="session", params=BACKENDS)
def db_target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> DbTarget:
    """A migrated database per backend; tests isolate themselves by using fresh tenants."""
    if request.param == "sqlite":
        return migrated_sqlite(tmp_path_factory.mktemp("sqlite"))
    return migrated_postgres(request.getfixturevalue("postgres_server"))


@pytest_asyncio.fixture(scope="session")
async def database(db_target: DbTarget) -> AsyncIterator[Database]:
    """The application's connection to the migrated database (as the app role on PostgreSQL)."""
    db = Database(db_target.app_url, pool_size=5)
    yield db
    await db.dispose()


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings for in-process apps (the database is injected separately)."""
    return load_settings(data_dir=tmp_path_factory.mktemp("data"), max_body_bytes=64 * 1024)


@pytest.fixture(scope="session")
async def app(settings: Settings, database: Database) -> AsyncIterator[FastAPI]:
    """The HTTP application bound to the test database (its telemetry store closed afterwards)."""
    application = create_app(settings, database)
    yield application
    await application.state.runtime.telemetry.close()


@pytest_asyncio.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client talking to the app in-process."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


@dataclass(frozen=True, slots=True)
class TenantHandle:
    """A fresh tenant with an admin-scoped token."""

    id: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        """Authorization headers for the admin token."""
        return bearer(self.token)


def bearer(token: str) -> dict[str, str]:
    """Authorization headers for ``token``."""
    return {"Authorization": f"Bearer {token}"}


class TenantFactory:
    """Creates tenants and tokens directly through the repositories."""

    def __init__(self, database: Database) -> None:
        self.database = database

    async def create(self, prefix: str = "t") -> TenantHandle:
        """A new tenant with a token holding every scope."""
        tenant_id = f"{prefix}-{secrets.token_hex(5)}"
        async with self.database.platform() as conn:
            await TenantRepository(conn).create(tenant_id, name=f"Tenant {tenant_id}")
        return TenantHandle(tenant_id, await self.token(tenant_id, ALL_SCOPES))

    async def token(
        self, tenant_id: str, scopes: Iterable[str], *, expires_at: datetime | None = None
    ) -> str:
        """A bearer token of ``tenant_id`` with ``scopes``."""
        async with self.database.tenant(tenant_id) as scope:
            issued = await TokenRepository(scope).issue(name="test", scopes=scopes, expires_at=expires_at)
        return issued.bearer

    async def operator_token(self) -> str:
        """A platform operator token."""
        async with self.database.platform() as conn:
            return await OperatorTokenRepository(conn).issue(name="test-operator")


@pytest.fixture
def tenants(database: Database) -> TenantFactory:
    """Factory of fresh tenants on the test database."""
    return TenantFactory(database)
