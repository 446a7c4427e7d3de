"""The delivery policy at work: per dedup key, decide what to send now, and what later.

This is plain, synchronous state driven by a clock that is passed in: ``submit`` decides about a
new request, ``acknowledge`` ends reminders, and ``due`` returns what timers (end of a throttle
window, a reminder, an escalation step, the end of quiet hours) release at a given time. No I/O,
so a test replays an hour of flapping in microseconds.

Semantics (ADR 0017):

* A key (the dedup key, by default rule + device + alarm type) has a *last notified state*
  (fired or cleared). A request that says nothing new (fired after fired with the same severity,
  cleared when nothing was notified) is ``deduplicated``.
* A change is sent unless ``throttle_count`` notifications of the key already went out in the
  current ``throttle_s`` window; then it is ``throttled``, and at the end of the window the
  latest state is sent if it differs from what was last notified. A flapping alarm thus produces
  at most ``throttle_count`` notifications per window plus one that tells how it ended.
* While the alarm is active and unacknowledged: a reminder every ``repeat_every_s`` (at most
  ``repeat_max``), and each escalation step's channels are added ``after_s`` after the alarm
  first fired. Acknowledging or clearing the alarm stops both. An acknowledged alarm's further
  firings are suppressed until it clears.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Hashable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from notifiers.policy import DeliveryPolicy
from notifiers.port import NotificationRequest, Outcome

SendKind = Literal["fired", "cleared", "repeat", "escalation"]
_PRUNE_EVERY = timedelta(seconds=60)

AlarmKey = tuple[str, str, str, str]  # tenant, rule, device, alarm type


@dataclass(frozen=True, slots=True)
class Send:
    """Something to deliver now: a request's message to some channels."""

    request: NotificationRequest
    channels: tuple[str, ...]
    kind: SendKind
    key: str
    episode: int
    suppressed: int = 0  # changes throttled since the previous notification of this key


@dataclass(frozen=True, slots=True)
class Release:
    """A delivery held back by quiet hours, due now."""

    item: Any


@dataclass(slots=True)
class _KeyState:
    tenant_id: str
    key: str
    policy: DeliveryPolicy
    latest: NotificationRequest
    notified_kind: str | None = None
    notified_severity: str | None = None
    window_start: datetime | None = None
    sent_in_window: int = 0
    trailing_due: bool = False
    suppressed: int = 0
    episode: int = 0
    active: bool = False
    acknowledged: bool = False
    episode_start: datetime | None = None
    repeats: int = 0
    repeat_scheduled: bool = False
    escalated: set[str] = field(default_factory=set)


class PolicyEngine:
    """Decisions and timers for every dedup key of every tenant in this process."""

    def __init__(self, max_keys: int = 200_000) -> None:
        self._states: dict[tuple[str, str], _KeyState] = {}
        self._alarms: dict[AlarmKey, tuple[str, str]] = {}
        self._timers: list[tuple[datetime, int, tuple[Hashable, ...], Any]] = []
        self._seq = itertools.count()
        self._max_keys = max_keys
        self._last_prune: datetime | None = None

    # --- inputs -----------------------------------------------------------------------------------

    def submit(
        self, request: NotificationRequest, policy: DeliveryPolicy, key: str, now: datetime
    ) -> tuple[Outcome, Send | None]:
        """The decision about a new request, and what to send now (None: nothing)."""
        ident = (request.tenant_id, key)
        st = self._states.get(ident)
        if st is None:
            st = _KeyState(request.tenant_id, key, policy, request)
            self._states[ident] = st
        st.policy = policy
        st.latest = request
        if request.alarm_type is not None:
            alarm = (request.tenant_id, request.rule_id, request.device_id, request.alarm_type)
            self._alarms[alarm] = ident
        if request.kind == "fired":
            if not st.active:
                self._start_episode(st, now)
            elif st.acknowledged:
                return "acknowledged", None
            if st.notified_kind == "fired" and st.notified_severity == request.severity:
                self._schedule_repeat(st, now)  # a new episode after a throttled clear still reminds
                return "deduplicated", None
        else:
            st.active = False
            if st.notified_kind != "fired":
                return "deduplicated", None
            if not policy.notify_on_clear:
                st.notified_kind = "cleared"  # the episode is over; nothing to take back later
                return "skipped", None
        return self._throttled_send(st, now)

    def acknowledge(self, tenant_id: str, rule_id: str, device_id: str, alarm_type: str) -> bool:
        """Stop reminders and escalation of the alarm; whether it was known."""
        ident = self._alarms.get((tenant_id, rule_id, device_id, alarm_type))
        st = self._states.get(ident) if ident else None
        if st is None or not st.active:
            return False
        st.acknowledged = True
        return True

    def hold(self, until: datetime, item: Any) -> None:
        """Keep ``item`` until ``until`` (quiet hours); ``due`` returns it as a Release."""
        self._schedule(until, ("release",), item)

    def still_wanted(self, send: Send) -> bool:
        """Whether a held send still makes sense (the alarm did not clear or get acknowledged)."""
        if send.kind == "cleared":
            return True
        st = self._states.get((send.request.tenant_id, send.key))
        return st is not None and st.episode == send.episode and st.active and not st.acknowledged

    # --- timers -----------------------------------------------------------------------------------

    def next_due(self) -> datetime | None:
        """When the earliest timer is due, or None."""
        return self._timers[0][0] if self._timers else None

    def due(self, now: datetime) -> list[Send | Release]:
        """Everything the timers release at ``now``, in time order."""
        out: list[Send | Release] = []
        while self._timers and self._timers[0][0] <= now:
            _, _, what, payload = heapq.heappop(self._timers)
            if what[0] == "release":
                out.append(Release(payload))
                continue
            st = self._states.get(payload)
            if st is None:
                continue
            send = self._fire_timer(st, what, now)
            if send is not None:
                out.append(send)
        self._prune(now)
        return out

    def _fire_timer(self, st: _KeyState, what: tuple[Hashable, ...], now: datetime) -> Send | None:
        kind = what[0]
        if kind == "window":
            st.trailing_due = False
            latest = st.latest
            changed = latest.kind != st.notified_kind or (
                latest.kind == "fired" and latest.severity != st.notified_severity
            )
            if not changed or (latest.kind == "fired" and st.acknowledged):
                return None
            if latest.kind == "cleared" and (not st.policy.notify_on_clear or st.notified_kind != "fired"):
                return None
            st.window_start, st.sent_in_window = None, 0
            return self._throttled_send(st, now)[1]
        episode = what[1]
        if episode != st.episode or not st.active or st.acknowledged:
            return None
        if kind == "repeat":
            st.repeat_scheduled = False
            if st.notified_kind != "fired" or st.repeats >= st.policy.repeat_max:
                return None
            st.repeats += 1
            self._schedule_repeat(st, now)
            return Send(st.latest, st.latest.channels, "repeat", st.key, st.episode)
        step = what[2]
        assert isinstance(step, int)
        if step >= len(st.policy.escalation):
            return None
        channels = st.policy.escalation[step].channels
        st.escalated.update(channels)
        return Send(st.latest, channels, "escalation", st.key, st.episode)

    # --- internals --------------------------------------------------------------------------------

    def _start_episode(self, st: _KeyState, now: datetime) -> None:
        st.active, st.acknowledged = True, False
        st.episode += 1
        st.episode_start = now
        st.repeats = 0
        st.repeat_scheduled = False
        st.escalated = set()
        ident = (st.tenant_id, st.key)
        for index, step in enumerate(st.policy.escalation):
            self._schedule(now + timedelta(seconds=step.after_s), ("escalate", st.episode, index), ident)

    def _throttled_send(self, st: _KeyState, now: datetime) -> tuple[Outcome, Send | None]:
        policy = st.policy
        window = timedelta(seconds=policy.throttle_s)
        if st.window_start is None or now >= st.window_start + window:
            st.window_start, st.sent_in_window = now, 0
        if st.sent_in_window >= policy.throttle_count:
            st.suppressed += 1
            if not st.trailing_due:
                st.trailing_due = True
                self._schedule(st.window_start + window, ("window",), (st.tenant_id, st.key))
            return "throttled", None
        st.sent_in_window += 1
        request = st.latest
        st.notified_kind, st.notified_severity = request.kind, request.severity
        suppressed, st.suppressed = st.suppressed, 0
        channels = request.channels
        if request.kind == "cleared" and st.escalated:
            channels = tuple(dict.fromkeys((*channels, *sorted(st.escalated))))
        if request.kind == "fired":
            self._schedule_repeat(st, now)
        return "queued", Send(request, channels, request.kind, st.key, st.episode, suppressed)

    def _schedule_repeat(self, st: _KeyState, now: datetime) -> None:
        every = st.policy.repeat_every_s
        if every is None or st.repeat_scheduled or st.repeats >= st.policy.repeat_max:
            return
        st.repeat_scheduled = True
        self._schedule(now + timedelta(seconds=every), ("repeat", st.episode), (st.tenant_id, st.key))

    def _schedule(self, at: datetime, what: tuple[Hashable, ...], payload: Any) -> None:
        heapq.heappush(self._timers, (at, next(self._seq), what, payload))

    def _prune(self, now: datetime) -> None:
        """Forget keys that can no longer matter: inactive, window over, no timer pending."""
        recent = self._last_prune is not None and now - self._last_prune < _PRUNE_EVERY
        if recent and len(self._states) <= self._max_keys:
            return
        self._last_prune = now
        pending = {payload for _, _, what, payload in self._timers if what[0] != "release"}
        for ident, st in list(self._states.items()):
            window_over = st.window_start is None or now >= st.window_start + timedelta(
                seconds=st.policy.throttle_s
            )
            if not st.active and window_over and ident not in pending:
                del self._states[ident]
        live = set(self._states)
        self._alarms = {alarm: ident for alarm, ident in self._alarms.items() if ident in live}

    @property
    def keys(self) -> int:
        """How many keys are tracked (for tests and metrics)."""
        return len(self._states)
