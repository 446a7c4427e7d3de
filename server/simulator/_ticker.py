"""The update loop shared by the simulated servers: values change on a grid of whole intervals."""

from __future__ import annotations

import abc
import asyncio
import logging
import math
from collections.abc import Callable

logger = logging.getLogger(__name__)


class GridUpdates(abc.ABC):
    """Calls ``update(t)`` at every multiple of ``update_s`` (never twice for one instant).

    Updates land on whole multiples so tests can compare stored values with the signal model
    exactly; a failing update is logged and the loop goes on.
    """

    clock: Callable[[], float]
    update_s: float
    updated_at: float | None
    what: str = "the simulated values"

    @abc.abstractmethod
    async def update(self, t: float) -> None:
        """Set the served values to those of instant ``t``."""

    def _grid(self, t: float) -> float:
        """The last instant of the update grid at or before ``t``."""
        return math.floor(t / self.update_s + 1e-9) * self.update_s

    async def _update_forever(self) -> None:
        last = self.updated_at
        while True:
            due = self._grid(self.clock()) + self.update_s
            if last is not None and due <= last:  # woken a little early: never the same instant twice
                due = last + self.update_s
            await asyncio.sleep(min(self.update_s, max(0.0, due - self.clock())))
            last = due
            try:
                await self.update(due)
            except Exception:  # a bug must not stop the updates for good
                logger.exception("updating %s failed", self.what)
