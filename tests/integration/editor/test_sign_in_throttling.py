"""Sign-in throttling against the real app (ADR 0028): locks per account and per client address,
429 with Retry-After and no password check while locked, unknown emails alike, success resets,
locks that expire and back off on an injected clock, and the bound on memory."""

from __future__ import annotations

import asyncio
import itertools
import re
import secrets
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

import editor.pages.auth as auth_page
from editor.throttle import SignInLimits, SignInThrottle
from model.scopes import Role
from server.app import create_app
from server.settings import load_settings
from storage.database import Database
from tests.integration.editor.conftest import PASSWORD, Browser, EditorTenant

LIMITS = SignInLimits(
    account_failures=3, address_failures=6, window_s=600, lockout_s=600, lockout_max_s=2400, max_entries=1_000
)


class Clock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Verifications:
    """Every password check the sign-in route makes (the real Argon2 check unless ``result`` is set)."""

    calls: int = 0
    result: bool | None = None
    gate: threading.Event | None = None
    started: list[int] = field(default_factory=list)


@dataclass
class Throttled:
    app: FastAPI
    throttle: SignInThrottle
    clock: Clock
    verifications: Verifications
    hosts: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def use(self, limits: SignInLimits) -> SignInThrottle:
        """Replace the app's throttle with a fresh one on the same clock."""
        self.throttle = SignInThrottle(limits, clock=self.clock)
        self.app.state.editor.throttle = self.throttle
        return self.throttle

    @asynccontextmanager
    async def browser(self, address: str | None = None) -> AsyncIterator[Browser]:
        """A browser on its own client address (a fresh private one unless given)."""
        host = address or f"10.28.{next(self.hosts)}.1"
        transport = httpx.ASGITransport(app=self.app, client=(host, 50_000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield Browser(http)


@pytest.fixture
def throttled(editor_app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> Iterator[Throttled]:
    """The shared editor app with a fresh throttle on a test clock, and its password checks counted.

    The app's own throttle is put back afterwards, so other editor tests never see these locks.
    """
    clock = Clock()
    verifications = Verifications()
    real_verify: Callable[[str, str], bool] = auth_page.verify_password

    def counting_verify(password_hash: str, password: str) -> bool:
        verifications.calls += 1
        if verifications.gate is not None:
            verifications.started.append(1)
            assert verifications.gate.wait(30), "the test never opened the gate"
        if verifications.result is not None:
            return verifications.result
        return real_verify(password_hash, password)

    monkeypatch.setattr(auth_page, "verify_password", counting_verify)
    original = editor_app.state.editor.throttle
    state = Throttled(editor_app, SignInThrottle(LIMITS, clock=clock), clock, verifications)
    editor_app.state.editor.throttle = state.throttle
    try:
        yield state
    finally:
        editor_app.state.editor.throttle = original


def _error(response: httpx.Response) -> str:
    found = re.search(r'id="login-error">([^<]*)<', response.text)
    return found.group(1) if found else ""


def _is_signed_in(response: httpx.Response) -> bool:
    return response.status_code == 303 and "fg_session=" in response.headers.get("set-cookie", "")


async def test_failures_lock_the_account_with_429_and_no_password_check(
    throttled: Throttled, shop: EditorTenant
) -> None:
    email = shop.users[Role.EDITOR]
    async with throttled.browser() as browser:
        for _ in range(LIMITS.account_failures - 1):
            refused = await browser.login(shop.id, email, "not the password")
            assert refused.status_code == 401 and "wrong" in _error(refused)
            assert "retry-after" not in refused.headers
        locking = await browser.login(shop.id, email, "not the password")
        assert locking.status_code == 429
        assert locking.headers["retry-after"] == "600"
        assert _error(locking) == "Too many failed sign-ins; try again in 10 minutes."
        assert throttled.verifications.calls == LIMITS.account_failures

        throttled.clock.advance(60)
        right = await browser.login(shop.id, email, PASSWORD)  # even the right password, while locked
        assert right.status_code == 429 and not _is_signed_in(right)
        assert right.headers["retry-after"] == "540"
        assert _error(right) == "Too many failed sign-ins; try again in 9 minutes."
        assert 'name="csrf_token"' in right.text and 'name="password"' in right.text  # the form stays
        assert throttled.verifications.calls == LIMITS.account_failures  # no Argon2 while locked
        assert (await browser.get("/app/rules")).status_code == 303  # still signed out

    async with throttled.browser() as elsewhere:  # the account is locked from every address
        assert (await elsewhere.login(shop.id, email, PASSWORD)).status_code == 429
        assert (await elsewhere.login(shop.id, email.upper(), PASSWORD)).status_code == 429  # normalized
        assert (await elsewhere.login(shop.id, shop.users[Role.ADMIN])).status_code == 303  # others not
    assert throttled.verifications.calls == LIMITS.account_failures + 1


async def test_an_unknown_email_is_throttled_exactly_like_a_known_one(
    throttled: Throttled, shop: EditorTenant
) -> None:
    async def sequence(tenant: str, email: str) -> list[tuple[int, str | None, str]]:
        seen = []
        async with throttled.browser() as browser:
            for _ in range(LIMITS.account_failures + 2):
                response = await browser.login(tenant, email, "not the password")
                seen.append((response.status_code, response.headers.get("retry-after"), _error(response)))
        return seen

    known = await sequence(shop.id, shop.users[Role.VIEWER])
    calls_for_known = throttled.verifications.calls
    unknown = await sequence(shop.id, f"nobody-{secrets.token_hex(4)}@{shop.id}.example")
    no_tenant = await sequence(f"no-such-{secrets.token_hex(4)}", "someone@example.com")
    assert known == unknown == no_tenant
    assert [status for status, _, _ in known] == [401, 401, 429, 429, 429]
    assert throttled.verifications.calls == 3 * calls_for_known == 3 * LIMITS.account_failures


async def test_the_address_limit_spans_emails_and_ignores_forwarded_for(
    throttled: Throttled, shop: EditorTenant
) -> None:
    throttled.use(SignInLimits(account_failures=100, address_failures=4, window_s=600, lockout_s=300))
    throttled.verifications.result = False
    async with throttled.browser("203.0.113.7") as sprayer:
        statuses = [
            (await sprayer.login(shop.id, f"guess-{i}@{shop.id}.example", "123456")).status_code
            for i in range(4)
        ]
        assert statuses == [401, 401, 401, 429]
        assert throttled.verifications.calls == 4
        throttled.verifications.result = None
        fresh = await sprayer.login(shop.id, shop.users[Role.ADMIN])  # a real account, the right password
        assert fresh.status_code == 429 and fresh.headers["retry-after"] == "300"
        assert _error(fresh) == "Too many failed sign-ins; try again in 5 minutes."
        sprayer.http.headers["X-Forwarded-For"] = "192.0.2.99"  # no trusted proxy: not believed
        assert (await sprayer.login(shop.id, shop.users[Role.ADMIN])).status_code == 429
        assert throttled.verifications.calls == 4

    async with throttled.browser("203.0.113.8") as neighbour:  # another address is not affected
        assert _is_signed_in(await neighbour.login(shop.id, shop.users[Role.ADMIN]))
    async with throttled.browser("2001:db8:7:7::1") as v6, throttled.browser("2001:db8:7:7::2") as v6b:
        throttled.verifications.result = False
        for i in range(3):
            await v6.login(shop.id, f"v6-{i}@{shop.id}.example", "123456")
        # The same /64 is one address: its fourth failure locks it for both hosts.
        assert (await v6b.login(shop.id, f"v6-3@{shop.id}.example", "123456")).status_code == 429
        assert (await v6.login(shop.id, shop.users[Role.ADMIN], PASSWORD)).status_code == 429


async def test_a_successful_sign_in_clears_the_account(throttled: Throttled, shop: EditorTenant) -> None:
    email = shop.users[Role.ADMIN]
    async with throttled.browser() as browser:
        for _ in range(LIMITS.account_failures - 1):
            assert (await browser.login(shop.id, email, "not the password")).status_code == 401
        assert _is_signed_in(await browser.login(shop.id, email))
        for _ in range(LIMITS.account_failures - 1):  # counted from zero again
            assert (await browser.login(shop.id, email, "not the password")).status_code == 401
        assert (await browser.login(shop.id, email, "not the password")).status_code == 429


async def test_the_lock_expires_on_the_clock_and_repeated_locks_back_off(
    throttled: Throttled, shop: EditorTenant
) -> None:
    email = shop.users[Role.EDITOR]

    async def lock(browser: Browser) -> httpx.Response:
        for _ in range(LIMITS.account_failures):
            response = await browser.login(shop.id, email, "not the password")
        return response

    async with throttled.browser() as browser:
        assert (await lock(browser)).headers["retry-after"] == "600"
        throttled.clock.advance(599)
        still = await browser.login(shop.id, email)
        assert still.status_code == 429 and still.headers["retry-after"] == "1"
        assert _error(still) == "Too many failed sign-ins; try again in 1 minute."
        throttled.clock.advance(1)
        second = await lock(browser)  # failing again right after the lock: the next one is twice as long
        assert second.headers["retry-after"] == "1200"
        throttled.clock.advance(1200)
        third = await lock(browser)
        assert third.headers["retry-after"] == "2400"  # lockout_max_s
        throttled.clock.advance(2400)
        fourth = await lock(browser)
        assert fourth.headers["retry-after"] == "2400"  # no longer than the maximum
        assert _error(fourth) == "Too many failed sign-ins; try again in 40 minutes."
        throttled.clock.advance(2400)
        assert _is_signed_in(await browser.login(shop.id, email))  # expired: the password is checked
        assert (await lock(browser)).headers["retry-after"] == "600"  # success forgot the lock history


async def test_an_accounts_lock_history_is_forgotten_after_a_quiet_lockout_max(
    throttled: Throttled, shop: EditorTenant
) -> None:
    email = f"quiet-{secrets.token_hex(4)}@{shop.id}.example"
    async with throttled.browser() as browser:
        for expected in ("600", "1200"):
            for _ in range(LIMITS.account_failures):
                response = await browser.login(shop.id, email, "x")
            assert response.headers["retry-after"] == expected
            throttled.clock.advance(int(expected))
        throttled.clock.advance(LIMITS.lockout_max_s)  # quiet that long after the last lock
        for _ in range(LIMITS.account_failures):
            response = await browser.login(shop.id, email, "x")
        assert response.headers["retry-after"] == "600"


async def test_concurrent_attempts_cannot_slip_past_the_limit(
    throttled: Throttled, shop: EditorTenant
) -> None:
    """Attempts count when they start, so a burst sent before any check ends is still cut at the limit."""
    throttled.use(SignInLimits(account_failures=2, address_failures=100))
    gate = throttled.verifications.gate = threading.Event()
    throttled.verifications.result = False
    burst = 5
    async with throttled.browser() as browser:
        page = await browser.http.get("/app/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert token
        form = {"csrf_token": token.group(1), "tenant": shop.id, "email": shop.users[Role.VIEWER]}
        tasks = [
            asyncio.create_task(browser.http.post("/app/login", data={**form, "password": f"guess {i}"}))
            for i in range(burst)
        ]
        for _ in range(3_000):  # until every request is answered or waits inside a password check
            if sum(t.done() for t in tasks) + len(throttled.verifications.started) >= burst:
                break
            await asyncio.sleep(0.01)
        gate.set()
        responses = await asyncio.gather(*tasks)
    assert throttled.verifications.calls == 2
    # Both checked attempts failed and the second locked the account, so all five now read 429.
    assert [r.status_code for r in responses] == [429] * burst


async def test_memory_stays_bounded_under_a_spray_of_emails_and_addresses(
    throttled: Throttled, shop: EditorTenant
) -> None:
    throttle = throttled.use(
        SignInLimits(account_failures=3, address_failures=3, window_s=600, lockout_s=600, max_entries=20)
    )
    throttled.verifications.result = False  # the spray is about memory, not Argon2
    for i in range(60):
        async with throttled.browser(f"192.0.2.{i + 1}") as bot:
            await bot.login(shop.id, f"spray-{i}-{secrets.token_hex(4)}@example.com", "x")
            assert throttle.size("account") <= 20 and throttle.size("address") <= 20
    assert throttle.size("account") == throttle.size("address") == 20
    async with throttled.browser("192.0.2.200") as victim_side:  # a locked account, then 40 more failures
        for _ in range(3):
            await victim_side.login(shop.id, shop.users[Role.EDITOR], "x")
        assert (await victim_side.login(shop.id, shop.users[Role.EDITOR])).status_code == 429
    for i in range(19):  # fewer new keys than the bound: the lock is among the most recent, kept
        async with throttled.browser(f"192.0.2.{i + 100}") as bot:
            await bot.login(shop.id, f"more-{i}@example.com", "x")
    async with throttled.browser("198.18.0.1") as honest:
        assert (await honest.login(shop.id, shop.users[Role.EDITOR])).status_code == 429
        # One more new key and the lock is the oldest of 20: it is forgotten (ADR 0028's trade-off).
        async with throttled.browser("192.0.2.150") as bot:
            await bot.login(shop.id, "one-more@example.com", "x")
        throttled.verifications.result = None
        assert _is_signed_in(await honest.login(shop.id, shop.users[Role.EDITOR]))
    assert throttle.size("account") <= 20 and throttle.size("address") <= 20


async def test_the_settings_reach_the_apps_throttle(editor_database: Database, tmp_path: Path) -> None:
    settings = load_settings(
        data_dir=tmp_path,
        sign_in_account_failures=7,
        sign_in_address_failures=40,
        sign_in_window_s=300,
        sign_in_lockout_s=120,
        sign_in_lockout_max_s=3600,
        sign_in_throttle_entries=1234,
    )
    app = create_app(settings, editor_database)
    try:
        assert app.state.editor.throttle.limits == SignInLimits(
            account_failures=7,
            address_failures=40,
            window_s=300,
            lockout_s=120,
            lockout_max_s=3600,
            max_entries=1234,
        )
        assert load_settings(data_dir=tmp_path).sign_in_account_failures == 5
    finally:
        await app.state.runtime.telemetry.close()
