"""The TelemetryStore contract, run unchanged over every implementation (embedded and InfluxDB).

To cover a new behaviour, add a plain test function taking the ``store`` fixture; to cover a new
implementation, add it to ``STORES`` and to the ``store`` fixture.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import pytest_asyncio

from model.errors import InvalidInputError
from model.readings import MetricValue, Reading, Source
from storage.telemetry.embedded import EmbeddedTelemetryStore
from storage.telemetry.influx import InfluxTelemetryStore
from storage.telemetry.port import Aggregate, Sample, TelemetryStore

STORES = ["embedded", pytest.param("influxdb", marks=pytest.mark.influxdb)]

ACME, GLOBEX, NEVER_WROTE = "acme", "globex-2", "never-wrote"
SOURCE = Source("test", "contract")
# Minute-aligned, as the window tests assume.
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
US = timedelta(microseconds=1)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
WHOLE_RANGE = (datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))


@pytest_asyncio.fixture(params=STORES)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[TelemetryStore]:
    """A fresh, empty store of each implementation."""
    impl: TelemetryStore
    if request.param == "embedded":
        impl = EmbeddedTelemetryStore(tmp_path / "telemetry.sqlite")
    else:
        server = request.getfixturevalue("influxdb_server")
        # A fresh prefix gives every test its own databases on the shared server.
        impl = InfluxTelemetryStore(server.url, database_prefix=f"t{secrets.token_hex(3)}_")
    try:
        yield impl
    finally:
        await impl.close()


def reading(device: str, ts: datetime, metrics: Mapping[str, MetricValue], tenant: str = ACME) -> Reading:
    """A reading of ``device`` in ``tenant``."""
    return Reading(tenant, device, ts, dict(metrics), SOURCE)


async def test_latest_is_each_metrics_newest_sample_with_exact_time_value_and_type(
    store: TelemetryStore,
) -> None:
    t1 = T0 + timedelta(microseconds=123_457)
    t2 = T0 + timedelta(seconds=5, microseconds=1)
    await store.write(
        [
            reading("d1", t1, {"temp": 20.5, "on": False, "mode": "eco"}),
            reading("d1", t2, {"temp": 21.0, "on": True}),
            reading("d1", T0, {"mode": "older, written last"}),
        ]
    )
    latest = await store.latest(ACME, "d1")
    assert latest == {"temp": Sample(t2, 21.0), "on": Sample(t2, True), "mode": Sample(t1, "eco")}
    assert type(latest["temp"].value) is float  # 21.0 must not come back as the int 21
    assert type(latest["on"].value) is bool
    assert type(latest["mode"].value) is str
    assert all(s.ts.utcoffset() == timedelta(0) for s in latest.values())


async def test_latest_returns_only_the_named_metrics(store: TelemetryStore) -> None:
    await store.write([reading("d1", T0, {"temp": 1.5, "hum": 40.0, "mode": "eco"})])
    assert await store.latest(ACME, "d1", ["temp", "mode", "absent"]) == {
        "temp": Sample(T0, 1.5),
        "mode": Sample(T0, "eco"),
    }
    assert await store.latest(ACME, "d1", []) == {}


async def test_an_int_comes_back_as_an_equal_number(store: TelemetryStore) -> None:
    # The embedded store keeps the int; InfluxDB stores numbers as floats (see its docstring).
    await store.write([reading("d1", T0, {"count": 42})])
    value = (await store.latest(ACME, "d1"))["count"].value
    assert value == 42 and isinstance(value, int | float) and not isinstance(value, bool)


async def test_raw_query_covers_start_inclusive_to_end_exclusive(store: TelemetryStore) -> None:
    start, end = T0 + timedelta(minutes=1), T0 + timedelta(minutes=2)
    times = [start - US, start, start + timedelta(seconds=30), end - US, end]
    await store.write([reading("d1", t, {"temp": float(i)}) for i, t in enumerate(times)])
    samples = await store.query(ACME, "d1", "temp", start, end)
    assert samples == [Sample(times[1], 1.0), Sample(times[2], 2.0), Sample(times[3], 3.0)]


async def test_raw_query_of_strings_and_bools_keeps_their_type(store: TelemetryStore) -> None:
    await store.write([reading("d1", T0, {"mode": "eco", "on": True})])
    end = T0 + timedelta(seconds=1)
    assert await store.query(ACME, "d1", "mode", T0, end) == [Sample(T0, "eco")]
    assert await store.query(ACME, "d1", "on", T0, end) == [Sample(T0, True)]


async def test_an_empty_or_reversed_range_is_empty(store: TelemetryStore) -> None:
    await store.write([reading("d1", T0, {"temp": 1.0})])
    assert await store.query(ACME, "d1", "temp", T0, T0) == []
    assert await store.query(ACME, "d1", "temp", T0 + US, T0) == []


MINUTE = timedelta(minutes=1)
# Minute 0: 1, 2, 6; minute 1: nothing; minute 2: 10, 4.
WINDOWED_DATA = [(0, 1.0), (20, 2.0), (40, 6.0), (125, 10.0), (150, 4.0)]
WINDOW_CASES = [
    (Aggregate.MEAN, [3.0, 7.0]),
    (Aggregate.MIN, [1.0, 4.0]),
    (Aggregate.MAX, [6.0, 10.0]),
    (Aggregate.COUNT, [3, 2]),
    (Aggregate.LAST, [6.0, 4.0]),
]


@pytest.mark.parametrize(("aggregate", "values"), WINDOW_CASES, ids=[c[0].value for c in WINDOW_CASES])
async def test_aggregates_per_minute_omit_empty_windows(
    store: TelemetryStore, aggregate: Aggregate, values: list[MetricValue]
) -> None:
    await store.write([reading("d1", T0 + timedelta(seconds=s), {"temp": v}) for s, v in WINDOWED_DATA])
    samples = await store.query(ACME, "d1", "temp", T0, T0 + 3 * MINUTE, every=MINUTE, aggregate=aggregate)
    assert samples == [Sample(T0, values[0]), Sample(T0 + 2 * MINUTE, values[1])]
    if aggregate is Aggregate.COUNT:
        assert all(type(s.value) is int for s in samples)


async def test_a_window_cut_by_start_keeps_its_epoch_aligned_start(store: TelemetryStore) -> None:
    await store.write([reading("d1", T0 + timedelta(seconds=s), {"temp": v}) for s, v in WINDOWED_DATA])
    samples = await store.query(ACME, "d1", "temp", T0 + timedelta(seconds=30), T0 + 3 * MINUTE, every=MINUTE)
    assert samples == [Sample(T0, 6.0), Sample(T0 + 2 * MINUTE, 7.0)]


async def test_windows_are_aligned_to_the_epoch_not_to_start(store: TelemetryStore) -> None:
    every = timedelta(minutes=7)  # 60 does not divide by 7: epoch and hour alignment differ
    times = [T0 + timedelta(minutes=m) for m in range(0, 30, 3)]
    await store.write([reading("d1", t, {"temp": 1.0}) for t in times])
    samples = await store.query(
        ACME, "d1", "temp", T0, T0 + timedelta(hours=1), every=every, aggregate=Aggregate.COUNT
    )
    expected: dict[datetime, int] = {}
    for t in times:
        window = EPOCH + (t - EPOCH) // every * every
        expected[window] = expected.get(window, 0) + 1
    assert samples == [Sample(w, n) for w, n in sorted(expected.items())]


async def test_windows_before_1970_floor_downwards(store: TelemetryStore) -> None:
    times = [EPOCH - timedelta(seconds=30), EPOCH - timedelta(seconds=10), EPOCH + timedelta(seconds=5)]
    await store.write([reading("d1", t, {"temp": 1.0}) for t in times])
    samples = await store.query(
        ACME, "d1", "temp", EPOCH - MINUTE, EPOCH + MINUTE, every=MINUTE, aggregate=Aggregate.COUNT
    )
    assert samples == [Sample(EPOCH - MINUTE, 2), Sample(EPOCH, 1)]


async def test_mean_min_max_ignore_strings_and_bools_count_and_last_do_not(store: TelemetryStore) -> None:
    await store.write(
        [
            reading("d1", T0, {"mode": "eco", "on": False}),
            reading("d1", T0 + timedelta(seconds=1), {"mode": "boost", "on": True}),
        ]
    )
    span = (T0, T0 + MINUTE)
    for metric, last in (("mode", "boost"), ("on", True)):
        for numeric in (Aggregate.MEAN, Aggregate.MIN, Aggregate.MAX):
            assert await store.query(ACME, "d1", metric, *span, every=MINUTE, aggregate=numeric) == []
        count = await store.query(ACME, "d1", metric, *span, every=MINUTE, aggregate=Aggregate.COUNT)
        assert count == [Sample(T0, 2)]
        latest = await store.query(ACME, "d1", metric, *span, every=MINUTE, aggregate=Aggregate.LAST)
        assert latest == [Sample(T0, last)]


async def test_tenants_never_see_each_others_samples(store: TelemetryStore) -> None:
    await store.write(
        [
            reading("d1", T0, {"temp": 1.0, "secret": "acme only"}, tenant=ACME),
            reading("d1", T0 + US, {"temp": 2.0}, tenant=GLOBEX),
        ]
    )
    assert await store.latest(ACME, "d1") == {"temp": Sample(T0, 1.0), "secret": Sample(T0, "acme only")}
    assert await store.latest(GLOBEX, "d1") == {"temp": Sample(T0 + US, 2.0)}
    assert await store.latest(GLOBEX, "d1", ["secret"]) == {}
    assert await store.query(ACME, "d1", "temp", *WHOLE_RANGE) == [Sample(T0, 1.0)]
    assert await store.query(GLOBEX, "d1", "temp", *WHOLE_RANGE) == [Sample(T0 + US, 2.0)]
    assert await store.query(GLOBEX, "d1", "secret", *WHOLE_RANGE) == []
    counts = await store.query(
        GLOBEX, "d1", "temp", *WHOLE_RANGE, every=timedelta(days=365), aggregate=Aggregate.COUNT
    )
    assert sum(int(s.value) for s in counts) == 1
    assert await store.latest(NEVER_WROTE, "d1") == {}


async def test_unknown_tenant_device_or_metric_is_empty(store: TelemetryStore) -> None:
    await store.write([reading("d1", T0, {"temp": 1.0})])
    assert await store.latest(ACME, "nope") == {}
    assert await store.latest(NEVER_WROTE, "d1") == {}
    assert await store.query(ACME, "nope", "temp", *WHOLE_RANGE) == []
    assert await store.query(ACME, "d1", "nope", *WHOLE_RANGE) == []
    assert await store.query(ACME, "d1", "nope", *WHOLE_RANGE, every=MINUTE) == []
    assert await store.query(NEVER_WROTE, "d1", "temp", *WHOLE_RANGE, every=MINUTE) == []


HOSTILE_NAMES = [
    "a,b",
    "a=b",
    "a b",
    " leading and trailing ",
    "two\nlines",
    "tab\there\r",
    'double"quote',
    "back\\slash",
    "trailing\\",
    "single'quote",
    "semi;colon",
    "%41 percent",
    "time",
    "device",
    "ü🙂",
    "all: ,= \n\"\\'",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=repr)
async def test_hostile_device_ids_metric_names_and_values_round_trip(
    store: TelemetryStore, name: str
) -> None:
    value = f"{name} value \\ \" ' \n ,= end"
    await store.write([reading(name, T0, {name: value, "plain": 1.5})])
    assert await store.latest(ACME, name) == {name: Sample(T0, value), "plain": Sample(T0, 1.5)}
    assert await store.latest(ACME, name, [name]) == {name: Sample(T0, value)}
    assert await store.query(ACME, name, name, *WHOLE_RANGE) == [Sample(T0, value)]
    assert await store.latest(ACME, "plain") == {}


INJECTIONS = [
    ("d1", "temp", 'x" 1\ntelemetry,device=evil temp=666'),
    ("d1", "temp=666\ntelemetry,device=evil temp", "x"),
    ("d1\ntelemetry,device=evil temp=666 1", "temp", "x"),
    ("d1' OR device = 'evil", "temp", "x"),
]


@pytest.mark.parametrize(("device", "metric", "value"), INJECTIONS, ids=repr)
async def test_an_injection_attempt_writes_no_extra_point(
    store: TelemetryStore, device: str, metric: str, value: str
) -> None:
    await store.write([reading(device, T0, {metric: value})])
    assert await store.latest(ACME, device) == {metric: Sample(T0, value)}
    assert await store.latest(ACME, "evil") == {}
    assert await store.query(ACME, "evil", "temp", *WHOLE_RANGE) == []
    counts = await store.query(
        ACME, device, metric, *WHOLE_RANGE, every=timedelta(days=365), aggregate=Aggregate.COUNT
    )
    assert sum(int(s.value) for s in counts) == 1


async def test_rewriting_a_timestamp_keeps_the_last_value(store: TelemetryStore) -> None:
    await store.write([reading("d1", T0, {"temp": 1.0, "mode": "a"})])
    await store.write([reading("d1", T0, {"temp": 2.0})])
    # Within one batch too: the later reading wins.
    await store.write([reading("d1", T0, {"mode": "b"}), reading("d1", T0, {"mode": "c"})])
    assert await store.latest(ACME, "d1") == {"temp": Sample(T0, 2.0), "mode": Sample(T0, "c")}
    assert await store.query(ACME, "d1", "temp", *WHOLE_RANGE) == [Sample(T0, 2.0)]


async def test_an_empty_batch_or_reading_stores_nothing(store: TelemetryStore) -> None:
    await store.write([])
    await store.write([reading("d1", T0, {})])
    assert await store.latest(ACME, "d1") == {}


async def test_a_large_batch_is_stored_completely(store: TelemetryStore) -> None:
    n = 12_000  # more than one request's worth for InfluxDB
    await store.write([reading("d1", T0 + i * US, {"temp": float(i)}) for i in range(n)])
    counts = await store.query(ACME, "d1", "temp", *WHOLE_RANGE, every=MINUTE, aggregate=Aggregate.COUNT)
    assert counts == [Sample(T0, n)]
    assert await store.latest(ACME, "d1") == {"temp": Sample(T0 + (n - 1) * US, float(n - 1))}


async def test_an_invalid_tenant_id_is_refused(store: TelemetryStore) -> None:
    bad = "Acme/../x"
    with pytest.raises(InvalidInputError):
        await store.write([reading("d1", T0, {"temp": 1.0}), reading("d1", T0, {"temp": 1.0}, tenant=bad)])
    with pytest.raises(InvalidInputError):
        await store.latest(bad, "d1")
    with pytest.raises(InvalidInputError):
        await store.query(bad, "d1", "temp", *WHOLE_RANGE)
    # Nothing of the batch was written, not even the valid tenant's reading.
    assert await store.latest(ACME, "d1") == {}


async def test_a_window_must_be_positive(store: TelemetryStore) -> None:
    with pytest.raises(InvalidInputError):
        await store.query(ACME, "d1", "temp", *WHOLE_RANGE, every=timedelta(0))
