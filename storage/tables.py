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

# Rules: the row holds status and pointers; every saved document is an immutable version.
rules = sa.Table(
    "rules",
    metadata,
    _tenant_column(),
    sa.Column("id", sa.String(40), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("enabled", sa.Boolean(), nullable=False),
    sa.Column("latest_version", sa.Integer(), nullable=False),
    sa.Column("published_version", sa.Integer(), nullable=True),
    sa.Column("invalid_reason", sa.Text(), nullable=True),
    sa.Column("last_fired_at", UtcDateTime(), nullable=True),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
    sa.PrimaryKeyConstraint("tenant_id", "id"),
)

rule_versions = sa.Table(
    "rule_versions",
    metadata,
    _tenant_column(),
    sa.Column("rule_id", sa.String(40), nullable=False),
    sa.Column("version", sa.Integer(), nullable=False),
    sa.Column("document", JSONType, nullable=False),
    sa.Column("author", sa.String(80), nullable=False),
    sa.Column("comment", sa.String(500), nullable=False),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.PrimaryKeyConstraint("tenant_id", "rule_id", "version"),
    sa.ForeignKeyConstraint(["tenant_id", "rule_id"], ["rules.tenant_id", "rules.id"], ondelete="CASCADE"),
)


# Alarms raised by rules: one ACTIVE alarm per (tenant, rule, device, alarm type), enforced by a
# partial unique index; a cleared alarm stays as history and a new raise makes a new row (ADR 0012).
ALARM_ACTIVE = sa.text("cleared_at IS NULL")

alarms = sa.Table(
    "alarms",
    metadata,
    _tenant_column(),
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
    sa.PrimaryKeyConstraint("tenant_id", "id"),
    sa.Index(
        "ix_alarms_one_active",
        "tenant_id",
        "rule_id",
        "device_id",
        "alarm_type",
        unique=True,
        postgresql_where=ALARM_ACTIVE,
        sqlite_where=ALARM_ACTIVE,
    ),
    # Newest-first keyset pages, for the whole tenant and for one device.
    sa.Index(None, "tenant_id", "raised_at", "id"),
    sa.Index(None, "tenant_id", "device_id", "raised_at", "id"),
)

# The history of each alarm: raised, severity_changed, acknowledged, cleared; who and when.
alarm_events = sa.Table(
    "alarm_events",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    _tenant_column(),
    sa.Column("alarm_id", sa.String(40), nullable=False),
    sa.Column("kind", sa.String(24), nullable=False),
    sa.Column("at", UtcDateTime(), nullable=False),
    sa.Column("actor", sa.String(80), nullable=True),
    sa.Column("severity", sa.String(16), nullable=False),
    sa.Column("message", sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(
        ["tenant_id", "alarm_id"],
        ["alarms.tenant_id", "alarms.id"],
        ondelete="CASCADE",
    ),
    sa.Index(None, "tenant_id", "alarm_id", "id"),
)

# The engine's durable state per (tenant, rule, device): conditions' memory and the next timer.
rule_state = sa.Table(
    "rule_state",
    metadata,
    _tenant_column(),
    sa.Column("rule_id", sa.String(40), nullable=False),
    sa.Column("device_id", sa.String(128), nullable=False),
    sa.Column("state", JSONType, nullable=False),
    sa.Column("wake_at", UtcDateTime(), nullable=True),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
    sa.PrimaryKeyConstraint("tenant_id", "rule_id", "device_id"),
    sa.ForeignKeyConstraint(["tenant_id", "rule_id"], ["rules.tenant_id", "rules.id"], ondelete="CASCADE"),
    sa.Index(None, "wake_at"),
)

# Why a rule did or did not fire: one row per evaluation that reached the rule (pruned per tenant).
rule_traces = sa.Table(
    "rule_traces",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    _tenant_column(),
    sa.Column("rule_id", sa.String(40), nullable=False),
    sa.Column("rule_version", sa.Integer(), nullable=False),
    sa.Column("device_id", sa.String(128), nullable=False),
    sa.Column("at", UtcDateTime(), nullable=False),
    sa.Column("event", sa.String(16), nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("steps", JSONType, nullable=False),
    sa.Column("actions", JSONType, nullable=False),
    sa.Index(None, "tenant_id", "rule_id", "id"),
)


# Notification channels: Apprise URLs sealed with the notify keys (never stored in clear); the
# previews are what the API shows. Names are what rules refer to.
notification_channels = sa.Table(
    "notification_channels",
    metadata,
    _tenant_column(),
    sa.Column("id", sa.String(40), nullable=False),
    sa.Column("name", sa.String(63), nullable=False),
    sa.Column("description", sa.Text(), nullable=False),
    sa.Column("urls_sealed", sa.Text(), nullable=False),
    sa.Column("previews", JSONType, nullable=False),
    sa.Column("quiet_hours", JSONType, nullable=True),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
    sa.PrimaryKeyConstraint("tenant_id", "id"),
    sa.UniqueConstraint("tenant_id", "name"),
)

# The tenant's default delivery policy (one row per tenant; absent means the built-in defaults).
notification_policies = sa.Table(
    "notification_policies",
    metadata,
    _tenant_column(),
    sa.Column("policy", sa.Text(), nullable=False),  # DeliveryPolicy JSON, validated on read
    sa.Column("updated_at", UtcDateTime(), nullable=False),
    sa.PrimaryKeyConstraint("tenant_id"),
)

# The delivery log: one row per (notification, channel) with its outcome; status "dead" rows are
# the notification dead letters (re-sendable). Pruned per tenant to a bound.
notification_deliveries = sa.Table(
    "notification_deliveries",
    metadata,
    _tenant_column(),
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
    sa.PrimaryKeyConstraint("tenant_id", "id"),
    # Newest-first keyset pages, for the whole log and for one status (dead letters).
    sa.Index(None, "tenant_id", "created_at", "id"),
    sa.Index(None, "tenant_id", "status", "created_at", "id"),
)


def tenant_owned_tables() -> list[sa.Table]:
    """Every table whose rows belong to one tenant."""
    return [t for t in metadata.sorted_tables if "tenant_id" in t.c]
