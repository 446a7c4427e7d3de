"""The flatgigs CLI as an operator uses it, run as a real process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

FLATGIGS = [sys.executable, "-m", "server"]


def _run(data_dir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FLATGIGS_DATA_DIR": str(data_dir), "COLUMNS": "200", "NO_COLOR": "1"}
    result = subprocess.run(
        [*FLATGIGS, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"flatgigs {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli")


def test_help_is_useful(data_dir: Path) -> None:
    for command in ([], ["devices", "import"], ["token", "create"], ["user", "create"], ["tenant", "create"]):
        out = _run(data_dir, *command, "--help").stdout
        assert "Usage" in out and len(out.splitlines()) > 5, command
    assert "label.<key>" in _run(data_dir, "devices", "import", "--help").stdout


def test_operator_workflow(data_dir: Path, tmp_path: Path) -> None:
    assert "up to date" in _run(data_dir, "db", "upgrade").stdout
    _run(data_dir, "tenant", "create", "acme-cli", "--name", "ACME", "--timezone", "Europe/Berlin")
    assert "acme-cli" in _run(data_dir, "tenant", "list").stdout
    dup = _run(data_dir, "tenant", "create", "acme-cli", "--name", "again", check=False)
    assert dup.returncode == 1 and "already exists" in dup.stderr
    bad = _run(data_dir, "tenant", "create", "Not Valid", "--name", "x", check=False)
    assert bad.returncode == 2

    out = _run(
        data_dir,
        "user",
        "create",
        "--tenant",
        "acme-cli",
        "--email",
        "erik@acme.example",
        "--role",
        "editor",
        "--password",
        "erik-long-password",
    ).stdout
    assert "created user" in out
    token = (
        _run(
            data_dir,
            "token",
            "create",
            "--tenant",
            "acme-cli",
            "--name",
            "erik",
            "--scope",
            "devices:write telemetry:read",
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    assert token.startswith("fg.acme-cli.")
    bad_scope = _run(data_dir, "token", "create", "--tenant", "acme-cli", "-s", "root", check=False)
    assert bad_scope.returncode == 2 and "unknown scope" in bad_scope.stderr
    operator = _run(data_dir, "token", "create", "--operator").stdout.strip().splitlines()[-1]
    assert operator.startswith("fgo.")


def test_devices_import_reports_bad_rows(data_dir: Path, tmp_path: Path) -> None:
    import asyncio

    from devices.registry import DeviceTypeRepository
    from storage.database import Database
    from storage.tenancy import TenantRepository

    _run(data_dir, "db", "upgrade")

    async def seed() -> None:
        db = Database(f"sqlite+aiosqlite:///{(data_dir / 'flatgigs.db').resolve()}")
        async with db.platform() as conn:
            if await TenantRepository(conn).find("acme-import") is None:
                await TenantRepository(conn).create("acme-import", name="ACME")
        async with db.tenant("acme-import") as scope:
            if not await DeviceTypeRepository(scope).exists(["freezer"]):
                await DeviceTypeRepository(scope).create("freezer", name="Freezer")
        await db.dispose()

    asyncio.run(seed())
    csv = tmp_path / "freezers.csv"
    rows = ["id,type,label.store"] + [f"fz-{i:03d},freezer,store-{i % 40:02d}" for i in range(240)]
    rows.insert(10, "broken id,freezer,store-01")
    rows.insert(20, "fz-999,toaster,store-01")
    csv.write_text("\n".join(rows) + "\n")
    result = _run(data_dir, "devices", "import", str(csv), "--tenant", "acme-import", check=False)
    assert result.returncode == 1
    assert "imported 240 device(s), refused 2 row(s)" in result.stdout
    assert "freezers.csv:11 (broken id):" in result.stderr
    assert "freezers.csv:21 (fz-999): unknown device type 'toaster'" in result.stderr
    again = _run(data_dir, "devices", "import", str(csv), "--tenant", "acme-import", check=False)
    assert "imported 0 device(s), refused 242 row(s)" in again.stdout
    missing = _run(data_dir, "devices", "import", str(csv), "--tenant", "nobody-here", check=False)
    assert missing.returncode == 1 and "not found" in missing.stderr


def test_invalid_settings_fail_clearly(data_dir: Path) -> None:
    env = {**os.environ, "FLATGIGS_DATA_DIR": str(data_dir), "FLATGIGS_SECRET_KEY": "short"}
    result = subprocess.run(
        [*FLATGIGS, "db", "upgrade"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2
    assert "FLATGIGS_SECRET_KEY" in result.stderr and "Traceback" not in result.stderr
