"""Delivery: one bounded queue and one worker per channel, retries with backoff, dead letters.

A channel's worker takes one delivery at a time and sends it through each of the channel's URLs
that has not succeeded yet, in a thread (Apprise is synchronous) with a timeout. A failed attempt
is retried after ``base * 2**(n-1)`` seconds (capped), times a random factor in [0.5, 1.5) so
that many deliveries failing together do not retry together. After ``max_attempts`` the record
becomes a dead letter. Because every channel has its own worker and a channel uses at most one
thread at a time, a slow or dead channel only delays its own queue.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime

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
    queue_size: int = 1_000  # per channel
    threads: int = 16
    allow_private: bool = False

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        delay = min(self.backoff_max_s, self.backoff_base_s * 2.0 ** (attempt - 1))
        return float(delay * rng.uniform(0.5, 1.5))


@dataclass(slots=True)
class Job:
    """A delivery on its way: the log record and which of the channel's URLs still need it."""

    record: DeliveryRecord
    target: ChannelTarget
    queued_at: float
    pending: set[int] | None = None  # URL indexes; None = all


@dataclass(slots=True)
class _Plugins:
    updated_at: datetime
    parsed: list[gateway.ParsedUrl | str] = field(default_factory=list)  # a str is why it failed


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
        self._queues: dict[tuple[str, str], asyncio.Queue[Job]] = {}
        self._workers: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._plugins: dict[tuple[str, str], _Plugins] = {}
        self._outstanding = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False

    @property
    def outstanding(self) -> int:
        """Deliveries queued or in progress."""
        return self._outstanding

    def enqueue(self, job: Job) -> bool:
        """Queue a delivery on its channel; False (and a dead letter) when the queue is full."""
        key = (job.target.tenant_id, job.target.id)
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = asyncio.Queue(self.settings.queue_size)
        try:
            queue.put_nowait(job)
        except asyncio.QueueFull:
            self._metrics.queue_full.inc()
            self._finish(
                job,
                DeliveryStatus.DEAD,
                "the channel's queue was full (it is failing or too slow)",
                counted=False,
            )
            return False
        self._outstanding += 1
        self._idle.clear()
        self._metrics.queued.inc()
        if key not in self._workers and not self._closed:
            self._workers[key] = asyncio.create_task(self._work(key, queue), name=f"notify-{key[0]}-{key[1]}")
        return True

    async def wait_idle(self) -> None:
        """Until nothing is queued or in progress."""
        await self._idle.wait()

    async def close(self) -> None:
        """Stop the workers (queued deliveries stay ``queued`` in the log, picked up at start)."""
        self._closed = True
        tasks = set(self._workers.values())
        while tasks:
            # Cancel until they are gone: on Python 3.11 asyncio.wait_for swallows a cancellation
            # that races with its future finishing, and the worker would go on to its next job.
            for task in tasks:
                task.cancel()
            _, tasks = await asyncio.wait(tasks, timeout=0.1)
        self._workers.clear()
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

    async def _work(self, key: tuple[str, str], queue: asyncio.Queue[Job]) -> None:
        while not self._closed:
            job = await queue.get()
            try:
                await self._deliver(job)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug must not stop the channel: the job is dead, the worker lives
                logger.exception("delivery %s failed unexpectedly", job.record.id)
                self._finish(job, DeliveryStatus.DEAD, "internal error while delivering (see the server log)")

    async def _deliver(self, job: Job) -> None:
        record = job.record
        parsed = self._parsed(job.target)
        if job.pending is None:
            job.pending = set(range(len(parsed)))
        while True:
            errors = []
            for index in sorted(job.pending):
                item = parsed[index] if index < len(parsed) else "the channel's URLs changed"
                if isinstance(item, str):
                    errors.append(item)
                    continue
                kind = gateway.notify_type(record.kind, record.severity)
                error = await self._attempt(item, record.title, record.body, kind)
                if error is None:
                    job.pending.discard(index)
                else:
                    errors.append(f"{item.preview}: {error}")
            record.attempts += 1
            if not job.pending:
                self._finish(job, DeliveryStatus.SENT, None)
                return
            record.last_error = "; ".join(errors)[:1000]
            if record.attempts >= self.settings.max_attempts:
                logger.warning(
                    "delivery %s to channel %s of %s is dead after %d attempts: %s",
                    record.id,
                    job.target.name,
                    job.target.tenant_id,
                    record.attempts,
                    record.last_error,
                )
                self._finish(job, DeliveryStatus.DEAD, record.last_error)
                return
            record.status = DeliveryStatus.RETRYING
            record.updated_at = self._clock.now()
            self._record(record)
            await asyncio.sleep(self.settings.backoff(record.attempts, self._rng))

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
            self._metrics.attempts.labels("timeout").inc()
            return f"no answer within {self.settings.attempt_timeout_s:g}s"
        self._metrics.attempts.labels("ok" if error is None else "failed").inc()
        return error

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

    def _finish(self, job: Job, status: DeliveryStatus, error: str | None, *, counted: bool = True) -> None:
        record = job.record
        now = self._clock.now()
        record.status = status
        record.last_error = error
        record.updated_at = now
        if status is DeliveryStatus.SENT:
            record.sent_at = now
        self._record(record)
        self._metrics.deliveries.labels(status.value).inc()
        loop = asyncio.get_running_loop()
        self._metrics.seconds.observe(max(0.0, loop.time() - job.queued_at))
        if counted:
            self._outstanding -= 1
            self._metrics.queued.dec()
            if self._outstanding == 0:
                self._idle.set()
