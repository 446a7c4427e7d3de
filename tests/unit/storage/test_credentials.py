"""Token format and secret hashing."""

from __future__ import annotations

from storage.credentials import (
    format_token,
    hash_password,
    hash_secret,
    new_secret,
    parse_token,
    secret_matches,
    verify_password,
)


def test_tenant_token_round_trip() -> None:
    secret = new_secret()
    parts = parse_token(format_token("acme-retail", "tok_1", secret))
    assert parts is not None
    assert (parts.tenant_id, parts.key_id, parts.secret) == ("acme-retail", "tok_1", secret)


def test_operator_token_round_trip() -> None:
    parts = parse_token(format_token(None, "op_1", "s3cret"))
    assert parts is not None
    assert parts.tenant_id is None
    assert parts.key_id == "op_1"


def test_malformed_tokens_are_not_parsed() -> None:
    for raw in ("", "fg", "fg.a.b", "fg.a.b.c.d", "xx.a.b.c", "fg..b.c", "fgo.a."):
        assert parse_token(raw) is None


def test_secrets_are_random_and_dotless() -> None:
    secrets = {new_secret() for _ in range(100)}
    assert len(secrets) == 100
    assert all("." not in s and len(s) >= 40 for s in secrets)


def test_secret_hash_is_not_the_secret() -> None:
    secret = new_secret()
    digest = hash_secret(secret)
    assert secret not in digest
    assert secret_matches(digest, secret)
    assert not secret_matches(digest, secret + "x")


def test_password_hash_is_argon2id() -> None:
    digest = hash_password("correct horse battery")
    assert digest.startswith("$argon2id$")
    assert verify_password(digest, "correct horse battery")
    assert not verify_password(digest, "wrong horse battery")
    assert not verify_password("not-a-hash", "x")
