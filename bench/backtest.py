"""Backtest benchmark: what the editor waits for on ``POST /api/v1/rules/{id}/backtest``, as ratios
against reading the same telemetry raw from the store, in the same run.

Run::

    .venv/bin/python -m bench.backtest [--quick] [--repeat 3] [--output PATH]

Data: one tenant with 100 freezers, each with a week of one-minute readings (``temp``,
``door_open``, ``compressor_on`` from the simulator's ``FreezerSignal``; every tenth freezer has a
failing compressor for three hours mid-week) in an ``EmbeddedTelemetryStore``, and a migrated
SQLite registry with the device type, the devices and two rules:

- *olivia*: above -10 °C for 5 minutes (a duration around a threshold with hysteresis), raise and
  clear an alarm, notify. Triggered by ``temp``: the replay loads that one metric;
- *door*: on any reading (the replay loads all three metrics), three readings in a row of
  ``door_open and temp > -16``, notify.

Measured for the first 10 and all 100 devices (the API's limit), each rule, ``--repeat`` times
interleaved, median reported:

(0) raw: ``TelemetryStore.query`` of the metrics the replay loads, in the replay's 6-hour
    slices, and nothing else: the baseline;
(1) load: (0) plus merging the samples into readings (``engine.backtest.merge_samples``);
(2) replay: ``engine.backtest.backtest`` as the API calls it (500 chart points and 100
    transitions per device);
(3) API: ``POST /api/v1/rules/{id}/backtest`` in process (httpx ASGITransport): token check,
    device lookup, compilation, the replay and the JSON of the report.

Results are printed and written to bench/results/backtest.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from bench.engine import calibration, machine
from engine.backtest import DEFAULT_SLICE, backtest, merge_samples, rule_metrics
from engine.compiler import CompiledRule, compile_rule
from engine.document import RuleDocument
from engine.evaluation import DeviceView
from engine.examples import freezer_rule
from engine.nodes.base import CompileContext
from model.devices import DataType, MetricSpec
from model.readings import Reading, Source
from server.app import create_app
from server.settings import load_settings
from server.simulator.signals import HOUR, FreezerSignal, derive_seed
from storage import migrate
from storage.database import Database
from storage.telemetry.embedded import EmbeddedTelemetryStore
from storage.tenancy import TenantRepository, TokenRepository

RESULTS = Path(__file__).resolve().parent / "results" / "backtest.md"
TENANT = "bench-backtest"
SEED = 11
EVERY_S = 60.0
SIZES = (10, 100)
SERIES_POINTS = 500
KEEP = 100
CATALOGUE = {
    "temp": MetricSpec(name="temp", data_type=DataType.NUMBER),
    "door_open": MetricSpec(name="door_open", data_type=DataType.BOOLEAN),
    "compressor_on": MetricSpec(name="compressor_on", data_type=DataType.BOOLEAN),
}
RULES: dict[str, dict[str, Any]] = {
    "olivia": freezer_rule(labels={}),
    "door": {
        "name": "Door left open",
        "devices": {"type": "freezer"},
        "when": [{"type": "telemetry.received", "options": {}}],
        "if": [
            {
                "type": "consecutive",
                "options": {"count": 3},
                "condition": {"type": "expression", "options": {"expression": "door_open and temp > -16"}},
            }
        ],
        "then": [{"type": "notify", "options": {"channels": ["store-staff"]}}],
    },
}


@dataclass(slots=True)
class Cell:
    """One measurement: a rule over ``devices`` devices, one way."""

    rule: str
    devices: int
    way: str
    seconds: float
    readings: int
    fired: int = 0


def device_ids(count: int) -> list[str]:
    return [f"freezer-{n:03}" for n in range(count)]


async def write_week(store: EmbeddedTelemetryStore, ids: Sequence[str], start: datetime, days: float) -> int:
    source = Source("simulator", "bench")
    written = 0
    for n, device_id in enumerate(ids):
        fail_at = (start + timedelta(days=days / 2, hours=n % 7)).timestamp() if n % 10 == 0 else None
        signal = FreezerSignal(derive_seed(SEED, device_id), fail_at=fail_at, fail_for=3 * HOUR)
        t0 = start.timestamp() + 0.25 + n * 0.01  # off the minute, as real devices are
        times = [t0 + k * EVERY_S for k in range(int(days * 86400 / EVERY_S))]
        batch = [
            Reading(TENANT, device_id, datetime.fromtimestamp(t, UTC), signal.sample(t), source)
            for t in times
        ]
        for i in range(0, len(batch), 10_000):
            await store.write(batch[i : i + 10_000])
        written += len(batch)
    return written


async def registry(database: Database, ids: Sequence[str]) -> str:
    """The tenant, its freezers and an all-scopes token; the bearer string."""
    from devices.registry import DeviceRepository, DeviceTypeRepository
    from model.scopes import ALL_SCOPES

    async with database.platform() as conn:
        await TenantRepository(conn).create(TENANT, name="Backtest bench")
    async with database.tenant(TENANT) as scope:
        await DeviceTypeRepository(scope).create("freezer", name="Freezer", metrics=list(CATALOGUE.values()))
        await DeviceRepository(scope).create_many([{"id": i, "type_id": "freezer"} for i in ids])
        issued = await TokenRepository(scope).issue(name="bench", scopes=ALL_SCOPES)
    return issued.bearer


def slices(start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
    out, a = [], start
    while a < end:
        out.append((a, min(end, a + DEFAULT_SLICE)))
        a = out[-1][1]
    return out


async def raw(
    store: EmbeddedTelemetryStore, rule: CompiledRule, ids: Sequence[str], start: datetime, end: datetime
) -> tuple[int, int]:
    """(0): the queries the replay makes, nothing else; (samples, 0)."""
    wanted = rule_metrics(rule)
    samples = 0
    for device_id in ids:
        names = sorted(wanted if wanted is not None else await store.latest(TENANT, device_id))
        for a, b in slices(start, end):
            for name in names:
                samples += len(await store.query(TENANT, device_id, name, a, b))
    return samples, 0


async def load(
    store: EmbeddedTelemetryStore, rule: CompiledRule, ids: Sequence[str], start: datetime, end: datetime
) -> tuple[int, int]:
    """(1): the same queries, merged into readings; (readings, 0)."""
    wanted = rule_metrics(rule)
    source = Source("backtest", rule.rule_id)
    readings = 0
    for device_id in ids:
        names = sorted(wanted if wanted is not None else await store.latest(TENANT, device_id))
        for a, b in slices(start, end):
            series = {name: await store.query(TENANT, device_id, name, a, b) for name in names}
            readings += len(merge_samples(TENANT, device_id, series, source))
    return readings, 0


async def timed(work: Callable[[], Awaitable[tuple[int, int]]]) -> tuple[float, int, int]:
    began = time.perf_counter()
    count, fired = await work()
    return time.perf_counter() - began, count, fired


async def run(args: argparse.Namespace, root: Path, url: str) -> tuple[list[Cell], dict[str, Any]]:
    """Every measurement, with the store in ``root`` and the migrated registry at ``url``."""
    days = 1.0 if args.quick else 7.0
    start = datetime(2026, 11, 2, tzinfo=UTC)
    end = start + timedelta(days=days)
    ids = device_ids(max(SIZES))
    facts: dict[str, Any] = {"days": days}
    store = EmbeddedTelemetryStore(root / "telemetry.sqlite")
    database = Database(url, pool_size=2)
    try:
        began = time.perf_counter()
        facts["readings_written"] = await write_week(store, ids, start, days)
        facts["write_s"] = time.perf_counter() - began
        token = await registry(database, ids)
        app = create_app(load_settings(data_dir=root / "data"), database, telemetry=store)
        headers = {"Authorization": f"Bearer {token}"}
        transport = httpx.ASGITransport(app=app)
        cells: list[Cell] = []
        async with httpx.AsyncClient(transport=transport, base_url="http://bench", timeout=None) as http:
            for channel in ("night-shift", "store-staff"):
                body = {"name": channel, "urls": [f"json://hooks.example.com/{channel}"]}
                path = "/api/v1/notifications/channels"
                (await http.post(path, json=body, headers=headers)).raise_for_status()
            rule_ids = {}
            for name, document in RULES.items():
                created = await http.post("/api/v1/rules", json={"document": document}, headers=headers)
                created.raise_for_status()
                rule_ids[name] = created.json()["id"]
            window = {
                "since": start.isoformat(),
                "until": end.isoformat(),
                "series_points": SERIES_POINTS,
                "max_transitions": KEEP,
            }
            for repeat in range(args.repeat):
                for size in SIZES:
                    chosen = ids[:size]
                    views = [DeviceView(i, "freezer", {}, UTC) for i in chosen]
                    for name, document in RULES.items():
                        rule = compile_rule(
                            RuleDocument.model_validate(document),
                            CompileContext(TENANT, CATALOGUE),
                            rule_id=rule_ids[name],
                            version=1,
                        )

                        async def replay(
                            rule: CompiledRule = rule, views: list[DeviceView] = views
                        ) -> tuple[int, int]:
                            report = await backtest(
                                rule, store, views, start, end, series_points=SERIES_POINTS, keep=KEEP
                            )
                            return report.readings, report.fired

                        async def api(name: str = name, chosen: list[str] = chosen) -> tuple[int, int]:
                            body = {**window, "device_ids": chosen}
                            response = await http.post(
                                f"/api/v1/rules/{rule_ids[name]}/backtest", json=body, headers=headers
                            )
                            response.raise_for_status()
                            totals = response.json()["totals"]
                            facts.setdefault("json_bytes", {})[(name, len(chosen))] = len(response.content)
                            return totals["readings"], totals["fired"]

                        ways: dict[str, Callable[[], Awaitable[tuple[int, int]]]] = {
                            "raw": lambda r=rule, c=chosen: raw(store, r, c, start, end),
                            "load": lambda r=rule, c=chosen: load(store, r, c, start, end),
                            "replay": replay,
                            "api": api,
                        }
                        for way, work in ways.items():
                            seconds, count, fired = await timed(work)
                            cells.append(Cell(name, size, way, seconds, count, fired))
                            print(
                                f"run {repeat + 1}: {name} x {size} devices, {way}: {seconds:.2f} s "
                                f"({count:,} {'samples' if way == 'raw' else 'readings'})",
                                flush=True,
                            )
    finally:
        await store.close()
        await database.dispose()
    return cells, facts


def median(cells: Sequence[Cell], rule: str, devices: int, way: str) -> Cell:
    found = sorted(
        (c for c in cells if (c.rule, c.devices, c.way) == (rule, devices, way)), key=lambda c: c.seconds
    )
    return found[len(found) // 2]


def write_report(path: Path, cells: Sequence[Cell], facts: dict[str, Any], **r: Any) -> list[str]:
    command = " ".join([".venv/bin/python -m bench.backtest", *r["argv"]])
    before, after = r["loads"][0][0], r["loads"][1][0]
    lines = [
        "# Backtest benchmark",
        "",
        f"- Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- Machine: {machine()}; Python {platform.python_version()}",
        f"- Machine speed during the run: {r['calib']:.0f} ns per iteration of `for i in range(n): x += i` "
        f"(a quiet modern x86 core: about 25-40 ns); load average {before:.2f} before, {after:.2f} after "
        "(2 cores shared with other work)",
        f"- Command: `{command}`; median of {r['repeat']} run(s), interleaved; "
        f"total run time {r['total_s'] / 60:.1f} min",
        f"- Data: {facts['days']:g} day(s) of one-minute readings (temp, door_open, compressor_on) of "
        f"{max(SIZES)} simulated freezers, {facts['readings_written']:,} readings in an "
        f"EmbeddedTelemetryStore (writing them took {facts['write_s']:.0f} s, not counted); "
        "registry in SQLite",
        "",
        "(0) raw: the store queries the replay makes (per metric, 6-hour slices), nothing else; "
        "(1) load: (0) + samples merged into readings; (2) replay: `engine.backtest.backtest`; "
        "(3) API: `POST /api/v1/rules/{id}/backtest` in process (auth, device lookup, compile, replay, "
        "JSON). Ratios are to (0) of the same rule and devices.",
        "",
        "| rule | devices | readings | (0) raw s | (1) load s | (2) replay s | (3) API s "
        "| µs per reading (2) | (1)/(0) | (2)/(0) | (3)/(0) | (3)/(2) | firings | JSON |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size in SIZES:
        for rule in RULES:
            c0, c1, c2, c3 = (median(cells, rule, size, w) for w in ("raw", "load", "replay", "api"))
            json_kb = facts.get("json_bytes", {}).get((rule, size), 0) / 1024
            base = c0.seconds
            lines.append(
                f"| {rule} | {size} | {c2.readings:,} | {base:.2f} | {c1.seconds:.2f} | {c2.seconds:.2f} "
                f"| {c3.seconds:.2f} | {c2.seconds / max(1, c2.readings) * 1e6:.1f} "
                f"| {c1.seconds / base:.1f}x | {c2.seconds / base:.1f}x | {c3.seconds / base:.1f}x "
                f"| {c3.seconds / c2.seconds:.2f}x | {c2.fired:,} | {json_kb:,.0f} KiB |"
            )
    old = path.read_text() if path.exists() else ""
    findings = old[old.index("## Findings") :] if "## Findings" in old else ""
    text = "\n".join(lines) + "\n" + (f"\n{findings}" if findings else "")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.backtest", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one day instead of a week, one run")
    parser.add_argument("--repeat", type=int, default=3, help="runs of every measurement (median)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.repeat = 1
    began = time.perf_counter()
    load_before = os.getloadavg()
    calib = calibration()
    print(
        f"calibration: {calib:.0f} ns per `x += i` iteration; load average {load_before[0]:.2f}", flush=True
    )
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        url = f"sqlite+aiosqlite:///{root / 'flatgigs.db'}"
        migrate.upgrade(url)  # outside the event loop: alembic runs its own
        cells, facts = asyncio.run(run(args, root, url))
    lines = write_report(
        args.output,
        cells,
        facts,
        calib=calib,
        loads=(load_before, os.getloadavg()),
        total_s=time.perf_counter() - began,
        repeat=args.repeat,
        argv=sys.argv[1:] if argv is None else argv,
    )
    print("\n".join(lines[-(2 * len(SIZES) + 2) :]))
    print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
