"""The one error tree of the platform; the HTTP edge maps it to RFC 9457 problem+json."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar


class PlatformError(Exception):
    """Base of every error the platform raises on purpose.

    Each subclass has a stable ``slug`` (the problem ``type``), an HTTP ``status`` and a ``title``.
    Data travels as attributes so callers and the HTTP edge never parse messages.
    """

    slug: ClassVar[str] = "platform-error"
    status: ClassVar[int] = 500
    title: ClassVar[str] = "Platform error"

    def __init__(self, detail: str, **extensions: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extensions: dict[str, Any] = extensions


class NotFoundError(PlatformError):
    """The object does not exist in the caller's tenant (a foreign object is reported the same way)."""

    slug = "not-found"
    status = 404
    title = "Not found"

    def __init__(self, kind: str, object_id: str) -> None:
        super().__init__(f"{kind} {object_id!r} was not found", kind=kind, id=object_id)
        self.kind = kind
        self.object_id = object_id


class ConflictError(PlatformError):
    """The object already exists or was changed concurrently."""

    slug = "conflict"
    status = 409
    title = "Conflict"


class InvalidInputError(PlatformError):
    """The request is well formed but its content is invalid."""

    slug = "invalid-input"
    status = 422
    title = "Invalid input"

    def __init__(self, detail: str, errors: Sequence[Mapping[str, Any]] = ()) -> None:
        super().__init__(detail, errors=[dict(e) for e in errors])
        self.errors = [dict(e) for e in errors]


class MalformedRequestError(PlatformError):
    """The request body or a parameter cannot be parsed at all."""

    slug = "malformed-request"
    status = 400
    title = "Malformed request"


class InvalidCursorError(MalformedRequestError):
    """A pagination cursor was not produced by this API or was tampered with."""

    slug = "invalid-cursor"
    title = "Invalid pagination cursor"


class AuthenticationError(PlatformError):
    """No valid credential: missing, unknown, expired or revoked."""

    slug = "unauthenticated"
    status = 401
    title = "Authentication required"


class PermissionDeniedError(PlatformError):
    """The credential is valid but lacks the scope or role the operation needs."""

    slug = "forbidden"
    status = 403
    title = "Permission denied"


class PayloadTooLargeError(PlatformError):
    """The request body exceeds the configured limit."""

    slug = "payload-too-large"
    status = 413
    title = "Payload too large"


class BackpressureError(PlatformError):
    """A bounded queue or store is full; the caller should retry after ``retry_after`` seconds."""

    slug = "backpressure"
    status = 503
    title = "Service busy"

    def __init__(self, detail: str, retry_after: float) -> None:
        super().__init__(detail, retry_after=retry_after)
        self.retry_after = retry_after


class ConfigurationError(PlatformError):
    """A setting is invalid or unsafe; raised at start-up."""

    slug = "configuration-error"
    status = 500
    title = "Invalid configuration"
