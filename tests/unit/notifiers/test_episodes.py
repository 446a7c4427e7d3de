"""The delivery policy with a clock the test moves: flapping, reminders, escalation, dedup."""

from __future__ import annotations

from datetime import UTC, datetime

from notifiers.clock import ManualClock
from notifiers.episodes import PolicyEngine, Send
from notifiers.policy import DeliveryPolicy, EscalationStep
from notifiers.port import NotificationRequest

START = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)
KEY = "rul_1:fz-1:warm"


def req(
    kind: str, severity: str = "major", channels: tuple[str, ...] = ("night-shift",)
) -> NotificationRequest:
    return NotificationRequest(
        "acme",
        "rul_1",
        "Freezer warm",
        "fz-1",
        channels,
        "t",
        "b",
        {},
        kind,  # type: ignore[arg-type]
        START,
        severity,
        "warm",
    )


class Run:
    """A policy engine, a clock, and everything it decided to send."""

    def __init__(self, policy: DeliveryPolicy) -> None:
        self.engine = PolicyEngine()
        self.clock = ManualClock(START)
        self.policy = policy
        self.sent: list[Send] = []

    def submit(self, kind: str, severity: str = "major") -> str:
        outcome, send = self.engine.submit(req(kind, severity), self.policy, KEY, self.clock.now())
        if send is not None:
            self.sent.append(send)
        return outcome

    def advance(self, seconds: float) -> None:
        """Move the clock in one-second steps, firing timers as they come due."""
        for _ in range(int(seconds)):
            self.clock.advance(1)
            self.sent.extend(s for s in self.engine.due(self.clock.now()) if isinstance(s, Send))


def test_flapping_fifty_times_in_ten_minutes_sends_at_most_the_configured_number() -> None:
    run = Run(DeliveryPolicy(throttle_s=300, throttle_count=1))
    for _ in range(50):  # a raise/clear pair every 12 s for 10 minutes
        run.submit("fired")
        run.advance(6)
        run.submit("cleared")
        run.advance(6)
    run.advance(600)  # let every window end
    # One per 5-minute window over 10 minutes, plus the one that tells how it ended.
    assert 1 <= len(run.sent) <= 3, [s.kind for s in run.sent]
    assert run.sent[0].kind == "fired"
    assert run.sent[-1].kind == "cleared"  # the last word matches the final state
    assert sum(s.suppressed for s in run.sent) > 0  # the summary says how much was held back


def test_throttle_count_caps_each_window() -> None:
    run = Run(DeliveryPolicy(throttle_s=600, throttle_count=4))
    outcomes = []
    for _ in range(50):
        outcomes.append(run.submit("fired"))
        run.advance(6)
        outcomes.append(run.submit("cleared"))
        run.advance(6)
    assert outcomes.count("queued") == 4
    # The rest is held back: a change is throttled, a return to the last notified state is no news.
    assert outcomes.count("throttled") + outcomes.count("deduplicated") == 96
    run.advance(600)
    assert len(run.sent) <= 4 + 1 + 1  # first window, its trailing state, the second window's first


def test_same_state_again_is_deduplicated() -> None:
    run = Run(DeliveryPolicy(throttle_s=0))
    assert run.submit("fired") == "queued"
    assert run.submit("fired") == "deduplicated"
    assert run.submit("fired", severity="critical") == "queued"  # a new severity is news
    assert run.submit("cleared") == "queued"
    assert run.submit("cleared") == "deduplicated"


def test_repeat_until_acknowledged_stops_on_acknowledge() -> None:
    run = Run(DeliveryPolicy(repeat_every_s=600, repeat_max=10))
    run.submit("fired")
    run.advance(1800)  # three reminders
    assert [s.kind for s in run.sent] == ["fired", "repeat", "repeat", "repeat"]
    assert run.engine.acknowledge("acme", "rul_1", "fz-1", "warm")
    run.advance(7200)
    assert len(run.sent) == 4
    assert run.submit("fired") == "acknowledged"  # still firing, but someone is on it


def test_repeats_stop_at_their_maximum_and_on_clear() -> None:
    run = Run(DeliveryPolicy(repeat_every_s=60, repeat_max=2))
    run.submit("fired")
    run.advance(600)
    assert [s.kind for s in run.sent] == ["fired", "repeat", "repeat"]
    run2 = Run(DeliveryPolicy(repeat_every_s=60, repeat_max=5, throttle_s=0))
    run2.submit("fired")
    run2.advance(61)
    run2.submit("cleared")
    run2.advance(600)
    assert [s.kind for s in run2.sent] == ["fired", "repeat", "cleared"]


def test_escalation_reaches_the_next_channel_only_when_unacknowledged() -> None:
    policy = DeliveryPolicy(
        escalation=(
            EscalationStep(after_s=900, channels=("manager",)),
            EscalationStep(after_s=1800, channels=("sms",)),
        )
    )
    run = Run(policy)
    run.submit("fired")
    run.advance(899)
    assert [s.kind for s in run.sent] == ["fired"]
    run.advance(1)
    assert run.sent[-1].kind == "escalation" and run.sent[-1].channels == ("manager",)
    run.engine.acknowledge("acme", "rul_1", "fz-1", "warm")
    run.advance(3600)
    assert [s.channels for s in run.sent] == [("night-shift",), ("manager",)]  # no SMS after the ack

    acked = Run(policy)
    acked.submit("fired")
    acked.advance(300)
    acked.engine.acknowledge("acme", "rul_1", "fz-1", "warm")
    acked.advance(7200)
    assert [s.kind for s in acked.sent] == ["fired"]


def test_the_clear_also_reaches_escalated_channels() -> None:
    run = Run(DeliveryPolicy(escalation=(EscalationStep(after_s=60, channels=("manager",)),)))
    run.submit("fired")
    run.advance(60)
    run.advance(300)  # past the throttle window
    run.submit("cleared")
    assert run.sent[-1].kind == "cleared"
    assert run.sent[-1].channels == ("night-shift", "manager")


def test_notify_on_clear_off_skips_the_clear() -> None:
    run = Run(DeliveryPolicy(notify_on_clear=False, throttle_s=0))
    run.submit("fired")
    assert run.submit("cleared") == "skipped"
    assert run.submit("fired") == "queued"  # a new alarm after the (silent) clear is news again


def test_a_clear_with_nothing_notified_is_not_sent() -> None:
    run = Run(DeliveryPolicy())
    assert run.submit("cleared") == "deduplicated"
    assert run.sent == []


def test_forgotten_keys_do_not_pile_up() -> None:
    engine = PolicyEngine()
    policy = DeliveryPolicy(throttle_s=60)
    for i in range(1000):
        request = NotificationRequest(
            "acme", "rul_1", "r", f"dev-{i}", ("c",), "t", "b", {}, "fired", START, None, "warm"
        )
        engine.submit(request, policy, f"k{i}", START)
        cleared = NotificationRequest(
            "acme", "rul_1", "r", f"dev-{i}", ("c",), "t", "b", {}, "cleared", START, None, "warm"
        )
        engine.submit(cleared, policy, f"k{i}", START)
    engine.due(START.replace(hour=3))  # the trailing clears go out, each opening a new window
    assert engine.keys == 1000
    engine.due(START.replace(hour=4))
    assert engine.keys == 0
