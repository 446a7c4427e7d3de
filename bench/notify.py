"""Notification delivery benchmark: the delivery queue against Apprise called directly, same run.

Run::

    .venv/bin/python -m bench.notify [--messages 400] [--repeat 3] [--quick]

Set-up: a local webhook receiver (threaded http.server on 127.0.0.1, answering 200 at once) and
a migrated SQLite database in a temp folder with one tenant.

(a) baseline: one Apprise ``json://`` plugin, ``notify()`` called in a plain loop, N times: the
    rate Apprise itself reaches against this receiver on this machine;
(b) the platform: ``NotificationService.submit`` for N notification requests (distinct devices,
    so no request is deduplicated or throttled), spread over 1, 10 and 100 channels, until every
    delivery is sent and the delivery log is written (``wait_idle``). This is the whole policy
    layer: policy resolution, dedup key, decision, template rendering, per-channel queues,
    worker threads, retries bookkeeping and the batched log writes;
(c) the submit path alone: time per ``submit`` call (what the rule engine waits for).

The configurations run ``--repeat`` times interleaved with the baseline, and medians are
reported as ratios to the baseline of the same run. Target: the 1-channel queue (sequential
like the baseline) reaches at least 80% of the direct rate. Results go to bench/results/notify.md.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import platform
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

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
from tests.harness.receivers import HttpReceiver

RESULTS = Path(__file__).parent / "results" / "notify.md"
TENANT = "bench-notify"


def direct_rate(url: str, messages: int) -> float:
    """Messages per second of Apprise's notify() in a loop."""
    plugin = gateway.parse(url).plugin
    started = time.perf_counter()
    for i in range(messages):
        if not plugin.notify(title=f"direct {i}", body=f"value {i}"):
            raise RuntimeError("the receiver refused a direct notification")
    return messages / (time.perf_counter() - started)


def request(channel: str, i: int) -> NotificationRequest:
    return NotificationRequest(
        tenant_id=TENANT,
        rule_id="rul_bench",
        rule_name="Freezer too warm",
        device_id=f"freezer-{i}",
        channels=(channel,),
        title="{{ device.id }} too warm",
        body="temp {{ values.temp }} at {{ event.at }}",
        context={"values": {"temp": -7.5 + i % 10}},
        kind="fired",
        at=datetime.now(UTC),
        severity="major",
        alarm_type="warm",
    )


async def queue_rate(
    database: Database, sealer: UrlSealer, channels: list[str], messages: int
) -> tuple[float, float]:
    """(deliveries per second end to end, microseconds per submit call)."""
    service = NotificationService(
        database, sealer, settings=DeliverySettings(allow_private=True, max_attempts=1, threads=16)
    )
    try:
        submit_s = 0.0
        started = time.perf_counter()
        for i in range(messages):
            t0 = time.perf_counter()
            outcome = await service.submit(request(channels[i % len(channels)], i))
            submit_s += time.perf_counter() - t0
            if outcome != "queued":
                raise RuntimeError(f"request {i} was {outcome}")
            if i % 50 == 49:
                await asyncio.sleep(0)  # let workers run, as the engine's loop would
        await service.wait_idle()
        elapsed = time.perf_counter() - started
    finally:
        await service.pool.close()
        await service.flush()
    async with database.tenant(TENANT) as scope:
        page = await DeliveryLog(scope, database.dialect).list(statuses=[DeliveryStatus.DEAD], limit=1)
    if page.items:
        raise RuntimeError(f"a delivery failed: {page.items[0].last_error}")
    return messages / elapsed, submit_s / messages * 1e6


async def main(messages: int, repeat: int) -> str:
    logging.basicConfig(level=logging.WARNING)
    workdir = Path(tempfile.mkdtemp(prefix="bench-notify-"))
    url = f"sqlite+aiosqlite:///{workdir / 'db.sqlite'}"
    await asyncio.to_thread(migrate.upgrade, url)
    database = Database(url)
    sealer = UrlSealer([generate_key()])
    async with database.platform() as conn:
        await TenantRepository(conn).create(TENANT, name="Bench")
    rows: list[tuple[str, float, float, float | None]] = []
    with HttpReceiver() as receiver:
        names: dict[int, list[str]] = {}
        async with database.tenant(TENANT) as scope:
            repo = ChannelRepository(scope, sealer)
            for count in (1, 10, 100):
                names[count] = []
                for c in range(count):
                    name = f"hook-{count}-{c}"
                    await repo.create(name, [receiver.url(f"/c{count}/{c}")], allow_private=True)
                    names[count].append(name)
        direct: list[float] = []
        results: dict[int, list[tuple[float, float]]] = {1: [], 10: [], 100: []}
        direct.append(await asyncio.to_thread(direct_rate, receiver.url("/direct"), messages))  # warm-up
        direct.clear()
        for _ in range(repeat):
            direct.append(await asyncio.to_thread(direct_rate, receiver.url("/direct"), messages))
            for count in (1, 10, 100):
                results[count].append(await queue_rate(database, sealer, names[count], messages))
        base = statistics.median(direct)
        rows.append(("Apprise notify() in a loop (baseline)", base, 1.0, None))
        for count in (1, 10, 100):
            rate = statistics.median(r[0] for r in results[count])
            submit_us = statistics.median(r[1] for r in results[count])
            rows.append((f"delivery queue, {count} channel(s)", rate, rate / base, submit_us))
    await database.dispose()
    lines = [
        "# Notification delivery benchmark",
        "",
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.machine()} "
        f"({platform.python_implementation()} {platform.python_version()}), "
        f"{messages} messages per configuration, median of {repeat} interleaved runs. "
        "Receiver: threaded http.server on 127.0.0.1 in the same process (it is part of every figure).",
        "",
        "| Configuration | deliveries/s | ratio to baseline | submit() µs |",
        "|---|---:|---:|---:|",
    ]
    for label, rate, ratio, per_submit in rows:
        submit = "" if per_submit is None else f"{per_submit:,.0f}"
        lines.append(f"| {label} | {rate:,.0f} | {ratio:.2f} | {submit} |")
    one = rows[1][2]
    verdict = "met" if one >= 0.8 else "MISSED"
    lines += [
        "",
        f"Target (the 1-channel queue, sequential like the baseline, at >= 80% of the direct rate): "
        f"**{verdict}** ({one:.2f}).",
        "",
        "`submit()` is what the rule engine waits for: policy, dedup key, rendering and the hand-off "
        "to the queue, never the delivery itself. Every delivery crosses from the event loop to a "
        "pool thread and back; with the producer, the receiver's threads and up to 16 sender threads "
        "sharing one GIL on 2 cores, these hand-offs, not Apprise, are where the queue loses to the "
        "plain loop (the main thread is idle most of the run under cProfile). With 10 and 100 "
        "channels the first request to each channel also pays a database read and an unseal "
        "(cached afterwards), which is most of the larger submit() figures at this message count.",
        "",
    ]
    text = "\n".join(lines)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    return text


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=400)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="100 messages, one run")
    args = parser.parse_args()
    if args.quick:
        args.messages, args.repeat = 100, 1
    print(asyncio.run(main(args.messages, args.repeat)))
