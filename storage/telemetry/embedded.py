"""The embedded telemetry store: time series in a SQLite file of their own, for one-machine pilots.

Sized for a pilot of a few hundred devices with no server to run. The samples live in their own
SQLite file (not the relational database), so telemetry's write volume never contends with the
relational data for SQLite's single writer lock and the file can be moved or deleted on its own.

Layout: one ``WITHOUT ROWID`` table clustered on (tenant, device, metric, ts), ``ts`` in integer
microseconds since the Unix epoch. Every statement names the tenant in its key prefix, which is
both the isolation rule and what makes ``latest`` and ``query`` index seeks rather than scans.

Values keep their type: numbers go to ``num`` (a STRICT ``ANY`` column, so an int stays an int
and a float a float), strings to ``txt``, booleans to ``flag``; exactly one is set per row. Ints
that do not fit SQLite's 64-bit integers are stored as floats.

Writing the same (tenant, device, metric, ts) again replaces the value, as InfluxDB does.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiosqlite

from model.errors import BackpressureError
from model.readings import MetricValue, Reading
from storage.telemetry._time import check_tenant, every_micros, from_micros, to_micros
from storage.telemetry.port import Aggregate, Sample

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
# How long a writer waits for another process's write lock before we report backpressure.
_BUSY_TIMEOUT_MS = 5000
_BUSY_RETRY_AFTER_S = 1.0
# Every series takes inserts at its own end of the clustered key, so the hot pages are one leaf
# per (device, metric): 32 MiB keeps ~8,000 of them (SQLite's default is 2 MiB). A batch dirties
# about one page per row, so checkpointing every 1,000 WAL pages (the default) meant a checkpoint
# after nearly every batch; every 10,000 pages (~40 MiB of WAL) cuts write CPU by ~20%.
_CACHE_KIB = 32 * 1024
_WAL_AUTOCHECKPOINT_PAGES = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    tenant TEXT NOT NULL,
    device TEXT NOT NULL,
    metric TEXT NOT NULL,
    ts INTEGER NOT NULL,
    num ANY,
    txt TEXT,
    flag INTEGER,
    CHECK ((num IS NOT NULL) + (txt IS NOT NULL) + (flag IS NOT NULL) = 1),
    CHECK (num IS NULL OR typeof(num) IN ('integer', 'real')),
    PRIMARY KEY (tenant, device, metric, ts)
) STRICT, WITHOUT ROWID
"""

_INSERT = (
    "INSERT OR REPLACE INTO samples (tenant, device, metric, ts, num, txt, flag) VALUES (?, ?, ?, ?, ?, ?, ?)"
)

# The metric names of a device, enumerated by index seeks (one per name) instead of a scan of
# the device's whole history, which SELECT DISTINCT would do.
_ALL_NAMES = """
names(metric) AS (
    SELECT min(metric) FROM samples WHERE tenant = :tenant AND device = :device
    UNION ALL
    SELECT (SELECT min(metric) FROM samples
            WHERE tenant = :tenant AND device = :device AND metric > names.metric)
    FROM names WHERE names.metric IS NOT NULL
)"""
_GIVEN_NAMES = "names(metric) AS (SELECT DISTINCT value FROM json_each(:names))"

_LATEST = """
WITH RECURSIVE {names}
SELECT s.metric, s.ts, s.num, s.txt, s.flag
FROM names JOIN samples AS s
  ON s.tenant = :tenant AND s.device = :device AND s.metric = names.metric
 AND s.ts = (SELECT max(ts) FROM samples
             WHERE tenant = :tenant AND device = :device AND metric = names.metric)
"""

_RANGE = "tenant = :tenant AND device = :device AND metric = :metric AND ts >= :start AND ts < :end"

_RAW = f"SELECT ts, num, txt, flag FROM samples WHERE {_RANGE} ORDER BY ts"  # noqa: S608 - constants only

# Window start aligned to the epoch; the double modulo keeps pre-1970 timestamps flooring
# downwards (SQLite's % truncates towards zero).
_WINDOWED = f"""
SELECT {{select}} FROM (
    SELECT ts - ((ts % :every) + :every) % :every AS bucket, ts, num, txt, flag
    FROM samples WHERE {_RANGE}
) GROUP BY bucket {{having}} ORDER BY bucket
"""  # noqa: S608 - constants only; values are bound parameters

# MEAN, MIN and MAX read only ``num``, so non-numeric samples are ignored and a window with
# none is dropped. LAST relies on SQLite's documented rule that bare columns next to max() come
# from the row holding the maximum.
_AGGREGATES: dict[Aggregate, tuple[str, str]] = {
    Aggregate.MEAN: ("bucket, avg(num), NULL, NULL", "HAVING count(num) > 0"),
    Aggregate.MIN: ("bucket, min(num), NULL, NULL", "HAVING count(num) > 0"),
    Aggregate.MAX: ("bucket, max(num), NULL, NULL", "HAVING count(num) > 0"),
    Aggregate.COUNT: ("bucket, count(*), NULL, NULL", ""),
    Aggregate.LAST: ("bucket, num, txt, flag, max(ts)", ""),
}


def _columns(value: MetricValue) -> tuple[int | float | None, str | None, int | None]:
    """The (num, txt, flag) columns of one value; bool is tested first as it is an int too."""
    if isinstance(value, bool):
        return None, None, int(value)
    if isinstance(value, int):
        return (value if _INT64_MIN <= value <= _INT64_MAX else float(value)), None, None
    if isinstance(value, float):
        return value, None, None
    return None, value, None


def _value(num: Any, txt: Any, flag: Any) -> MetricValue:
    if num is not None:
        return num  # type: ignore[no-any-return]
    if flag is not None:
        return bool(flag)
    return str(txt)


def _rows(readings: Iterable[Reading]) -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = []
    append = rows.append
    for reading in readings:
        tenant, device, ts = reading.tenant_id, reading.device_id, to_micros(reading.ts)
        for metric, value in reading.metrics.items():
            kind = type(value)  # floats and bools first, the rest as _columns says
            if kind is float:
                append((tenant, device, metric, ts, value, None, None))
            elif kind is bool:
                append((tenant, device, metric, ts, None, None, int(value)))
            else:
                append((tenant, device, metric, ts, *_columns(value)))
    return rows


class EmbeddedTelemetryStore:
    """A ``TelemetryStore`` in a local SQLite file (WAL), opened lazily on first use.

    One connection serves reads and writes; an asyncio lock keeps a read from landing inside
    another coroutine's write transaction and two writes from nesting. That is plenty for a
    pilot; a larger fleet belongs on InfluxDB.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    async def _connection(self) -> aiosqlite.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a batch is exactly one
            # transaction and reads run in autocommit.
            conn = await aiosqlite.connect(self.path, isolation_level=None)
            try:
                await conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
                await conn.execute("PRAGMA journal_mode = WAL")
                # NORMAL is durable against crashes of the process; a power cut may lose the
                # last transactions, an accepted trade for telemetry in exchange for not
                # syncing on every batch.
                await conn.execute("PRAGMA synchronous = NORMAL")
                await conn.execute(f"PRAGMA cache_size = -{_CACHE_KIB}")
                await conn.execute(f"PRAGMA wal_autocheckpoint = {_WAL_AUTOCHECKPOINT_PAGES}")
                await conn.execute(_SCHEMA)
            except BaseException:
                await conn.close()
                raise
            self._conn = conn
        return self._conn

    async def write(self, readings: Sequence[Reading]) -> None:
        """Store a batch of readings in one transaction; the last value of a repeated key wins."""
        for tenant_id in {r.tenant_id for r in readings}:
            check_tenant(tenant_id)
        rows = _rows(readings)
        if not rows:
            return
        async with self._lock:
            conn = await self._connection()
            try:
                await conn.execute("BEGIN IMMEDIATE")
                try:
                    await conn.executemany(_INSERT, rows)
                    await conn.execute("COMMIT")
                except BaseException:
                    await conn.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as exc:
                # Another process held the write lock past busy_timeout: the caller should
                # buffer and retry rather than drop the batch.
                if "locked" in str(exc) or "busy" in str(exc):
                    raise BackpressureError(
                        f"telemetry file {self.path} is busy: {exc}", retry_after=_BUSY_RETRY_AFTER_S
                    ) from exc
                raise

    async def _fetch(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        async with self._lock:
            conn = await self._connection()
            async with conn.execute(sql, params) as cursor:
                return [tuple(row) for row in await cursor.fetchall()]

    async def latest(
        self, tenant_id: str, device_id: str, metrics: Sequence[str] | None = None
    ) -> dict[str, Sample]:
        """The most recent sample of each metric of a device (all metrics unless named)."""
        check_tenant(tenant_id)
        params: dict[str, Any] = {"tenant": tenant_id, "device": device_id}
        if metrics is None:
            names = _ALL_NAMES
        else:
            names = _GIVEN_NAMES
            params["names"] = json.dumps(list(metrics))
        rows = await self._fetch(_LATEST.format(names=names), params)
        return {
            metric: Sample(from_micros(ts), _value(num, txt, flag)) for metric, ts, num, txt, flag in rows
        }

    async def query(
        self,
        tenant_id: str,
        device_id: str,
        metric: str,
        start: datetime,
        end: datetime,
        *,
        every: timedelta | None = None,
        aggregate: Aggregate = Aggregate.MEAN,
    ) -> list[Sample]:
        """Samples in [start, end), raw when ``every`` is None, else one per non-empty window."""
        check_tenant(tenant_id)
        params: dict[str, Any] = {
            "tenant": tenant_id,
            "device": device_id,
            "metric": metric,
            "start": to_micros(start),
            "end": to_micros(end),
        }
        if every is None:
            sql = _RAW
        else:
            params["every"] = every_micros(every)
            select, having = _AGGREGATES[aggregate]
            sql = _WINDOWED.format(select=select, having=having)
        rows = await self._fetch(sql, params)
        return [Sample(from_micros(row[0]), _value(*row[1:4])) for row in rows]

    async def close(self) -> None:
        """Close the SQLite connection (the store reopens it if used again)."""
        async with self._lock:
            if self._conn is not None:
                conn, self._conn = self._conn, None
                await conn.close()
