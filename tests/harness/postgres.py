"""A PostgreSQL server for tests: a private throw-away cluster, or one named by an env variable."""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, unquote, urlsplit

import asyncpg  # type: ignore[import-untyped]

from tests.harness.ports import LOOPBACK, ServerExitedError, free_port, port_accepts, wait_until
from tests.harness.processes import ManagedProcess, run_as_kwargs

logger = logging.getLogger(__name__)

EXTERNAL_URL_ENV = "FLATGIGS_TEST_POSTGRES_URL"
PG_LIB_DIR = Path("/usr/lib/postgresql")
SUPERUSER = "postgres"
# initdb and postgres refuse to run as root; as root we run them as this system user.
OS_USER = "postgres"
START_TIMEOUT_S = 60.0
# SIGINT is PostgreSQL's "fast" shutdown: SIGTERM ("smart") waits for clients to leave.
STOP_SIGNAL = signal.SIGINT
_START_ATTEMPTS = 3
_CONNECT_TIMEOUT_S = 5.0

T = TypeVar("T")


def run_sync(make_coroutine: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion on a fresh event loop in a helper thread.

    Lets the synchronous helpers below be called from plain tests, from fixtures
    and from inside async tests alike (where asyncio.run() would refuse to nest).
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pg-harness") as executor:
        # The coroutine is created in the worker too, so it can never be left un-awaited.
        return executor.submit(lambda: asyncio.run(make_coroutine())).result()


def make_dsn(host: str, port: int, dbname: str, user: str, password: str | None = None) -> str:
    """A postgresql:// URL with every part percent-encoded."""
    userinfo = quote(user, safe="")
    if password is not None:
        userinfo += ":" + quote(password, safe="")
    return f"postgresql://{userinfo}@{host}:{port}/{quote(dbname, safe='')}"


@dataclass
class PostgresServer:
    """Handle on a PostgreSQL server: DSNs, and helpers to create databases and roles.

    `process` is None for an external server (FLATGIGS_TEST_POSTGRES_URL): it cannot
    be stopped or restarted, and close() drops only what this handle created.
    """

    host: str
    port: int
    superuser: str
    superuser_password: str | None
    process: ManagedProcess | None
    cluster_dir: Path | None
    log_path: Path | None
    startup_seconds: float = 0.0
    pg_bin: Path | None = None
    _created_databases: list[str] = field(default_factory=list, repr=False)
    _created_roles: list[str] = field(default_factory=list, repr=False)

    @property
    def external(self) -> bool:
        """True when the server is not ours (given by FLATGIGS_TEST_POSTGRES_URL)."""
        return self.process is None

    @property
    def data_dir(self) -> Path | None:
        """The private cluster's data directory (None for an external server)."""
        return self.cluster_dir / "data" if self.cluster_dir is not None else None

    def superuser_dsn(self, dbname: str = "postgres") -> str:
        """DSN connecting as the superuser to `dbname`."""
        return make_dsn(self.host, self.port, dbname, self.superuser, self.superuser_password)

    def dsn(self, dbname: str, user: str, password: str | None = None) -> str:
        """DSN connecting as `user` (with `password`, if any) to `dbname`."""
        return make_dsn(self.host, self.port, dbname, user, password)

    def fetch(self, sql: str, *args: Any, dsn: str | None = None) -> list[asyncpg.Record]:
        """Run one query (as the superuser on `postgres` unless `dsn` says otherwise)."""
        target = dsn if dsn is not None else self.superuser_dsn()

        async def query() -> list[asyncpg.Record]:
            conn = await asyncpg.connect(target, timeout=_CONNECT_TIMEOUT_S)
            try:
                rows: list[asyncpg.Record] = await conn.fetch(sql, *args)
                return rows
            finally:
                await conn.close()

        return run_sync(query)

    def execute(self, sql: str, *args: Any, dsn: str | None = None) -> None:
        """Run one statement without results, e.g. DDL (see fetch() for `dsn`)."""
        self.fetch(sql, *args, dsn=dsn)

    def _format(self, template: str, *values: str) -> str:
        # Let the server quote names and literals (format() with %I / %L): creating
        # objects cannot take bind parameters, and hand-rolled escaping is a trap.
        placeholders = ", ".join(f"${i}::text" for i in range(2, len(values) + 2))
        rows = self.fetch(f"SELECT format($1::text, {placeholders})", template, *values)
        statement: str = rows[0][0]
        return statement

    def create_database(self, name: str, owner: str | None = None) -> None:
        """CREATE DATABASE `name` (optionally OWNER `owner`)."""
        if owner is None:
            statement = self._format("CREATE DATABASE %I", name)
        else:
            statement = self._format("CREATE DATABASE %I OWNER %I", name, owner)
        self.execute(statement)
        self._created_databases.append(name)

    def create_role(
        self,
        name: str,
        password: str | None = None,
        superuser: bool = False,
        bypassrls: bool = False,
        *,
        login: bool = True,
    ) -> None:
        """CREATE ROLE `name` (LOGIN by default) with the given password and attributes."""
        template = "CREATE ROLE %I"
        template += " LOGIN" if login else " NOLOGIN"
        template += " SUPERUSER" if superuser else " NOSUPERUSER"
        template += " BYPASSRLS" if bypassrls else " NOBYPASSRLS"
        if password is None:
            statement = self._format(template, name)
        else:
            statement = self._format(template + " PASSWORD %L", name, password)
        self.execute(statement)
        self._created_roles.append(name)

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        """(Re)start the private cluster on the same port, keeping its data."""
        if self.cluster_dir is None or self.pg_bin is None or self.log_path is None:
            raise RuntimeError("an external PostgreSQL server cannot be started by the tests")
        self.process, self.startup_seconds = _launch(
            self.pg_bin, self.cluster_dir, self.log_path, self.host, self.port, timeout
        )

    def restart(self, timeout: float = START_TIMEOUT_S) -> None:
        """Stop (fast shutdown, if running) and start the private cluster again."""
        self.stop()
        self.start(timeout)

    def stop(self, timeout: float = 10.0) -> int | None:
        """Stop the private server by PID, keeping its data (start() brings it back).

        SIGINT (fast shutdown), then SIGKILL after `timeout`; returns the exit code.
        """
        if self.process is None:
            raise RuntimeError("an external PostgreSQL server cannot be stopped by the tests")
        return self.process.stop(STOP_SIGNAL, timeout)

    def close(self, timeout: float = 10.0) -> None:
        """End of the session: stop and delete a private cluster; clean up an external one.

        For a private cluster the data directory is removed (the log stays with
        pytest's temp files); on an external server only the databases and roles
        created through this handle are dropped.
        """
        if self.process is None:
            self._drop_created_objects()
            return
        self.process.stop(STOP_SIGNAL, timeout)
        if self.cluster_dir is not None:
            shutil.rmtree(self.cluster_dir, ignore_errors=True)

    def _drop_created_objects(self) -> None:
        for name in reversed(self._created_databases):
            try:
                # FORCE (PostgreSQL 13+) ends sessions a test may have leaked.
                self.execute(self._format("DROP DATABASE IF EXISTS %I WITH (FORCE)", name))
            except Exception:
                logger.warning("could not drop test database %r", name, exc_info=True)
        for name in reversed(self._created_roles):
            try:
                self.execute(self._format("DROP ROLE IF EXISTS %I", name))
            except Exception:
                logger.warning("could not drop test role %r", name, exc_info=True)
        self._created_databases.clear()
        self._created_roles.clear()


def find_pg_bin() -> Path:
    """The bin directory of the newest PostgreSQL under /usr/lib/postgresql (Debian layout)."""
    versions = sorted(
        (p for p in PG_LIB_DIR.glob("*") if re.fullmatch(r"\d+(\.\d+)?", p.name)),
        key=lambda p: tuple(int(part) for part in p.name.split(".")),
    )
    for version_dir in reversed(versions):
        if (version_dir / "bin" / "postgres").exists():
            return version_dir / "bin"
    raise FileNotFoundError(
        f"no PostgreSQL server binaries under {PG_LIB_DIR}; install postgresql or set "
        f"{EXTERNAL_URL_ENV} to a superuser DSN"
    )


def _ready(dsn: str) -> bool:
    async def select_one() -> bool:
        conn = await asyncpg.connect(dsn, timeout=_CONNECT_TIMEOUT_S)
        try:
            value = await conn.fetchval("SELECT 1")
            return bool(value == 1)
        finally:
            await conn.close()

    return run_sync(select_one)


def _wait_ready(host: str, port: int, dsn: str, timeout: float, process: ManagedProcess | None) -> float:
    # The TCP check is cheap and avoids a connection attempt per poll while booting.
    return wait_until(
        lambda: port_accepts(host, port) and _ready(dsn),
        timeout,
        f"SELECT 1 on postgresql://{host}:{port}",
        process,
    )


def _chown_to_os_user(path: Path) -> None:
    entry = pwd.getpwnam(OS_USER)
    os.chown(path, entry.pw_uid, entry.pw_gid)


def init_cluster(pg_bin: Path, cluster_dir: Path) -> None:
    """Run initdb into `cluster_dir`/data (trust auth, superuser `postgres`, UTF8)."""
    if os.geteuid() == 0:
        # mkdtemp made it 0700 root: the postgres user must own it to create data/ in it.
        _chown_to_os_user(cluster_dir)
    # fmt: off
    argv = [
        str(pg_bin / "initdb"),
        "-D", str(cluster_dir / "data"),
        "-A", "trust",
        "-U", SUPERUSER,
        "--no-sync",  # a throw-away cluster needs no durability
        "-E", "UTF8",
        "--no-locale",  # independent of the (often missing) locales of CI images
    ]
    # fmt: on
    started = time.monotonic()
    result = subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        # initdb calls getcwd(); the caller's cwd may not be readable for `postgres`.
        cwd=cluster_dir,
        check=False,
        **run_as_kwargs(OS_USER),
    )
    if result.returncode != 0:
        raise RuntimeError(f"initdb failed with code {result.returncode}:\n{result.stdout}\n{result.stderr}")
    logger.info("initdb took %.2fs", time.monotonic() - started)


def _launch(
    pg_bin: Path, cluster_dir: Path, log_path: Path, host: str, port: int, timeout: float
) -> tuple[ManagedProcess, float]:
    """Start postgres on an initialised cluster and wait for SELECT 1."""
    socket_dir = cluster_dir / "sock"
    socket_dir.mkdir(exist_ok=True)
    if os.geteuid() == 0:
        _chown_to_os_user(socket_dir)
    # fmt: off
    argv = [
        str(pg_bin / "postgres"),
        "-D", str(cluster_dir / "data"),
        "-p", str(port),
        # Our own socket dir: the default /var/run/postgresql belongs to the system server.
        "-k", str(socket_dir),
        "-c", f"listen_addresses={host}",
        # Durability is pointless for a throw-away cluster and costs seconds per test run.
        "-c", "fsync=off",
        "-c", "synchronous_commit=off",
        "-c", "full_page_writes=off",
    ]
    # fmt: on
    process = ManagedProcess("postgres", argv, log_path, cwd=cluster_dir, user=OS_USER).start()
    try:
        seconds = _wait_ready(host, port, make_dsn(host, port, "postgres", SUPERUSER), timeout, process)
    except BaseException:
        process.kill()
        raise
    logger.info("postgres ready on %s:%d after %.2fs", host, port, seconds)
    return process, seconds


def start_private_postgres(
    log_dir: Path, *, host: str = LOOPBACK, timeout: float = START_TIMEOUT_S
) -> PostgresServer:
    """initdb a throw-away cluster in a new temp dir and start it on a free port.

    The cluster lives in its own tempfile.mkdtemp() directory rather than under
    `log_dir` because, as root, the `postgres` user must be able to reach it and
    pytest's temp root is 0700 root. The log goes to `log_dir` and outlives stop().
    """
    pg_bin = find_pg_bin()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "postgres.log"
    started = time.monotonic()
    cluster_dir = Path(tempfile.mkdtemp(prefix="flatgigs-pg-"))
    try:
        init_cluster(pg_bin, cluster_dir)
        for attempt in range(1, _START_ATTEMPTS + 1):
            port = free_port(host)
            try:
                process, _ = _launch(pg_bin, cluster_dir, log_path, host, port, timeout)
            except ServerExitedError:
                if attempt == _START_ATTEMPTS:
                    raise
                logger.warning("postgres exited at start on port %d; retrying", port)
                continue
            return PostgresServer(
                host=host,
                port=port,
                superuser=SUPERUSER,
                superuser_password=None,
                process=process,
                cluster_dir=cluster_dir,
                log_path=log_path,
                startup_seconds=time.monotonic() - started,
                pg_bin=pg_bin,
            )
        raise AssertionError("unreachable")
    except BaseException:
        shutil.rmtree(cluster_dir, ignore_errors=True)
        raise


def connect_external_postgres(url: str, timeout: float = 30.0) -> PostgresServer:
    """A handle on an existing server given by a superuser DSN (postgresql://...)."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres") or parts.hostname is None:
        raise ValueError(f"{EXTERNAL_URL_ENV} must be a postgresql://user@host:port/db URL")
    server = PostgresServer(
        host=parts.hostname,
        port=parts.port or 5432,
        superuser=unquote(parts.username or SUPERUSER),
        superuser_password=unquote(parts.password) if parts.password is not None else None,
        process=None,
        cluster_dir=None,
        log_path=None,
    )
    # Query parameters (sslmode=...) are dropped: DSNs are rebuilt per database and user.
    if parts.query:
        logger.warning("ignoring query parameters of %s: %s", EXTERNAL_URL_ENV, parts.query)
    dsn = server.superuser_dsn(unquote(parts.path.lstrip("/")) or "postgres")
    server.startup_seconds = _wait_ready(server.host, server.port, dsn, timeout, None)
    return server


def start_postgres(log_dir: Path, *, timeout: float = START_TIMEOUT_S) -> PostgresServer:
    """The server for the test suite: the one in FLATGIGS_TEST_POSTGRES_URL, else a private one."""
    url = os.environ.get(EXTERNAL_URL_ENV)
    if url:
        logger.info("using the external PostgreSQL server from %s", EXTERNAL_URL_ENV)
        return connect_external_postgres(url, timeout)
    return start_private_postgres(log_dir, timeout=timeout)
