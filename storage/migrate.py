"""Run Alembic migrations programmatically (``flatgigs db upgrade``, tests, the embedded start-up)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

_SCRIPTS = Path(__file__).parent / "migrations"


def alembic_config(url: str, app_role: str | None = None) -> Config:
    """An Alembic config pointing at this package's migrations and ``url`` (the owner's URL)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(_SCRIPTS))
    # ConfigParser interpolation would eat '%' in passwords.
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["app_role"] = app_role
    return cfg


def upgrade(url: str, app_role: str | None = None, revision: str = "head") -> None:
    """Bring the schema at ``url`` up to ``revision``. Blocking: call from a thread in async code."""
    command.upgrade(alembic_config(url, app_role), revision)


def downgrade(url: str, revision: str) -> None:
    """Take the schema at ``url`` back to ``revision``."""
    command.downgrade(alembic_config(url), revision)
