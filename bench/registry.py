"""Device registry benchmark: bulk import, lookups and keyset pages, product path versus bare SQL.

Run::

    .venv/bin/python -m bench.registry [--devices 500000] [--backend sqlite|postgres|both]

For each backend it migrates a fresh database (a temp SQLite file; a private PostgreSQL cluster
started with tests.harness.postgres, or the server in FLATGIGS_BENCH_POSTGRES_URL), creates a
tenant with N devices imported through ``devices.importer.import_devices`` plus a few noise
tenants (same device ids, same labels) so that tenant filtering and RLS do real work, then times:

(a) a bare primary-key SELECT, one statement per call on one open connection of the same engine
    (on PostgreSQL the tenant is set once for that connection's transaction, so RLS still applies);
(b) the product lookup, as GET /devices/{id} does it:
    ``async with db.tenant(t, readonly=True) as scope: await DeviceRepository(scope).get(id)``;
(c) a bare keyset page ``... WHERE tenant_id=:t AND id > :after ORDER BY id LIMIT 50``;
(d) ``DeviceRepository.list`` pages in read-only scopes: no filter, type, common label, rare label;

and, as diagnostics, the same bare statements inside their own read-only scope, the lookup
including the background release of its connection, the lookup in a read-write scope (what GET
endpoints used before ADR 0022), bare SQL of the same shape as each filtered page,
driver round trips per call, and (with --explain) the plans of the product's page queries.
Results are printed and written to bench/results/registry.md.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import math
import os
import platform
import random
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any, Protocol

import sqlalchemy as sa
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from devices.importer import import_devices
from devices.registry import DeviceFilter, DeviceRepository, DeviceTypeRepository
from model.devices import MetricSpec
from storage.database import Database
from storage.pagination import encode_cursor
from storage.tenancy import TenantRepository
from tests.conftest import DbTarget, migrated_postgres, migrated_sqlite
from tests.harness.postgres import PostgresServer, connect_external_postgres, start_private_postgres

BENCH_POSTGRES_ENV = "FLATGIGS_BENCH_POSTGRES_URL"
RESULTS = Path(__file__).parent / "results" / "registry.md"

MAIN_TENANT = "bench-main"
NOISE_PREFIX = "bench-noise"
PAGE = 50
ACCEPT_RATIO = 3.0
RARE_STORE = "store-007"
FRESH_CALLS = 5

BARE_GET = sa.text("SELECT * FROM devices WHERE tenant_id = :t AND id = :id")
BARE_PAGE = sa.text("SELECT * FROM devices WHERE tenant_id = :t AND id > :after ORDER BY id LIMIT 50")
BARE_TYPE_PAGE = sa.text(
    "SELECT * FROM devices WHERE tenant_id = :t AND type_id = :type AND id > :after ORDER BY id LIMIT 50"
)
BARE_LABEL_PAGE = sa.text(
    "SELECT d.* FROM device_labels l JOIN devices d ON d.tenant_id = l.tenant_id AND d.id = l.device_id"
    " WHERE l.tenant_id = :t AND l.key = :k AND l.value = :v AND l.device_id > :after"
    " ORDER BY l.device_id LIMIT 50"
)
SET_TENANT_LOCAL = sa.text("SELECT set_config('app.tenant_id', :t, true)")


# --------------------------------------------------------------------------------------------
# Data set


@dataclass
class Dataset:
    """The main tenant's devices (ids in insertion order) and the id lists each filter selects."""

    n: int
    stores: int
    devices: list[dict[str, Any]]
    sorted_ids: list[str] = field(default_factory=list)
    freezer_ids: list[str] = field(default_factory=list)
    north_ids: list[str] = field(default_factory=list)
    rare_ids: list[str] = field(default_factory=list)


def make_dataset(n: int, seed: int) -> Dataset:
    """N devices with random serial-number ids: 90% freezers, 10% gateways; ~100 devices a store."""
    rng = random.Random(seed)
    stores = max(40, n // 100)
    seen: set[str] = set()
    devices: list[dict[str, Any]] = []
    for i in range(n):
        while True:
            device_id = f"SN{rng.getrandbits(48):012X}"
            if device_id not in seen:
                seen.add(device_id)
                break
        store = rng.randrange(stores)
        type_id = "gateway" if i % 10 == 9 else "freezer"
        devices.append(
            {
                "id": device_id,
                "type_id": type_id,
                "name": f"{type_id.title()} {i}",
                "labels": {"store": f"store-{store:03d}", "region": "north" if store % 2 == 0 else "south"},
                "attributes": {
                    "model": rng.choice(("FZ-200", "FZ-300", "FZ-450")),
                    "firmware": "2.3.1",
                    "capacity_l": rng.choice((200, 400, 800)),
                },
            }
        )
    ds = Dataset(n=n, stores=stores, devices=devices)
    ds.sorted_ids = sorted(d["id"] for d in devices)
    ds.freezer_ids = sorted(d["id"] for d in devices if d["type_id"] == "freezer")
    ds.north_ids = sorted(d["id"] for d in devices if d["labels"]["region"] == "north")
    ds.rare_ids = sorted(d["id"] for d in devices if d["labels"]["store"] == RARE_STORE)
    return ds


def import_rows(devices: list[dict[str, Any]]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line, record) pairs as the importer's readers produce them (line 1 is a header)."""
    for line, device in enumerate(devices, start=2):
        yield line, {**device, "labels": dict(device["labels"]), "attributes": dict(device["attributes"])}


# --------------------------------------------------------------------------------------------
# Probes: the same case code is run to time each call or to count its driver round trips


class Probe(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...


class Timer:
    """Records the duration of each start()/stop() window in nanoseconds."""

    def __init__(self) -> None:
        self.samples: list[int] = []
        self._t0 = 0

    def start(self) -> None:
        self._t0 = time.perf_counter_ns()

    def stop(self) -> None:
        self.samples.append(time.perf_counter_ns() - self._t0)


class NullProbe:
    """Warm-up: runs the calls, records nothing."""

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


class RoundTripCounter:
    """Counts driver round trips of an engine's connections while ``active``.

    PostgreSQL: each write of asyncpg to the socket (one per Sync: a statement, BEGIN, COMMIT,
    a ping). SQLite: each job aiosqlite hands to its worker thread (a thread hop; no network).
    Wrappers are installed on pooled connections at checkout/checkin and removed by close().
    """

    def __init__(self, engines: list[Any], sqlite: bool) -> None:
        self.sqlite = sqlite
        self.active = False
        self.count = 0
        self._patched: dict[int, tuple[Any, str]] = {}
        self._engines = [e.sync_engine for e in engines]
        for engine in self._engines:
            event.listen(engine, "checkout", self._on_checkout)
            event.listen(engine, "checkin", self._on_checkin)

    def _on_checkout(self, dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
        self._patch(dbapi_conn)

    def _on_checkin(self, dbapi_conn: Any, _record: Any) -> None:
        if dbapi_conn is not None:
            self._patch(dbapi_conn)

    def _patch(self, dbapi_conn: Any) -> None:
        driver = dbapi_conn._connection
        target, name = (driver, "_execute") if self.sqlite else (driver._transport, "write")
        if id(target) in self._patched:
            return
        original = getattr(target, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            if self.active:
                self.count += 1
            return original(*args, **kwargs)

        setattr(target, name, counted)
        self._patched[id(target)] = (target, name)

    def close(self) -> None:
        for engine in self._engines:
            event.remove(engine, "checkout", self._on_checkout)
            event.remove(engine, "checkin", self._on_checkin)
        for target, name in self._patched.values():
            with suppress(AttributeError):
                delattr(target, name)
        self._patched.clear()


class CountProbe:
    def __init__(self, counter: RoundTripCounter) -> None:
        self.counter = counter
        self.calls = 0

    def start(self) -> None:
        self.counter.active = True

    def stop(self) -> None:
        self.counter.active = False
        self.calls += 1


# --------------------------------------------------------------------------------------------
# Cases


@dataclass
class CaseRun:
    rows: int = 0
    calls: int = 0


CaseFn = Callable[[int, Probe, int], Awaitable[CaseRun]]


@dataclass
class Case:
    key: str
    group: str  # "lookup" or "page"
    label: str
    baseline: str | None  # key of the case the ratio is taken against
    diagnostic: bool
    run: CaseFn
    share: float = 1.0  # fraction of --lookups/--pages this case runs
    countable: bool = True  # round trips can be counted (uses the instrumented engines)


@dataclass
class CaseResult:
    case: Case
    samples_ns: list[int]
    rows_per_call: float
    round_trips: float | None = None

    def pct(self, q: float) -> float:
        ordered = sorted(self.samples_ns)
        rank = max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))
        return ordered[rank] / 1000.0

    @property
    def p50(self) -> float:
        return self.pct(0.50)

    @property
    def p99(self) -> float:
        return self.pct(0.99)


@asynccontextmanager
async def bare_session(db: Database, tenant: str) -> AsyncIterator[AsyncConnection]:
    """One plain connection of the app engine; on PostgreSQL the tenant is set once, for RLS.

    The connection stays in one transaction (autobegun by the first statement, rolled back at
    the end, which also discards the tenant setting), so each bare call is exactly one statement.
    """
    async with db.engine.connect() as conn:
        if not db.is_sqlite:
            await conn.execute(SET_TENANT_LOCAL, {"t": tenant})
        try:
            yield conn
        finally:
            await conn.rollback()


def lookup_ids(ds: Dataset, seed: int, n: int, round_no: int) -> list[str]:
    """Random existing ids; the same sequence for the bare and the product case of a round."""
    rng = random.Random(f"{seed}:lookup:{round_no}")
    return [rng.choice(ds.devices)["id"] for _ in range(n)]


def page_starts(ids: list[str], seed: int, shape: str, round_no: int) -> Iterator[str]:
    """Random start points (a page resumes after one of the matching ids); same for bare and product."""
    rng = random.Random(f"{seed}:pages:{shape}:{round_no}")
    while True:
        yield ids[rng.randrange(len(ids))]


def make_cases(db: Database, db_fresh: Database, ds: Dataset, seed: int, pages_per_walk: int) -> list[Case]:
    t = MAIN_TENANT

    def bare_get_case(n: int, probe: Probe, round_no: int) -> Awaitable[CaseRun]:
        async def run() -> CaseRun:
            out = CaseRun()
            async with bare_session(db, t) as conn:
                for device_id in lookup_ids(ds, seed, n, round_no):
                    probe.start()
                    row = (await conn.execute(BARE_GET, {"t": t, "id": device_id})).first()
                    probe.stop()
                    assert row is not None and row.id == device_id, device_id
                    out.rows += 1
                    out.calls += 1
            return out

        return run()

    def bare_get_txn_case(n: int, probe: Probe, round_no: int) -> Awaitable[CaseRun]:
        async def run() -> CaseRun:
            out = CaseRun()
            for device_id in lookup_ids(ds, seed, n, round_no):
                probe.start()
                async with db.tenant(t, readonly=True) as scope:
                    row = (await scope.conn.execute(BARE_GET, {"t": t, "id": device_id})).first()
                probe.stop()
                assert row is not None and row.id == device_id, device_id
                out.rows += 1
                out.calls += 1
            return out

        return run()

    def product_get_case(readonly: bool = True, settle: bool = False) -> CaseFn:
        def case(n: int, probe: Probe, round_no: int) -> Awaitable[CaseRun]:
            async def run() -> CaseRun:
                out = CaseRun()
                for device_id in lookup_ids(ds, seed, n, round_no):
                    probe.start()
                    async with db.tenant(t, readonly=readonly) as scope:
                        device = await DeviceRepository(scope).get(device_id)
                    if settle:
                        await db.settle()
                    probe.stop()
                    assert device.id == device_id, device_id
                    out.rows += 1
                    out.calls += 1
                return out

            return run()

        return case

    def bare_pages_case(stmt: sa.TextClause, params: dict[str, str], ids: list[str], shape: str) -> CaseFn:
        def case(n: int, probe: Probe, round_no: int) -> Awaitable[CaseRun]:
            async def run() -> CaseRun:
                out = CaseRun()
                starts = page_starts(ids, seed, shape, round_no)
                async with bare_session(db, t) as conn:
                    while out.calls < n:
                        after = next(starts)
                        for _ in range(pages_per_walk):
                            probe.start()
                            rows = (await conn.execute(stmt, {"t": t, **params, "after": after})).all()
                            probe.stop()
                            out.calls += 1
                            out.rows += len(rows)
                            if len(rows) < PAGE or out.calls >= n:
                                break
                            after = rows[-1].id
                return out

            return run()

        return case

    def bare_pages_txn_case(n: int, probe: Probe, round_no: int) -> Awaitable[CaseRun]:
        async def run() -> CaseRun:
            out = CaseRun()
            starts = page_starts(ds.sorted_ids, seed, "all", round_no)
            while out.calls < n:
                after = next(starts)
                for _ in range(pages_per_walk):
                    probe.start()
                    async with db.tenant(t, readonly=True) as scope:
                        rows = (await scope.conn.execute(BARE_PAGE, {"t": t, "after": after})).all()
                    probe.stop()
                    out.calls += 1
                    out.rows += len(rows)
                    if len(rows) < PAGE or out.calls >= n:
                        break
                    after = rows[-1].id
            return out

        return run()

    def product_pages_case(flt: DeviceFilter, ids: list[str], shape: str) -> CaseFn:
        def case(n: int, probe: Probe, round_no: int) -> Awaitable[CaseRun]:
            async def run() -> CaseRun:
                out = CaseRun()
                starts = page_starts(ids, seed, shape, round_no)
                while out.calls < n:
                    cursor: str | None = encode_cursor(next(starts))
                    for _ in range(pages_per_walk):
                        probe.start()
                        async with db.tenant(t, readonly=True) as scope:
                            page = await DeviceRepository(scope).list(flt, limit=PAGE, cursor=cursor)
                        probe.stop()
                        out.calls += 1
                        out.rows += len(page.items)
                        cursor = page.next_cursor
                        if cursor is None or out.calls >= n:
                            break
                return out

            return run()

        return case

    def fresh_connection_pages_case(flt: DeviceFilter, ids: list[str], shape: str) -> CaseFn:
        """The first FRESH_CALLS pages on each new pooled connection: on PostgreSQL the first 5
        executions of a prepared statement are planned with the actual values (custom plans)."""

        def case(n: int, probe: Probe, round_no: int) -> Awaitable[CaseRun]:
            async def run() -> CaseRun:
                out = CaseRun()
                starts = page_starts(ids, seed, shape + ":fresh", round_no)
                while out.calls < n:
                    # A new connection, same engine (so SQLAlchemy's compiled cache stays warm).
                    await db_fresh.settle()
                    await db_fresh.engine.dispose()
                    await db_fresh.ping()  # connect outside the timed calls
                    for _ in range(min(FRESH_CALLS, n - out.calls)):
                        probe.start()
                        async with db_fresh.tenant(t, readonly=True) as scope:
                            page = await DeviceRepository(scope).list(
                                flt, limit=PAGE, cursor=encode_cursor(next(starts))
                            )
                        probe.stop()
                        out.calls += 1
                        out.rows += len(page.items)
                return out

            return run()

        return case

    north = {"k": "region", "v": "north"}
    rare = {"k": "store", "v": RARE_STORE}
    north_filter = DeviceFilter(labels={"region": "north"})
    return [
        Case("a", "lookup", "(a) bare PK SELECT, 1 statement on an open connection", None, False,
             bare_get_case),
        Case("b", "lookup", "(b) db.tenant(readonly=True) + DeviceRepository.get", "a", False,
             product_get_case()),
        Case("a2", "lookup", "bare PK SELECT inside its own read-only scope", "a", True,
             bare_get_txn_case),
        Case("b2", "lookup", "(b) until its connection is back in the pool (ROLLBACK included)", "a", True,
             product_get_case(settle=True)),
        Case("b3", "lookup", "DeviceRepository.get in a read-write db.tenant() (GETs before ADR 0022)", "a",
             True, product_get_case(readonly=False)),
        Case("c", "page", "(c) bare PK page, 1 statement", None, False,
             bare_pages_case(BARE_PAGE, {}, ds.sorted_ids, "all")),
        Case("d0", "page", "(d) list(): no filter", "c", False,
             product_pages_case(DeviceFilter(), ds.sorted_ids, "all")),
        Case("d1", "page", "(d) list(): type_id=freezer", "c", False,
             product_pages_case(DeviceFilter(type_id="freezer"), ds.freezer_ids, "type")),
        Case("d2", "page", "(d) list(): label region=north (common)", "c", False,
             product_pages_case(DeviceFilter(labels={"region": "north"}), ds.north_ids, "north")),
        Case("d3", "page", f"(d) list(): label store={RARE_STORE} (rare)", "c", False,
             product_pages_case(DeviceFilter(labels={"store": RARE_STORE}), ds.rare_ids, "rare")),
        Case("c0", "page", "bare PK page inside its own read-only scope", "c", True,
             bare_pages_txn_case),
        Case("d0f", "page", f"(d) list(): no filter, first {FRESH_CALLS} calls on new connections", "c",
             True, fresh_connection_pages_case(DeviceFilter(), ds.sorted_ids, "all"),
             share=1 / 3, countable=False),
        Case("d2f", "page", f"(d) list(): region=north, first {FRESH_CALLS} calls on new connections", "c",
             True, fresh_connection_pages_case(north_filter, ds.north_ids, "north"),
             share=1 / 3, countable=False),
        Case("c1", "page", "bare page, same shape as type filter", "c", True,
             bare_pages_case(BARE_TYPE_PAGE, {"type": "freezer"}, ds.freezer_ids, "type")),
        Case("c2", "page", "bare page, same shape as region=north", "c", True,
             bare_pages_case(BARE_LABEL_PAGE, north, ds.north_ids, "north")),
        Case("c3", "page", f"bare page, same shape as store={RARE_STORE}", "c", True,
             bare_pages_case(BARE_LABEL_PAGE, rare, ds.rare_ids, "rare")),
    ]  # fmt: skip


# --------------------------------------------------------------------------------------------
# One backend


@dataclass
class BackendResult:
    backend: str
    version: str
    settings: str
    imports: ImportStats
    results: list[CaseResult]
    plans: dict[str, list[str]] = field(default_factory=dict)
    load: str = ""

    @property
    def imported(self) -> int:
        return self.imports.imported

    @property
    def import_seconds(self) -> float:
        return self.imports.seconds

    @property
    def rate(self) -> float:
        return self.imported / self.import_seconds if self.import_seconds else 0.0

    def by_key(self) -> dict[str, CaseResult]:
        return {r.case.key: r for r in self.results}


class RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} devices/s" if speed else "… devices/s", style="progress.data.speed")


def progress_bar(console: Console) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )


async def setup_tenant(db: Database, tenant_id: str) -> None:
    async with db.platform() as conn:
        await TenantRepository(conn).create(tenant_id, name=f"Bench {tenant_id}")
    async with db.tenant(tenant_id) as scope:
        types = DeviceTypeRepository(scope)
        await types.create(
            "freezer",
            name="Freezer",
            metrics=[MetricSpec(name="temp", unit="°C", min=-40, max=10), MetricSpec(name="door_open")],
        )
        await types.create("gateway", name="Store gateway", metrics=[MetricSpec(name="rssi", unit="dBm")])


def noise_tenants(n: int) -> tuple[int, int]:
    """How many noise tenants and devices each: a small fraction of N, at most 2,000 each."""
    return 3, max(50, min(2000, n // 100))


@dataclass
class ImportStats:
    seconds: float
    imported: int
    noise: int
    decile_rates: list[float]  # devices/s over each tenth of the main import
    note: str = ""


async def import_all(db: Database, ds: Dataset, console: Console, backend: str) -> ImportStats:
    """Create the tenants and import everything through import_devices, timing the main tenant."""
    count, per_tenant = noise_tenants(ds.n)
    noise_ids = [f"{NOISE_PREFIX}-{i}" for i in range(1, count + 1)]
    for tenant_id in [MAIN_TENANT, *noise_ids]:
        await setup_tenant(db, tenant_id)
    with progress_bar(console) as progress:
        # Noise first: same device ids and labels as the main tenant's first devices.
        noise_task = progress.add_task(f"{backend}: noise tenants", total=count * per_tenant)
        for tenant_id in noise_ids:
            report = await import_devices(
                db,
                tenant_id,
                import_rows(ds.devices[:per_tenant]),
                on_progress=lambda k: progress.advance(noise_task, k),
            )
            assert report.imported == per_tenant and not report.errors, report.errors[:3]
        task = progress.add_task(f"{backend}: import {MAIN_TENANT}", total=ds.n)
        marks: list[tuple[int, float]] = []
        done = 0

        def on_progress(k: int) -> None:
            nonlocal done
            done += k
            progress.advance(task, k)
            if done * 10 // ds.n > len(marks) - 1:
                marks.append((done, time.perf_counter()))

        started = time.perf_counter()
        marks.append((0, started))
        report = await import_devices(db, MAIN_TENANT, import_rows(ds.devices), on_progress=on_progress)
        seconds = time.perf_counter() - started
    if report.errors or report.imported != ds.n:
        raise RuntimeError(f"import refused {report.refused} rows, e.g. {report.errors[:3]}")
    rates = [(d1 - d0) / (t1 - t0) for (d0, t0), (d1, t1) in itertools.pairwise(marks) if t1 > t0]
    return ImportStats(seconds, report.imported, count * per_tenant, rates)


async def autoanalyze_note(db: Database) -> str:
    """Whether autovacuum analyzed the device tables during the import (PostgreSQL)."""
    async with db.platform() as conn:
        rows = await conn.execute(
            sa.text(
                "SELECT relname, autoanalyze_count, autovacuum_count FROM pg_stat_user_tables"
                " WHERE relname IN ('devices', 'device_labels') ORDER BY relname"
            )
        )
        return "; ".join(
            f"{r.relname}: {r.autoanalyze_count} autoanalyze, {r.autovacuum_count} autovacuum" for r in rows
        )


async def backend_info(db: Database, target: DbTarget) -> tuple[str, str]:
    async with db.platform() as conn:
        if db.is_sqlite:
            version = (await conn.execute(sa.text("SELECT sqlite_version()"))).scalar_one()
            journal = (await conn.execute(sa.text("PRAGMA journal_mode"))).scalar_one()
            sync = (await conn.execute(sa.text("PRAGMA synchronous"))).scalar_one()
            return f"SQLite {version}", f"journal_mode={journal}, synchronous={sync} (Database defaults)"
        version = (await conn.execute(sa.text("SHOW server_version"))).scalar_one()
        names = ("shared_buffers", "work_mem", "fsync", "synchronous_commit", "jit")
        rows = await conn.execute(
            sa.text("SELECT name, setting, unit FROM pg_settings WHERE name = ANY(:n) ORDER BY name"),
            {"n": list(names)},
        )
        settings = ", ".join(f"{r.name}={r.setting}{'x' + r.unit if r.unit else ''}" for r in rows)
        return f"PostgreSQL {version}", settings + f"; app role {target.app_role} (NOBYPASSRLS)"


async def analyze(target: DbTarget) -> None:
    """Gather planner statistics as autovacuum would after a bulk load (PostgreSQL only)."""
    engine = create_async_engine(target.owner_url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(sa.text("VACUUM (ANALYZE) devices, device_labels, device_types"))
    finally:
        await engine.dispose()


async def explain_pages(db: Database, ds: Dataset) -> dict[str, list[str]]:
    """The plans of the exact statements DeviceRepository.list sends (captured, then EXPLAINed)."""
    plans: dict[str, list[str]] = {}
    cases = {
        "list(): no filter": (DeviceFilter(), ds.sorted_ids),
        "list(): type_id=freezer": (DeviceFilter(type_id="freezer"), ds.freezer_ids),
        "list(): region=north": (DeviceFilter(labels={"region": "north"}), ds.north_ids),
        f"list(): store={RARE_STORE}": (DeviceFilter(labels={"store": RARE_STORE}), ds.rare_ids),
        "get()": (None, ds.sorted_ids),
    }
    for name, (flt, ids) in cases.items():
        captured: list[tuple[str, Any]] = []

        def grab(_c: Any, _cur: Any, statement: str, parameters: Any, _ctx: Any, _many: bool) -> None:
            captured.append((statement, parameters))  # noqa: B023

        start = ids[len(ids) // 3]
        event.listen(db.engine.sync_engine, "before_cursor_execute", grab)
        try:
            async with db.tenant(MAIN_TENANT) as scope:
                if flt is None:
                    await DeviceRepository(scope).get(start)
                else:
                    await DeviceRepository(scope).list(flt, limit=PAGE, cursor=encode_cursor(start))
        finally:
            event.remove(db.engine.sync_engine, "before_cursor_execute", grab)
        statement, params = captured[-1]
        modes = ["EXPLAIN QUERY PLAN "] if db.is_sqlite else ["EXPLAIN (ANALYZE, BUFFERS) "]
        for prefix in modes:
            async with db.tenant(MAIN_TENANT) as scope:
                rows = (await scope.conn.exec_driver_sql(prefix + statement, params)).all()
            lines = [" ".join(str(r[-1]).split()) if db.is_sqlite else str(r[0]) for r in rows]
            plans[name] = [f"-- {' '.join(statement.split())}", *lines]
        if not db.is_sqlite:
            # asyncpg runs the product's statements as prepared statements, which PostgreSQL may
            # switch to a generic plan after 5 executions: show that plan too (PREPARE/EXECUTE
            # over the simple protocol; EXPLAIN with bound parameters would plan with the values).
            values = ", ".join(_sql_literal(p) for p in params)
            async with db.tenant(MAIN_TENANT) as scope:
                raw = (await scope.conn.get_raw_connection()).driver_connection
                assert raw is not None
                await raw.execute("SET LOCAL plan_cache_mode = force_generic_plan")
                await raw.execute(f"PREPARE fgbench_q AS {statement}")
                rows = await raw.fetch(f"EXPLAIN (ANALYZE) EXECUTE fgbench_q({values})")
                await raw.execute("DEALLOCATE fgbench_q")
            plans[name + " [generic plan]"] = [str(r[0]) for r in rows]
    return plans


def _sql_literal(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        raise TypeError(f"unexpected parameter {value!r}")
    if isinstance(value, int):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


async def bench_backend(
    backend: str, target: DbTarget, ds: Dataset, args: argparse.Namespace, console: Console
) -> BackendResult:
    db = Database(target.app_url)
    db_fresh = Database(target.app_url, pool_size=1)
    try:
        version, settings = await backend_info(db, target)
        console.log(f"{backend}: {version}; {settings}")
        stats = await import_all(db, ds, console, backend)
        if not db.is_sqlite:
            await asyncio.sleep(1.0)  # let the statistics collector catch up
            stats.note = "during the import: " + await autoanalyze_note(db)
        console.log(
            f"{backend}: imported {stats.imported:,} devices in {stats.seconds:.1f}s = "
            f"{stats.imported / stats.seconds:,.0f}/s; by tenth: "
            + " ".join(f"{r:,.0f}" for r in stats.decile_rates)
            + (f"; {stats.note}" if stats.note else "")
        )
        if not db.is_sqlite:
            started = time.perf_counter()
            await analyze(target)
            console.log(f"{backend}: VACUUM (ANALYZE) took {time.perf_counter() - started:.1f}s")
        cases = make_cases(db, db_fresh, ds, args.seed, args.pages_per_walk)
        timers = {case.key: Timer() for case in cases}
        runs = {case.key: CaseRun() for case in cases}

        def iterations(case: Case) -> int:
            return max(1, int((args.lookups if case.group == "lookup" else args.pages) * case.share))

        for case in cases:
            await case.run(max(20, iterations(case) // 10), NullProbe(), -1)  # caches, prepared statements
        load_before = os.getloadavg()
        # Interleaved rounds: a transient slowdown of the machine hits every case alike.
        for round_no in range(args.rounds):
            gc.collect()
            for case in cases:
                total = iterations(case)
                n = total // args.rounds + (1 if round_no < total % args.rounds else 0)
                run = await case.run(n, timers[case.key], round_no)
                runs[case.key].rows += run.rows
                runs[case.key].calls += run.calls
            console.log(f"{backend}: timing round {round_no + 1}/{args.rounds} done")
        load_after = os.getloadavg()
        results: list[CaseResult] = []
        for case in cases:
            run, samples = runs[case.key], timers[case.key].samples
            result = CaseResult(case, samples, run.rows / max(run.calls, 1))
            results.append(result)
            console.log(
                f"{backend}: {case.label}: n={len(samples)} p50={result.p50:,.0f}µs "
                f"p99={result.p99:,.0f}µs rows/call={result.rows_per_call:.1f}"
            )
        # Round trips per call, counted after timing so the counting wrappers cost nothing above.
        counter = RoundTripCounter([db.engine], sqlite=db.is_sqlite)
        try:
            for result in results:
                if not result.case.countable:
                    continue
                await result.case.run(5, NullProbe(), -2)  # wrap the pooled connections
                probe = CountProbe(counter)
                counter.count = 0
                await result.case.run(50, probe, -3)
                result.round_trips = counter.count / max(probe.calls, 1)
        finally:
            counter.close()
        plans = await explain_pages(db, ds) if args.explain else {}
        load = f"{load_before[0]:.1f} at the start, {load_after[0]:.1f} at the end (1-minute load average)"
        return BackendResult(backend, version, settings, stats, results, plans, load)
    finally:
        await db_fresh.dispose()
        await db.dispose()


# --------------------------------------------------------------------------------------------
# Reporting


def fmt_us(value: float) -> str:
    return f"{value:,.0f}"


def ratio(result: CaseResult, base: CaseResult | None, attr: str) -> str:
    if base is None:
        return "—"
    return f"{getattr(result, attr) / getattr(base, attr):.2f}x"


HEADERS = [
    "backend",
    "case",
    "calls",
    "p50 µs",
    "p99 µs",
    "x bare p50",
    "x bare p99",
    "rows/call",
    "round trips/call",
]


def table_rows(res: BackendResult) -> list[list[str]]:
    keyed = res.by_key()
    rows = []
    for r in res.results:
        base = keyed.get(r.case.baseline) if r.case.baseline else None
        label = ("diag: " if r.case.diagnostic else "") + r.case.label
        if base is not None:
            label += f" vs {base.case.key}"
        rows.append(
            [
                res.backend,
                label,
                f"{len(r.samples_ns):,}",
                fmt_us(r.p50),
                fmt_us(r.p99),
                ratio(r, base, "p50"),
                ratio(r, base, "p99"),
                f"{r.rows_per_call:.1f}",
                "—" if r.round_trips is None else f"{r.round_trips:.1f}",
            ]
        )
    return rows


def acceptance(res: BackendResult) -> list[str]:
    """Lookups and filtered pages within ACCEPT_RATIOx of the bare query (p50 and p99)."""
    keyed = res.by_key()
    lines = []
    for key in ("b", "d1", "d2", "d3"):
        r = keyed[key]
        base = keyed[r.case.baseline or ""]
        p50, p99 = r.p50 / base.p50, r.p99 / base.p99
        verdict = "PASS" if p50 <= ACCEPT_RATIO else "FAIL"
        lines.append(
            f"{res.backend}: {r.case.label} vs {base.case.key}: {p50:.2f}x p50, {p99:.2f}x p99 -> "
            f"{verdict} (target ≤ {ACCEPT_RATIO:g}x at p50)"
        )
    return lines


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f", {int(line.split()[1]) / 1024 / 1024:.0f} GiB RAM"
                break
    except OSError:
        pass
    nproc = len(os.sched_getaffinity(0))
    return f"nproc={nproc}, {cpu}{mem}, {platform.system()} {platform.release()}"


def write_markdown(path: Path, results: list[BackendResult], ds: Dataset, meta: dict[str, str]) -> None:
    noise_count, noise_each = noise_tenants(ds.n)
    lines = [
        "# Device registry benchmark",
        "",
        f"- Date: {meta['date']}",
        f"- Machine: {machine()}",
        f"- Python {platform.python_version()}; SQLAlchemy {package_version('sqlalchemy')}, "
        f"asyncpg {package_version('asyncpg')}, aiosqlite {package_version('aiosqlite')}",
    ]
    for res in results:
        lines.append(f"- {res.backend}: {res.version} ({res.settings})")
    lines += [
        f"- N = {ds.n:,} devices in tenant `{MAIN_TENANT}` (90% type `freezer`, 10% `gateway`; labels "
        f"store=store-NNN over {ds.stores:,} stores ≈ {ds.n / ds.stores:.0f} devices/store, "
        "region=north/south), "
        f"plus {noise_count} noise tenants x {noise_each:,} devices with the same ids and labels",
        f"- Command: `{meta['command']}`",
        f"- Total run time: {meta['runtime']}",
        "",
        "## Import (devices.importer.import_devices, batch 1,000)",
        "",
        "| backend | devices | seconds | devices/s | devices/s in each tenth of the import |",
        "|---|---:|---:|---:|---|",
    ]
    for res in results:
        tenths = " / ".join(f"{r:,.0f}" for r in res.imports.decile_rates)
        lines.append(
            f"| {res.backend} | {res.imported:,} | {res.import_seconds:.1f} | {res.rate:,.0f} | {tenths} |"
        )
    notes = [f"- {res.backend}: {res.imports.note}" for res in results if res.imports.note]
    lines += ["", *notes] if notes else []
    lines += [
        "",
        "## Latency (µs per call; ratios against the bare statement named after `vs`)",
        "",
        "| " + " | ".join(HEADERS) + " |",
        "|---|---|" + "---:|" * (len(HEADERS) - 2),
    ]
    for res in results:
        for row in table_rows(res):
            lines.append("| " + " | ".join(row) + " |")
    lines += [""]
    lines += [f"- {res.backend}: machine load during the timing: {res.load}" for res in results]
    lines += ["", "## Acceptance (lookups and filtered pages within 3x of the bare query)", ""]
    for res in results:
        lines += [f"- {line}" for line in acceptance(res)]
    lines += [
        "",
        "## Method",
        "",
        "- (a) and (c) run on one connection checked out once from the app engine; on PostgreSQL the "
        "tenant is set once for that connection's transaction (`set_config(..., true)`), so RLS "
        "still filters, and each call is exactly one statement / one round trip.",
        "- (b) and (d) are the product path of the GET endpoints: each call is "
        "`async with db.tenant(t, readonly=True)` and a repository call building Device objects "
        "(ADR 0022). PostgreSQL: pool checkout, `BEGIN READ ONLY; SET LOCAL app.tenant_id = ...` in "
        "one message, the query; the ROLLBACK and the return of the connection to the pool run after "
        "the caller has its rows, during the next call, so their CPU is inside the measured sequence. "
        "SQLite: pool checkout and the query in autocommit, no write lock.",
        "- `diag:` rows separate the costs: the bare statement inside its own read-only scope; the "
        "lookup timed until its connection is back in the pool (ROLLBACK included); the lookup in a "
        "read-write `db.tenant()` (BEGIN, set_config, query, COMMIT; SQLite: in-process queue and "
        "BEGIN IMMEDIATE), which is what the GET endpoints used before; bare SQL of the same shape as "
        "each filtered page.",
        "- Pages resume after a random matching id (same start points for the bare and product "
        f"runs) and walk up to {meta['pages_per_walk']} pages via cursors; rows/call < 50 means walks "
        "reached the end of the matching set.",
        f"- `first {FRESH_CALLS} calls on new connections`: the pool of a separate engine is disposed "
        "every 5 pages and a new connection made before timing (SQLAlchemy's compiled cache stays "
        "warm; the driver prepares each statement again on the new connection). PostgreSQL plans "
        "the first 5 executions of a prepared statement with the actual values (custom plans) and "
        "may switch to a generic plan afterwards, so this "
        "is what each new or recycled pooled connection, and each connection after a plan "
        "invalidation (e.g. autovacuum ANALYZE), pays. Round trips are not counted for it.",
        "- Round trips/call: PostgreSQL = asyncpg socket writes (each BEGIN, statement, COMMIT, "
        "ROLLBACK is one request/response, including a reader's ROLLBACK sent after the call); "
        "SQLite = jobs handed to aiosqlite's worker thread (thread hops). Counted in a separate pass "
        "after timing.",
        "- PostgreSQL: `VACUUM (ANALYZE)` after the import, as autovacuum would do. SQLite: no ANALYZE "
        "(the product never runs it).",
        f"- Warm-up of 10% (≥ 20 calls) per case, then {meta['rounds']} interleaved rounds (every case "
        f"runs 1/{meta['rounds']} of its calls per round, so a transient slowdown hits all cases); "
        f"seed {meta['seed']}.",
    ]
    for res in results:
        if res.plans:
            lines += ["", f"## Plans ({res.backend})", ""]
            for name, plan in res.plans.items():
                lines += [f"{name}:", "", "```", *plan, "```", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def print_table(console: Console, results: list[BackendResult]) -> None:
    table = Table(title="Device registry: product path vs bare SQL (µs)")
    for i, header in enumerate(HEADERS):
        table.add_column(header, justify="left" if i < 2 else "right")
    for res in results:
        for row in table_rows(res):
            table.add_row(*row)
        table.add_section()
    console.print(table)
    for res in results:
        console.print(
            f"{res.backend}: import {res.imported:,} devices in {res.import_seconds:.1f}s = "
            f"{res.rate:,.0f} devices/s"
        )
        for line in acceptance(res):
            console.print("  " + line)


# --------------------------------------------------------------------------------------------
# Entry point


def run_sqlite(ds: Dataset, args: argparse.Namespace, console: Console) -> BackendResult:
    directory = Path(tempfile.mkdtemp(prefix="flatgigs-bench-sqlite-"))
    try:
        target = migrated_sqlite(directory)
        return asyncio.run(bench_backend("sqlite", target, ds, args, console))
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def run_postgres(ds: Dataset, args: argparse.Namespace, console: Console) -> BackendResult:
    url = os.environ.get(BENCH_POSTGRES_ENV)
    log_dir = Path(tempfile.mkdtemp(prefix="flatgigs-bench-pglog-"))
    server: PostgresServer | None = None
    ok = False
    try:
        if url:
            server = connect_external_postgres(url)
            console.log(f"postgres: using {BENCH_POSTGRES_ENV} ({server.host}:{server.port})")
        else:
            server = start_private_postgres(log_dir)
            pid = server.process.pid if server.process is not None else None
            console.log(f"postgres: private cluster on {server.host}:{server.port} (pid {pid})")
        target = migrated_postgres(server, prefix="bench")
        result = asyncio.run(bench_backend("postgres", target, ds, args, console))
        ok = True
        return result
    finally:
        if server is not None:
            # close(): the private cluster is stopped by its PID (SIGINT, SIGKILL after 10 s) and its
            # directory deleted; on an external server only our database and roles are dropped.
            # (stop() alone keeps the cluster's data directory, for restart tests.)
            server.close()
            if server.external:
                console.log("postgres: dropped the benchmark database and roles")
            else:
                gone = server.cluster_dir is None or not server.cluster_dir.exists()
                console.log(f"postgres: stopped; cluster directory {'removed' if gone else 'LEFT BEHIND'}")
        if ok:
            shutil.rmtree(log_dir, ignore_errors=True)
        else:
            console.log(f"postgres: server log kept in {log_dir}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.registry", description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=500_000, help="devices in the main tenant")
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--lookups", type=int, default=2000, help="timed lookups per case")
    parser.add_argument("--pages", type=int, default=300, help="timed pages per case")
    parser.add_argument("--pages-per-walk", type=int, default=3, help="pages followed from each start")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved timing rounds")
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument("--explain", action="store_true", help="add the product queries' plans")
    parser.add_argument("--output", type=Path, default=RESULTS, help="Markdown results file")
    return parser.parse_args(argv)


def _raise_on_term(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwind through the finally blocks that stop PostgreSQL


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_on_term)
    # Wide enough for the table when the output goes to a file or a pipe.
    console = Console() if sys.stdout.isatty() else Console(width=180)
    started = time.perf_counter()
    console.log(f"generating {args.devices:,} devices")
    ds = make_dataset(args.devices, args.seed)
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    results = []
    for backend in backends:
        runner = run_sqlite if backend == "sqlite" else run_postgres
        results.append(runner(ds, args, console))
    runtime = time.perf_counter() - started
    print_table(console, results)
    meta = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python -m bench.registry " + " ".join(sys.argv[1:] if argv is None else argv),
        "runtime": f"{runtime / 60:.1f} min ({runtime:.0f} s)",
        "seed": str(args.seed),
        "rounds": str(args.rounds),
        "pages_per_walk": str(args.pages_per_walk),
    }
    write_markdown(args.output, results, ds, meta)
    console.print(f"total run time {meta['runtime']}; results written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
