"""The bounded in-process bus between connectors and ingestion (a partitioned stream when scaled out)."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from model.errors import BackpressureError
from model.readings import Reading
from model.rejections import Rejection


def _wake_first(waiters: deque[asyncio.Future[None]]) -> None:
    """Resolve the first waiter that still waits (cancelled ones are skipped and dropped)."""
    while waiters:
        waiter = waiters.popleft()
        if not waiter.done():
            waiter.set_result(None)
            return


class ReadingBus:
    """A bounded queue of readings: it never grows past ``capacity``.

    ``submit`` waits while full (MQTT stops reading, the broker holds the rest); ``offer``
    refuses with BackpressureError (HTTP and CoAP answer 503 with a retry hint).

    The same rules as an ``asyncio.Queue(maxsize=capacity)`` (waiting submitters are woken one
    per reading taken, in order), without its per-item bookkeeping: ``next_batch`` takes what is
    there in one go and waits for more with one timer per batch, not a task per reading.
    """

    def __init__(
        self, capacity: int, on_reject: Callable[[Rejection], None], retry_after: float = 1.0
    ) -> None:
        if capacity < 1:
            raise ValueError("the bus needs room for at least one reading")
        self._items: deque[Reading] = deque()
        # Waiting batch takers, with how many readings each needs before it is worth waking.
        self._getters: deque[tuple[asyncio.Future[None], int]] = deque()
        self._putters: deque[asyncio.Future[None]] = deque()
        self._on_reject = on_reject
        self.capacity = capacity
        self.retry_after = retry_after
        self.refused_full = 0

    @property
    def depth(self) -> int:
        """Readings waiting for ingestion."""
        return len(self._items)

    async def submit(self, reading: Reading) -> None:
        """Enqueue, waiting for room."""
        items = self._items
        while len(items) >= self.capacity:
            putter = asyncio.get_running_loop().create_future()
            self._putters.append(putter)
            try:
                await putter
            except BaseException:
                putter.cancel()
                if putter in self._putters:
                    self._putters.remove(putter)
                elif len(items) < self.capacity:
                    _wake_first(self._putters)  # it was woken for a slot it will not use: pass it on
                raise
        items.append(reading)
        if self._getters:
            self._wake_getter()

    def offer(self, reading: Reading) -> None:
        """Enqueue now or raise BackpressureError."""
        if len(self._items) >= self.capacity:
            self.refused_full += 1
            raise BackpressureError(
                f"ingestion is full ({self.capacity} readings waiting)", retry_after=self.retry_after
            )
        self._items.append(reading)
        if self._getters:
            self._wake_getter()

    def reject(self, rejection: Rejection) -> None:
        """Record a refused message."""
        self._on_reject(rejection)

    async def _more(self, wanted: int, within: float | None) -> None:
        """Until ``wanted`` readings are waiting (or ``within`` seconds passed)."""
        loop = asyncio.get_running_loop()
        getter = loop.create_future()
        entry = (getter, min(wanted, self.capacity))  # a full bus always wakes its taker
        self._getters.append(entry)
        timer = None if within is None else loop.call_later(within, _resolve, getter)
        try:
            await getter
        except BaseException:
            getter.cancel()
            if entry in self._getters:
                self._getters.remove(entry)
            elif self._items:
                self._wake_getter()  # it was woken for readings it will not take: pass them on
            raise
        finally:
            if timer is not None:
                timer.cancel()
            if entry in self._getters:  # woken by the timer: still listed
                self._getters.remove(entry)

    def _wake_getter(self) -> None:
        """Wake the first waiting taker once enough readings are there for it."""
        getters = self._getters
        while getters:
            getter, wanted = getters[0]
            if getter.done():
                getters.popleft()
            elif len(self._items) >= wanted:
                getters.popleft()
                getter.set_result(None)
                return
            else:
                return

    def _take(self, batch: list[Reading], max_items: int) -> None:
        items = self._items
        taken = min(max_items - len(batch), len(items))
        for _ in range(taken):
            batch.append(items.popleft())
        for _ in range(min(taken, len(self._putters))):
            _wake_first(self._putters)  # one submitter per slot freed, as asyncio.Queue does

    async def next_batch(self, max_items: int, max_wait: float) -> list[Reading]:
        """Wait for one reading, then take up to ``max_items`` arriving within ``max_wait`` seconds."""
        while not self._items:
            await self._more(1, None)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_wait
        batch: list[Reading] = []
        self._take(batch, max_items)
        try:
            while len(batch) < max_items:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                # Woken when the batch can be filled or at the deadline, not for every reading.
                await self._more(max_items - len(batch), remaining)
                self._take(batch, max_items)
        except BaseException:
            # Cancelled with readings in hand: they go back to the front, in order (the bus may
            # then briefly hold up to one batch more than its capacity).
            self._items.extendleft(reversed(batch))
            raise
        return batch


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
