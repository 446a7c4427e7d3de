"""pytest plugin: session-wide private Mosquitto, InfluxDB and PostgreSQL servers, started lazily.

Load it with `pytest_plugins = ["tests.harness.plugin"]` in the root conftest.py
(or `-p tests.harness.plugin`). A server starts the first time a test asks for
its fixture and is stopped by PID at the end of the session, also when tests fail.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from tests.harness.influxdb import InfluxDBServer, start_influxdb
from tests.harness.mosquitto import MosquittoServer, start_mosquitto
from tests.harness.postgres import PostgresServer, start_postgres

logger = logging.getLogger(__name__)

# fixture name -> marker name; the marker is added to every test that uses the fixture,
# so `-m "not postgres"` deselects exactly the tests that would start that server.
SERVICE_FIXTURES: dict[str, str] = {
    "mosquitto_server": "mosquitto",
    "influxdb_server": "influxdb",
    "postgres_server": "postgres",
}

_MARKERS: dict[str, str] = {
    "mosquitto": "needs a private Mosquitto broker",
    "influxdb": "needs a private InfluxDB server",
    "postgres": "needs a PostgreSQL server (private, or FLATGIGS_TEST_POSTGRES_URL)",
}


def pytest_configure(config: pytest.Config) -> None:
    """Register one marker per service (the suite runs with --strict-markers)."""
    for name, description in _MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {description}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that (directly or through other fixtures) uses a server fixture."""
    for item in items:
        fixturenames = getattr(item, "fixturenames", ())
        for fixture, marker in SERVICE_FIXTURES.items():
            if fixture in fixturenames and item.get_closest_marker(marker) is None:
                item.add_marker(marker)


@pytest.fixture(scope="session")
def mosquitto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoServer]:
    """A private Mosquitto broker on a free loopback port (anonymous, persistent)."""
    server = start_mosquitto(tmp_path_factory.mktemp("mosquitto"))
    logger.info("mosquitto_server: %s (started in %.2fs)", server.url, server.startup_seconds)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def influxdb_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxDBServer]:
    """A private InfluxDB 1.x server on free loopback ports (no auth, empty)."""
    server = start_influxdb(tmp_path_factory.mktemp("influxdb"))
    logger.info("influxdb_server: %s (started in %.2fs)", server.url, server.startup_seconds)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """A PostgreSQL server: FLATGIGS_TEST_POSTGRES_URL if set, else a private cluster."""
    server = start_postgres(tmp_path_factory.mktemp("postgres"))
    logger.info("postgres_server: %s (ready in %.2fs)", server.superuser_dsn(), server.startup_seconds)
    try:
        yield server
    finally:
        server.close()
