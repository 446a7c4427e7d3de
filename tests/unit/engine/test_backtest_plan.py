"""The range of a requested backtest: shorthands, defaults, the clamp to now, and the refusals."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from engine.backtest_plan import MAX_RANGE, BacktestRange, backtest_range
from model.errors import InvalidInputError

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def test_shorthands_count_back_from_until_or_now() -> None:
    assert backtest_range(NOW) == (NOW - timedelta(days=1), NOW)
    assert backtest_range(NOW, range_=BacktestRange.LAST_HOUR) == (NOW - timedelta(hours=1), NOW)
    until = NOW - timedelta(days=2)
    assert backtest_range(NOW, range_=BacktestRange.LAST_WEEK, until=until) == (
        until - timedelta(days=7),
        until,
    )


def test_since_and_until_are_taken_as_given_but_never_past_now() -> None:
    since = NOW - timedelta(hours=5)
    assert backtest_range(NOW, since=since, until=NOW - timedelta(hours=1)) == (
        since,
        NOW - timedelta(hours=1),
    )
    assert backtest_range(NOW, since=since, until=NOW + timedelta(days=1)) == (since, NOW)
    assert backtest_range(NOW, since=NOW - MAX_RANGE) == (NOW - MAX_RANGE, NOW)


@pytest.mark.parametrize(
    ("kwargs", "field", "words"),
    [
        ({"since": NOW - MAX_RANGE - timedelta(microseconds=1)}, "since", "at most 7 days"),
        ({"since": NOW + timedelta(hours=1)}, "since", "must end after it starts"),
        ({"since": NOW - timedelta(hours=1), "until": NOW - timedelta(hours=2)}, "since", "must end after"),
        ({"range_": BacktestRange.LAST_DAY, "since": NOW - timedelta(hours=1)}, "range", "not both"),
        ({"since": datetime(2026, 11, 27, 8)}, "since", "time zone"),
        ({"until": datetime(2026, 11, 27, 8)}, "until", "time zone"),
    ],
)
def test_unusable_ranges_are_refused_on_the_field(
    kwargs: dict[str, datetime], field: str, words: str
) -> None:
    with pytest.raises(InvalidInputError) as refused:
        backtest_range(NOW, **kwargs)  # type: ignore[arg-type]
    assert refused.value.errors[0]["loc"] == [field] and words in refused.value.detail
