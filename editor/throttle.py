"""Sign-in throttling: failed sign-ins counted per account and per client address (ADR 0028).

Each key (an account, a client address) counts its failures in a fixed window. When a key reaches
its limit it is locked: every sign-in that names it is refused at once, before any database read
or password check. The first lock lasts ``lockout_s``; each further lock of the same key doubles,
up to ``lockout_max_s``, and a key that stays quiet for ``lockout_max_s`` after its last lock
starts over. A successful sign-in forgets its account (not its address).

An attempt counts as failed when it *starts* (``begin``) and is taken back if the password was
right (``succeeded``), so concurrent attempts cannot all slip past the limit while the first
ones are being verified.

State is in memory, per process, bounded: each kind of key keeps at most ``max_entries``
records and forgets the one that failed least recently first. Account keys are hashes, so
no email is kept. The clock is injectable (monotonic seconds), so tests need not sleep.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

KeyKind = Literal["account", "address"]


@dataclass(frozen=True, slots=True)
class SignInLimits:
    """How many failures lock a key, for how long, and how many keys are remembered."""

    account_failures: int = 5
    address_failures: int = 30
    window_s: float = 900.0
    lockout_s: float = 900.0
    lockout_max_s: float = 4 * 3600.0
    max_entries: int = 50_000

    def __post_init__(self) -> None:
        if min(self.account_failures, self.address_failures, self.max_entries) < 1:
            raise ValueError("failure limits and max_entries must be at least 1")
        if min(self.window_s, self.lockout_s) <= 0 or self.lockout_max_s < self.lockout_s:
            raise ValueError("window_s and lockout_s must be positive, lockout_max_s at least lockout_s")


def account_key(tenant_id: str, email: str) -> bytes:
    """The key of an account: tenant id and email as the sign-in looks them up, hashed."""
    normalized = f"{tenant_id.strip()}\n{email.strip().lower()}"
    return hashlib.blake2b(normalized.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def address_key(host: str | None) -> str:
    """The key of a client address: IPv4 as is, IPv6 by its /64 (one subscriber's prefix)."""
    if not host:
        return "unknown"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host[:64]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class _Record:
    __slots__ = ("failures", "locked_until", "strikes", "window_start")

    def __init__(self, now: float) -> None:
        self.failures = 0
        self.window_start = now
        self.locked_until = -math.inf
        self.strikes = 0


@dataclass(slots=True)
class _Undo:
    """What ``begin`` changed on one key, so a right password can take it back."""

    kind: KeyKind
    key: bytes | str
    record: _Record
    started_lock: bool
    before: tuple[int, float, float, int]  # failures, window_start, locked_until, strikes


@dataclass(slots=True)
class Attempt:
    """A sign-in let through ``begin``: already counted as a failure until ``succeeded``."""

    account: bytes
    undo: list[_Undo] = field(default_factory=list)

    @property
    def started_locks(self) -> list[KeyKind]:
        """The keys this attempt locked (for the log)."""
        return [u.kind for u in self.undo if u.started_lock]


class SignInThrottle:
    """Failed sign-ins per account and per address, in memory, bounded, with an injectable clock."""

    def __init__(self, limits: SignInLimits | None = None, *, clock: Callable[[], float] = time.monotonic):
        self.limits = limits or SignInLimits()
        self._clock = clock
        self._records: dict[KeyKind, OrderedDict[bytes | str, _Record]] = {
            "account": OrderedDict(),
            "address": OrderedDict(),
        }

    def __len__(self) -> int:
        return sum(len(records) for records in self._records.values())

    def size(self, kind: KeyKind) -> int:
        """How many keys of ``kind`` are remembered."""
        return len(self._records[kind])

    def retry_after(self, account: bytes, address: str) -> float:
        """Seconds until neither key is locked; 0 when a sign-in may be tried now."""
        now = self._clock()
        return max(self._locked_for("account", account, now), self._locked_for("address", address, now))

    def begin(self, account: bytes, address: str) -> Attempt | float:
        """Seconds to wait if either key is locked (nothing counted); else count the attempt as failed."""
        now = self._clock()
        wait = max(self._locked_for("account", account, now), self._locked_for("address", address, now))
        if wait > 0:
            return wait
        attempt = Attempt(account)
        attempt.undo.append(self._fail("account", account, self.limits.account_failures, now))
        attempt.undo.append(self._fail("address", address, self.limits.address_failures, now))
        return attempt

    def succeeded(self, attempt: Attempt) -> None:
        """The password was right: forget the account, and take the attempt back from the address."""
        self._records["account"].pop(attempt.account, None)
        for undo in attempt.undo:
            if undo.kind != "address" or self._records["address"].get(undo.key) is not undo.record:
                continue
            record = undo.record
            if undo.started_lock:  # nothing else was counted since: the lock refused it
                record.failures, record.window_start, record.locked_until, record.strikes = undo.before
            else:
                record.failures = max(0, record.failures - 1)
            if record.failures == 0 and record.strikes == 0:
                del self._records["address"][undo.key]  # nothing left to remember

    def _locked_for(self, kind: KeyKind, key: bytes | str, now: float) -> float:
        records = self._records[kind]
        record = records.get(key)
        if record is None:
            return 0.0
        if record.locked_until > now:
            return record.locked_until - now
        if self._forgettable(record, now):
            del records[key]
        return 0.0

    def _forgettable(self, record: _Record, now: float) -> bool:
        window_over = now - record.window_start >= self.limits.window_s
        strikes_over = record.strikes == 0 or now - record.locked_until >= self.limits.lockout_max_s
        return window_over and strikes_over and record.locked_until <= now

    def _fail(self, kind: KeyKind, key: bytes | str, limit: int, now: float) -> _Undo:
        records = self._records[kind]
        record = records.get(key)
        if record is None:
            while len(records) >= self.limits.max_entries:
                records.popitem(last=False)  # the key that failed least recently
            record = records[key] = _Record(now)
        else:
            records.move_to_end(key)
        before = (record.failures, record.window_start, record.locked_until, record.strikes)
        if record.strikes and now - record.locked_until >= self.limits.lockout_max_s:
            record.strikes = 0  # quiet long enough after its last lock: start over
        if now - record.window_start >= self.limits.window_s:
            record.failures, record.window_start = 0, now
        record.failures += 1
        started = record.failures >= limit
        if started:
            record.strikes = min(record.strikes + 1, 32)  # 2**31 locks are past any maximum
            lock = min(self.limits.lockout_s * 2 ** (record.strikes - 1), self.limits.lockout_max_s)
            record.locked_until = now + lock
            record.failures, record.window_start = 0, now
        return _Undo(kind, key, record, started, before)
