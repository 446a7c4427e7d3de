"""Notification delivery benchmark: the delivery queue against Apprise called directly, same run.

Run::

    .venv/bin/python -m bench.notify [--messages 1000] [--repeat 5] [--receiver process,thread] [--quick]

Set-up: a webhook receiver on 127.0.0.1 (bench/notify_receiver.py: a threaded http.server that
answers 200 at once), a migrated SQLite database in a temp folder with one tenant, and 1, 10 and
100 JSON webhook channels to the receiver. ``--receiver process`` runs the receiver in its own
process, like any real receiver; ``thread`` runs it in a thread of this process, where its
request handling competes for the same interpreter lock as the side being measured (how the
first version of this benchmark ran). Both are measured by default.

Both sides do the same work per message: the same title and body templates rendered with the
same values, then one Apprise ``json://`` notification of the same type to the same receiver,
through the same channel URLs in turn:

(a) baseline: Apprise called directly in a loop. The URLs are parsed once, outside the timing,
    as a script would; then per message the Jinja2 templates (compiled once) are rendered and
    ``notify()`` is called;
(b) the platform: ``NotificationService.submit`` for N requests (distinct devices, so none is
    deduplicated or throttled), timed from the first submit until every delivery is sent and
    the delivery log is written (``wait_idle``): policy resolution, dedup key, the decision,
    sandboxed rendering, per-channel queues, worker threads, retry bookkeeping, metrics and the
    batched log writes. The service is first warmed with one delivery per channel, outside the
    timing (the caches a running service has: channel targets, parsed plugins, the tenant's
    policy); the first submit() per channel on cold caches is reported apart.

Every configuration runs ``--repeat`` times, (a) and (b) back to back in alternating order; each
pair gives a ratio (b)/(a), and the table shows medians and the range of the ratios. Target
(issue 5): the policy layer costs less than 20% of the direct rate, i.e. a ratio of at least
0.80. Results go to bench/results/notify.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import platform
import statistics
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import apprise
import jinja2

from bench import notify_receiver
from notifiers import gateway
from notifiers.channels import ChannelRepository
from notifiers.deliveries import DeliveryLog, DeliveryStatus
from notifiers.delivery import DeliverySettings
from notifiers.port import NotificationRequest
from notifiers.sealing import UrlSealer, generate_key
from notifiers.service import NotificationService
from storage import migrate
from storage.database import Database
from storage.tenancy import TenantRepository

RESULTS = Path(__file__).parent / "results" / "notify.md"
TENANT = "bench-notify"
COUNTS = (1, 10, 100)
TITLE = "{{ device.id }} too warm"
BODY = "temp {{ values.temp }} at {{ event.at }}"
TARGET = 0.80


def temp(i: int) -> float:
    return -7.5 + i % 10


def request(channel: str, device: str, i: int) -> NotificationRequest:
    return NotificationRequest(
        tenant_id=TENANT,
        rule_id="rul_bench",
        rule_name="Freezer too warm",
        device_id=device,
        channels=(channel,),
        title=TITLE,
        body=BODY,
        context={"values": {"temp": temp(i)}},
        kind="fired",
        at=datetime.now(UTC),
        severity="major",  # Apprise's "failure" type, as in the direct loop
        alarm_type="warm",
    )


def direct_rate(urls: list[str], messages: int) -> tuple[float, float]:
    """(messages per second, CPU µs of this process per message) of Apprise's notify() in a loop
    over the URLs, rendering each message."""
    plugins = [gateway.parse(url).plugin for url in urls]
    environment = jinja2.Environment(autoescape=False)
    title, body = environment.from_string(TITLE), environment.from_string(BODY)
    cpu = time.process_time()
    started = time.perf_counter()
    for i in range(messages):
        context = {
            "device": {"id": f"freezer-{i}"},
            "values": {"temp": temp(i)},
            "event": {"at": datetime.now(UTC).isoformat()},
        }
        ok = plugins[i % len(plugins)].notify(
            body=body.render(context), title=title.render(context), notify_type=apprise.NotifyType.FAILURE
        )
        if not ok:
            raise RuntimeError("the receiver refused a direct notification")
    elapsed = time.perf_counter() - started
    return messages / elapsed, (time.process_time() - cpu) / messages * 1e6


async def queue_rate(
    database: Database, sealer: UrlSealer, channels: list[str], messages: int, run: int
) -> tuple[float, float, float, float]:
    """(deliveries per second end to end, CPU µs of this process per delivery, µs per submit call,
    µs per first submit of a channel)."""
    service = NotificationService(
        database,
        sealer,
        settings=DeliverySettings(allow_private=True, max_attempts=1, queue_size=messages + len(channels)),
    )
    try:
        cold_s = 0.0
        for c, name in enumerate(channels):  # warm-up: one delivery per channel, not timed
            t0 = time.perf_counter()
            outcome = await service.submit(request(name, f"warm-{run}-{c}", c))
            cold_s += time.perf_counter() - t0
            if outcome != "queued":
                raise RuntimeError(f"warm-up request {c} was {outcome}")
        await service.wait_idle()
        submit_s = 0.0
        cpu = time.process_time()
        started = time.perf_counter()
        for i in range(messages):
            t0 = time.perf_counter()
            outcome = await service.submit(request(channels[i % len(channels)], f"freezer-{run}-{i}", i))
            submit_s += time.perf_counter() - t0
            if outcome != "queued":
                raise RuntimeError(f"request {i} was {outcome}")
            if i % 50 == 49:
                await asyncio.sleep(0)  # let workers run, as the engine's loop would
        await service.wait_idle()
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu
    finally:
        await service.pool.close()
        await service.flush()
    async with database.tenant(TENANT) as scope:
        page = await DeliveryLog(scope, database.dialect).list(statuses=[DeliveryStatus.DEAD], limit=1)
    if page.items:
        raise RuntimeError(f"a delivery failed: {page.items[0].last_error}")
    per_message = 1e6 / messages
    return messages / elapsed, cpu * per_message, submit_s * per_message, cold_s / len(channels) * 1e6


@dataclass
class Series:
    """The figures of one configuration over the repeats."""

    direct: list[float] = field(default_factory=list)
    queue: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    direct_cpu_us: list[float] = field(default_factory=list)
    queue_cpu_us: list[float] = field(default_factory=list)
    submit_us: list[float] = field(default_factory=list)
    cold_us: list[float] = field(default_factory=list)


def received(port: int) -> int:
    url = f"http://{notify_receiver.LOOPBACK}:{port}/count"
    with urllib.request.urlopen(url, timeout=10) as answer:
        return int(json.load(answer)["count"])


async def measure(
    database: Database,
    sealer: UrlSealer,
    receiver: Callable[[], tuple[int, Callable[[], None]]],
    messages: int,
    repeat: int,
    mode: str,
) -> dict[int, Series]:
    port, stop = receiver()
    try:
        names: dict[int, list[str]] = {}
        urls: dict[int, list[str]] = {}
        async with database.tenant(TENANT) as scope:
            repo = ChannelRepository(scope, sealer)
            for count in COUNTS:
                names[count], urls[count] = [], []
                for c in range(count):
                    name = f"{mode}-{count}-{c}"
                    url = f"json://{notify_receiver.LOOPBACK}:{port}/c{count}/{c}"
                    await repo.create(name, [url], allow_private=True)
                    names[count].append(name)
                    urls[count].append(url)
        await asyncio.to_thread(direct_rate, urls[1], min(messages, 200))  # warm-up
        series = {count: Series() for count in COUNTS}
        for r in range(repeat):
            for count in COUNTS:
                s = series[count]
                before = received(port)
                sides = ["direct", "queue"] if r % 2 == 0 else ["queue", "direct"]
                for side in sides:
                    if side == "direct":
                        rate, cpu_us = await asyncio.to_thread(direct_rate, urls[count], messages)
                        s.direct.append(rate)
                        s.direct_cpu_us.append(cpu_us)
                    else:
                        rate, cpu_us, submit_us, cold_us = await queue_rate(
                            database, sealer, names[count], messages, r * 1000 + count
                        )
                        s.queue.append(rate)
                        s.queue_cpu_us.append(cpu_us)
                        s.submit_us.append(submit_us)
                        s.cold_us.append(cold_us)
                s.ratios.append(s.queue[-1] / s.direct[-1])
                arrived = received(port) - before
                if arrived != 2 * messages + count:
                    sent = 2 * messages + count
                    raise RuntimeError(f"the receiver got {arrived} requests, {sent} were sent")
                print(
                    f"{mode} run {r + 1}/{repeat}, {count} channel(s): direct {s.direct[-1]:,.0f}/s, "
                    f"queue {s.queue[-1]:,.0f}/s, ratio {s.ratios[-1]:.2f}; CPU µs/msg direct "
                    f"{s.direct_cpu_us[-1]:,.0f}, queue {s.queue_cpu_us[-1]:,.0f}",
                    flush=True,
                )
        return series
    finally:
        stop()


def table(series: dict[int, Series]) -> list[str]:
    lines = [
        "| Channels | (a) Apprise loop, msg/s | (b) delivery queue, msg/s | (b)/(a) median | (b)/(a) range "
        "| target (>= 0.80) | CPU µs/msg (a) | CPU µs/msg (b) | submit() µs | first submit() per channel "
        "µs (cold) |",
        "|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for count, s in series.items():
        ratio = statistics.median(s.ratios)
        lines.append(
            f"| {count} | {statistics.median(s.direct):,.0f} | {statistics.median(s.queue):,.0f} "
            f"| **{ratio:.2f}** | {min(s.ratios):.2f}-{max(s.ratios):.2f} "
            f"| {'met' if ratio >= TARGET else 'MISSED'} | {statistics.median(s.direct_cpu_us):,.0f} "
            f"| {statistics.median(s.queue_cpu_us):,.0f} | {statistics.median(s.submit_us):,.0f} "
            f"| {statistics.median(s.cold_us):,.0f} |"
        )
    return lines


async def main(messages: int, repeat: int, modes: list[str]) -> str:
    logging.basicConfig(level=logging.WARNING)
    workdir = Path(tempfile.mkdtemp(prefix="bench-notify-"))
    url = f"sqlite+aiosqlite:///{workdir / 'db.sqlite'}"
    await asyncio.to_thread(migrate.upgrade, url)
    database = Database(url)
    sealer = UrlSealer([generate_key()])
    async with database.platform() as conn:
        await TenantRepository(conn).create(TENANT, name="Bench")
    starters = {"process": notify_receiver.start_process, "thread": notify_receiver.start_thread}
    results: dict[str, dict[int, Series]] = {}
    try:
        for mode in modes:
            results[mode] = await measure(database, sealer, starters[mode], messages, repeat, mode)
    finally:
        await database.dispose()
    lines = [
        "# Notification delivery benchmark",
        "",
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.machine()} "
        f"({platform.python_implementation()} {platform.python_version()}), `python -m bench.notify "
        f"--messages {messages} --repeat {repeat}`: {messages} messages per configuration and side, "
        f"{repeat} interleaved pairs; figures are medians, ratios are taken pair by pair. "
        "(a) renders the same templates and sends the same notifications to the same receiver "
        "as (b); (b) is timed from the first submit() until every delivery is sent and logged.",
        "",
    ]
    captions = {
        "process": "Receiver in its own process (the reference set-up):",
        "thread": "Receiver in a thread of the benchmark process (its request handling shares the "
        "interpreter lock with the side being measured):",
    }
    for mode, series in results.items():
        lines += [captions[mode], "", *table(series), ""]
    verdicts = [
        (mode, count, statistics.median(s.ratios))
        for mode, series in results.items()
        for count, s in series.items()
    ]
    missed = [
        f"{count} channel(s) with the receiver in a {mode}" for mode, count, r in verdicts if r < TARGET
    ]
    lines += [
        f"Target (the policy layer costs less than 20% of the direct rate, median ratio >= {TARGET:.2f}): "
        + (
            f"**met** in all {len(verdicts)} configurations."
            if not missed
            else f"**missed** for {', '.join(missed)}; met in {len(verdicts) - len(missed)} "
            f"of {len(verdicts)}."
        ),
        "",
        "- CPU µs/msg is the CPU time of the benchmark process (all its threads, the receiver's too when "
        "it runs in a thread) per message: on this shared 2-core machine it is steadier than the rates, "
        "which move with the other work running.",
        "- (b) sends to up to 16 channels at once (`FLATGIGS_NOTIFY_THREADS`), so that a slow channel "
        "does not hold up the others; (a) is one loop. Concurrent sender threads contend for the "
        "interpreter lock, so with 10 and 100 channels (b) spends more CPU per message than (a) (compare "
        "the CPU columns); with one channel, where (b) sends from one thread like (a), the CPU per "
        "message of the two is close. When the machine has a core to spare, the same concurrency lets "
        "(b) overlap sends, so its ratios with 10 and 100 channels move with the load of the machine.",
        "- submit() is what the rule engine waits for: policy, dedup key, rendering and the hand-off to "
        "the channel's queue, never the delivery. Wall time, so it includes waits for the interpreter "
        "lock while sender threads run. The cold figure is the first submit() to each channel of a new "
        "service: one read of all the tenant's channels (and the tenant's policy) shared by them, and "
        "one unseal per channel.",
        "- Design and profile: ADR 0025.",
        "",
    ]
    text = "\n".join(lines)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    return text


def _modes(value: str) -> list[str]:
    modes = [m.strip() for m in value.split(",") if m.strip()]
    if not modes or any(m not in ("process", "thread") for m in modes):
        raise argparse.ArgumentTypeError("a comma-separated list of: process, thread")
    return modes


if __name__ == "__main__":
    doc: Any = __doc__
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--receiver", type=_modes, default=["process", "thread"])
    parser.add_argument("--quick", action="store_true", help="200 messages, one run, receiver in a process")
    args = parser.parse_args()
    if args.quick:
        args.messages, args.repeat, args.receiver = 200, 1, ["process"]
    print(asyncio.run(main(args.messages, args.repeat, args.receiver)))
