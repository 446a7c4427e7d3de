"""The supervisor restarts failed connectors with backoff and can swap connectors while running."""

from __future__ import annotations

import asyncio
from typing import ClassVar

from connectors.base import Connector, ConnectorError, HealthState
from connectors.supervisor import ConnectorSupervisor


class FlakyConnector(Connector):
    """Fails ``failures`` times, then runs until cancelled."""

    kind: ClassVar[str] = "flaky"

    def __init__(self, name: str, failures: int) -> None:
        super().__init__(name)
        self.failures = failures
        self.starts = 0
        self.running = asyncio.Event()
        self.cancelled = False

    async def run(self) -> None:
        self.starts += 1
        if self.starts <= self.failures:
            raise ConnectorError(f"attempt {self.starts} failed")
        self.running.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise


async def test_restarts_until_running_and_reports_health() -> None:
    flaky, steady = FlakyConnector("flaky", failures=3), FlakyConnector("steady", failures=0)
    delays: list[float] = []

    async def recording_sleep(delay: float) -> None:
        delays.append(delay)
        await asyncio.sleep(0)

    supervisor = ConnectorSupervisor(
        [flaky, steady], initial_backoff=0.01, max_backoff=0.04, rng=lambda: 0.5, sleep=recording_sleep
    )
    task = asyncio.create_task(supervisor.run())
    async with asyncio.timeout(5):
        await flaky.running.wait()
        await steady.running.wait()
    health = supervisor.health()
    assert health["flaky"].restarts == 3 and health["flaky"].state is HealthState.RUNNING
    assert health["flaky"].last_error == "ConnectorError: attempt 3 failed"
    assert health["steady"].restarts == 0
    assert delays == [0.01, 0.02, 0.04]  # doubling, capped, jitter factor 1.0 with rng 0.5
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert flaky.cancelled and steady.cancelled


async def test_replace_starts_connectors_when_none_ran_before() -> None:
    supervisor = ConnectorSupervisor([])
    task = asyncio.create_task(supervisor.run())
    await asyncio.sleep(0)  # let run() begin with nothing to run
    added = FlakyConnector("added", failures=0)
    await supervisor.replace("flaky", [added])
    async with asyncio.timeout(5):
        await added.running.wait()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert added.cancelled


async def test_replace_swaps_connectors_of_a_kind_while_running() -> None:
    first = FlakyConnector("one", failures=0)
    supervisor = ConnectorSupervisor([first])
    task = asyncio.create_task(supervisor.run())
    async with asyncio.timeout(5):
        await first.running.wait()
    second = FlakyConnector("two", failures=0)
    await supervisor.replace("flaky", [second])
    async with asyncio.timeout(5):
        await second.running.wait()
    assert first.cancelled
    assert [c.name for c in supervisor.connectors] == ["two"]
    assert set(supervisor.health()) == {"two"}
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert second.cancelled
