"""The delivery pool's runs, with Apprise's send replaced by a fake: several deliveries per thread
hand-off, in order; a failure ends the run and is retried first; a call with no answer times out
and the delivery's other URLs still go; a run stops taking deliveries after its budget; a hung
channel does not hold up another; the queue bound; closing stops a run."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from notifiers import gateway
from notifiers.channels import ChannelTarget
from notifiers.clock import ManualClock
from notifiers.deliveries import DeliveryRecord, DeliveryStatus
from notifiers.delivery import DeliveryPool, DeliverySettings, Job
from notifiers.metrics import NotifyMetrics

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
FAST = DeliverySettings(max_attempts=3, backoff_base_s=0.01, attempt_timeout_s=5.0, threads=4)


class FakeSend:
    """Stands in for gateway.send: records (port, title) per call; fails or hangs as planned."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, str]] = []
        self.lock = threading.Lock()
        self.fail_once: set[tuple[int, str]] = set()
        self.hang_ports: set[int] = set()
        self.delay_s = 0.0
        self.release = threading.Event()

    def __call__(
        self, plugin: Any, title: str, body: str, *, allow_private: bool, kind: str = "info"
    ) -> str | None:
        port = int(plugin.port)
        with self.lock:
            self.calls.append((port, title))
            failing = (port, title) in self.fail_once
            self.fail_once.discard((port, title))
        if port in self.hang_ports:
            self.release.wait(10)
        if self.delay_s:
            time.sleep(self.delay_s)
        return "HTTP 500" if failing else None

    def titles(self, port: int | None = None) -> list[str]:
        with self.lock:
            return [t for p, t in self.calls if port is None or p == port]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSend]:
    send = FakeSend()
    monkeypatch.setattr(gateway, "send", send)
    yield send
    send.release.set()


class Log:
    """The record callback: every status each delivery went through."""

    def __init__(self) -> None:
        self.statuses: dict[str, list[DeliveryStatus]] = {}
        self.records: dict[str, DeliveryRecord] = {}

    def __call__(self, record: DeliveryRecord) -> None:
        self.statuses.setdefault(record.title, []).append(record.status)
        self.records[record.title] = record


def target(name: str, *ports: int) -> ChannelTarget:
    urls = tuple(f"json://127.0.0.1:{port}/{name}" for port in ports)
    return ChannelTarget("acme", f"chn_{name}", name, urls, None, NOW)


def job(channel: ChannelTarget, title: str) -> Job:
    record = DeliveryRecord(
        id=f"ntf_{title}",
        tenant_id="acme",
        channel_id=channel.id,
        channel_name=channel.name,
        rule_id="rul_1",
        device_id="fz-1",
        alarm_type="warm",
        severity="major",
        kind="fired",
        dedup_key="k",
        title=title,
        body="b",
        status=DeliveryStatus.QUEUED,
        attempts=0,
        last_error=None,
        resent=0,
        created_at=NOW,
        updated_at=NOW,
    )
    return Job(record, channel, time.monotonic())


def pool(settings: DeliverySettings = FAST) -> tuple[DeliveryPool, Log, NotifyMetrics, list[int]]:
    log, metrics = Log(), NotifyMetrics()
    p = DeliveryPool(settings, ManualClock(NOW), metrics, log)
    handoffs: list[int] = []
    submit = p._executor.submit

    def counting(fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        handoffs.append(1)
        return submit(fn, *args, **kwargs)

    p._executor.submit = counting  # type: ignore[method-assign]
    return p, log, metrics, handoffs


def counted(metrics: NotifyMetrics, result: str) -> float:
    value = metrics.attempts.labels(result)._value.get()
    return float(value)


async def wait_until(condition: Any, within_s: float = 5.0) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_queued_deliveries_go_to_one_thread_together_in_order(fake: FakeSend) -> None:
    p, log, metrics, handoffs = pool()
    channel = target("ops", 1001)
    titles = [f"d{i}" for i in range(20)]
    for title in titles:
        assert p.enqueue(job(channel, title))
    await asyncio.wait_for(p.wait_idle(), 5)
    await p.close()

    assert fake.titles() == titles
    assert len(handoffs) == 1
    assert all(log.statuses[t] == [DeliveryStatus.SENT] for t in titles)
    assert all(log.records[t].attempts == 1 and log.records[t].sent_at is not None for t in titles)
    assert counted(metrics, "ok") == 20
    assert metrics.queued._value.get() == 0


async def test_a_failure_ends_the_run_and_is_retried_before_the_deliveries_behind_it(fake: FakeSend) -> None:
    p, log, metrics, _ = pool()
    channel = target("ops", 1001)
    fake.fail_once.add((1001, "d2"))
    for title in ("d1", "d2", "d3", "d4"):
        p.enqueue(job(channel, title))
    await asyncio.wait_for(p.wait_idle(), 5)
    await p.close()

    assert fake.titles() == ["d1", "d2", "d2", "d3", "d4"]
    assert log.statuses["d2"] == [DeliveryStatus.RETRYING, DeliveryStatus.SENT]
    assert log.records["d2"].attempts == 2
    assert [log.records[t].attempts for t in ("d1", "d3", "d4")] == [1, 1, 1]
    assert (counted(metrics, "ok"), counted(metrics, "failed")) == (4, 1)


async def test_a_call_without_answer_times_out_and_the_deliverys_other_urls_still_go(fake: FakeSend) -> None:
    settings = DeliverySettings(max_attempts=2, backoff_base_s=0.01, attempt_timeout_s=0.2, threads=8)
    p, log, metrics, _ = pool(settings)
    channel = target("two", 1001, 1002)  # the first URL never answers, the second does
    fake.hang_ports.add(1001)
    p.enqueue(job(channel, "d1"))
    p.enqueue(job(channel, "d2"))
    await asyncio.wait_for(p.wait_idle(), 5)
    fake.release.set()
    await asyncio.sleep(0.1)  # the abandoned calls end now: their late answers must not count
    await p.close()

    # Each delivery: URL 1 times out, URL 2 is still sent in that attempt; the retry calls URL 1 only.
    assert fake.titles(1002) == ["d1", "d2"]
    assert fake.titles(1001) == ["d1", "d1", "d2", "d2"]
    for title in ("d1", "d2"):
        record = log.records[title]
        assert log.statuses[title] == [DeliveryStatus.RETRYING, DeliveryStatus.DEAD]
        assert record.attempts == 2
        assert record.last_error is not None and "no answer within 0.2s" in record.last_error
    assert (counted(metrics, "timeout"), counted(metrics, "ok"), counted(metrics, "failed")) == (4, 2, 0)


async def test_a_run_takes_no_new_delivery_after_its_budget(fake: FakeSend) -> None:
    settings = DeliverySettings(backoff_base_s=0.01, threads=2, batch_budget_s=0.05)
    p, log, _, handoffs = pool(settings)
    fake.delay_s = 0.02
    channel = target("ops", 1001)
    titles = [f"d{i}" for i in range(10)]
    for title in titles:
        p.enqueue(job(channel, title))
    await asyncio.wait_for(p.wait_idle(), 5)
    await p.close()

    assert fake.titles() == titles
    assert len(handoffs) >= 3  # 10 x 20 ms in runs of at most about 50 ms
    assert all(log.statuses[t] == [DeliveryStatus.SENT] for t in titles)


async def test_a_hung_channel_does_not_hold_up_another(fake: FakeSend) -> None:
    p, log, _, _ = pool()
    hung, fast = target("hung", 1001), target("fast", 1002)
    fake.hang_ports.add(1001)
    for i in range(5):
        p.enqueue(job(hung, f"h{i}"))
    for i in range(5):
        p.enqueue(job(fast, f"f{i}"))
    await wait_until(lambda: all(log.statuses.get(f"f{i}") == [DeliveryStatus.SENT] for i in range(5)))
    assert fake.titles(1001) == ["h0"]
    fake.release.set()
    await asyncio.wait_for(p.wait_idle(), 5)
    await p.close()
    assert fake.titles(1001) == [f"h{i}" for i in range(5)]


async def test_the_queue_bound_counts_the_run_in_progress(fake: FakeSend) -> None:
    p, log, metrics, _ = pool(DeliverySettings(queue_size=3))
    fake.hang_ports.add(1001)
    channel = target("ops", 1001)
    assert [p.enqueue(job(channel, f"d{i}")) for i in range(4)] == [True, True, True, False]
    assert log.statuses["d3"] == [DeliveryStatus.DEAD]
    assert metrics.queue_full._value.get() == 1
    fake.release.set()
    await asyncio.wait_for(p.wait_idle(), 5)
    await p.close()


async def test_closing_stops_a_run_after_the_call_under_way(fake: FakeSend) -> None:
    p, log, _, _ = pool()
    fake.hang_ports.add(1001)
    channel = target("ops", 1001)
    for i in range(3):
        p.enqueue(job(channel, f"d{i}"))
    await wait_until(lambda: fake.titles() == ["d0"])
    await p.close()
    fake.release.set()
    await asyncio.sleep(0.1)
    assert fake.titles() == ["d0"]
    assert log.statuses == {}  # nothing recorded: the deliveries stay queued, picked up at start
