"""Settings: secure defaults and clear start-up errors."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from model.errors import ConfigurationError
from server.settings import load_settings


def test_defaults_are_embedded_and_local(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path)
    assert settings.app_database_url.startswith("sqlite+aiosqlite:///")
    assert settings.owner_database_url == settings.app_database_url
    assert settings.host == "127.0.0.1"
    assert settings.public_url == "http://127.0.0.1:8000"


def test_short_secret_is_refused_with_the_variable_name() -> None:
    with pytest.raises(ConfigurationError) as info:
        load_settings(secret_key="too-short")
    assert "FLATGIGS_SECRET_KEY" in info.value.detail
    assert "at least 32 characters" in info.value.detail


def test_repetitive_secret_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="repetitive"):
        load_settings(secret_key="a" * 40)


def test_unsupported_database_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="FLATGIGS_DATABASE_URL"):
        load_settings(database_url="mysql://root@localhost/x")


def test_postgres_url_gets_the_async_driver() -> None:
    settings = load_settings(database_url="postgresql://app:pw@127.0.0.1:5432/flatgigs")
    assert settings.app_database_url.startswith("postgresql+asyncpg://app:pw@")


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLATGIGS_PORT", "9123")
    assert load_settings().port == 9123
    monkeypatch.setenv("FLATGIGS_PORT", "not-a-port")
    with pytest.raises(ConfigurationError, match="FLATGIGS_PORT"):
        load_settings()


def test_generated_secret_is_kept_private_and_stable(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path)
    first = settings.ensure_secret_key()
    assert len(first) >= 32
    assert load_settings(data_dir=tmp_path).ensure_secret_key() == first
    mode = (tmp_path / "secret_key").stat().st_mode
    assert stat.S_IMODE(mode) == 0o600
