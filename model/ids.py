"""Identifier rules shared by the API, the CLI and the stores."""

from __future__ import annotations

import re
import secrets

# Tenant ids appear in API tokens ("fg.<tenant>.<key>.<secret>") and later in MQTT topics and
# InfluxDB tags, so they are restricted to characters that need no escaping anywhere.
TENANT_ID_PATTERN = r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$"
# Device and device-type ids are chosen by customers (serial numbers, asset tags) and also end up
# in MQTT topics: no '/', '+', '#', whitespace or control characters.
OBJECT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"
LABEL_KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$"

_TENANT_RE = re.compile(TENANT_ID_PATTERN)
_OBJECT_RE = re.compile(OBJECT_ID_PATTERN)


def is_tenant_id(value: str) -> bool:
    """Whether ``value`` is a valid tenant id."""
    return bool(_TENANT_RE.match(value))


def is_object_id(value: str) -> bool:
    """Whether ``value`` is a valid device or device-type id."""
    return bool(_OBJECT_RE.match(value))


def new_id(prefix: str) -> str:
    """A random, URL-safe id for platform-generated objects (users, tokens)."""
    return f"{prefix}_{secrets.token_hex(8)}"
