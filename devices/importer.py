"""Bulk device import from CSV, JSON or JSON Lines: every bad row is reported, the rest imported."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from devices.registry import DeviceRepository, DeviceTypeRepository
from model.devices import DeviceSpec
from model.errors import ConflictError, InvalidInputError
from storage.database import Database

LABEL_PREFIX = "label."
ATTRIBUTE_PREFIX = "attr."


@dataclass(frozen=True, slots=True)
class RowError:
    """Why one row of the input was not imported."""

    line: int
    device_id: str | None
    reason: str


@dataclass(slots=True)
class ImportReport:
    """The outcome of an import: how many devices were added and which rows were refused."""

    imported: int = 0
    errors: list[RowError] = field(default_factory=list)

    @property
    def refused(self) -> int:
        """How many rows were refused."""
        return len(self.errors)


RawRow = tuple[int, dict[str, Any] | RowError]


def read_rows(path: Path) -> Iterator[RawRow]:
    """Rows of ``path`` with their line numbers; the format follows the file extension.

    - ``.csv``: columns ``id``, ``type`` (or ``type_id``), ``name``, ``label.<key>``,
      ``attr.<key>``; empty cells are left out.
    - ``.jsonl`` / ``.ndjson``: one device object per line.
    - ``.json``: an array of device objects (the line is where the object starts).
    """
    suffix = path.suffix.lower()
    if suffix == ".csv":
        yield from _csv_rows(path)
    elif suffix in (".jsonl", ".ndjson"):
        yield from _jsonl_rows(path)
    elif suffix == ".json":
        yield from _json_array_rows(path)
    else:
        raise InvalidInputError(f"unsupported file type {suffix!r}: use .csv, .json, .jsonl or .ndjson")


def _csv_rows(path: Path) -> Iterator[RawRow]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or "id" not in reader.fieldnames:
            yield 1, RowError(1, None, "the header must have an 'id' column")
            return
        for row in reader:
            line = reader.line_num
            if None in row:
                yield line, RowError(line, row.get("id"), "more cells than header columns")
                continue
            yield line, _csv_record(row)


def _csv_record(row: dict[str, str]) -> dict[str, Any]:
    record: dict[str, Any] = {"labels": {}, "attributes": {}}
    for column, raw in row.items():
        value = (raw or "").strip()
        if not value:
            continue
        if column.startswith(LABEL_PREFIX):
            record["labels"][column[len(LABEL_PREFIX) :]] = value
        elif column.startswith(ATTRIBUTE_PREFIX):
            record["attributes"][column[len(ATTRIBUTE_PREFIX) :]] = value
        elif column == "type":
            record["type_id"] = value
        else:
            record[column] = value
    return record


def _jsonl_rows(path: Path) -> Iterator[RawRow]:
    with path.open(encoding="utf-8") as handle:
        for line, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            yield line, _parse_object(line, text)


def _json_array_rows(path: Path) -> Iterator[RawRow]:
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        yield exc.lineno, RowError(exc.lineno, None, f"not valid JSON: {exc.msg}")
        return
    if not isinstance(data, list):
        yield 1, RowError(1, None, "a .json file must hold an array of devices")
        return
    # Line numbers of a parsed array are lost; find where each top-level object starts.
    starts = _object_start_lines(text)
    for index, item in enumerate(data):
        line = starts[index] if index < len(starts) else index + 1
        if isinstance(item, dict):
            yield line, item
        else:
            yield line, RowError(line, None, "each entry must be a JSON object")


def _object_start_lines(text: str) -> list[int]:
    decoder = json.JSONDecoder()
    lines: list[int] = []
    pos = text.index("[") + 1
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            return lines
        lines.append(text.count("\n", 0, pos) + 1)
        _, pos = decoder.raw_decode(text, pos)


def _parse_object(line: int, text: str) -> dict[str, Any] | RowError:
    try:
        item = json.loads(text)
    except json.JSONDecodeError as exc:
        return RowError(line, None, f"not valid JSON: {exc.msg}")
    if not isinstance(item, dict):
        return RowError(line, None, "each line must be a JSON object")
    return item


def _validation_reason(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "row"
        message = "unknown column/field" if err["type"] == "extra_forbidden" else err["msg"]
        parts.append(f"{where}: {message}")
    return "; ".join(parts)


async def import_devices(
    database: Database,
    tenant_id: str,
    rows: Iterable[RawRow],
    *,
    batch_size: int = 1000,
    on_progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Import ``rows`` into ``tenant_id``, one transaction per batch.

    A row is refused (with its line and reason) when it does not validate, repeats an id seen
    earlier in the file, names an id already registered, or names an unknown device type.
    """
    report = ImportReport()
    async with database.tenant(tenant_id) as scope:
        known_types = {t.id for t in await DeviceTypeRepository(scope).list()}
    seen: set[str] = set()
    batch: list[tuple[int, DeviceSpec]] = []

    async def flush() -> None:
        if batch:
            await _import_batch(database, tenant_id, batch, report)
            if on_progress is not None:
                on_progress(len(batch))
            batch.clear()

    for line, raw in rows:
        if isinstance(raw, RowError):
            report.errors.append(raw)
            if on_progress is not None:
                on_progress(1)
            continue
        try:
            spec = DeviceSpec.model_validate(raw)
        except ValidationError as exc:
            device_id = raw.get("id") if isinstance(raw.get("id"), str) else None
            report.errors.append(RowError(line, device_id, _validation_reason(exc)))
            if on_progress is not None:
                on_progress(1)
            continue
        reason = None
        if spec.id in seen:
            reason = f"device id {spec.id!r} appears earlier in the file"
        elif spec.type_id not in known_types:
            reason = f"unknown device type {spec.type_id!r}"
        if reason is not None:
            report.errors.append(RowError(line, spec.id, reason))
            if on_progress is not None:
                on_progress(1)
            continue
        seen.add(spec.id)
        batch.append((line, spec))
        if len(batch) >= batch_size:
            await flush()
    await flush()
    report.errors.sort(key=lambda e: e.line)
    return report


async def _import_batch(
    database: Database, tenant_id: str, batch: list[tuple[int, DeviceSpec]], report: ImportReport
) -> None:
    async with database.tenant(tenant_id) as scope:
        if not database.is_sqlite:
            # Plans cached while the tables were empty make every foreign-key check of a label
            # scan the tenant (import rate falling from ~1,800 to ~300 devices/s); start fresh.
            await scope.conn.exec_driver_sql("DISCARD PLANS")
        repo = DeviceRepository(scope)
        taken = await repo.existing_ids([spec.id for _, spec in batch])
        fresh: list[tuple[int, DeviceSpec]] = []
        for line, spec in batch:
            if spec.id in taken:
                report.errors.append(RowError(line, spec.id, f"device id {spec.id!r} already exists"))
            else:
                fresh.append((line, spec))
        try:
            await repo.create_many([spec.model_dump() for _, spec in fresh])
            report.imported += len(fresh)
            return
        except ConflictError:
            pass  # someone registered one of these ids meanwhile: fall back to row by row
    for line, spec in fresh:
        async with database.tenant(tenant_id) as scope:
            try:
                await DeviceRepository(scope).create_many([spec.model_dump()])
                report.imported += 1
            except ConflictError:
                report.errors.append(RowError(line, spec.id, f"device id {spec.id!r} already exists"))
