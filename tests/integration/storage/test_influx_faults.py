"""The InfluxDB store under faults: server down or frozen, refused points, auth, a dropped database.

Each test starts its own influxd (about 0.2 s), so stopping or freezing it never disturbs the
session-wide server the contract suite uses.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import pytest_asyncio

from model.errors import BackpressureError
from model.readings import MetricValue, Reading, Source
from storage.telemetry.influx import InfluxTelemetryStore, TelemetryStoreError
from storage.telemetry.port import Aggregate, Sample, TelemetryWriteRejected
from tests.harness.influxdb import InfluxDBServer, start_influxdb

pytestmark = pytest.mark.influxdb

TENANT = "acme"
DATABASE = f"flatgigs_{TENANT}"
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
SECOND = timedelta(seconds=1)
SPAN = (T0 - timedelta(days=1), T0 + timedelta(days=1))


def reading(device: str, ts: datetime, metrics: Mapping[str, MetricValue]) -> Reading:
    """A reading of ``device`` in the test tenant."""
    return Reading(TENANT, device, ts, dict(metrics), Source("test", "faults"))


def reconfigure(influx: InfluxDBServer, change: Callable[[str], str]) -> None:
    """Restart influxd with its config file rewritten by ``change`` (data and ports are kept)."""
    influx.stop()
    influx.config_path.write_text(change(influx.config_path.read_text()))
    influx.start()


@pytest.fixture
def influx(tmp_path: Path) -> Iterator[InfluxDBServer]:
    """A private influxd that only this test stops, freezes or reconfigures."""
    server = start_influxdb(tmp_path / "influxdb")
    try:
        yield server
    finally:
        server.process.resume()  # a frozen process would ignore SIGTERM until SIGKILL
        server.stop()


@pytest_asyncio.fixture
async def store(influx: InfluxDBServer) -> AsyncIterator[InfluxTelemetryStore]:
    """The store on the private server, with a short timeout so a freeze is noticed quickly."""
    impl = InfluxTelemetryStore(influx.url, timeout=1.0)
    try:
        yield impl
    finally:
        await impl.close()


async def test_a_stopped_server_means_backpressure_until_it_is_back(
    influx: InfluxDBServer, store: InfluxTelemetryStore
) -> None:
    await store.write([reading("d1", T0, {"temp": 1.0})])
    influx.stop()

    with pytest.raises(BackpressureError) as refused:
        await store.write([reading("d1", T0 + SECOND, {"temp": 2.0})])
    assert refused.value.retry_after > 0
    with pytest.raises(BackpressureError):
        await store.latest(TENANT, "d1")

    influx.start()
    await store.write([reading("d1", T0 + SECOND, {"temp": 2.0})])
    assert await store.query(TENANT, "d1", "temp", *SPAN) == [Sample(T0, 1.0), Sample(T0 + SECOND, 2.0)]


async def test_an_overloaded_server_means_backpressure(
    influx: InfluxDBServer, store: InfluxTelemetryStore
) -> None:
    # A write timeout no write can meet: influxd answers 500 {"error":"timeout"}, as it does
    # when its storage cannot keep up.
    reconfigure(influx, lambda config: config + '\n[coordinator]\n  write-timeout = "1ns"\n')
    with pytest.raises(BackpressureError) as refused:
        await store.write([reading("d1", T0, {"temp": 1.0})])
    assert refused.value.retry_after > 0


async def test_a_frozen_server_times_out_into_backpressure(
    influx: InfluxDBServer, store: InfluxTelemetryStore
) -> None:
    await store.write([reading("d1", T0, {"temp": 1.0})])
    influx.process.pause()
    try:
        with pytest.raises(BackpressureError):
            await store.write([reading("d1", T0 + SECOND, {"temp": 2.0})])
    finally:
        influx.process.resume()
    await store.write([reading("d1", T0 + SECOND, {"temp": 2.0})])
    assert await store.latest(TENANT, "d1") == {"temp": Sample(T0 + SECOND, 2.0)}


async def test_a_field_type_conflict_rejects_only_the_conflicting_samples(
    store: InfluxTelemetryStore,
) -> None:
    await store.write([reading("d1", T0, {"temp": 20.0})])
    conflicting_string = reading("d1", T0 + SECOND, {"temp": "hot", "hum": 40.0})
    conflicting_bool = reading("d3", T0 + SECOND, {"temp": True})
    batch = [
        reading("d2", T0 + SECOND, {"temp": 21.0}),
        conflicting_string,
        reading("d1", T0 + 2 * SECOND, {"temp": 22.0}),
        conflicting_bool,
        reading("d4", T0 + SECOND, {"temp": 23.0, "mode": "eco"}),
    ]

    with pytest.raises(TelemetryWriteRejected) as refused:
        await store.write(batch)

    rejected = refused.value.rejected
    assert [r for r, _ in rejected] == [
        Reading(TENANT, "d1", T0 + SECOND, {"temp": "hot"}, conflicting_string.source),
        conflicting_bool,
    ]
    assert all("conflict" in reason for _, reason in rejected)
    assert await store.latest(TENANT, "d1") == {
        "temp": Sample(T0 + 2 * SECOND, 22.0),
        "hum": Sample(T0 + SECOND, 40.0),
    }
    assert await store.latest(TENANT, "d2") == {"temp": Sample(T0 + SECOND, 21.0)}
    assert await store.latest(TENANT, "d3") == {}
    assert await store.latest(TENANT, "d4") == {
        "temp": Sample(T0 + SECOND, 23.0),
        "mode": Sample(T0 + SECOND, "eco"),
    }


async def test_samples_influxdb_cannot_hold_are_refused_and_the_rest_stored(
    store: InfluxTelemetryStore,
) -> None:
    no_device = reading("", T0, {"temp": 1.0})
    with pytest.raises(TelemetryWriteRejected) as refused:
        await store.write([reading("d1", T0, {"": 1.0, "huge": 10**400, "temp": 2.0}), no_device])
    assert [(r.device_id, dict(r.metrics)) for r, _ in refused.value.rejected] == [
        ("d1", {"": 1.0}),
        ("d1", {"huge": 10**400}),
        ("", {"temp": 1.0}),
    ]
    assert await store.latest(TENANT, "d1") == {"temp": Sample(T0, 2.0)}


async def test_a_database_dropped_behind_the_stores_back_is_recreated(
    influx: InfluxDBServer, store: InfluxTelemetryStore
) -> None:
    await store.write([reading("d1", T0, {"temp": 1.0})])
    influx.query(f'DROP DATABASE "{DATABASE}"')
    assert await store.latest(TENANT, "d1") == {}  # a missing database is no data
    await store.write([reading("d1", T0 + SECOND, {"temp": 2.0})])
    assert await store.latest(TENANT, "d1") == {"temp": Sample(T0 + SECOND, 2.0)}


async def test_refused_credentials_are_an_error_not_backpressure(
    influx: InfluxDBServer, tmp_path: Path
) -> None:
    reconfigure(influx, lambda config: config.replace("[http]\n", "[http]\n  auth-enabled = true\n", 1))
    # With auth on and no users yet, InfluxDB 1.x accepts exactly this one statement anonymously.
    influx.query("CREATE USER admin WITH PASSWORD 'right' WITH ALL PRIVILEGES")

    for username, password in ((None, None), ("admin", "wrong")):
        denied = InfluxTelemetryStore(influx.url, username=username, password=password)
        try:
            with pytest.raises(TelemetryStoreError) as refused:
                await denied.write([reading("d1", T0, {"temp": 1.0})])
            assert refused.value.status_code == 401
        finally:
            await denied.close()

    allowed = InfluxTelemetryStore(influx.url, username="admin", password="right")
    try:
        await allowed.write([reading("d1", T0, {"temp": 1.0})])
        counts = await allowed.query(
            TENANT, "d1", "temp", *SPAN, every=timedelta(days=2), aggregate=Aggregate.COUNT
        )
        assert sum(int(s.value) for s in counts) == 1
    finally:
        await allowed.close()
