"""A private Mosquitto MQTT broker on a free loopback port, for tests."""

from __future__ import annotations

import logging
import shutil
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.harness.ports import LOOPBACK, ServerExitedError, free_port, wait_for_port
from tests.harness.processes import ManagedProcess

logger = logging.getLogger(__name__)

MOSQUITTO_BIN = "/usr/sbin/mosquitto"
START_TIMEOUT_S = 15.0
# A port grabbed by someone else between free_port() and the bind makes the broker exit
# at once; a fresh port on the next attempt is then the fix.
_START_ATTEMPTS = 3


@dataclass
class MosquittoServer:
    """Handle on a running private broker: where it listens and the process behind it."""

    host: str
    port: int
    workdir: Path
    config_path: Path
    log_path: Path
    process: ManagedProcess
    startup_seconds: float = field(default=0.0)

    @property
    def url(self) -> str:
        """mqtt://host:port of the broker."""
        return f"mqtt://{self.host}:{self.port}"

    @property
    def persistence_path(self) -> Path:
        """The broker's database file (written on clean shutdown and on autosave)."""
        return self.workdir / "data" / "mosquitto.db"

    def stop(self, timeout: float = 10.0) -> int | None:
        """Stop the broker (SIGTERM, then SIGKILL); it saves its persistence file first."""
        return self.process.stop(signal.SIGTERM, timeout)

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        """(Re)start the broker on the same port with the same config and data."""
        self.process, self.startup_seconds = _launch(
            self.host, self.port, self.workdir, self.config_path, self.log_path, timeout
        )

    def restart(self, timeout: float = START_TIMEOUT_S) -> None:
        """Stop (if still running) and start again on the same port, keeping persisted state.

        Works after kill() too: then only the last autosave survives, as in a real crash.
        """
        self.stop()
        self.start(timeout)


def _launch(
    host: str, port: int, workdir: Path, config_path: Path, log_path: Path, timeout: float
) -> tuple[ManagedProcess, float]:
    """Start mosquitto and wait for its listener; return the process and the seconds taken."""
    process = ManagedProcess(
        "mosquitto", [mosquitto_binary(), "-c", str(config_path)], log_path, cwd=workdir
    ).start()
    try:
        seconds = wait_for_port(host, port, timeout, process)
    except BaseException:
        process.kill()
        raise
    logger.info("mosquitto ready on %s:%d after %.2fs", host, port, seconds)
    return process, seconds


def mosquitto_binary() -> str:
    """Path of the mosquitto executable (the Debian location, else whatever is on PATH)."""
    if Path(MOSQUITTO_BIN).exists():
        return MOSQUITTO_BIN
    found = shutil.which("mosquitto")
    if found is None:
        raise FileNotFoundError(f"mosquitto not found at {MOSQUITTO_BIN} nor on PATH")
    return found


def write_config(workdir: Path, host: str, port: int, extra_config: Sequence[str] = ()) -> tuple[Path, Path]:
    """Write the broker config into `workdir`; return (config path, log path)."""
    data_dir = workdir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "mosquitto.log"
    lines = [
        # Started as root (CI), mosquitto would switch to user `mosquitto`, which can
        # neither write our root-owned temp dir nor the log. Staying root is harmless
        # for a private loopback broker, and it logs a warning about it, nothing else.
        "user root",
        f"listener {port} {host}",
        "allow_anonymous true",
        "persistence true",
        # Trailing slash: mosquitto concatenates location and file name verbatim.
        f"persistence_location {data_dir}/",
        # Same file as the process's stdout/stderr log (both append), so one log_tail()
        # shows the start-up errors on stderr and the broker's own log together.
        f"log_dest file {log_path}",
        "log_type all",
        "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        *extra_config,
    ]
    config_path = workdir / "mosquitto.conf"
    config_path.write_text("\n".join(lines) + "\n")
    return config_path, log_path


def start_mosquitto(
    workdir: Path,
    *,
    host: str = LOOPBACK,
    port: int | None = None,
    extra_config: Sequence[str] = (),
    timeout: float = START_TIMEOUT_S,
) -> MosquittoServer:
    """Start a private broker with its config, data and log in `workdir`.

    `extra_config` lines are appended to the config, e.g. ["autosave_interval 1"]
    so that persisted state survives a SIGKILL of the broker.
    """
    attempts = 1 if port is not None else _START_ATTEMPTS
    for attempt in range(1, attempts + 1):
        chosen = port if port is not None else free_port(host)
        config_path, log_path = write_config(workdir, host, chosen, extra_config)
        try:
            process, seconds = _launch(host, chosen, workdir, config_path, log_path, timeout)
        except ServerExitedError:
            if attempt == attempts:
                raise
            logger.warning("mosquitto exited at start on port %d; retrying", chosen)
            continue
        return MosquittoServer(host, chosen, workdir, config_path, log_path, process, seconds)
    raise AssertionError("unreachable")
