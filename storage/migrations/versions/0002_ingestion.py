"""Dead letters of the telemetry pipeline and per-device ingestion credentials.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from storage.migrations._rls import secure
from storage.types import UtcDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dead_letters",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.String(63), nullable=False),
        sa.Column("device_id", sa.String(128), nullable=True),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("source_kind", sa.String(16), nullable=False),
        sa.Column("source_instance", sa.String(128), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("received_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_dead_letters"),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], ondelete="CASCADE", name="fk_dead_letters_tenant_id_tenants"
        ),
    )
    op.create_index("ix_dead_letters_tenant_id_id", "dead_letters", ["tenant_id", "id"])
    op.create_table(
        "device_credentials",
        sa.Column("tenant_id", sa.String(63), nullable=False),
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("device_id", sa.String(128), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("revoked_at", UtcDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("tenant_id", "id", name="pk_device_credentials"),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            ondelete="CASCADE",
            name="fk_device_credentials_tenant_id_tenants",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id", "device_id"],
            ["devices.tenant_id", "devices.id"],
            ondelete="CASCADE",
            name="fk_device_credentials_tenant_id_device_id_devices",
        ),
    )
    op.create_index(
        "ix_device_credentials_tenant_id_device_id", "device_credentials", ["tenant_id", "device_id"]
    )
    for table in ("dead_letters", "device_credentials"):
        secure(table)


def downgrade() -> None:
    op.drop_table("device_credentials")
    op.drop_table("dead_letters")
