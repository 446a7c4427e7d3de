"""Free loopback ports and readiness waits for the private test servers."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from typing import Protocol

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"

# Short enough that a ready server is noticed almost at once, long enough not to spin.
_POLL_INTERVAL_S = 0.02
_LOG_TAIL_LINES = 40


class Watched(Protocol):
    """What a wait needs from the server process: is it alive, and what did it log."""

    name: str

    def poll(self) -> int | None: ...

    def log_tail(self, n: int = 40) -> str: ...


class ServerExitedError(RuntimeError):
    """The server process ended while we were waiting for it to become ready."""


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port on `host` that was free a moment ago (the kernel picks it).

    There is an unavoidable race between closing this socket and the server
    binding the port; the starters detect a server that exits early and retry.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """Return `count` distinct free ports (all held open together, so none repeats)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _describe_failure(process: Watched | None) -> str:
    if process is None:
        return ""
    return f"\n--- last lines of the {process.name} log ---\n{process.log_tail(_LOG_TAIL_LINES)}"


def wait_until(
    condition: Callable[[], bool],
    timeout: float,
    what: str,
    process: Watched | None = None,
) -> float:
    """Poll `condition` until it returns True; return the seconds it took.

    Raises ServerExitedError as soon as `process` has exited (no point waiting
    for a dead server), and TimeoutError after `timeout` seconds. Both errors
    carry the tail of the server log, which is nearly always the explanation.
    Exceptions raised by `condition` count as "not yet".
    """
    start = time.monotonic()
    deadline = start + timeout
    last_error: BaseException | None = None
    while True:
        try:
            if condition():
                return time.monotonic() - start
        except Exception as exc:  # the server is not ready yet: any error is expected here
            last_error = exc
        if process is not None:
            code = process.poll()
            if code is not None:
                raise ServerExitedError(
                    f"{process.name} exited with code {code} while waiting for {what}"
                    + _describe_failure(process)
                )
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error is not None else ""
            raise TimeoutError(
                f"timed out after {timeout:.1f}s waiting for {what}{detail}" + _describe_failure(process)
            )
        time.sleep(_POLL_INTERVAL_S)


def port_accepts(host: str, port: int) -> bool:
    """Return True if a TCP connection to host:port succeeds right now."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, timeout: float = 30.0, process: Watched | None = None) -> float:
    """Wait until host:port accepts TCP connections; return the seconds it took."""
    return wait_until(lambda: port_accepts(host, port), timeout, f"{host}:{port}", process)
