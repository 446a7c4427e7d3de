"""Rules and their immutable versions.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from storage.migrations._rls import secure
from storage.types import JSONType, UtcDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rules",
        sa.Column("tenant_id", sa.String(63), nullable=False),
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("latest_version", sa.Integer(), nullable=False),
        sa.Column("published_version", sa.Integer(), nullable=True),
        sa.Column("invalid_reason", sa.Text(), nullable=True),
        sa.Column("last_fired_at", UtcDateTime(), nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "id", name="pk_rules"),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], ondelete="CASCADE", name="fk_rules_tenant_id_tenants"
        ),
    )
    op.create_table(
        "rule_versions",
        sa.Column("tenant_id", sa.String(63), nullable=False),
        sa.Column("rule_id", sa.String(40), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("document", JSONType, nullable=False),
        sa.Column("author", sa.String(80), nullable=False),
        sa.Column("comment", sa.String(500), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "rule_id", "version", name="pk_rule_versions"),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], ondelete="CASCADE", name="fk_rule_versions_tenant_id_tenants"
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id", "rule_id"],
            ["rules.tenant_id", "rules.id"],
            ondelete="CASCADE",
            name="fk_rule_versions_tenant_id_rule_id_rules",
        ),
    )
    for table in ("rules", "rule_versions"):
        secure(table)


def downgrade() -> None:
    op.drop_table("rule_versions")
    op.drop_table("rules")
