"""The one settings object: environment variables prefixed ``FLATGIGS_``, checked at start-up."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Literal

import sqlalchemy as sa
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from model.errors import ConfigurationError

MIN_SECRET_LENGTH = 32


class Settings(BaseSettings):
    """Everything configurable about a flatgigs process. Nothing else reads the environment."""

    model_config = SettingsConfigDict(env_prefix="FLATGIGS_", extra="forbid", frozen=True)

    data_dir: Path = Field(
        default=Path(".flatgigs"),
        description="Where the embedded database, stores and generated secrets live.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL the application connects with. Default: SQLite in data_dir. "
        "For PostgreSQL use a role that owns no table and cannot bypass RLS.",
    )
    migration_database_url: str | None = Field(
        default=None,
        description="URL of the role that owns the tables (migrations). Default: database_url.",
    )
    db_app_role: str = Field(
        default="flatgigs_app",
        pattern=r"^[a-z_][a-z0-9_]{0,62}$",
        description="PostgreSQL role that migrations grant data access to.",
    )
    db_pool_size: int = Field(default=10, ge=1, le=200)
    secret_key: SecretStr | None = Field(
        default=None,
        description=f"Signing key (at least {MIN_SECRET_LENGTH} characters). "
        "Default: generated once and kept in data_dir/secret_key.",
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    public_url: str | None = Field(default=None, description="Base URL shown to users.")
    max_body_bytes: int = Field(default=1_048_576, ge=1024, le=256 * 1_048_576)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    influx_url: str | None = Field(
        default=None, description="InfluxDB 1.x-compatible HTTP URL; default: the embedded store."
    )
    influx_username: str | None = None
    influx_password: SecretStr | None = None
    influx_database_prefix: str = Field(default="flatgigs_", pattern=r"^[a-z_][a-z0-9_]{0,30}$")
    mqtt_url: str | None = Field(
        default=None,
        pattern=r"^mqtt://",
        description="mqtt://[user:password@]host:port of the broker to ingest from; default: no MQTT. "
        "(TLS to the broker, mqtts://, is not supported yet.)",
    )
    mqtt_client_id: str = Field(default="flatgigs-ingest", min_length=1, max_length=64)
    mqtt_shared_group: str | None = Field(
        default=None, description="Shared-subscription group, so several workers split the load."
    )
    coap_port: int | None = Field(
        default=None, ge=0, le=65535, description="UDP port of the CoAP ingestion server; default: off."
    )
    coap_host: str = Field(default="::", description="Address the CoAP server binds ('::' = all).")
    allow_private_webhooks: bool = Field(
        default=False, description="Let rules call webhooks on loopback and private addresses."
    )
    notify_keys: SecretStr | None = Field(
        default=None,
        description="Fernet keys sealing notification channel URLs, comma-separated, newest first "
        "(rotate: put a new key first, restart, run `flatgigs notifications rotate-keys`, then drop "
        "the old one; see docs/notifications.md). "
        "Default: one key derived from the secret key.",
    )
    notify_max_attempts: int = Field(default=5, ge=1, le=20, description="Delivery attempts per channel.")
    notify_backoff_s: float = Field(
        default=2.0, gt=0, le=600, description="First retry delay; doubles per attempt, with jitter."
    )
    notify_attempt_timeout_s: float = Field(default=30.0, gt=0, le=300)
    notify_queue_size: int = Field(default=1_000, ge=1, le=1_000_000, description="Deliveries per channel.")
    notify_threads: int = Field(default=16, ge=1, le=256, description="Threads sending notifications.")
    notify_log_keep: int = Field(
        default=10_000, ge=100, le=10_000_000, description="Delivery log records kept per tenant."
    )
    load_bindings: bool = Field(
        default=True, description="Poll/subscribe to bound devices (Modbus, OPC-UA) in this process."
    )
    ingest_queue_size: int = Field(default=10_000, ge=10, le=1_000_000)
    ingest_batch_size: int = Field(default=500, ge=1, le=10_000)
    device_payload_bytes: int = Field(default=65_536, ge=256, le=1_048_576)
    sign_in_account_failures: int = Field(
        default=5,
        ge=1,
        le=1_000,
        description="Failed editor sign-ins per account (tenant and email, known or not) within "
        "sign_in_window_s before the account is locked (HTTP 429, no password checked).",
    )
    sign_in_address_failures: int = Field(
        default=30,
        ge=1,
        le=100_000,
        description="Failed editor sign-ins per client address (IPv6: per /64) within sign_in_window_s "
        "before the address is locked. Behind a reverse proxy every client has the proxy's address.",
    )
    sign_in_window_s: float = Field(
        default=900.0, gt=0, le=86_400, description="The window failed sign-ins are counted in (seconds)."
    )
    sign_in_lockout_s: float = Field(
        default=900.0, gt=0, le=86_400, description="How long the first lock of an account or address lasts."
    )
    sign_in_lockout_max_s: float = Field(
        default=14_400.0,
        gt=0,
        le=7 * 86_400,
        description="Each further lock of the same key doubles, up to this; a key with no failure for "
        "this long after its last lock starts over.",
    )
    sign_in_throttle_entries: int = Field(
        default=50_000,
        ge=100,
        le=10_000_000,
        description="Accounts, and separately addresses, whose failures a process remembers "
        "(about 250 bytes each); the one that failed least recently is forgotten first.",
    )

    @field_validator("secret_key")
    @classmethod
    def _secret_is_strong(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        raw = value.get_secret_value()
        if len(raw) < MIN_SECRET_LENGTH:
            raise ValueError(
                f"must be at least {MIN_SECRET_LENGTH} characters long (got {len(raw)}); "
                'generate one with: python -c "import secrets; print(secrets.token_urlsafe(48))"'
            )
        if len(set(raw)) < 8:
            raise ValueError("is too repetitive to be a secret")
        return value

    @field_validator("database_url", "migration_database_url")
    @classmethod
    def _url_is_supported(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            backend = sa.make_url(value).get_backend_name()
        except sa.exc.ArgumentError as exc:
            raise ValueError(f"is not a database URL: {exc}") from exc
        if backend not in ("sqlite", "postgresql"):
            raise ValueError(f"backend {backend!r} is not supported (use sqlite or postgresql)")
        return _async_driver(value)

    @model_validator(mode="after")
    def _public_url_default(self) -> Settings:
        if self.public_url is None:
            object.__setattr__(self, "public_url", f"http://{self.host}:{self.port}")
        return self

    @model_validator(mode="after")
    def _lockouts_grow(self) -> Settings:
        if self.sign_in_lockout_max_s < self.sign_in_lockout_s:
            raise ValueError("FLATGIGS_SIGN_IN_LOCKOUT_MAX_S must be at least FLATGIGS_SIGN_IN_LOCKOUT_S")
        return self

    @property
    def app_database_url(self) -> str:
        """The URL the application connects with."""
        return self.database_url or f"sqlite+aiosqlite:///{(self.data_dir / 'flatgigs.db').resolve()}"

    @property
    def owner_database_url(self) -> str:
        """The URL migrations run with (the table owner)."""
        return self.migration_database_url or self.app_database_url

    def ensure_secret_key(self) -> str:
        """The configured secret key, or one generated once and kept in ``data_dir`` (mode 0600)."""
        if self.secret_key is not None:
            return self.secret_key.get_secret_value()
        path = self.data_dir / "secret_key"
        if path.exists():
            return path.read_text().strip()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        key = secrets.token_urlsafe(48)
        path.touch(mode=0o600)
        path.write_text(key)
        return key


def _async_driver(url: str) -> str:
    """Pick the async driver when a URL names only the backend."""
    parsed = sa.make_url(url)
    if parsed.drivername == "sqlite":
        parsed = parsed.set(drivername="sqlite+aiosqlite")
    elif parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+asyncpg")
    return parsed.render_as_string(hide_password=False)


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment; a ConfigurationError names every bad variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = ".".join(str(p) for p in error["loc"]) or "settings"
            problems.append(f"FLATGIGS_{field.upper()}: {error['msg']}")
        raise ConfigurationError(
            "invalid configuration:\n  " + "\n  ".join(problems), problems=problems
        ) from exc
