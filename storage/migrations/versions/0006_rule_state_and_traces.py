"""Durable rule state per (tenant, rule, device) and decision traces.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from storage.migrations._rls import secure
from storage.types import JSONType, UtcDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rule_state",
        sa.Column("tenant_id", sa.String(63), nullable=False),
        sa.Column("rule_id", sa.String(40), nullable=False),
        sa.Column("device_id", sa.String(128), nullable=False),
        sa.Column("state", JSONType, nullable=False),
        sa.Column("wake_at", UtcDateTime(), nullable=True),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "rule_id", "device_id", name="pk_rule_state"),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], ondelete="CASCADE", name="fk_rule_state_tenant_id_tenants"
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id", "rule_id"],
            ["rules.tenant_id", "rules.id"],
            ondelete="CASCADE",
            name="fk_rule_state_tenant_id_rule_id_rules",
        ),
    )
    op.create_index("ix_rule_state_wake_at", "rule_state", ["wake_at"])
    op.create_table(
        "rule_traces",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.String(63), nullable=False),
        sa.Column("rule_id", sa.String(40), nullable=False),
        sa.Column("rule_version", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.String(128), nullable=False),
        sa.Column("at", UtcDateTime(), nullable=False),
        sa.Column("event", sa.String(16), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("steps", JSONType, nullable=False),
        sa.Column("actions", JSONType, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_rule_traces"),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], ondelete="CASCADE", name="fk_rule_traces_tenant_id_tenants"
        ),
    )
    op.create_index("ix_rule_traces_tenant_id_rule_id_id", "rule_traces", ["tenant_id", "rule_id", "id"])
    for table in ("rule_state", "rule_traces"):
        secure(table)


def downgrade() -> None:
    op.drop_table("rule_traces")
    op.drop_table("rule_state")
