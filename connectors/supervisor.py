"""Runs connectors, restarts a failed one with jittered exponential backoff, reports their health."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

from connectors.base import Connector, ConnectorHealth, HealthState

logger = logging.getLogger(__name__)


class ConnectorSupervisor:
    """Keeps every connector running for as long as the supervisor runs."""

    def __init__(
        self,
        connectors: Sequence[Connector],
        *,
        initial_backoff: float = 0.5,
        max_backoff: float = 30.0,
        stable_after: float = 30.0,
        rng: Callable[[], float] = random.random,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.connectors = list(connectors)
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.stable_after = stable_after
        self._rng = rng
        self._sleep = sleep
        self._health = {c.name: ConnectorHealth() for c in self.connectors}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._started = False

    def health(self) -> dict[str, ConnectorHealth]:
        """Health of every connector, by name, including its own details."""
        for connector in self.connectors:
            self._health[connector.name].details = connector.details()
        return dict(self._health)

    async def run(self) -> None:
        """Run all connectors until cancelled (connectors can be replaced meanwhile)."""
        self._started = True
        for connector in self.connectors:
            self._start(connector)
        try:
            await asyncio.Event().wait()
        finally:
            self._started = False
            await self._stop(list(self._tasks))

    async def replace(self, kind: str, connectors: Sequence[Connector]) -> None:
        """Swap every connector of ``kind`` for ``connectors`` (e.g. after bindings changed)."""
        old = [c for c in self.connectors if c.kind == kind]
        await self._stop([c.name for c in old if c.name in self._tasks])
        for connector in old:
            self.connectors.remove(connector)
            self._health.pop(connector.name, None)
        for connector in connectors:
            self.connectors.append(connector)
            self._health[connector.name] = ConnectorHealth()
            if self._running:
                self._start(connector)

    @property
    def _running(self) -> bool:
        return self._started

    def _start(self, connector: Connector) -> None:
        self._tasks[connector.name] = asyncio.create_task(
            self._keep_running(connector), name=f"connector:{connector.name}"
        )

    async def _stop(self, names: list[str]) -> None:
        tasks = [self._tasks.pop(name) for name in names if name in self._tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _set(self, name: str, state: HealthState, error: str | None = None) -> None:
        health = self._health[name]
        health.state = state
        health.since = datetime.now(UTC)
        if error is not None:
            health.last_error = error

    async def _keep_running(self, connector: Connector) -> None:
        backoff = self.initial_backoff
        loop = asyncio.get_running_loop()
        while True:
            self._set(connector.name, HealthState.RUNNING)
            started = loop.time()
            try:
                await connector.run()
                error = "returned unexpectedly"
            except asyncio.CancelledError:
                self._set(connector.name, HealthState.STOPPED)
                raise
            except Exception as exc:  # any failure of one connector must not stop the others
                error = f"{type(exc).__name__}: {exc}"
                logger.warning("connector %s failed: %s", connector.name, error)
            if loop.time() - started > self.stable_after:
                backoff = self.initial_backoff
            delay = backoff * (0.5 + self._rng())  # full jitter around the current backoff
            self._health[connector.name].restarts += 1
            self._set(connector.name, HealthState.BACKING_OFF, error)
            await self._sleep(delay)
            backoff = min(backoff * 2, self.max_backoff)
