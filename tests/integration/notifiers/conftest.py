"""Fixtures of the notification tests: real receivers, a service on the test database, an app."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI

from notifiers.clock import ManualClock
from notifiers.delivery import DeliverySettings
from notifiers.sealing import UrlSealer, generate_key
from notifiers.service import NotificationService
from server.app import create_app
from server.settings import load_settings
from storage.database import Database
from tests.harness.receivers import HttpReceiver, SmtpReceiver

# Fast retries: the tests wait for outcomes, not for backoff.
FAST = DeliverySettings(max_attempts=3, backoff_base_s=0.02, attempt_timeout_s=10, allow_private=True)


@pytest.fixture
def smtp() -> Iterator[SmtpReceiver]:
    """A plain SMTP server on a free loopback port."""
    with SmtpReceiver() as receiver:
        yield receiver


@pytest.fixture
def hook() -> Iterator[HttpReceiver]:
    """A webhook endpoint on a free loopback port."""
    with HttpReceiver() as receiver:
        yield receiver


@pytest.fixture
def sealer() -> UrlSealer:
    """A sealer with a fresh random key."""
    return UrlSealer([generate_key()])


@pytest.fixture
def clock() -> ManualClock:
    """A clock the test moves (a Wednesday 12:00 UTC)."""
    return ManualClock(datetime(2026, 11, 25, 12, 0, tzinfo=UTC))


@pytest_asyncio.fixture
async def service(
    database: Database, sealer: UrlSealer, clock: ManualClock
) -> AsyncIterator[NotificationService]:
    """A notification service on the test database with fast retries and a manual policy clock."""
    svc = NotificationService(database, sealer, settings=FAST, clock=clock)
    try:
        yield svc
    finally:
        await svc.pool.close()
        await svc.flush()


@pytest.fixture(scope="module")
def private_app(database: Database, tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    """An app that lets channels reach loopback (the receivers live there), with fast retries."""
    settings = load_settings(
        data_dir=tmp_path_factory.mktemp("notify-app"),
        allow_private_webhooks=True,
        notify_backoff_s=0.02,
        notify_max_attempts=3,
    )
    return create_app(settings, database)


@pytest_asyncio.fixture
async def private_client(private_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client of ``private_app`` (no lifespan: deliveries run on the request's loop)."""
    transport = httpx.ASGITransport(app=private_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http
