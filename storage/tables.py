"""The relational schema. Every table with a ``tenant_id`` column is tenant-owned and row-level secured.

Migrations in ``storage/migrations`` create exactly this schema; a test compares the two.
"""

from __future__ import annotations

import sqlalchemy as sa

from storage.types import JSONType, UtcDateTime

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# Platform tables: not owned by any tenant. Everything else is.
PLATFORM_TABLES = frozenset({"tenants", "operator_tokens"})

tenants = sa.Table(
    "tenants",
    metadata,
    sa.Column("id", sa.String(63), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("timezone", sa.String(64), nullable=False),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
)

operator_tokens = sa.Table(
    "operator_tokens",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("secret_hash", sa.String(64), nullable=False),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("expires_at", UtcDateTime(), nullable=True),
    sa.Column("revoked_at", UtcDateTime(), nullable=True),
    sa.Column("last_used_at", UtcDateTime(), nullable=True),
)


def _tenant_column() -> sa.Column[str]:
    return sa.Column(
        "tenant_id",
        sa.String(63),
        sa.ForeignKey("tenants.id", ondelete="CASCADE"),
        nullable=False,
    )


users = sa.Table(
    "users",
    metadata,
    _tenant_column(),
    sa.Column("id", sa.String(40), nullable=False),
    sa.Column("email", sa.String(320), nullable=False),
    sa.Column("display_name", sa.String(200), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("password_hash", sa.String(200), nullable=False),
    sa.Column("disabled", sa.Boolean(), nullable=False),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
    sa.PrimaryKeyConstraint("tenant_id", "id"),
    sa.UniqueConstraint("tenant_id", "email"),
)

api_tokens = sa.Table(
    "api_tokens",
    metadata,
    _tenant_column(),
    sa.Column("id", sa.String(40), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("secret_hash", sa.String(64), nullable=False),
    sa.Column("scopes", JSONType, nullable=False),
    sa.Column("user_id", sa.String(40), nullable=True),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("expires_at", UtcDateTime(), nullable=True),
    sa.Column("revoked_at", UtcDateTime(), nullable=True),
    sa.Column("last_used_at", UtcDateTime(), nullable=True),
    sa.PrimaryKeyConstraint("tenant_id", "id"),
)

device_types = sa.Table(
    "device_types",
    metadata,
    _tenant_column(),
    sa.Column("id", sa.String(128), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("description", sa.Text(), nullable=False),
    sa.Column("metrics", JSONType, nullable=False),
    sa.Column("inactivity_timeout_s", sa.Integer(), nullable=False),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
    sa.PrimaryKeyConstraint("tenant_id", "id"),
)

devices = sa.Table(
    "devices",
    metadata,
    _tenant_column(),
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
    sa.PrimaryKeyConstraint("tenant_id", "id"),
    sa.ForeignKeyConstraint(
        ["tenant_id", "type_id"],
        ["device_types.tenant_id", "device_types.id"],
        ondelete="RESTRICT",
    ),
    # Keyset pages filtered by type or status walk these indexes in id order.
    sa.Index(None, "tenant_id", "type_id", "id"),
    sa.Index(None, "tenant_id", "status", "id"),
)

# Labels are also kept as rows so a label filter is an index lookup, not a JSON scan.
device_labels = sa.Table(
    "device_labels",
    metadata,
    _tenant_column(),
    sa.Column("device_id", sa.String(128), nullable=False),
    sa.Column("key", sa.String(63), nullable=False),
    sa.Column("value", sa.String(200), nullable=False),
    sa.PrimaryKeyConstraint("tenant_id", "device_id", "key"),
    sa.ForeignKeyConstraint(
        ["tenant_id", "device_id"],
        ["devices.tenant_id", "devices.id"],
        ondelete="CASCADE",
    ),
    sa.Index(None, "tenant_id", "key", "value", "device_id"),
)

# Messages the pipeline refused, per tenant, for inspection through the API (pruned to a bound).
dead_letters = sa.Table(
    "dead_letters",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    _tenant_column(),
    sa.Column("device_id", sa.String(128), nullable=True),
    sa.Column("reason", sa.String(32), nullable=False),
    sa.Column("detail", sa.Text(), nullable=False),
    sa.Column("source_kind", sa.String(16), nullable=False),
    sa.Column("source_instance", sa.String(128), nullable=False),
    sa.Column("payload", sa.LargeBinary(), nullable=False),
    sa.Column("received_at", UtcDateTime(), nullable=False),
    sa.Index(None, "tenant_id", "id"),
)

# Per-device secrets for HTTP and CoAP ingestion; stored only as a hash.
device_credentials = sa.Table(
    "device_credentials",
    metadata,
    _tenant_column(),
    sa.Column("id", sa.String(40), nullable=False),
    sa.Column("device_id", sa.String(128), nullable=False),
    sa.Column("secret_hash", sa.String(64), nullable=False),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("revoked_at", UtcDateTime(), nullable=True),
    sa.PrimaryKeyConstraint("tenant_id", "id"),
    sa.ForeignKeyConstraint(
        ["tenant_id", "device_id"],
        ["devices.tenant_id", "devices.id"],
        ondelete="CASCADE",
    ),
    sa.Index(None, "tenant_id", "device_id"),
)

# How the platform reaches a device it polls or subscribes to (Modbus register map, OPC-UA nodes).
device_bindings = sa.Table(
    "device_bindings",
    metadata,
    _tenant_column(),
    sa.Column("device_id", sa.String(128), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("config", JSONType, nullable=False),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
    sa.PrimaryKeyConstraint("tenant_id", "device_id"),
    sa.ForeignKeyConstraint(
        ["tenant_id", "device_id"],
        ["devices.tenant_id", "devices.id"],
        ondelete="CASCADE",
    ),
    sa.Index(None, "kind"),
)


def tenant_owned_tables() -> list[sa.Table]:
    """Every table whose rows belong to one tenant."""
    return [t for t in metadata.sorted_tables if "tenant_id" in t.c]
