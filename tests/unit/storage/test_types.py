"""UtcDateTime reads back aware UTC datetimes on both dialects, whatever form the driver returns."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from storage.types import UtcDateTime

MOMENT = datetime(2026, 11, 27, 11, 32, 1, 123456, tzinfo=UTC)


def _reader(dialect: sa.Dialect) -> Callable[[Any], Any]:
    processor = UtcDateTime().dialect_impl(dialect).result_processor(dialect, None)
    assert processor is not None
    return processor


@pytest.mark.parametrize(
    "stored",
    [
        "2026-11-27 11:32:01.123456",  # what SQLAlchemy writes to SQLite
        "2026-11-27T11:32:01.123456",
        "2026-11-27 13:32:01.123456+02:00",
    ],
)
def test_sqlite_text_reads_as_aware_utc(stored: str) -> None:
    value = _reader(sqlite.dialect())(stored)
    assert value == MOMENT and value.tzinfo is UTC


def test_sqlite_text_without_microseconds_and_null() -> None:
    read = _reader(sqlite.dialect())
    assert read("2026-11-27 11:32:01") == MOMENT.replace(microsecond=0)
    assert read(None) is None


@pytest.mark.parametrize(
    "returned",
    [
        MOMENT,  # asyncpg: aware, UTC
        MOMENT.astimezone(timezone(timedelta(hours=2))),
        MOMENT.replace(tzinfo=None),  # naive means UTC
    ],
)
def test_postgres_values_read_as_aware_utc(returned: datetime) -> None:
    value = _reader(postgresql.dialect())(returned)
    assert value == MOMENT and value.tzinfo is UTC


def test_postgres_null() -> None:
    assert _reader(postgresql.dialect())(None) is None
