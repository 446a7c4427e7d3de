"""The sign-in throttle on its own (ADR 0028): keys, windows, locks, take-backs and the bound."""

from __future__ import annotations

import pytest

from editor.throttle import Attempt, SignInLimits, SignInThrottle, account_key, address_key


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def _fail(throttle: SignInThrottle, account: bytes, address: str) -> Attempt:
    attempt = throttle.begin(account, address)
    assert isinstance(attempt, Attempt)
    return attempt


def test_account_keys_are_normalized_like_the_lookup_and_hold_no_email() -> None:
    key = account_key("acme", "Olivia@Acme.example")
    assert key == account_key(" acme ", " olivia@acme.example ")
    assert key != account_key("acme2", "olivia@acme.example")
    assert len(key) == 16 and b"olivia" not in key
    assert len(account_key("acme", "x" * 1_000_000)) == 16  # bounded whatever is sent


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("203.0.113.9", "203.0.113.9"),
        ("::ffff:203.0.113.9", "203.0.113.9"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb::7", "2001:db8:1:2::/64"),
        (None, "unknown"),
        ("", "unknown"),
        ("testclient", "testclient"),
        ("h" * 500, "h" * 64),
    ],
)
def test_address_keys(host: str | None, key: str) -> None:
    assert address_key(host) == key


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        SignInLimits(account_failures=0)
    with pytest.raises(ValueError, match="lockout_max_s"):
        SignInLimits(lockout_s=600, lockout_max_s=60)


def test_failures_outside_the_window_do_not_add_up() -> None:
    clock = Clock()
    throttle = SignInThrottle(SignInLimits(account_failures=3, window_s=100), clock=clock)
    account = account_key("t", "a@b.c")
    _fail(throttle, account, "1.1.1.1")
    _fail(throttle, account, "1.1.1.1")
    clock.now += 100  # the window is over: the count starts again
    _fail(throttle, account, "1.1.1.1")
    _fail(throttle, account, "1.1.1.1")
    assert throttle.retry_after(account, "1.1.1.1") == 0
    _fail(throttle, account, "1.1.1.1")
    assert throttle.retry_after(account, "1.1.1.1") == 900
    assert throttle.begin(account, "2.2.2.2") == 900  # locked: refused, and nothing counted
    assert throttle.size("address") == 1


def test_success_takes_the_attempt_back_from_the_address_and_forgets_the_account() -> None:
    clock = Clock()
    throttle = SignInThrottle(SignInLimits(account_failures=10, address_failures=2), clock=clock)
    _fail(throttle, account_key("t", "guess@b.c"), "1.1.1.1")
    mine = _fail(throttle, account_key("t", "me@b.c"), "1.1.1.1")
    assert mine.started_locks == ["address"]  # the second attempt reached the address limit...
    throttle.succeeded(mine)  # ...but its password was right: the lock it started is taken back
    assert throttle.retry_after(account_key("t", "x@b.c"), "1.1.1.1") == 0
    assert throttle.size("account") == 1  # the guessed account is still counted, "me" is forgotten
    _fail(throttle, account_key("t", "guess2@b.c"), "1.1.1.1")
    assert throttle.retry_after(account_key("t", "x@b.c"), "1.1.1.1") == 900  # the guess still counted


def test_the_bound_forgets_the_key_that_failed_least_recently() -> None:
    clock = Clock()
    throttle = SignInThrottle(SignInLimits(account_failures=2, max_entries=3), clock=clock)
    first, second, third, fourth = (account_key("t", f"{n}@b.c") for n in "1234")
    _fail(throttle, first, "1.1.1.1")
    _fail(throttle, second, "1.1.1.2")
    _fail(throttle, third, "1.1.1.3")
    _fail(throttle, first, "1.1.1.1")  # first failed again: now the most recent, and locked
    _fail(throttle, fourth, "1.1.1.4")  # evicts second, the least recent
    assert throttle.size("account") == throttle.size("address") == 3
    assert throttle.retry_after(first, "9.9.9.9") > 0
    _fail(throttle, second, "1.1.1.2")  # second starts from one failure again
    assert throttle.retry_after(second, "9.9.9.9") == 0
    assert len(throttle) == 6


def test_keys_with_nothing_left_to_remember_are_dropped() -> None:
    clock = Clock()
    throttle = SignInThrottle(SignInLimits(window_s=60), clock=clock)
    account = account_key("t", "a@b.c")
    _fail(throttle, account, "1.1.1.1")
    clock.now += 60
    assert throttle.retry_after(account, "1.1.1.1") == 0
    assert len(throttle) == 0


def test_endless_locks_stay_at_the_maximum() -> None:
    clock = Clock()
    throttle = SignInThrottle(SignInLimits(account_failures=1, lockout_s=1, lockout_max_s=1), clock=clock)
    account = account_key("t", "a@b.c")
    for _ in range(2_000):
        _fail(throttle, account, "1.1.1.1")
        assert throttle.retry_after(account, "1.1.1.1") == 1
        clock.now += 1
