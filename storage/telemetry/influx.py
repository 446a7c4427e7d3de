"""The InfluxDB telemetry store: production time series over the InfluxDB 1.x-compatible HTTP API.

Speaks line protocol on ``POST /write`` and InfluxQL on ``/query``, which InfluxDB 1.x serves
natively and 2.x/3.x through their v1 compatibility endpoints.

Isolation: one database per tenant, ``<prefix><tenant_id>``, created with ``CREATE DATABASE``
(idempotent in 1.x) on the tenant's first write. Nothing a query can say reaches another
tenant's database, since the database is a request parameter and never part of InfluxQL text.

Layout: measurement ``telemetry``, tag ``device``, one field per metric, time in microseconds.

Types: numbers are written as floats, ints included. InfluxDB fixes a field's type per shard
and rejects a later point of another type, so a metric whose values happen to be whole numbers
(``21``) next to fractional ones (``21.5``) would otherwise be refused half the time. Bools and
strings keep their type. Reading back, every number is a float except COUNT results.

Names: line protocol cannot carry a newline or other control character in a tag value or field
key, a backslash there is ambiguous (influxdb-client emits ``d\\`` as ``d\\ ``, which the server
reads as an escaped space), and the key ``time`` is refused. Such characters (and ``%``, the
escape itself) are percent-encoded in device ids and metric names before influxdb-client's
``Point`` does the line-protocol escaping; names that follow the platform's id rules are stored
verbatim, and reading decodes them. An empty device id or metric name cannot be stored at all.

Failures: connection errors, timeouts and 5xx raise ``BackpressureError`` (writes are idempotent,
so the pipeline can retry the whole batch); points the server refuses (e.g. a field type
conflict) are isolated by splitting the batch, the others are stored, and the refused ones are
reported by ``TelemetryWriteRejected``; any other 4xx raises ``TelemetryStoreError``.
"""

from __future__ import annotations

import re
import sys
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import httpx
from influxdb_client.client.write.point import Point
from influxdb_client.domain.write_precision import WritePrecision

from model.errors import BackpressureError, PlatformError
from model.readings import MetricValue, Reading
from storage.telemetry._time import check_tenant, every_micros, from_micros, to_micros
from storage.telemetry.port import Aggregate, Sample, TelemetryWriteRejected

MEASUREMENT = "telemetry"
DEVICE_TAG = "device"
# Retry hint when the server gives none (connection refused, timeout, 5xx without Retry-After).
DEFAULT_RETRY_AFTER_S = 1.0
# Lines per /write request: far below 1.x's default 25 MB body limit for any sane reading.
_LINES_PER_REQUEST = 5000
# Statements per /query request when ``latest`` asks for many metrics at once.
_STATEMENTS_PER_REQUEST = 100
# InfluxDB's representable time range in ns (one inside int64's, which it reserves).
_MIN_NS, _MAX_NS = -9223372036854775806, 9223372036854775806

_MAX_FLOAT_INT = int(sys.float_info.max)
_UNSAFE_NAME_CHARS = re.compile(r"[%\\\x00-\x1f\x7f]")


class TelemetryStoreError(PlatformError):
    """The time-series server refused a request for a reason retrying will not fix (auth, 4xx)."""

    slug = "telemetry-store-error"
    status = 502
    title = "Telemetry store error"

    def __init__(self, detail: str, status_code: int | None = None) -> None:
        super().__init__(detail, status_code=status_code)
        self.status_code = status_code


def encode_name(name: str) -> str:
    """A device id or metric name as stored in InfluxDB (see the module docstring)."""
    encoded = _UNSAFE_NAME_CHARS.sub(lambda m: f"%{ord(m.group()):02X}", name)
    return "%74ime" if encoded == "time" else encoded


def decode_name(stored: str) -> str:
    """The device id or metric name that ``encode_name`` turned into ``stored``."""
    return urllib.parse.unquote(stored)


def quote_identifier(name: str) -> str:
    """An InfluxQL double-quoted identifier."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def quote_literal(value: str) -> str:
    """An InfluxQL single-quoted string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _refusal(device_id: str, metric: str, value: MetricValue) -> str | None:
    """Why a sample cannot be stored at all, or None when it can."""
    if not device_id or not metric:
        return "an empty device id or metric name cannot be stored"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > _MAX_FLOAT_INT:
        return "an integer beyond the float range cannot be stored"
    return None


def _field(stored_name: str) -> str:
    """A field reference; ``::field`` keeps a metric named like the tag from meaning the tag."""
    return f"{quote_identifier(stored_name)}::field"


def _select(expression: str, device_id: str, tail: str = "") -> str:
    """An InfluxQL SELECT of ``expression`` over one device's points, ``tail`` appended."""
    device = quote_literal(encode_name(device_id))
    where = f"{quote_identifier(DEVICE_TAG)}::tag = {device}"
    return f"SELECT {expression} FROM {MEASUREMENT} WHERE {where}{tail}"  # noqa: S608 - quoted names


def _field_value(value: MetricValue) -> float | bool | str:
    if isinstance(value, bool | str):
        return value
    return float(value)


def _number_or_self(value: Any) -> MetricValue:
    # JSON has one number type: InfluxDB renders the float 21.0 as 21, which decodes as int.
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class _Line:
    """One line of line protocol and the reading (possibly a subset of its metrics) behind it."""

    reading: Reading
    text: str

    def split(self) -> list[_Line]:
        return [_line(replace(self.reading, metrics={k: v})) for k, v in self.reading.metrics.items()]


def _line(reading: Reading) -> _Line:
    """The reading as one line: influxdb-client's Point does all line-protocol escaping."""
    point: Any = Point(MEASUREMENT)  # type: ignore[no-untyped-call]  # influxdb-client is unannotated
    point.tag(DEVICE_TAG, encode_name(reading.device_id))
    for metric, value in reading.metrics.items():
        point.field(encode_name(metric), _field_value(value))
    text: str = point.time(to_micros(reading.ts), WritePrecision.US).to_line_protocol()
    return _Line(reading, text)


def _retry_after(response: httpx.Response) -> float:
    header = response.headers.get("Retry-After")
    try:
        return max(float(header), 0.0) if header else DEFAULT_RETRY_AFTER_S
    except ValueError:  # an HTTP date: not worth parsing for a hint
        return DEFAULT_RETRY_AFTER_S


@dataclass(frozen=True, slots=True)
class _Series:
    """The rows of one statement's result as (time in µs or key, value); empty when no data."""

    rows: list[tuple[Any, Any]]


class InfluxTelemetryStore:
    """A ``TelemetryStore`` on an InfluxDB server, one database per tenant."""

    def __init__(
        self,
        url: str,
        *,
        database_prefix: str = "flatgigs_",
        username: str | None = None,
        password: str | None = None,
        timeout: float = 10.0,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.database_prefix = database_prefix
        self._auth = httpx.BasicAuth(username, password or "") if username is not None else None
        self._owns_http = http is None
        self._http = http if http is not None else httpx.AsyncClient(timeout=timeout)
        self._timeout = timeout
        self._databases: set[str] = set()

    def database(self, tenant_id: str) -> str:
        """The name of the tenant's database."""
        check_tenant(tenant_id)
        return f"{self.database_prefix}{tenant_id}"

    async def _post(self, path: str, **kwargs: Any) -> httpx.Response:
        """POST to the server; transport failures and 5xx become backpressure."""
        try:
            response = await self._http.post(
                f"{self.url}{path}",
                auth=self._auth or httpx.USE_CLIENT_DEFAULT,
                timeout=self._timeout,
                **kwargs,
            )
        except httpx.TransportError as exc:  # connect errors, timeouts, broken connections
            raise BackpressureError(
                f"InfluxDB at {self.url} unreachable: {exc!r}", retry_after=DEFAULT_RETRY_AFTER_S
            ) from exc
        if response.status_code >= 500:
            raise BackpressureError(
                f"InfluxDB at {self.url} answered {response.status_code}: {response.text[:200]}",
                retry_after=_retry_after(response),
            )
        return response

    async def _statements(self, database: str | None, statements: Sequence[str]) -> list[_Series]:
        """Run InfluxQL statements in one request; one result per statement, in order."""
        data = {"q": ";\n".join(statements), "epoch": "u"}
        if database is not None:
            data["db"] = database
        response = await self._post("/query", data=data)
        if response.status_code != 200:
            raise TelemetryStoreError(
                f"InfluxDB refused a query ({response.status_code}): {response.text[:200]}",
                response.status_code,
            )
        body = response.json()
        if "error" in body:
            raise TelemetryStoreError(f"InfluxDB query failed: {body['error']}", response.status_code)
        results: list[_Series] = []
        for result in body.get("results", []):
            error = result.get("error")
            if error is None:
                series = result.get("series") or []
                results.append(_Series([(row[0], row[1]) for s in series for row in s["values"]]))
            elif error.startswith("database not found"):
                # A tenant that never wrote telemetry has no database: that is no data.
                results.append(_Series([]))
            elif error.startswith("unsupported") and "iterator type" in error:
                # mean() over strings or bools: the port says these aggregates apply to numbers.
                results.append(_Series([]))
            else:
                raise TelemetryStoreError(f"InfluxDB query failed: {error}", response.status_code)
        if len(results) != len(statements):
            raise TelemetryStoreError(f"InfluxDB answered {len(results)} results to {len(statements)}")
        return results

    async def _ensure_database(self, database: str) -> None:
        if database not in self._databases:
            await self._statements(None, [f"CREATE DATABASE {quote_identifier(database)}"])
            self._databases.add(database)

    async def write(self, readings: Sequence[Reading]) -> None:
        """Store a batch; refused samples are reported after all the others are stored."""
        # Every tenant id is checked before anything is sent.
        by_database: dict[str, list[_Line]] = {self.database(r.tenant_id): [] for r in readings}
        rejected: list[tuple[Reading, str]] = []
        for reading in readings:
            storable: dict[str, MetricValue] = {}
            for metric, value in reading.metrics.items():
                refusal = _refusal(reading.device_id, metric, value)
                if refusal is None:
                    storable[metric] = value
                else:
                    rejected.append((replace(reading, metrics={metric: value}), refusal))
            if storable:
                line = _line(
                    reading if len(storable) == len(reading.metrics) else replace(reading, metrics=storable)
                )
                by_database[self.database(reading.tenant_id)].append(line)
        for database, lines in by_database.items():
            if not lines:
                continue
            await self._ensure_database(database)
            for i in range(0, len(lines), _LINES_PER_REQUEST):
                await self._write_lines(database, lines[i : i + _LINES_PER_REQUEST], rejected)
        if rejected:
            raise TelemetryWriteRejected(rejected)

    async def _write_lines(
        self, database: str, lines: list[_Line], rejected: list[tuple[Reading, str]], *, retried: bool = False
    ) -> None:
        body = "\n".join(line.text for line in lines).encode()
        response = await self._post("/write", params={"db": database, "precision": "u"}, content=body)
        if response.status_code == 204:
            return
        if response.status_code == 404 and not retried:
            # The database was dropped behind our back: create it again, once.
            self._databases.discard(database)
            await self._ensure_database(database)
            await self._write_lines(database, lines, rejected, retried=True)
        elif response.status_code in (400, 413, 422):
            # 1.x stores the valid lines of a batch and refuses the rest ("partial write"), but
            # does not say which lines: bisect until each refusal is pinned to one metric of one
            # reading. Rewriting a stored line is harmless (same key, same value).
            if len(lines) > 1:
                half = len(lines) // 2
                await self._write_lines(database, lines[:half], rejected)
                await self._write_lines(database, lines[half:], rejected)
            elif len(lines[0].reading.metrics) > 1:
                await self._write_lines(database, lines[0].split(), rejected)
            else:
                rejected.append((lines[0].reading, _error_text(response)))
        else:
            raise TelemetryStoreError(
                f"InfluxDB refused a write ({response.status_code}): {_error_text(response)}",
                response.status_code,
            )

    async def latest(
        self, tenant_id: str, device_id: str, metrics: Sequence[str] | None = None
    ) -> dict[str, Sample]:
        """The most recent sample of each metric of a device (all metrics unless named).

        One ``last()`` per metric: ``last(*)`` would lose each field's own timestamp.
        """
        database = self.database(tenant_id)
        if metrics is None:
            (fields,) = await self._statements(database, [f"SHOW FIELD KEYS FROM {MEASUREMENT}"])
            # A field whose type differs between shards is listed once per type.
            stored = list(dict.fromkeys(str(key) for key, _type in fields.rows))
        else:
            stored = list(dict.fromkeys(encode_name(m) for m in metrics if m))
        latest: dict[str, Sample] = {}
        for i in range(0, len(stored), _STATEMENTS_PER_REQUEST):
            chunk = stored[i : i + _STATEMENTS_PER_REQUEST]
            statements = [_select(f"last({_field(field)})", device_id) for field in chunk]
            for field, series in zip(chunk, await self._statements(database, statements), strict=True):
                for ts, value in series.rows:
                    latest[decode_name(field)] = Sample(from_micros(ts), _number_or_self(value))
        return latest

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
        database = self.database(tenant_id)
        window = every_micros(every) if every is not None else None
        start_ns = max(to_micros(start) * 1000, _MIN_NS)
        end_ns = min(to_micros(end) * 1000, _MAX_NS)
        if not metric or start_ns >= end_ns:
            return []
        field = _field(encode_name(metric))
        in_range = f" AND time >= {start_ns} AND time < {end_ns}"
        if window is None:
            statement = _select(field, device_id, in_range)
        else:
            # Epoch-aligned windows are InfluxDB's default; fill(none) drops empty ones.
            grouping = f" GROUP BY time({window}u) fill(none)"
            statement = _select(f"{aggregate.value}({field})", device_id, in_range + grouping)
        (series,) = await self._statements(database, [statement])
        samples = []
        for ts, value in series.rows:
            if value is None:
                continue
            if aggregate is Aggregate.COUNT and window is not None:
                samples.append(Sample(from_micros(ts), int(value)))
            elif (
                window is not None
                and aggregate in (Aggregate.MEAN, Aggregate.MIN, Aggregate.MAX)
                and isinstance(value, bool | str)
            ):
                continue  # min()/max() accept bools in InfluxDB; the port says numbers only
            else:
                samples.append(Sample(from_micros(ts), _number_or_self(value)))
        return samples

    async def close(self) -> None:
        """Close the HTTP client if this store created it."""
        if self._owns_http:
            await self._http.aclose()


def _error_text(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        return response.text[:200]
