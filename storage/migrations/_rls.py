"""Row-level security for tenant-owned tables, applied by migrations on PostgreSQL only."""

from __future__ import annotations

from alembic import op

POLICY = "tenant_isolation"
_TENANT = "current_setting('app.tenant_id', true)"


def secure(table: str) -> None:
    """Enable and force RLS on ``table`` with the tenant policy (no-op on SQLite)."""
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
    # FORCE: the policy applies to the table owner too, so a mistake in role setup cannot
    # silently turn isolation off.
    op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
    op.execute(
        f"CREATE POLICY {POLICY} ON {table} USING (tenant_id = {_TENANT}) WITH CHECK (tenant_id = {_TENANT})"
    )
