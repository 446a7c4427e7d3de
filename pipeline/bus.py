"""The bounded in-process bus between connectors and ingestion (a partitioned stream when scaled out)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from model.errors import BackpressureError
from model.readings import Reading
from model.rejections import Rejection


class ReadingBus:
    """A bounded queue of readings: it never grows past ``capacity``.

    ``submit`` waits while full (MQTT stops reading, the broker holds the rest); ``offer``
    refuses with BackpressureError (HTTP and CoAP answer 503 with a retry hint).
    """

    def __init__(
        self, capacity: int, on_reject: Callable[[Rejection], None], retry_after: float = 1.0
    ) -> None:
        self._queue: asyncio.Queue[Reading] = asyncio.Queue(maxsize=capacity)
        self._on_reject = on_reject
        self.capacity = capacity
        self.retry_after = retry_after
        self.refused_full = 0

    @property
    def depth(self) -> int:
        """Readings waiting for ingestion."""
        return self._queue.qsize()

    async def submit(self, reading: Reading) -> None:
        """Enqueue, waiting for room."""
        await self._queue.put(reading)

    def offer(self, reading: Reading) -> None:
        """Enqueue now or raise BackpressureError."""
        try:
            self._queue.put_nowait(reading)
        except asyncio.QueueFull:
            self.refused_full += 1
            raise BackpressureError(
                f"ingestion is full ({self.capacity} readings waiting)", retry_after=self.retry_after
            ) from None

    def reject(self, rejection: Rejection) -> None:
        """Record a refused message."""
        self._on_reject(rejection)

    async def next_batch(self, max_items: int, max_wait: float) -> list[Reading]:
        """Wait for one reading, then take up to ``max_items`` arriving within ``max_wait`` seconds."""
        batch = [await self._queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_wait
        while len(batch) < max_items:
            try:
                batch.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return batch
