"""Collects rejections without blocking anyone and stores them per tenant, in batches."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict, deque

from model.rejections import Rejection
from pipeline.metrics import PipelineMetrics
from storage.database import Database
from storage.deadletters import DeadLetterRepository
from storage.tenancy import TenantRepository

logger = logging.getLogger(__name__)


class DeadLetterRecorder:
    """Counts every rejection at once and persists it in the tenant's dead-letter list.

    ``record`` never blocks and never raises (it runs on the connectors' hot path). Pending
    rejections are bounded: past ``max_pending`` the oldest pending one is counted as
    ``overflow`` (visible in /metrics) rather than growing memory.
    """

    def __init__(
        self,
        database: Database,
        metrics: PipelineMetrics,
        *,
        max_pending: int = 10_000,
        keep_per_tenant: int = 10_000,
    ) -> None:
        self._database = database
        self._metrics = metrics
        self._pending: deque[Rejection] = deque()
        self._max_pending = max_pending
        self._keep = keep_per_tenant
        self._wakeup = asyncio.Event()
        self.overflow = 0

    def record(self, rejection: Rejection) -> None:
        """Count and queue one rejection."""
        self._metrics.rejected.labels(rejection.reason.value, rejection.source.kind).inc()
        if len(self._pending) >= self._max_pending:
            self._pending.popleft()
            self.overflow += 1
            self._metrics.dead_letter_overflow.inc()
        self._pending.append(rejection)
        self._wakeup.set()

    async def run(self, interval: float = 0.5) -> None:
        """Persist pending rejections until cancelled."""
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            await self.flush()
            await asyncio.sleep(interval)  # batch what arrives meanwhile into one write

    async def flush(self) -> None:
        """Write everything pending now."""
        by_tenant: dict[str | None, list[Rejection]] = defaultdict(list)
        while self._pending:
            rejection = self._pending.popleft()
            by_tenant[rejection.tenant_id].append(rejection)
        for tenant_id, rejections in by_tenant.items():
            try:
                await self._store(tenant_id, rejections)
            except Exception:  # the database being down must not kill the recorder
                logger.exception("could not store %d dead letters of %s", len(rejections), tenant_id)

    async def _store(self, tenant_id: str | None, rejections: list[Rejection]) -> None:
        if tenant_id is not None:
            async with self._database.platform() as conn:
                known = await TenantRepository(conn).find(tenant_id) is not None
        if tenant_id is None or not known:
            # No tenant to file it under: it stays counted under its reason, and logged.
            for r in rejections[:5]:
                logger.warning(
                    "refused message for unknown tenant %r: %s (%s)", tenant_id, r.reason, r.detail
                )
            return
        async with self._database.tenant(tenant_id) as scope:
            repo = DeadLetterRepository(scope)
            await repo.add(rejections)
            await repo.prune(self._keep)
