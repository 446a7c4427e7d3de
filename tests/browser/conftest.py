"""A running flatgigs (the demo tenant) with the simulator feeding it, and Debian's Chromium.

The service and the simulator are real processes on free loopback ports, stopped by PID. The
browser is /usr/bin/chromium (never a downloaded one); every request that does not go to
127.0.0.1 is aborted. Screenshots go to an artifacts directory whose path is printed.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tests.harness.ports import free_port, wait_until
from tests.harness.processes import ManagedProcess
from tests.harness.receivers import HttpReceiver

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
FAILING_FREEZER = "freezer-01-1"


@dataclass(frozen=True, slots=True)
class Service:
    base: str
    tenant: str
    email: str
    password: str
    token: str


def _has_history(base: str, token: str) -> bool:
    now = datetime.now(UTC)
    params = {
        "metric": "temp",
        "start": (now - timedelta(hours=5, minutes=50)).isoformat(),
        "end": (now - timedelta(hours=5, minutes=30)).isoformat(),
    }
    r = httpx.get(
        f"{base}/api/v1/devices/{FAILING_FREEZER}/telemetry",
        params=params,
        headers={"Authorization": f"Bearer {token}"},
    )
    if r.status_code != 200:
        return False
    body = r.json()
    points = body.get("points") or body.get("samples") or body.get("items") or []
    return len(points) > 0


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """`flatgigs demo` (no simulator of its own), then the simulator: 2 stores, 6 h of history,
    freezer-01-1's compressor failed 3 hours ago (so it is warm now and was warm in the history)."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: scripts/test.sh installs Debian's chromium package")
    root = tmp_path_factory.mktemp("service")
    port = free_port()
    data = root / "data"
    env = {
        **os.environ,
        "FLATGIGS_PORT": str(port),
        "FLATGIGS_DATA_DIR": str(data),
        "COLUMNS": "300",
        "FLATGIGS_ALLOW_PRIVATE_WEBHOOKS": "true",  # the notification receiver is on 127.0.0.1
    }
    server = ManagedProcess(
        "flatgigs-editor",
        [sys.executable, "-m", "server", "demo", "--no-simulate"],
        root / "server.log",
        env=env,
    ).start()
    base = f"http://127.0.0.1:{port}"
    simulator: ManagedProcess | None = None
    try:
        wait_until(lambda: httpx.get(f"{base}/healthz").status_code == 200, 90, "flatgigs /healthz", server)
        creds = json.loads((data / "demo-credentials.json").read_text())
        simulator = ManagedProcess(
            "simulator",
            [
                sys.executable,
                "-m",
                "server.simulator",
                "--api",
                base,
                "--token",
                creds["token"],
                "--stores",
                "2",
                "--backfill",
                "6h",
                "--fail",
                f"{FAILING_FREEZER}@-3h",
                "--data-dir",
                str(data),
                "--no-progress",
            ],
            root / "simulator.log",
            env=env,
        ).start()
        wait_until(lambda: _has_history(base, creds["token"]), 240, "backfilled history", simulator)
        yield Service(base, creds["tenant"], creds["email"], creds["password"], creds["token"])
    finally:
        if simulator is not None:
            simulator.stop()
        server.stop()


@pytest.fixture(scope="module")
def receiver() -> Iterator[HttpReceiver]:
    """A real webhook endpoint the tenant's notification channels post to."""
    with HttpReceiver() as hook:
        yield hook


@pytest.fixture(scope="module")
def artifacts() -> Path:
    """Where screenshots go: $FLATGIGS_ARTIFACTS, else a fresh temporary directory kept after the run
    (pytest's own tmp dirs rotate away); the path is printed so a CI job can collect them."""
    configured = os.environ.get("FLATGIGS_ARTIFACTS")
    path = Path(configured) if configured else Path(tempfile.mkdtemp(prefix="flatgigs-browser-"))
    path.mkdir(parents=True, exist_ok=True)
    print(f"\nbrowser screenshots: {path}")
    return path


@pytest.fixture(scope="module")
def chromium() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def only_loopback(route: object) -> None:
    """Abort every request that leaves the machine (no CDN, no telemetry)."""
    from playwright.sync_api import Route

    assert isinstance(route, Route)
    host = route.request.url.split("/")[2].split(":")[0]
    if host == "127.0.0.1":
        route.continue_()
    else:
        route.abort()


def keep(path: Path, name: str, into: Path) -> None:
    """Copy a screenshot somewhere (the README's images are refreshed this way)."""
    into.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, into / name)
