"""Delivery: one bounded queue and one worker per channel, retries with backoff, dead letters.

A channel's worker hands the deliveries waiting in its queue to a pool thread in one go (a *run*:
at most ``batch_max`` deliveries, and no new delivery started after ``batch_budget_s`` of
sending), because Apprise is synchronous and each crossing from the event loop to a thread and
back costs about as much CPU as the policy layer's whole work for a message (ADR 0025). The
thread sends the run's deliveries in order, each through every URL of the channel that has not
succeeded yet, and the worker then records every outcome at once.

A run stops after the first delivery that failed on any URL: that delivery is retried after
``base * 2**(n-1)`` seconds (capped), times a random factor in [0.5, 1.5) so that many deliveries
failing together do not retry together, and the deliveries queued behind it wait, as when they
went one at a time. Every URL call has ``attempt_timeout_s`` (from the call's start; the first
call of a run from the hand-off, so a run that no thread picks up times out too): when it passes,
the call counts as failed, the thread is left to finish it alone and stops there, and the
delivery's remaining URLs go to another thread. After ``max_attempts`` the record becomes a dead
letter. Every channel has its own worker and uses at most one thread at a time (plus any left
behind by a timeout), so a slow or dead channel only delays its own queue.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from notifiers import gateway
from notifiers.channels import ChannelTarget
from notifiers.clock import Clock
from notifiers.deliveries import DeliveryRecord, DeliveryStatus
from notifiers.metrics import NotifyMetrics

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DeliverySettings:
    """Retry, timeout and capacity of delivery."""

    max_attempts: int = 5
    backoff_base_s: float = 2.0
    backoff_max_s: float = 300.0
    attempt_timeout_s: float = 30.0
    queue_size: int = 1_000  # per channel, the run in progress included
    threads: int = 16
    allow_private: bool = False
    batch_max: int = 100  # deliveries per thread hand-off
    batch_budget_s: float = 0.2  # a run starts no new delivery after this much sending

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        delay = min(self.backoff_max_s, self.backoff_base_s * 2.0 ** (attempt - 1))
        return float(delay * rng.uniform(0.5, 1.5))


@dataclass(slots=True)
class Job:
    """A delivery on its way: the log record and which of the channel's URLs still need it."""

    record: DeliveryRecord
    target: ChannelTarget
    queued_at: float  # time.monotonic()
    pending: set[int] | None = None  # URL indexes; None = all


@dataclass(slots=True)
class _Plugins:
    updated_at: datetime
    parsed: list[gateway.ParsedUrl | str] = field(default_factory=list)  # a str is why it failed


@dataclass(slots=True)
class _Call:
    """One attempt of one delivery: the URLs to call and, as the thread calls them, the answers."""

    job: Job
    title: str
    body: str
    kind: str
    urls: list[tuple[int, gateway.ParsedUrl]]
    problems: list[tuple[int, str]]  # URLs that cannot be called (they fail this attempt)
    # (URL index, error or None, timed out, monotonic time of the answer); written by the thread
    # under its run's lock until the run ends or is stopped, then read by the worker.
    results: list[tuple[int, str | None, bool, float]] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return len(self.results) == len(self.urls)

    @property
    def failed(self) -> bool:
        return bool(self.problems) or any(error is not None for _, error, _, _ in self.results)


class _Run:
    """The calls handed to one pool thread, and what the worker and the thread share about them."""

    __slots__ = ("calls", "current", "finished", "lock", "started", "stop")

    def __init__(self, calls: list[tuple[_Call, list[tuple[int, gateway.ParsedUrl]]]]) -> None:
        self.calls = calls
        self.lock = threading.Lock()
        self.stop = False  # set by the worker: the thread makes no further call
        first = calls[0]
        self.current: tuple[_Call, int] | None = (first[0], first[1][0][0])  # the call under way/next
        self.started = time.monotonic()  # when ``current`` started (or the run was handed over)
        self.finished = False


@dataclass(slots=True)
class _Lane:
    """A channel's queue (the run in progress stays at its head until recorded) and its worker."""

    jobs: deque[Job] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


Record = Callable[[DeliveryRecord], None]


class DeliveryPool:
    """Per-channel queues and workers, sharing one thread pool."""

    def __init__(
        self,
        settings: DeliverySettings,
        clock: Clock,
        metrics: NotifyMetrics,
        record: Record,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._metrics = metrics
        self._record = record
        self._rng = rng or random.Random()  # noqa: S311 (jitter, not a secret)
        self._executor = ThreadPoolExecutor(max_workers=settings.threads, thread_name_prefix="notify")
        self._lanes: dict[tuple[str, str], _Lane] = {}
        self._plugins: dict[tuple[str, str], _Plugins] = {}
        self._outstanding = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False
        self._children: dict[tuple[str, str], Any] = {}  # labelled counters, made on first use

    @property
    def outstanding(self) -> int:
        """Deliveries queued or in progress."""
        return self._outstanding

    def enqueue(self, job: Job) -> bool:
        """Queue a delivery on its channel; False (and a dead letter) when the queue is full."""
        key = (job.target.tenant_id, job.target.id)
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane()
        if len(lane.jobs) >= self.settings.queue_size:
            self._metrics.queue_full.inc()
            self._finish(
                job,
                DeliveryStatus.DEAD,
                "the channel's queue was full (it is failing or too slow)",
                counted=False,
            )
            return False
        lane.jobs.append(job)
        lane.wake.set()
        self._outstanding += 1
        self._idle.clear()
        self._metrics.queued.inc()
        if lane.task is None and not self._closed:
            lane.task = asyncio.create_task(self._work(lane), name=f"notify-{key[0]}-{key[1]}")
        return True

    async def wait_idle(self) -> None:
        """Until nothing is queued or in progress."""
        await self._idle.wait()

    async def close(self) -> None:
        """Stop the workers (queued deliveries stay ``queued`` in the log, picked up at start)."""
        self._closed = True
        tasks = {lane.task for lane in self._lanes.values() if lane.task is not None}
        while tasks:
            for task in tasks:
                task.cancel()
            _, tasks = await asyncio.wait(tasks, timeout=0.1)
        for lane in self._lanes.values():
            lane.task = None
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def send_once(
        self, target: ChannelTarget, title: str, body: str
    ) -> list[tuple[str, str, str | None]]:
        """One attempt through every URL of a channel (the channel test): (service, preview, error)."""
        results: list[tuple[str, str, str | None]] = []
        for item in self._parsed(target):
            if isinstance(item, str):
                results.append(("unknown", "", item))
                continue
            error = await self._attempt(item, title, body)
            results.append((item.service, item.preview, error))
        return results

    # --- the worker -------------------------------------------------------------------------------

    async def _work(self, lane: _Lane) -> None:
        while not self._closed:
            if not lane.jobs:
                lane.wake.clear()
                await lane.wake.wait()
                continue
            try:
                await self._deliver(lane, list(itertools.islice(lane.jobs, self.settings.batch_max)))
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug must not stop the channel: the job is dead, the worker lives
                if not lane.jobs:
                    logger.exception("channel worker failed unexpectedly")
                    continue
                job = lane.jobs.popleft()
                logger.exception("delivery %s failed unexpectedly", job.record.id)
                self._finish(job, DeliveryStatus.DEAD, "internal error while delivering (see the server log)")

    async def _deliver(self, lane: _Lane, jobs: list[Job]) -> None:
        """One attempt of the first deliveries of the lane; records what came of each."""
        calls = [self._call(job) for job in jobs]
        if calls[0].urls:
            todo = []
            for call in calls:
                todo.append((call, call.urls))
                if call.problems:
                    break  # it fails whatever its URLs answer: the run ends with it
            while todo:
                stuck = await self._run(_Run(todo))
                if stuck is None:
                    break
                # The call did not answer in time: it failed; this attempt's remaining URLs of that
                # delivery go to another thread, and the run ends with it.
                call, index = stuck
                self._count("attempts", "timeout")
                error = f"no answer within {self.settings.attempt_timeout_s:g}s"
                call.results.append((index, error, True, time.monotonic()))
                answered = {i for i, _, _, _ in call.results}
                rest = [(i, item) for i, item in call.urls if i not in answered]
                todo = [(call, rest)] if rest else []
        for call in calls:
            if not call.complete:
                return  # not reached in this run (its budget ran out): stays queued, goes next
            if not await self._settle(lane, call):
                return

    async def _settle(self, lane: _Lane, call: _Call) -> bool:
        """Record one delivery's attempt; False when it failed (the run ended with it)."""
        job, record = call.job, call.job.record
        pending = job.pending if job.pending is not None else set()
        errors = list(call.problems)
        done_at = 0.0
        for index, error, timed_out, at in call.results:
            done_at = max(done_at, at)
            if error is None:
                self._count("attempts", "ok")
                pending.discard(index)
            else:
                if not timed_out:
                    self._count("attempts", "failed")
                preview = next(item.preview for i, item in call.urls if i == index)
                errors.append((index, f"{preview}: {error}"))
        record.attempts += 1
        if not pending:
            self._done(lane, job)
            self._finish(job, DeliveryStatus.SENT, None, done_at=done_at)
            return True
        record.last_error = "; ".join(text for _, text in sorted(errors))[:1000]
        if record.attempts >= self.settings.max_attempts:
            logger.warning(
                "delivery %s to channel %s of %s is dead after %d attempts: %s",
                record.id,
                job.target.name,
                job.target.tenant_id,
                record.attempts,
                record.last_error,
            )
            self._done(lane, job)
            self._finish(job, DeliveryStatus.DEAD, record.last_error)
            return False
        record.status = DeliveryStatus.RETRYING
        record.updated_at = self._clock.now()
        self._record(record)
        await asyncio.sleep(self.settings.backoff(record.attempts, self._rng))
        return False

    @staticmethod
    def _done(lane: _Lane, job: Job) -> None:
        if not lane.jobs or lane.jobs[0] is not job:  # runs take the lane's head in order
            raise RuntimeError("a delivery finished out of its channel's order")
        lane.jobs.popleft()

    def _call(self, job: Job) -> _Call:
        parsed = self._parsed(job.target)
        if job.pending is None:
            job.pending = set(range(len(parsed)))
        urls: list[tuple[int, gateway.ParsedUrl]] = []
        problems: list[tuple[int, str]] = []
        for index in sorted(job.pending):
            item = parsed[index] if index < len(parsed) else "the channel's URLs changed"
            if isinstance(item, str):
                problems.append((index, item))
            else:
                urls.append((index, item))
        record = job.record
        kind = gateway.notify_type(record.kind, record.severity)
        return _Call(job, record.title, record.body, kind, urls, problems)

    async def _run(self, run: _Run) -> tuple[_Call, int] | None:
        """Hand the run to a thread and wait; the (call, URL index) that timed out, if one did."""
        future = asyncio.get_running_loop().run_in_executor(self._executor, self._send_run, run)
        timeout = self.settings.attempt_timeout_s
        remaining = timeout  # from the hand-off; the lock is needed only once a wait runs out
        try:
            while True:
                done, _ = await asyncio.wait((future,), timeout=max(remaining, 0.001))
                if done:
                    future.result()  # a bug in the run itself surfaces here
                    return None
                with run.lock:
                    remaining = run.started + timeout - time.monotonic()
                    if remaining <= 0 and not run.finished and run.current is not None:
                        run.stop = True
                        future.cancel()  # only does something if no thread has taken it yet
                        return run.current
        except BaseException:  # cancelled (the pool is closing): the thread makes no further call
            with run.lock:
                run.stop = True
            future.cancel()
            raise

    def _send_run(self, run: _Run) -> None:
        """In a pool thread: the run's calls in order, until one fails, the budget is spent or the
        worker says stop."""
        try:
            deadline = time.monotonic() + self.settings.batch_budget_s
            for position, (call, urls) in enumerate(run.calls):
                if position and time.monotonic() >= deadline:
                    return
                for index, item in urls:
                    with run.lock:
                        if run.stop:
                            return
                        run.current, run.started = (call, index), time.monotonic()
                    error = gateway.send(
                        item.plugin,
                        call.title,
                        call.body,
                        allow_private=self.settings.allow_private,
                        kind=call.kind,
                    )
                    with run.lock:
                        if run.stop:
                            return  # too late: the worker counted it as timed out
                        now = time.monotonic()
                        call.results.append((index, error, False, now))
                        run.current, run.started = None, now
                if call.failed:
                    return
        finally:
            with run.lock:
                run.finished = True

    async def _attempt(
        self, item: gateway.ParsedUrl, title: str, body: str, kind: str = "info"
    ) -> str | None:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(
            self._executor,
            lambda: gateway.send(
                item.plugin, title, body, allow_private=self.settings.allow_private, kind=kind
            ),
        )
        try:
            error = await asyncio.wait_for(future, self.settings.attempt_timeout_s)
        except TimeoutError:
            self._count("attempts", "timeout")
            return f"no answer within {self.settings.attempt_timeout_s:g}s"
        self._count("attempts", "ok" if error is None else "failed")
        return error

    def _count(self, metric: str, label: str) -> None:
        child = self._children.get((metric, label))
        if child is None:
            counter = self._metrics.attempts if metric == "attempts" else self._metrics.deliveries
            child = self._children[(metric, label)] = counter.labels(label)
        child.inc()

    def _parsed(self, target: ChannelTarget) -> list[gateway.ParsedUrl | str]:
        key = (target.tenant_id, target.id)
        cached = self._plugins.get(key)
        if cached is None or cached.updated_at != target.updated_at:
            parsed: list[gateway.ParsedUrl | str] = []
            for url in target.urls:
                try:
                    parsed.append(gateway.parse(url))
                except gateway.ChannelUrlProblem as exc:
                    parsed.append(str(exc))
            cached = self._plugins[key] = _Plugins(target.updated_at, parsed)
        return cached.parsed

    def _finish(
        self,
        job: Job,
        status: DeliveryStatus,
        error: str | None,
        *,
        counted: bool = True,
        done_at: float | None = None,
    ) -> None:
        record = job.record
        now = self._clock.now()
        record.status = status
        record.last_error = error
        record.updated_at = now
        if status is DeliveryStatus.SENT:
            record.sent_at = now
        self._record(record)
        self._count("deliveries", status.value)
        end = done_at if done_at is not None else time.monotonic()
        self._metrics.seconds.observe(max(0.0, end - job.queued_at))
        if counted:
            self._outstanding -= 1
            self._metrics.queued.dec()
            if self._outstanding == 0:
                self._idle.set()
