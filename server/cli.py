"""The ``flatgigs`` command line: serve, migrate, administer tenants, users, tokens, devices and keys."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from model.errors import ConfigurationError, PlatformError
from model.scopes import ALL_SCOPES, ROLE_SCOPES, Role
from server.settings import Settings, load_settings
from server.simulator.cli import simulate as simulate_command

if TYPE_CHECKING:
    from notifiers.channels import ResealReport
    from notifiers.sealing import UrlSealer
from storage.database import Database

app = typer.Typer(
    help="flatgigs: multi-tenant IoT platform. Settings come from FLATGIGS_* environment variables.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
tenant_app = typer.Typer(help="Tenants (platform operator).", no_args_is_help=True)
user_app = typer.Typer(help="Users of a tenant.", no_args_is_help=True)
token_app = typer.Typer(help="API tokens.", no_args_is_help=True)
devices_app = typer.Typer(help="The device registry.", no_args_is_help=True)
docs_app = typer.Typer(help="Generated documentation.", no_args_is_help=True)
notifications_app = typer.Typer(help="Notification channel keys.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(tenant_app, name="tenant")
app.add_typer(user_app, name="user")
app.add_typer(token_app, name="token")
app.add_typer(devices_app, name="devices")
app.add_typer(docs_app, name="docs")
app.add_typer(notifications_app, name="notifications")
app.command("simulate")(simulate_command)

console = Console()
err_console = Console(stderr=True)
T = TypeVar("T")


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigurationError as exc:
        err_console.print(f"[red]{exc.detail}[/red]")
        raise typer.Exit(2) from exc


def _configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )


def _run(work: Callable[[Settings, Database], Awaitable[T]]) -> T:
    """Run ``work`` with settings and a database, turning platform errors into clean exits."""
    settings = _settings()

    async def main() -> T:
        from server.bootstrap import upgrade_database

        await upgrade_database(settings)
        database = Database(settings.app_database_url, pool_size=2)
        try:
            return await work(settings, database)
        finally:
            await database.dispose()

    try:
        return asyncio.run(main())
    except PlatformError as exc:
        err_console.print(f"[red]error:[/red] {exc.detail}")
        raise typer.Exit(1) from exc


def _serve(settings: Settings) -> None:
    import uvicorn

    from server.app import create_app

    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        proxy_headers=False,
    )


@app.command()
def serve(
    migrate: Annotated[bool, typer.Option(help="Upgrade the database schema first.")] = True,
) -> None:
    """Serve the HTTP API (host and port from FLATGIGS_HOST / FLATGIGS_PORT)."""
    settings = _settings()
    _configure_logging(settings)
    if migrate:
        from server.bootstrap import upgrade_database

        asyncio.run(upgrade_database(settings))
    _serve(settings)


@app.command()
def demo(
    simulate: Annotated[
        bool, typer.Option(help="Also run the fleet simulator against it, so data flows at once.")
    ] = True,
) -> None:
    """Set up the demo tenant of the README (once), print how to sign in, and serve."""
    from server.bootstrap import ensure_demo

    settings = _settings()
    _configure_logging(settings)
    creds = _run(ensure_demo)
    base = settings.public_url
    console.rule("[bold]flatgigs is starting[/bold]")
    console.print(f"URL:       {base}")
    console.print(f"API docs:  {base}/docs")
    console.print(f"Tenant:    {creds.tenant}")
    console.print(f"Sign in:   {creds.email} / {creds.password}")
    console.print(f"API token: {creds.token}", soft_wrap=True)
    console.print(
        f'Try:       curl -H "Authorization: Bearer {creds.token}" {base}/api/v1/devices', soft_wrap=True
    )
    console.print(f"(kept in {settings.data_dir / 'demo-credentials.json'})")
    if simulate:
        log = settings.data_dir / "simulator.log"
        console.print(f"Simulator: the fleet of 40 stores sends live data (log: {log})")
    console.rule()
    simulator = _DemoSimulator(settings, creds.token) if simulate else None
    try:
        if simulator is not None:
            simulator.start_when_ready()
        _serve(settings)
    finally:
        if simulator is not None:
            simulator.stop()


def _die_with_parent() -> None:
    """In the child: ask Linux to end it when the demo process dies, however it dies."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the demo's own shutdown still stops the simulator


class _DemoSimulator:
    """The fleet simulator as a child process of the demo, started once the API answers."""

    def __init__(self, settings: Settings, token: str) -> None:
        self.settings = settings
        self.token = token
        self.process: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()

    def start_when_ready(self) -> None:
        threading.Thread(target=self._start, name="demo-simulator", daemon=True).start()

    def _start(self) -> None:
        import httpx

        base = f"http://{self.settings.host}:{self.settings.port}"
        while not self._stopping.is_set():
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            self._stopping.wait(0.2)
        if self._stopping.is_set():
            return
        log = (self.settings.data_dir / "simulator.log").open("ab")
        self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [
                sys.executable,
                "-m",
                "server.simulator",
                "--api",
                base,
                "--token",
                self.token,
                "--data-dir",
                str(self.settings.data_dir),
                "--no-progress",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        # Linux's parent-death signal follows the thread that forked: this one stays alive
        # (waiting for the child) so the child ends only when the demo process itself does.
        self.process.wait()

    def stop(self) -> None:
        self._stopping.set()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()


@app.command()
def openapi(
    output: Annotated[Path | None, typer.Option(help="Write to this file instead of stdout.")] = None,
) -> None:
    """Print (or write) the OpenAPI document of the REST API."""
    from server.app import create_app

    document = json.dumps(create_app(_settings()).openapi(), indent=2, sort_keys=True) + "\n"
    if output is None:
        console.out(document, highlight=False)
    else:
        output.write_text(document)
        console.print(f"wrote {output}")


@docs_app.command("nodes")
def docs_nodes(
    output: Annotated[Path | None, typer.Option(help="Write to this file instead of stdout.")] = None,
) -> None:
    """Print (or write) the reference of the built-in rule node types (docs/rules/nodes.md)."""
    import engine.nodes  # noqa: F401  (registers the built-in nodes; packages document their own)
    from engine.node_docs import builtin_node_types, render_node_docs

    document = render_node_docs(builtin_node_types())
    if output is None:
        console.out(document, highlight=False, end="")
    else:
        output.write_text(document)
        console.print(f"wrote {output}")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Bring the schema up to date (runs as FLATGIGS_MIGRATION_DATABASE_URL when set)."""
    from server.bootstrap import upgrade_database

    settings = _settings()
    _configure_logging(settings)
    asyncio.run(upgrade_database(settings))
    console.print("database schema is up to date")


@tenant_app.command("create")
def tenant_create(
    tenant_id: Annotated[str, typer.Argument(help="Lowercase id, e.g. acme-retail.")],
    name: Annotated[str, typer.Option(help="Display name.")],
    timezone: Annotated[str, typer.Option(help="IANA time zone.")] = "UTC",
) -> None:
    """Create a tenant."""
    from model.ids import is_tenant_id
    from storage.tenancy import TenantRepository

    if not is_tenant_id(tenant_id):
        err_console.print(f"[red]error:[/red] {tenant_id!r} is not a valid tenant id (a-z, 0-9, '-')")
        raise typer.Exit(2)

    async def work(_: Settings, db: Database) -> None:
        async with db.platform() as conn:
            await TenantRepository(conn).create(tenant_id, name=name, timezone=timezone)

    _run(work)
    console.print(f"created tenant {tenant_id}")


@tenant_app.command("list")
def tenant_list() -> None:
    """List tenants."""
    from storage.tenancy import Tenant, TenantRepository

    async def work(_: Settings, db: Database) -> list[Tenant]:
        async with db.platform() as conn:
            return await TenantRepository(conn).list()

    table = Table("id", "name", "status", "timezone", "created")
    for t in _run(work):
        table.add_row(t.id, t.name, t.status.value, t.timezone, t.created_at.isoformat(timespec="seconds"))
    console.print(table)


@user_app.command("create")
def user_create(
    tenant: Annotated[str, typer.Option(help="Tenant id.")],
    email: Annotated[str, typer.Option(help="Sign-in email.")],
    role: Annotated[Role, typer.Option(help="admin, editor or viewer.")] = Role.VIEWER,
    password: Annotated[
        str,
        typer.Option(prompt=True, hide_input=True, confirmation_prompt=True, help="At least 12 characters."),
    ] = "",
) -> None:
    """Create a user in a tenant."""
    from storage.tenancy import UserRepository

    if len(password) < 12:
        err_console.print("[red]error:[/red] the password must be at least 12 characters")
        raise typer.Exit(2)

    async def work(_: Settings, db: Database) -> str:
        async with db.tenant(tenant) as scope:
            return (await UserRepository(scope).create(email=email, password=password, role=role)).id

    console.print(f"created user {_run(work)} ({email}, {role.value}) in {tenant}")


@token_app.command("create")
def token_create(
    tenant: Annotated[str | None, typer.Option(help="Tenant id (omit with --operator).")] = None,
    name: Annotated[str, typer.Option(help="What the token is for.")] = "cli",
    scope: Annotated[
        list[str] | None,
        typer.Option("--scope", "-s", help="Repeat or space-separate; default: all admin scopes."),
    ] = None,
    expires_in_days: Annotated[int | None, typer.Option(help="Omit for no expiry.")] = 90,
    operator: Annotated[bool, typer.Option(help="A platform operator token (manages tenants).")] = False,
) -> None:
    """Issue an API token and print it once."""
    from storage.tenancy import OperatorTokenRepository, TokenRepository
    from storage.types import utcnow

    scopes = {s for item in (scope or []) for s in item.split()} or set(ROLE_SCOPES[Role.ADMIN])
    unknown = scopes - ALL_SCOPES
    if unknown:
        err_console.print(
            f"[red]error:[/red] unknown scope(s) {sorted(unknown)}; known: {sorted(ALL_SCOPES)}"
        )
        raise typer.Exit(2)
    if operator == (tenant is not None):
        err_console.print("[red]error:[/red] give either --tenant or --operator")
        raise typer.Exit(2)
    expires_at = utcnow() + timedelta(days=expires_in_days) if expires_in_days else None

    async def work(_: Settings, db: Database) -> str:
        if tenant is None:
            async with db.platform() as conn:
                return await OperatorTokenRepository(conn).issue(name=name, expires_at=expires_at)
        from storage.tenancy import TenantRepository

        async with db.platform() as conn:
            await TenantRepository(conn).get(tenant)
        async with db.tenant(tenant) as tscope:
            issued = await TokenRepository(tscope).issue(name=name, scopes=scopes, expires_at=expires_at)
            return issued.bearer

    bearer = _run(work)
    console.print("Token (shown once, store it now):", style="bold")
    console.out(bearer, highlight=False)


@devices_app.command("import")
def devices_import(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help=".csv, .json or .jsonl")],
    tenant: Annotated[str, typer.Option(help="Tenant id.")],
    batch_size: Annotated[int, typer.Option(min=1, max=10_000)] = 1000,
) -> None:
    """Import devices in bulk; bad rows are listed with their line numbers, the rest imported.

    CSV columns: id, type, name, label.<key>..., attr.<key>...
    """
    from devices.importer import ImportReport, import_devices, read_rows
    from storage.tenancy import TenantRepository

    total = _count_rows(file)

    async def work(_: Settings, db: Database) -> ImportReport:
        async with db.platform() as conn:
            await TenantRepository(conn).get(tenant)
        with Progress(
            TextColumn("[bold]importing[/bold]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("rows"),
            TimeRemainingColumn(),
            console=err_console,
        ) as progress:
            task = progress.add_task("import", total=total)
            return await import_devices(
                db,
                tenant,
                read_rows(file),
                batch_size=batch_size,
                on_progress=lambda n: progress.advance(task, n),
            )

    report = _run(work)
    for error in report.errors:
        label = f" ({error.device_id})" if error.device_id else ""
        err_console.print(f"{file.name}:{error.line}{label}: {error.reason}")
    console.print(f"imported {report.imported} device(s), refused {report.refused} row(s)")
    if report.refused:
        raise typer.Exit(1)


def _count_rows(file: Path) -> int | None:
    """Rows to expect, for the progress bar (None for a JSON array: unknown until parsed)."""
    if file.suffix.lower() == ".json":
        return None
    with file.open("rb") as handle:
        lines = sum(1 for line in handle if line.strip())
    return lines - 1 if file.suffix.lower() == ".csv" else lines


def _notify_sealer(settings: Settings) -> UrlSealer:
    """The sealer a server with these settings uses (runtime.build_notifier); exit 2 for bad keys."""
    from notifiers.sealing import UrlSealer

    keys = settings.notify_keys.get_secret_value() if settings.notify_keys else None
    try:
        return UrlSealer.from_setting(keys, settings.ensure_secret_key())
    except ConfigurationError as exc:
        err_console.print(f"[red]{exc.detail}[/red]")
        raise typer.Exit(2) from exc


@notifications_app.command("rotate-keys")
def notifications_rotate_keys(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only count what would be re-sealed; change nothing.")
    ] = False,
    progress: Annotated[
        bool | None,
        typer.Option(
            "--progress/--no-progress", help="Progress bar (default: when on a terminal).", show_default=False
        ),
    ] = None,
) -> None:
    """Re-seal every tenant's channel URLs with the newest (first) key of FLATGIGS_NOTIFY_KEYS.

    Put the new key first and keep the old ones after it, restart the servers, run this, and
    drop the old keys only once it exits 0. Channels already sealed with the newest key are left
    alone, so it can be run again at any time. A channel that no configured key opens is
    listed (tenant and channel id, no secret), left unchanged, and makes it exit 1.
    """
    from notifiers.channels import ChannelRepository
    from storage.tenancy import TenantRepository

    settings = _settings()
    sealer = _notify_sealer(settings)
    show = err_console.is_terminal if progress is None else progress

    async def work(_: Settings, db: Database) -> list[tuple[str, ResealReport]]:
        async with db.platform() as conn:
            tenants = [t.id for t in await TenantRepository(conn).list()]
        reports: list[tuple[str, ResealReport]] = []
        with Progress(
            TextColumn("[bold]checking[/bold]" if dry_run else "[bold]re-sealing[/bold]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("tenants"),
            TimeRemainingColumn(),
            console=err_console,
            disable=not show,
        ) as bar:
            task = bar.add_task("tenants", total=len(tenants))
            for tenant_id in tenants:
                # One transaction per tenant, under its own scope (row-level security on
                # PostgreSQL): what is done stays done if a later tenant fails.
                async with db.tenant(tenant_id, readonly=dry_run) as scope:
                    report = await ChannelRepository(scope, sealer).reseal(dry_run=dry_run)
                reports.append((tenant_id, report))
                bar.advance(task)
        return reports

    if settings.notify_keys is None:
        err_console.print(
            "note: FLATGIGS_NOTIFY_KEYS is not set, so the only key is the one derived from the "
            "secret key (see `flatgigs notifications derived-key`)"
        )
    reports = _run(work)
    unopenable = [(tenant, ref) for tenant, report in reports for ref in report.unopenable]
    contested = [(tenant, ref) for tenant, report in reports for ref in report.contested]
    for tenant, ref in unopenable:
        err_console.print(
            f"tenant {tenant}: channel {ref.id} ({ref.name!r}) is sealed with a key that is not "
            "in FLATGIGS_NOTIFY_KEYS; left unchanged",
            highlight=False,
        )
    for tenant, ref in contested:
        err_console.print(
            f"tenant {tenant}: channel {ref.id} ({ref.name!r}) kept changing while it was "
            "re-sealed; left as saved",
            highlight=False,
        )
    checked = sum(report.checked for _, report in reports)
    resealed = sum(report.resealed for _, report in reports)
    console.print(
        f"tenants: {len(reports)}, channels checked: {checked}, "
        f"{'would be re-sealed' if dry_run else 're-sealed'}: {resealed}",
        highlight=False,
    )
    if unopenable or contested:
        if unopenable:
            console.print(
                f"{len(unopenable)} channel(s) cannot be opened with any configured key: put the key "
                "they were sealed with back into FLATGIGS_NOTIFY_KEYS (after the newest) and run "
                "this again, or give them their URLs again (PATCH /api/v1/notifications/channels/{id})",
                highlight=False,
            )
        if contested:
            console.print(f"{len(contested)} channel(s) changed while re-sealing: run this again")
        console.print("do not drop any old key yet")
        raise typer.Exit(1)
    if dry_run:
        console.print("dry run: nothing was changed")
    elif checked == 0:
        console.print("no notification channels: nothing to re-seal")
    elif resealed == 0:
        console.print("every channel is already sealed with the newest key: nothing to re-seal")
    else:
        console.print("every channel is now sealed with the newest key: drop the old keys and restart")


@notifications_app.command("new-key")
def notifications_new_key() -> None:
    """Print a new random key for FLATGIGS_NOTIFY_KEYS (put it first, then run rotate-keys)."""
    from notifiers.sealing import generate_key

    console.out(generate_key(), highlight=False)


@notifications_app.command("derived-key")
def notifications_derived_key() -> None:
    """Print the key derived from the secret key: the only key while FLATGIGS_NOTIFY_KEYS is unset.

    Moving to keys of your own, list it after the new key (FLATGIGS_NOTIFY_KEYS=NEW,DERIVED),
    restart, run rotate-keys, then drop it. Like every key, it is a secret.
    """
    from notifiers.sealing import derive_key

    console.out(derive_key(_settings().ensure_secret_key()), highlight=False)


def main() -> None:
    """Entry point of the ``flatgigs`` console script."""
    app()
