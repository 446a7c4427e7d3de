"""Tenants, operator tokens, users, API tokens, device types, devices and their labels.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from storage.migrations._rls import secure
from storage.types import JSONType, UtcDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("id", sa.String(63)),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_tenants"),
    )
    op.create_table(
        "operator_tokens",
        sa.Column("id", sa.String(40)),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("expires_at", UtcDateTime(), nullable=True),
        sa.Column("revoked_at", UtcDateTime(), nullable=True),
        sa.Column("last_used_at", UtcDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_operator_tokens"),
    )
    op.create_table(
        "users",
        sa.Column("tenant_id", sa.String(63), nullable=False),
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("password_hash", sa.String(200), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "id", name="pk_users"),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], ondelete="CASCADE", name="fk_users_tenant_id_tenants"
        ),
        sa.UniqueConstraint("tenant_id", "email", name="uq_users_tenant_id_email"),
    )
    op.create_table(
        "api_tokens",
        sa.Column("tenant_id", sa.String(63), nullable=False),
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("scopes", JSONType, nullable=False),
        sa.Column("user_id", sa.String(40), nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("expires_at", UtcDateTime(), nullable=True),
        sa.Column("revoked_at", UtcDateTime(), nullable=True),
        sa.Column("last_used_at", UtcDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("tenant_id", "id", name="pk_api_tokens"),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            ondelete="CASCADE",
            name="fk_api_tokens_tenant_id_tenants",
        ),
    )
    op.create_table(
        "device_types",
        sa.Column("tenant_id", sa.String(63), nullable=False),
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("metrics", JSONType, nullable=False),
        sa.Column("inactivity_timeout_s", sa.Integer(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "id", name="pk_device_types"),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            ondelete="CASCADE",
            name="fk_device_types_tenant_id_tenants",
        ),
    )
    op.create_table(
        "devices",
        sa.Column("tenant_id", sa.String(63), nullable=False),
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("type_id", sa.String(128), nullable=False),
        sa.Column("labels", JSONType, nullable=False),
        sa.Column("attributes", JSONType, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("last_seen_at", UtcDateTime(), nullable=True),
        sa.Column("status_changed_at", UtcDateTime(), nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "id", name="pk_devices"),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], ondelete="CASCADE", name="fk_devices_tenant_id_tenants"
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id", "type_id"],
            ["device_types.tenant_id", "device_types.id"],
            ondelete="RESTRICT",
            name="fk_devices_tenant_id_type_id_device_types",
        ),
    )
    op.create_index("ix_devices_tenant_id_type_id_id", "devices", ["tenant_id", "type_id", "id"])
    op.create_index("ix_devices_tenant_id_status_id", "devices", ["tenant_id", "status", "id"])
    op.create_table(
        "device_labels",
        sa.Column("tenant_id", sa.String(63), nullable=False),
        sa.Column("device_id", sa.String(128), nullable=False),
        sa.Column("key", sa.String(63), nullable=False),
        sa.Column("value", sa.String(200), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "device_id", "key", name="pk_device_labels"),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            ondelete="CASCADE",
            name="fk_device_labels_tenant_id_tenants",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id", "device_id"],
            ["devices.tenant_id", "devices.id"],
            ondelete="CASCADE",
            name="fk_device_labels_tenant_id_device_id_devices",
        ),
    )
    op.create_index(
        "ix_device_labels_tenant_id_key_value_device_id",
        "device_labels",
        ["tenant_id", "key", "value", "device_id"],
    )
    for table in ("users", "api_tokens", "device_types", "devices", "device_labels"):
        secure(table)


def downgrade() -> None:
    for table in ("device_labels", "devices", "device_types", "api_tokens", "users"):
        op.drop_table(table)
    op.drop_table("operator_tokens")
    op.drop_table("tenants")
