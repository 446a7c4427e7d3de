"""A private InfluxDB 1.x server on free loopback ports, for tests."""

from __future__ import annotations

import logging
import os
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.harness.ports import LOOPBACK, ServerExitedError, free_ports, wait_until
from tests.harness.processes import ManagedProcess

logger = logging.getLogger(__name__)

INFLUXD_BIN = "/usr/bin/influxd"
START_TIMEOUT_S = 30.0
_START_ATTEMPTS = 3


@dataclass
class InfluxDBServer:
    """Handle on a running private influxd: its HTTP API address and the process behind it."""

    host: str
    port: int
    rpc_port: int
    workdir: Path
    config_path: Path
    log_path: Path
    process: ManagedProcess
    startup_seconds: float = 0.0

    @property
    def url(self) -> str:
        """Base URL of the HTTP API, e.g. http://127.0.0.1:PORT."""
        return f"http://{self.host}:{self.port}"

    def stop(self, timeout: float = 10.0) -> int | None:
        """Stop influxd (SIGTERM, then SIGKILL after `timeout`)."""
        return self.process.stop(signal.SIGTERM, timeout)

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        """(Re)start influxd on the same ports with the same config and data."""
        self.process, self.startup_seconds = _launch(
            self.host, self.port, self.workdir, self.config_path, self.log_path, timeout
        )

    def restart(self, timeout: float = START_TIMEOUT_S) -> None:
        """Stop (if still running) and start again on the same ports, keeping the data."""
        self.stop()
        self.start(timeout)

    def query(self, q: str, db: str | None = None, **params: str) -> dict[str, Any]:
        """Run InfluxQL through POST /query and return the decoded JSON; raise on errors."""
        data = {"q": q, **params}
        if db is not None:
            data["db"] = db
        response = httpx.post(f"{self.url}/query", data=data, timeout=10.0)
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        # InfluxDB 1.x reports statement errors with HTTP 200 inside the results.
        errors = [r["error"] for r in body.get("results", []) if "error" in r]
        if "error" in body or errors:
            raise RuntimeError(f"InfluxQL {q!r} failed: {body.get('error') or errors}")
        return body

    def create_database(self, name: str) -> None:
        """CREATE DATABASE `name` (idempotent in InfluxDB)."""
        self.query(f"CREATE DATABASE {quote_identifier(name)}")


def quote_identifier(name: str) -> str:
    """An InfluxQL double-quoted identifier."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def quote_string(value: str) -> str:
    """An InfluxQL single-quoted string literal (e.g. a tag value in WHERE)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def influxd_binary() -> str:
    """Path of the influxd executable (the Debian location, else whatever is on PATH)."""
    if Path(INFLUXD_BIN).exists():
        return INFLUXD_BIN
    found = shutil.which("influxd")
    if found is None:
        raise FileNotFoundError(f"influxd not found at {INFLUXD_BIN} nor on PATH")
    return found


def write_config(workdir: Path, host: str, port: int, rpc_port: int) -> Path:
    """Write an influxd config keeping all state in `workdir`; return its path."""
    config = f"""\
reporting-enabled = false
# The backup/restore RPC service; left at its default it would clash with the system 8088.
bind-address = "{host}:{rpc_port}"

[meta]
  dir = "{workdir / "meta"}"

[data]
  dir = "{workdir / "data"}"
  wal-dir = "{workdir / "wal"}"

[http]
  bind-address = "{host}:{port}"

[ifql]
  enabled = false

# No _internal database: it only costs writes every 10 s and clutters SHOW DATABASES.
[monitor]
  store-enabled = false

[logging]
  suppress-logo = true
"""
    config_path = workdir / "influxdb.conf"
    config_path.write_text(config)
    return config_path


def _child_env() -> dict[str, str]:
    # influxd lets INFLUXDB_* variables override the config file (e.g. an
    # INFLUXDB_HTTP_BIND_ADDRESS set for a CI service); they must not leak in.
    return {k: v for k, v in os.environ.items() if not k.startswith("INFLUXDB_")}


def _ping(url: str) -> bool:
    return httpx.get(f"{url}/ping", timeout=1.0).status_code == 204


def _launch(
    host: str, port: int, workdir: Path, config_path: Path, log_path: Path, timeout: float
) -> tuple[ManagedProcess, float]:
    """Start influxd and wait until GET /ping answers 204; return the process and seconds."""
    process = ManagedProcess(
        "influxd",
        [influxd_binary(), "-config", str(config_path)],
        log_path,
        env=_child_env(),
        cwd=workdir,
    ).start()
    url = f"http://{host}:{port}"
    try:
        seconds = wait_until(lambda: _ping(url), timeout, f"GET {url}/ping == 204", process)
    except BaseException:
        process.kill()
        raise
    logger.info("influxd ready on %s after %.2fs", url, seconds)
    return process, seconds


def start_influxdb(
    workdir: Path, *, host: str = LOOPBACK, timeout: float = START_TIMEOUT_S
) -> InfluxDBServer:
    """Start a private influxd with its config, data and log in `workdir`."""
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "influxd.log"
    for attempt in range(1, _START_ATTEMPTS + 1):
        port, rpc_port = free_ports(2, host)
        config_path = write_config(workdir, host, port, rpc_port)
        try:
            process, seconds = _launch(host, port, workdir, config_path, log_path, timeout)
        except ServerExitedError:
            if attempt == _START_ATTEMPTS:
                raise
            logger.warning("influxd exited at start on port %d/%d; retrying", port, rpc_port)
            continue
        return InfluxDBServer(host, port, rpc_port, workdir, config_path, log_path, process, seconds)
    raise AssertionError("unreachable")
