"""Bulk import: bad rows reported with their line numbers, the rest imported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devices.importer import import_devices, read_rows
from devices.registry import DeviceFilter, DeviceRepository, DeviceTypeRepository
from model.errors import InvalidInputError
from storage.database import Database
from tests.conftest import TenantFactory

CSV = """id,type,name,label.store,label.region,attr.model
fz-001,freezer,Freezer 1,store-01,north,X200
fz-002,freezer,Freezer 2,store-01,north,
bad id,freezer,Broken,store-01,north,
fz-003,toaster,Wrong type,store-02,south,
fz-001,freezer,Duplicate in file,store-02,south,
fz-004,freezer,Too many cells,store-02,south,X,extra
fz-005,freezer,"Quoted, with comma",store-02,south,X300
existing-1,freezer,Already registered,store-03,south,
"""


async def _tenant_with_type(database: Database, tenants: TenantFactory) -> str:
    t = await tenants.create()
    async with database.tenant(t.id) as scope:
        await DeviceTypeRepository(scope).create("freezer", name="Freezer")
        await DeviceRepository(scope).create("existing-1", type_id="freezer")
    return t.id


async def test_csv_with_broken_rows(tmp_path: Path, database: Database, tenants: TenantFactory) -> None:
    tenant = await _tenant_with_type(database, tenants)
    path = tmp_path / "freezers.csv"
    path.write_text(CSV)
    progress: list[int] = []
    report = await import_devices(
        database, tenant, read_rows(path), batch_size=2, on_progress=progress.append
    )
    assert report.imported == 3
    errors = {(e.line, e.device_id): e.reason for e in report.errors}
    assert set(errors) == {(4, "bad id"), (5, "fz-003"), (6, "fz-001"), (7, "fz-004"), (9, "existing-1")}
    assert "id" in errors[(4, "bad id")]
    assert "toaster" in errors[(5, "fz-003")]
    assert "earlier in the file" in errors[(6, "fz-001")]
    assert "more cells" in errors[(7, "fz-004")]
    assert "already exists" in errors[(9, "existing-1")]
    assert sum(progress) == 8
    async with database.tenant(tenant) as scope:
        repo = DeviceRepository(scope)
        one = await repo.get("fz-001")
        five = await repo.get("fz-005")
        north = await repo.list(DeviceFilter(labels={"region": "north"}))
    assert one.labels == {"store": "store-01", "region": "north"} and one.attributes == {"model": "X200"}
    assert five.name == "Quoted, with comma"
    assert [d.id for d in north.items] == ["fz-001", "fz-002"]


async def test_json_array_and_lines(tmp_path: Path, database: Database, tenants: TenantFactory) -> None:
    tenant = await _tenant_with_type(database, tenants)
    array = tmp_path / "devices.json"
    array.write_text(
        "[\n"
        '  {"id": "j-1", "type_id": "freezer", "labels": {"store": "s1"}},\n'
        '  {"id": "j-2", "type_id": "freezer",\n'
        '   "tenant_id": "someone-else"},\n'
        "  42,\n"
        '  {"id": "j-3", "type_id": "freezer", "attributes": {"capacity_l": 400}}\n'
        "]\n"
    )
    report = await import_devices(database, tenant, read_rows(array))
    assert report.imported == 2
    assert [(e.line, e.device_id) for e in report.errors] == [(3, "j-2"), (5, None)]
    assert "tenant_id" in report.errors[0].reason

    lines = tmp_path / "devices.jsonl"
    lines.write_text('{"id": "l-1", "type_id": "freezer"}\n\n{"id": "l-2", "type_id": \n[1]\n')
    report = await import_devices(database, tenant, read_rows(lines))
    assert report.imported == 1
    assert [e.line for e in report.errors] == [3, 4]


def test_unsupported_file_type(tmp_path: Path) -> None:
    path = tmp_path / "devices.xlsx"
    path.write_bytes(b"PK")
    with pytest.raises(InvalidInputError, match="unsupported file type"):
        list(read_rows(path))


def test_csv_without_id_column(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("name,type\na,b\n")
    rows = list(read_rows(path))
    assert len(rows) == 1 and "id" in str(rows[0][1])


async def test_large_import_in_batches(tmp_path: Path, database: Database, tenants: TenantFactory) -> None:
    tenant = await _tenant_with_type(database, tenants)
    path = tmp_path / "many.jsonl"
    path.write_text(
        "".join(
            json.dumps({"id": f"d-{i:05d}", "type_id": "freezer", "labels": {"n": str(i % 7)}}) + "\n"
            for i in range(2500)
        )
    )
    report = await import_devices(database, tenant, read_rows(path), batch_size=1000)
    assert (report.imported, report.refused) == (2500, 0)
    async with database.tenant(tenant) as scope:
        page = await DeviceRepository(scope).list(DeviceFilter(labels={"n": "3"}), limit=500)
    assert len(page.items) == len([i for i in range(2500) if i % 7 == 3])
