"""``flatgigs simulate``: play the fleet of SCENARIOS.md against a running platform.

Mounted in server/cli.py as a command (``app.command("simulate")(simulate)``); also runnable
alone as ``python -m server.simulator``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import signal
import time
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from server.simulator.fleet import DEFAULT_STORES, Scenario

if TYPE_CHECKING:  # the runner (httpx, drivers) is imported when the command runs, not when mounted
    from server.simulator.runner import Session, Stats

app = typer.Typer(
    help="Simulate devices sending telemetry to flatgigs.",
    no_args_is_help=False,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)

_DURATION = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(ms|s|m|min|h|d|w)?\s*$", re.IGNORECASE)
_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_duration(text: str, *, allow_negative: bool = False) -> float:
    """Seconds in ``90``, ``90s``, ``5m``, ``2h``, ``7d`` or ``1w``; ValueError otherwise."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration (e.g. 90, 90s, 5m, 2h, 7d)")
    value = float(match.group(1)) * _UNITS[(match.group(2) or "").lower() or None]
    if value < 0 and not allow_negative:
        raise ValueError(f"{text!r} is negative")
    return value


def parse_failure(text: str) -> tuple[str, float]:
    """``freezer-03-2@120`` -> (device, seconds after the live start); no ``@`` means at once."""
    device, sep, at = text.partition("@")
    if not device:
        raise ValueError(f"{text!r} should be DEVICE[@OFFSET], e.g. freezer-03-2@120 or freezer-03-2@2h")
    return device, parse_duration(at, allow_negative=True) if sep else 0.0


def _demo_token(data_dir: Path) -> str | None:
    path = data_dir / "demo-credentials.json"
    try:
        token = json.loads(path.read_text()).get("token")
    except (OSError, ValueError, AttributeError):
        return None
    return token if isinstance(token, str) else None


class _Display:
    """The live view: what is sent per route, errors and rates."""

    WINDOW_S = 5.0

    def __init__(self, session: Session) -> None:
        self.session = session
        self.started = time.monotonic()
        self._history: deque[tuple[float, dict[str, int]]] = deque()

    def _rates(self) -> dict[str, float]:
        now = time.monotonic()
        counts = {name: r.messages for name, r in self.session.stats.routes.items()}
        self._history.append((now, counts))
        while len(self._history) > 2 and now - self._history[1][0] > self.WINDOW_S:
            self._history.popleft()
        then, old = self._history[0]
        span = now - then
        if span <= 0:
            return {}
        return {name: (count - old.get(name, 0)) / span for name, count in counts.items()}

    def render(self) -> RenderableType:
        session, stats = self.session, self.session.stats
        o = session.options
        fleet = len(session.fleet) if session.fleet is not None else 0
        sim = (
            datetime.fromtimestamp(stats.sim_time, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
            if stats.sim_time is not None
            else "-"
        )
        clock = session.clock
        elapsed = clock.elapsed() if clock is not None else time.monotonic() - self.started
        header = Text.assemble(
            ("flatgigs simulate", "bold"),
            f"  tenant {session.tenant or '?'}  {fleet} devices  speed x{o.speed:g}  ",
            (stats.phase, "cyan"),
            f"  sim {sim}  {'live' if clock is not None else 'elapsed'} {elapsed:,.0f} s",
            f" / {o.duration:g} s" if o.duration else "",
        )
        rates = self._rates()
        table = Table("route", "devices", "messages", "readings", "errors", "msg/s", expand=False)
        for name, r in sorted(stats.routes.items()):
            table.add_row(
                name,
                f"{r.devices:,}" if r.devices else "",
                f"{r.messages:,}",
                f"{r.readings:,}",
                Text(f"{r.errors:,}", style="red" if r.errors else ""),
                f"{rates.get(name, 0.0):,.1f}",
            )
        parts: list[RenderableType] = [header, table]
        if stats.backfill_total:
            share = 100.0 * stats.backfill_done / stats.backfill_total
            parts.append(
                Text(f"backfill {stats.backfill_done:,}/{stats.backfill_total:,} samples ({share:.0f} %)")
            )
        if stats.silent:
            parts.append(Text(f"samples skipped by dropouts: {stats.silent:,}", style="dim"))
        for name, r in sorted(stats.routes.items()):
            if r.last_error:
                parts.append(Text(f"last {name} error: {r.last_error}"[:300], style="red"))
        return Group(*parts)


async def _main(session: Session, *, progress: bool) -> Stats:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if not stop.is_set():
            console.print("[yellow]stopping (Ctrl-C again to abort)…[/yellow]")
            stop.set()
        # The second Ctrl-C gets Python's default handler: KeyboardInterrupt.
        loop.remove_signal_handler(signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        # Not possible off the main thread (or on Windows): Ctrl-C then aborts at once.
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, on_signal, signum)
    display = _Display(session)
    live = Live(display.render(), console=console, auto_refresh=False) if progress else None

    async def refresh() -> None:
        assert live is not None
        while True:
            live.update(display.render(), refresh=True)
            await asyncio.sleep(0.25)

    try:
        with live if live is not None else contextlib.nullcontext():
            ticker = asyncio.create_task(refresh()) if live is not None else None
            try:
                return await session.run(stop)
            finally:
                if ticker is not None:
                    ticker.cancel()
                if live is not None:
                    live.update(display.render(), refresh=True)
    finally:
        if live is not None and not console.is_terminal:
            console.line()  # the last frame ends without a newline off a terminal


def _summary(stats: Stats, seconds: float) -> str:
    routes = ", ".join(
        f"{name} {r.messages:,} msg / {r.readings:,} readings"
        + (f" / {r.errors:,} errors" if r.errors else "")
        for name, r in sorted(stats.routes.items())
        if r.messages or r.errors
    )
    return (
        f"sent {stats.messages:,} messages ({stats.readings:,} readings) in {seconds:,.1f} s"
        + (f": {routes}" if routes else "")
        + (f"; {stats.errors:,} failed" if stats.errors else "")
    )


@app.command()
def simulate(
    api: Annotated[
        str, typer.Option(envvar="FLATGIGS_PUBLIC_URL", help="Base URL of the flatgigs API.")
    ] = "http://127.0.0.1:8000",
    token: Annotated[
        str | None,
        typer.Option(
            envvar="FLATGIGS_TOKEN",
            help="Tenant API token (devices:read, devices:write). Default: the demo token in the data dir.",
            show_default=False,
        ),
    ] = None,
    mqtt: Annotated[
        str | None,
        typer.Option(
            envvar="FLATGIGS_MQTT_URL",
            help="mqtt://host:port of the platform's broker; without it freezers send over HTTP.",
        ),
    ] = None,
    coap: Annotated[
        str | None,
        typer.Option(
            envvar="FLATGIGS_COAP_URL",
            help="coap://host:port of the platform; without it battery sensors send over HTTP.",
        ),
    ] = None,
    modbus_port: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=65535,
            help="Serve the power meters over Modbus TCP on this port (unit id = store number) and "
            "bind them so that the platform polls them; without it they send over HTTP.",
            show_default=False,
        ),
    ] = None,
    opcua_port: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=65535,
            help="Serve the plant's PLC (line1-plc, --scenario plant) over OPC-UA on this port and "
            "bind it so that the platform subscribes; without it the PLC sends over HTTP.",
            show_default=False,
        ),
    ] = None,
    bind_host: Annotated[
        str,
        typer.Option(help="Host the platform connects to for the Modbus and OPC-UA servers (bindings)."),
    ] = "127.0.0.1",
    listen_host: Annotated[
        str,
        typer.Option(help="Address the Modbus and OPC-UA servers listen on (0.0.0.0: every interface)."),
    ] = "127.0.0.1",
    unbind_on_exit: Annotated[
        bool,
        typer.Option(
            "--unbind-on-exit",
            help="Remove the bindings made for --modbus-port/--opcua-port on exit (default: leave them).",
        ),
    ] = False,
    scenario: Annotated[
        Scenario, typer.Option(help="retail: the acme-retail stores; plant: the globex-plant line.")
    ] = Scenario.RETAIL,
    stores: Annotated[int, typer.Option(min=0, max=999, help="Stores of 9 devices each.")] = DEFAULT_STORES,
    devices: Annotated[int, typer.Option(min=0, help="Add N generic freezers (sim-freezer-NNNNN).")] = 0,
    speed: Annotated[
        float, typer.Option(min=0.01, max=100_000, help="Time acceleration (above 1 needs --duration).")
    ] = 1.0,
    duration: Annotated[
        str | None,
        typer.Option(help="Stop after this long (wall clock): 90, 5m, 2h. 0 = only --backfill."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Same seed, same signals.")] = 0,
    fail: Annotated[
        list[str] | None,
        typer.Option(
            help="Force a compressor failure: DEVICE@OFFSET in simulated time after the start, "
            "e.g. freezer-03-2@120 or freezer-03-2@2h (repeatable).",
        ),
    ] = None,
    backfill: Annotated[
        str | None,
        typer.Option(help="First write this much history (e.g. 7d) as timestamped HTTP batches."),
    ] = None,
    dropouts: Annotated[
        float, typer.Option(min=0, max=4, help="Silences (2-20 min) per device per day; 0 = never silent.")
    ] = 0.25,
    rate: Annotated[
        float | None, typer.Option(min=0.1, help="At most this many messages per second.")
    ] = None,
    concurrency: Annotated[int, typer.Option(min=1, max=1024, help="Messages in flight at once.")] = 32,
    data_dir: Annotated[
        Path,
        typer.Option(
            envvar="FLATGIGS_DATA_DIR", help="Where device credentials are cached (and the demo token)."
        ),
    ] = Path(".flatgigs"),
    progress: Annotated[
        bool | None,
        typer.Option(
            "--progress/--no-progress", help="Live display (default: when on a terminal).", show_default=False
        ),
    ] = None,
) -> None:
    """Simulate the fleet of SCENARIOS.md (or N generic freezers) sending telemetry.

    Freezers publish over MQTT with --mqtt, battery sensors post over CoAP with --coap; power
    meters are served over Modbus TCP with --modbus-port and the plant's PLC over OPC-UA with
    --opcua-port (the platform polls them through bindings made here); everything else (and those
    without these options) goes to POST /api/v1/ingest with device credentials, which are issued
    once and cached in the data dir. Missing device types and devices are created.
    Stops on Ctrl-C or after --duration; exits 1 if nothing could be sent.
    """
    from server.simulator.runner import Session, SimOptions, SimulationError

    try:
        seconds = parse_duration(duration) if duration is not None else None
        history = parse_duration(backfill) if backfill is not None else None
        failures = tuple(parse_failure(item) for item in fail or [])
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    if token is None:
        token = _demo_token(data_dir)
        if token is None:
            err_console.print(
                "[red]error:[/red] give --token (an API token with devices:read and devices:write), "
                f"or run `flatgigs demo` first so {data_dir / 'demo-credentials.json'} holds one"
            )
            raise typer.Exit(2)
    options = SimOptions(
        api=api,
        token=token,
        mqtt=mqtt,
        coap=coap,
        scenario=scenario,
        stores=stores,
        devices=devices,
        speed=speed,
        duration=seconds,
        seed=seed,
        failures=failures,
        backfill=history or None,
        dropouts_per_day=dropouts,
        data_dir=data_dir,
        rate=rate,
        concurrency=concurrency,
        modbus_port=modbus_port,
        opcua_port=opcua_port,
        listen_host=listen_host,
        bind_host=bind_host,
        unbind_on_exit=unbind_on_exit,
    )
    if speed > 1 and seconds is None:
        raise typer.BadParameter(
            "--speed above 1 needs --duration: the simulated window is placed in the past to end now",
            param_hint="--speed",
        )
    if modbus_port is not None or opcua_port is not None:
        # The servers run in this process: keep the libraries' chatter (e.g. asyncua's notes on
        # unencrypted endpoints) out of the display; real problems surface as errors.
        for library in ("asyncua", "pymodbus"):
            logging.getLogger(library).setLevel(logging.ERROR)
    try:
        session = Session(options, on_note=lambda text: console.print(text, highlight=False))
    except SimulationError as exc:
        raise typer.BadParameter(str(exc)) from exc
    started = time.monotonic()
    try:
        stats = asyncio.run(_main(session, progress=console.is_terminal if progress is None else progress))
    except SimulationError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    except KeyboardInterrupt:
        err_console.print("[red]aborted[/red]")
        raise typer.Exit(130) from None
    console.print(_summary(stats, time.monotonic() - started), highlight=False)
    for name, r in sorted(stats.routes.items()):
        if r.last_error:
            err_console.print(f"last {name} error: {r.last_error}", highlight=False)
    if stats.messages == 0:
        err_console.print("[red]error:[/red] nothing could be sent")
        raise typer.Exit(1)
