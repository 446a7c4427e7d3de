"""Alarms and their history.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from storage.migrations._rls import secure
from storage.types import UtcDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_ACTIVE = sa.text("cleared_at IS NULL")


def upgrade() -> None:
    op.create_table(
        "alarms",
        sa.Column("tenant_id", sa.String(63), nullable=False),
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("rule_id", sa.String(40), nullable=False),
        sa.Column("device_id", sa.String(128), nullable=False),
        sa.Column("alarm_type", sa.String(63), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("raise_count", sa.Integer(), nullable=False),
        sa.Column("raised_at", UtcDateTime(), nullable=False),
        sa.Column("last_raised_at", UtcDateTime(), nullable=False),
        sa.Column("acknowledged_at", UtcDateTime(), nullable=True),
        sa.Column("acknowledged_by", sa.String(80), nullable=True),
        sa.Column("cleared_at", UtcDateTime(), nullable=True),
        sa.Column("cleared_by", sa.String(80), nullable=True),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "id", name="pk_alarms"),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], ondelete="CASCADE", name="fk_alarms_tenant_id_tenants"
        ),
    )
    # At most one active alarm per key: concurrent raises cannot both insert (ADR 0012).
    op.create_index(
        "ix_alarms_one_active",
        "alarms",
        ["tenant_id", "rule_id", "device_id", "alarm_type"],
        unique=True,
        postgresql_where=_ACTIVE,
        sqlite_where=_ACTIVE,
    )
    op.create_index("ix_alarms_tenant_id_raised_at_id", "alarms", ["tenant_id", "raised_at", "id"])
    op.create_index(
        "ix_alarms_tenant_id_device_id_raised_at_id", "alarms", ["tenant_id", "device_id", "raised_at", "id"]
    )
    op.create_table(
        "alarm_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.String(63), nullable=False),
        sa.Column("alarm_id", sa.String(40), nullable=False),
        sa.Column("kind", sa.String(24), nullable=False),
        sa.Column("at", UtcDateTime(), nullable=False),
        sa.Column("actor", sa.String(80), nullable=True),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_alarm_events"),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], ondelete="CASCADE", name="fk_alarm_events_tenant_id_tenants"
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id", "alarm_id"],
            ["alarms.tenant_id", "alarms.id"],
            ondelete="CASCADE",
            name="fk_alarm_events_tenant_id_alarm_id_alarms",
        ),
    )
    op.create_index("ix_alarm_events_tenant_id_alarm_id_id", "alarm_events", ["tenant_id", "alarm_id", "id"])
    for table in ("alarms", "alarm_events"):
        secure(table)


def downgrade() -> None:
    op.drop_table("alarm_events")
    op.drop_table("alarms")
