"""Password hashing and API token secrets: nothing secret is ever stored in clear."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()

TENANT_TOKEN_PREFIX = "fg"  # noqa: S105 - a prefix, not a secret
OPERATOR_TOKEN_PREFIX = "fgo"  # noqa: S105 - a prefix, not a secret


def hash_password(password: str) -> str:
    """An Argon2id hash of ``password``."""
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """Whether ``password`` matches ``password_hash``."""
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def hash_secret(secret: str) -> str:
    """SHA-256 of a token secret.

    Token secrets are 256 random bits, so a fast hash is enough (no dictionary to attack) and
    keeps authentication cheap on every request; passwords use Argon2 instead.
    """
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(stored_hash: str, secret: str) -> bool:
    """Constant-time comparison of a secret against its stored hash."""
    return hmac.compare_digest(stored_hash, hash_secret(secret))


@dataclass(frozen=True, slots=True)
class TokenParts:
    """A parsed bearer token: ``fg.<tenant>.<key id>.<secret>`` or ``fgo.<key id>.<secret>``."""

    tenant_id: str | None
    key_id: str
    secret: str


def new_secret() -> str:
    """A fresh random token secret (URL-safe, no dots)."""
    return secrets.token_urlsafe(32)


def format_token(tenant_id: str | None, key_id: str, secret: str) -> str:
    """The bearer string shown once to the user."""
    if tenant_id is None:
        return f"{OPERATOR_TOKEN_PREFIX}.{key_id}.{secret}"
    return f"{TENANT_TOKEN_PREFIX}.{tenant_id}.{key_id}.{secret}"


def parse_token(raw: str) -> TokenParts | None:
    """Split a bearer string, or None if it has not the shape of a flatgigs token."""
    parts = raw.split(".")
    if len(parts) == 4 and parts[0] == TENANT_TOKEN_PREFIX and all(parts[1:]):
        return TokenParts(parts[1], parts[2], parts[3])
    if len(parts) == 3 and parts[0] == OPERATOR_TOKEN_PREFIX and all(parts[1:]):
        return TokenParts(None, parts[1], parts[2])
    return None
