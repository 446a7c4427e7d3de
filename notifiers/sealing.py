"""Channel URLs sealed at rest: Fernet (AES-128-CBC + HMAC-SHA256) under keys from the settings.

``FLATGIGS_NOTIFY_KEYS`` holds one or more Fernet keys separated by commas, newest first: the
first seals, all of them open (MultiFernet), so a key is rotated by putting a new one in front,
restarting, re-sealing every channel of every tenant (``flatgigs notifications rotate-keys``,
which runs ``ChannelRepository.reseal`` per tenant) and then dropping the old key. Without the
setting, one key is derived from the process's secret key (HKDF-SHA256), so the embedded default
seals too (``flatgigs notifications derived-key`` prints it, to list after a first key of your
own); see ADR 0018 and docs/notifications.md.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from model.errors import ConfigurationError

_INFO = b"flatgigs notification channel urls v1"


class UnsealError(Exception):
    """A sealed value that none of the configured keys opens (a key was dropped too early)."""


def derive_key(secret: str) -> str:
    """A Fernet key derived from the process secret (used when no notify keys are configured)."""
    raw = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(secret.encode())
    return base64.urlsafe_b64encode(raw).decode()


def generate_key() -> str:
    """A new random Fernet key (for FLATGIGS_NOTIFY_KEYS)."""
    return Fernet.generate_key().decode()


class UrlSealer:
    """Seals and opens lists of channel URLs."""

    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise ConfigurationError("at least one notification key is needed")
        try:
            self._fernets = [Fernet(key.strip().encode()) for key in keys]
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(
                "FLATGIGS_NOTIFY_KEYS: every key must be a Fernet key (32 url-safe base64 bytes); "
                'generate one with: python -c "from cryptography.fernet import Fernet; '
                'print(Fernet.generate_key().decode())"'
            ) from exc
        self._multi = MultiFernet(self._fernets)

    @classmethod
    def from_setting(cls, keys: str | None, fallback_secret: str) -> UrlSealer:
        """Keys from a comma-separated setting, else one derived from ``fallback_secret``."""
        listed = [k for k in (keys or "").split(",") if k.strip()]
        return cls(listed or [derive_key(fallback_secret)])

    def seal(self, urls: Sequence[str]) -> str:
        """The URLs as one token, sealed with the newest key."""
        return self._multi.encrypt(json.dumps(list(urls)).encode()).decode()

    def open(self, token: str) -> list[str]:
        """The URLs of a token sealed with any configured key."""
        try:
            urls = json.loads(self._multi.decrypt(token.encode()))
        except InvalidToken as exc:
            raise UnsealError("no configured notification key opens this channel's URLs") from exc
        return [str(u) for u in urls]

    def needs_reseal(self, token: str) -> bool:
        """Whether ``token`` was sealed with an older key than the newest."""
        try:
            self._fernets[0].decrypt(token.encode())
        except InvalidToken:
            return True
        return False

    def reseal(self, token: str) -> str:
        """The same URLs sealed with the newest key."""
        try:
            return self._multi.rotate(token.encode()).decode()
        except InvalidToken as exc:
            raise UnsealError("no configured notification key opens this channel's URLs") from exc
