"""Notification channels (sealed URLs), tenant default delivery policy, the delivery log.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from storage.migrations._rls import secure
from storage.types import JSONType, UtcDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def _tenant_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["tenant_id"], ["tenants.id"], ondelete="CASCADE", name=f"fk_{table}_tenant_id_tenants"
    )


def upgrade() -> None:
    op.create_table(
        "notification_channels",
        sa.Column("tenant_id", sa.String(63), nullable=False),
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("urls_sealed", sa.Text(), nullable=False),
        sa.Column("previews", JSONType, nullable=False),
        sa.Column("quiet_hours", JSONType, nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "id", name="pk_notification_channels"),
        sa.UniqueConstraint("tenant_id", "name", name="uq_notification_channels_tenant_id_name"),
        _tenant_fk("notification_channels"),
    )
    op.create_table(
        "notification_policies",
        sa.Column("tenant_id", sa.String(63), nullable=False),
        sa.Column("policy", sa.Text(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", name="pk_notification_policies"),
        _tenant_fk("notification_policies"),
    )
    op.create_table(
        "notification_deliveries",
        sa.Column("tenant_id", sa.String(63), nullable=False),
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("channel_id", sa.String(40), nullable=True),
        sa.Column("channel_name", sa.String(63), nullable=False),
        sa.Column("rule_id", sa.String(40), nullable=True),
        sa.Column("device_id", sa.String(128), nullable=True),
        sa.Column("alarm_type", sa.String(63), nullable=True),
        sa.Column("severity", sa.String(16), nullable=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("dedup_key", sa.String(300), nullable=True),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("resent", sa.Integer(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.Column("sent_at", UtcDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("tenant_id", "id", name="pk_notification_deliveries"),
        _tenant_fk("notification_deliveries"),
    )
    op.create_index(
        "ix_notification_deliveries_tenant_id_created_at_id",
        "notification_deliveries",
        ["tenant_id", "created_at", "id"],
    )
    op.create_index(
        "ix_notification_deliveries_tenant_id_status_created_at_id",
        "notification_deliveries",
        ["tenant_id", "status", "created_at", "id"],
    )
    for table in ("notification_channels", "notification_policies", "notification_deliveries"):
        secure(table)


def downgrade() -> None:
    op.drop_table("notification_deliveries")
    op.drop_table("notification_policies")
    op.drop_table("notification_channels")
