"""API token scopes and the scopes each user role may hold."""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    """A user's role inside one tenant."""

    ADMIN = "admin"
    EDITOR = "editor"
    VIEWER = "viewer"


# Resources a tenant token can act on; each has a ":read" and a ":write" scope.
RESOURCES: tuple[str, ...] = (
    "devices",
    "telemetry",
    "rules",
    "alarms",
    "channels",
    "users",
    "tokens",
)
ALL_SCOPES: frozenset[str] = frozenset(
    f"{resource}:{access}" for resource in RESOURCES for access in ("read", "write")
)
_ADMIN_ONLY = {"users", "tokens"}

ROLE_SCOPES: dict[Role, frozenset[str]] = {
    Role.ADMIN: ALL_SCOPES,
    Role.EDITOR: frozenset(s for s in ALL_SCOPES if s.split(":")[0] not in _ADMIN_ONLY),
    Role.VIEWER: frozenset(
        s for s in ALL_SCOPES if s.endswith(":read") and s.split(":")[0] not in _ADMIN_ONLY
    ),
}


def unknown_scopes(scopes: set[str] | frozenset[str]) -> set[str]:
    """The members of ``scopes`` that are not scopes at all."""
    return set(scopes) - ALL_SCOPES
