"""Channel URLs sealed with Fernet keys; rotation by putting a new key first and re-sealing."""

from __future__ import annotations

import pytest

from model.errors import ConfigurationError
from notifiers.sealing import UnsealError, UrlSealer, derive_key, generate_key

URLS = ["json://user:pw-123@hooks.example.com/T0KEN", "mailto://smtp.example.com/ops@example.com"]


def test_sealed_urls_are_not_in_clear_and_open_again() -> None:
    sealer = UrlSealer([generate_key()])
    token = sealer.seal(URLS)
    assert "pw-123" not in token and "T0KEN" not in token and "hooks" not in token
    assert sealer.open(token) == URLS


def test_rotation_keeps_old_tokens_readable_and_reseals_under_the_new_key() -> None:
    old, new = generate_key(), generate_key()
    token = UrlSealer([old]).seal(URLS)
    rotating = UrlSealer([new, old])
    assert rotating.open(token) == URLS
    assert rotating.needs_reseal(token)
    resealed = rotating.reseal(token)
    assert not rotating.needs_reseal(resealed)
    assert UrlSealer([new]).open(resealed) == URLS
    with pytest.raises(UnsealError):
        UrlSealer([new]).open(token)  # the old key was dropped before re-sealing


def test_default_key_is_derived_from_the_secret() -> None:
    secret = "x" * 16 + "abcdefghijklmnop"
    assert derive_key(secret) == derive_key(secret) != derive_key(secret + "!")
    sealer = UrlSealer.from_setting(None, secret)
    assert UrlSealer([derive_key(secret)]).open(sealer.seal(URLS)) == URLS


def test_a_bad_key_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="Fernet key"):
        UrlSealer(["not-a-key"])
