"""Browser sessions: a signed, expiring cookie naming tenant and user, and a per-session CSRF token.

The cookie holds no secret and no role: the user is loaded on every request, so a disabled user
or a changed role takes effect at once. The CSRF token is a synchronizer token kept inside the
signed cookie and echoed by every state-changing request (form field or ``X-CSRF-Token``
header); see ADR 0021.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer

from model.scopes import ROLE_SCOPES, Role

COOKIE = "fg_session"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
MAX_AGE_S = 12 * 3600
_SALT = "flatgigs.editor.session.v1"


@dataclass(frozen=True, slots=True)
class SessionData:
    """What the cookie says: an anonymous session has only a CSRF token (for the login form)."""

    csrf: str
    tenant_id: str | None = None
    user_id: str | None = None

    @property
    def signed_in(self) -> bool:
        """Whether the cookie names a user."""
        return self.tenant_id is not None and self.user_id is not None


@dataclass(frozen=True, slots=True)
class EditorUser:
    """The signed-in user, as loaded for this request."""

    tenant_id: str
    tenant_name: str
    user_id: str
    email: str
    display_name: str
    role: Role
    csrf: str

    def can(self, scope: str) -> bool:
        """Whether the user's role grants ``scope`` (``rules:write``...)."""
        return scope in ROLE_SCOPES[self.role]

    @property
    def can_edit_rules(self) -> bool:
        """Editors and admins change rules; viewers only look."""
        return self.can("rules:write")


class SessionCodec:
    """Signs and checks session cookies with the process's secret key."""

    def __init__(self, secret_key: str, *, secure: bool) -> None:
        self._serializer = URLSafeTimedSerializer(secret_key, salt=_SALT)
        self.secure = secure

    def anonymous(self) -> SessionData:
        """A fresh session with no user (a login form needs a CSRF token too)."""
        return SessionData(csrf=secrets.token_urlsafe(32))

    def signed_in(self, tenant_id: str, user_id: str) -> SessionData:
        """A fresh session for a user: a new CSRF token, so nothing from before sign-in carries over."""
        return SessionData(csrf=secrets.token_urlsafe(32), tenant_id=tenant_id, user_id=user_id)

    def encode(self, session: SessionData) -> str:
        """The cookie value."""
        payload: dict[str, Any] = {"c": session.csrf}
        if session.signed_in:
            payload["t"] = session.tenant_id
            payload["u"] = session.user_id
        return self._serializer.dumps(payload)

    def decode(self, raw: str | None) -> SessionData | None:
        """The session in a cookie value; None when missing, forged or expired."""
        if not raw:
            return None
        try:
            payload = self._serializer.loads(raw, max_age=MAX_AGE_S)
        except BadSignature:
            return None
        if not isinstance(payload, dict) or not isinstance(payload.get("c"), str):
            return None
        tenant, user = payload.get("t"), payload.get("u")
        if not (isinstance(tenant, str) and isinstance(user, str)):
            tenant = user = None
        return SessionData(csrf=payload["c"], tenant_id=tenant, user_id=user)

    def cookie_kwargs(self) -> dict[str, Any]:
        """Attributes of the session cookie: HttpOnly, SameSite=Lax, Secure behind HTTPS."""
        return {
            "key": COOKIE,
            "httponly": True,
            "samesite": "lax",
            "secure": self.secure,
            "max_age": MAX_AGE_S,
            "path": "/",
        }


def csrf_matches(expected: str, sent: str | None) -> bool:
    """Constant-time comparison of the session's token with the one a request sent."""
    return bool(sent) and hmac.compare_digest(expected.encode(), (sent or "").encode())
