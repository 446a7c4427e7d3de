"""Keyset cursors are opaque and refuse anything they did not produce."""

from __future__ import annotations

import base64

import pytest

from model.errors import InvalidCursorError
from storage.pagination import decode_cursor, encode_cursor


@pytest.mark.parametrize("key", ["freezer-01-1", "a", "x" * 128, "ünïcode:@._-"])
def test_round_trip(key: str) -> None:
    assert decode_cursor(encode_cursor(key)) == key


@pytest.mark.parametrize(
    "cursor",
    [
        "zzz",
        "!!!",
        base64.urlsafe_b64encode(b"[1,2]").decode(),
        base64.urlsafe_b64encode(b'{"v":2,"after":"x"}').decode(),
        base64.urlsafe_b64encode(b'{"v":1,"after":7}').decode(),
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
    ],
)
def test_foreign_cursors_are_refused(cursor: str) -> None:
    with pytest.raises(InvalidCursorError):
        decode_cursor(cursor)
