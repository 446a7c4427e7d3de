"""The README's run command: the demo comes up, prints credentials, and they work."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.harness.ports import free_port, wait_until
from tests.harness.processes import ManagedProcess


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    port = free_port()
    log = tmp_path / "demo.log"
    env = {
        **os.environ,
        "FLATGIGS_PORT": str(port),
        "FLATGIGS_DATA_DIR": str(tmp_path / "data"),
        "COLUMNS": "300",
    }
    process = ManagedProcess("flatgigs-demo", [sys.executable, "-m", "server", "demo"], log, env=env).start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(f"{base}/healthz").status_code == 200, 60, "flatgigs /healthz", process)
        yield base, log
    finally:
        process.stop()


def test_demo_serves_and_printed_credentials_work(demo: tuple[str, Path]) -> None:
    base, log = demo
    text = log.read_text()
    assert f"URL:       {base}" in text
    token = re.search(r"API token: (\S+)", text)
    signin = re.search(r"Sign in:   (\S+) / (\S+)", text)
    assert token and signin, text
    r = httpx.get(
        f"{base}/api/v1/devices",
        params={"label": "region=north", "limit": 500},
        headers={"Authorization": f"Bearer {token.group(1)}"},
    )
    assert r.status_code == 200, r.text
    assert len(r.json()["items"]) == 20 * 9  # 20 northern stores x (6 freezers + 3 other devices)
    assert httpx.get(f"{base}/readyz").json()["status"] == "ready"
    # Olivia's rule is there and running, so failing compressors raise alarms in the demo.
    rules = httpx.get(f"{base}/api/v1/rules", headers={"Authorization": f"Bearer {token.group(1)}"}).json()
    assert [(r["name"], r["status"]) for r in rules] == [("Freezer too warm", "published")]
    assert httpx.get(f"{base}/api/v1/devices").status_code == 401

    # The simulator started by the demo feeds it: live data appears without anything else to run.
    headers = {"Authorization": f"Bearer {token.group(1)}"}

    def has_data() -> bool:
        r = httpx.get(f"{base}/api/v1/devices/freezer-01-1/telemetry/latest", headers=headers)
        return r.status_code == 200 and "temp" in r.json()["metrics"]

    wait_until(has_data, 120, "simulated freezer data")
    latest = httpx.get(f"{base}/api/v1/devices/freezer-01-1/telemetry/latest", headers=headers).json()
    assert -40 < latest["metrics"]["temp"]["value"] < 20
