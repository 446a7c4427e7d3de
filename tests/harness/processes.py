"""A server process owned by the test suite: started, signalled and stopped by its PID only."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import pwd
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

DEFAULT_STOP_TIMEOUT_S = 10.0
# Read at most this much from the end of a log: `log_type all` logs can grow large.
_TAIL_BYTES = 256 * 1024

# Every process that is still running, so that an interpreter exit that skips the
# fixture teardown (e.g. a crash in a plugin) does not leave servers behind.
_live: set[ManagedProcess] = set()


def run_as_kwargs(user: str | None) -> dict[str, Any]:
    """subprocess keyword arguments that run the child as `user` when we are root.

    Unlike `runuser -u USER -- cmd`, which forks and stays in between, this makes
    the PID we hold the server's own PID, so our signals reach the server itself.
    Not root (or no user): no switch, the child runs as ourselves.
    """
    if user is None or os.geteuid() != 0:
        return {}
    entry = pwd.getpwnam(user)
    # Drop root's supplementary groups too, so the child runs exactly as `user`.
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


class ManagedProcess:
    """One child process in its own process group, with its output in a log file.

    The process is only ever addressed through the PID we started (and the
    process group that PID leads), never by name, so concurrent test runs and
    system services are never touched.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path | None = None,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        user: str | None = None,
    ) -> None:
        """Describe the process; nothing runs until start().

        `user` runs the process as that system user (only possible, and only
        needed, when the test suite itself runs as root).
        """
        self.name = name
        self.argv = [str(a) for a in argv]
        if log_path is None:
            log_path = Path(tempfile.mkdtemp(prefix=f"flatgigs-{name}-")) / f"{name}.log"
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.user = user
        self._popen: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"ManagedProcess({self.name!r}, pid={self.pid}, returncode={self.poll()})"

    @property
    def pid(self) -> int | None:
        """PID of the running (or last) process, None before start()."""
        return self._popen.pid if self._popen is not None else None

    def start(self) -> ManagedProcess:
        """Start the process (log opened in append mode, so restarts keep history)."""
        if self._popen is not None and self._popen.poll() is None:
            raise RuntimeError(f"{self.name} is already running as PID {self._popen.pid}")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== starting {self.name}: {' '.join(self.argv)}\n".encode())
            log.flush()
            self._popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                # Own session => own process group whose id is the PID: a Ctrl-C at the
                # terminal reaches only pytest, whose teardown then stops the server in
                # order, and killpg(PID) reaches the server and nothing else.
                start_new_session=True,
                **run_as_kwargs(self.user),
            )
        assert self._popen is not None
        _live.add(self)
        logger.info("started %s as PID %d (log: %s)", self.name, self._popen.pid, self.log_path)
        return self

    def poll(self) -> int | None:
        """Exit code if the process has ended, else None (also None before start())."""
        if self._popen is None:
            return None
        code = self._popen.poll()
        if code is not None:
            _live.discard(self)
        return code

    @property
    def running(self) -> bool:
        """True while the started process has not exited."""
        return self._popen is not None and self._popen.poll() is None

    def _require_running(self) -> subprocess.Popen[bytes]:
        if self._popen is None or self._popen.poll() is not None:
            raise RuntimeError(f"{self.name} is not running")
        return self._popen

    @staticmethod
    def _signal_group(popen: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        # Only while the leader is not reaped: then the group id (== its PID) is
        # guaranteed to still be ours and cannot have been reused. If it exits in
        # the meantime, there is nothing left to signal: no error.
        if popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, sig)

    def _signal_tree(self, popen: subprocess.Popen[bytes], sig: signal.Signals) -> list[int]:
        """Send `sig` to our process group and to every descendant; return the descendants.

        The group alone is not enough: PostgreSQL puts each child in its own
        process group (setsid), so they would survive a kill of the postmaster's
        group and keep the shared memory and data directory busy.
        """
        if sig == signal.SIGKILL:
            # Freeze the leader first so it cannot fork a child we do not know of.
            self._signal_group(popen, signal.SIGSTOP)
        descendants = descendant_pids(popen.pid)
        self._signal_group(popen, sig)
        for pid in descendants:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        return descendants

    def stop(
        self, sig: signal.Signals = signal.SIGTERM, timeout: float = DEFAULT_STOP_TIMEOUT_S
    ) -> int | None:
        """Ask the process to exit with `sig`, wait up to `timeout` s, then SIGKILL it.

        Returns the exit code (None if never started). Safe to call repeatedly.
        """
        popen = self._popen
        if popen is None:
            return None
        if popen.poll() is None:
            logger.info("stopping %s (PID %d) with %s", self.name, popen.pid, sig.name)
            popen.send_signal(sig)
            # A paused (SIGSTOPped) server would never act on the signal above.
            self._signal_tree(popen, signal.SIGCONT)
            try:
                popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                logger.warning(
                    "%s (PID %d) ignored %s for %.1fs; sending SIGKILL",
                    self.name,
                    popen.pid,
                    sig.name,
                    timeout,
                )
                self.kill()
        _live.discard(self)
        return popen.returncode

    def kill(self) -> int | None:
        """SIGKILL the process and all its descendants at once (a crash, for fault injection).

        Returns once they are all gone, so a restart() cannot trip over leftovers.
        """
        popen = self._popen
        if popen is None:
            return None
        if popen.poll() is None:
            logger.info("killing %s (PID %d and its descendants)", self.name, popen.pid)
            descendants = self._signal_tree(popen, signal.SIGKILL)
            popen.wait()
            _wait_gone(descendants, DEFAULT_STOP_TIMEOUT_S)
        _live.discard(self)
        return popen.returncode

    def pause(self) -> None:
        """Freeze the process and its descendants with SIGSTOP (a hung server)."""
        self._signal_tree(self._require_running(), signal.SIGSTOP)

    def resume(self) -> None:
        """Continue the processes frozen by pause()."""
        self._signal_tree(self._require_running(), signal.SIGCONT)

    def log_tail(self, n: int = 40) -> str:
        """The last `n` lines of the process log (empty if there is none yet)."""
        try:
            with open(self.log_path, "rb") as log:
                size = log.seek(0, os.SEEK_END)
                log.seek(max(0, size - _TAIL_BYTES))
                data = log.read()
        except FileNotFoundError:
            return ""
        lines = data.decode("utf-8", errors="replace").splitlines()
        return "\n".join(lines[-n:])


def descendant_pids(root: int) -> list[int]:
    """PIDs of all live descendants of `root`, from the parent links in /proc (Linux)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # exited while we were looking
            continue
        # Format: "pid (comm) state ppid ..."; comm may contain spaces and parentheses.
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    pending = [root]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


def _wait_gone(pids: list[int], timeout: float) -> None:
    # Not our children (their parent is the server we just reaped), so no wait():
    # poll for existence; zombies count as gone, init reaps them.
    deadline = time.monotonic() + timeout
    remaining = list(pids)
    while remaining and time.monotonic() < deadline:
        remaining = [pid for pid in remaining if _alive(pid)]
        if remaining:
            time.sleep(0.01)
    if remaining:
        logger.warning("processes %s survived SIGKILL for %.1fs", remaining, timeout)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rindex(")") + 2] != "Z"


@atexit.register
def _stop_leftovers() -> None:
    for process in list(_live):
        process.stop(timeout=2.0)
