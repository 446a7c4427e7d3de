"""Opaque keyset cursors: a page resumes after the last key it returned, never by OFFSET."""

from __future__ import annotations

import base64
import binascii
import json

from model.errors import InvalidCursorError

_VERSION = 1


def encode_cursor(last_key: str) -> str:
    """The cursor that resumes after ``last_key``."""
    raw = json.dumps({"v": _VERSION, "after": last_key}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    """The key a cursor resumes after; InvalidCursorError if it was not made by encode_cursor."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (ValueError, binascii.Error, UnicodeError) as exc:
        raise InvalidCursorError(f"cursor {cursor[:40]!r} is not a valid page cursor") from exc
    if not isinstance(data, dict) or data.get("v") != _VERSION or not isinstance(data.get("after"), str):
        raise InvalidCursorError(f"cursor {cursor[:40]!r} is not a valid page cursor")
    after: str = data["after"]
    return after
