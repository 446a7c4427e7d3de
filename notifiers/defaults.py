"""A tenant's default delivery policy: one row per tenant, the built-in defaults when absent."""

from __future__ import annotations

import logging

from pydantic import ValidationError
from sqlalchemy.dialects import postgresql, sqlite

from notifiers.policy import DEFAULT_POLICY, DeliveryPolicy
from storage.database import TenantScope
from storage.tables import notification_policies
from storage.types import utcnow

logger = logging.getLogger(__name__)


class PolicyDefaults:
    """The default delivery policy of the scope's tenant."""

    def __init__(self, scope: TenantScope, dialect: str) -> None:
        self._scope = scope
        self._dialect = dialect

    async def get(self) -> DeliveryPolicy:
        """The stored defaults, or the built-in ones."""
        stmt = self._scope.select(notification_policies, notification_policies.c.policy)
        raw = (await self._scope.conn.execute(stmt)).scalar()
        if raw is None:
            return DEFAULT_POLICY
        try:
            return DeliveryPolicy.model_validate_json(raw)
        except ValidationError as exc:  # saved by an older version that accepted more: keep working
            logger.error(
                "tenant %s: stored notification policy no longer validates: %s", self._scope.tenant_id, exc
            )
            return DEFAULT_POLICY

    async def put(self, policy: DeliveryPolicy) -> DeliveryPolicy:
        """Replace the defaults."""
        insert = postgresql.insert if self._dialect == "postgresql" else sqlite.insert
        values = {
            "tenant_id": self._scope.tenant_id,
            "policy": policy.model_dump_json(),
            "updated_at": utcnow(),
        }
        stmt = insert(notification_policies).values(values)
        stmt = stmt.on_conflict_do_update(
            index_elements=["tenant_id"],
            set_={"policy": stmt.excluded.policy, "updated_at": stmt.excluded.updated_at},
        )
        await self._scope.conn.execute(stmt)
        return policy
