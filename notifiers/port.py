"""The notifier port: what the rule engine hands over when a rule notifies, and the answer it gets.

The engine never waits for delivery: ``submit`` applies the delivery policy, queues what must be
sent and returns at once with the decision. ``alarm_acknowledged`` stops reminders and
escalation of that alarm.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

from notifiers.policy import DeliveryPolicy

# What submit() answers: one word per decision, also counted in /metrics.
#   queued: at least one channel will get it now; held: every channel is in quiet hours;
#   throttled: too many changes of this key in its window (the latest state follows at the end);
#   deduplicated: nothing new to say (same state as last notified); acknowledged: the alarm was
#   acknowledged, reminders are over; skipped: the policy says not to (e.g. notify_on_clear off);
#   no_channel: none of the named channels exists in the tenant.
Outcome = Literal["queued", "held", "throttled", "deduplicated", "acknowledged", "skipped", "no_channel"]


@dataclass(frozen=True, slots=True)
class NotificationRequest:
    """One notify action of one rule firing (or clearing) for one device."""

    tenant_id: str
    rule_id: str
    rule_name: str
    device_id: str
    channels: tuple[str, ...]  # channel NAMES of the tenant, as written in the notify action
    title: str  # Jinja2 template source
    body: str  # Jinja2 template source
    context: Mapping[str, Any]  # template variables: rule, device, values, alarm, event, links
    kind: Literal["fired", "cleared"]
    at: datetime
    severity: str | None = None  # the alarm's severity when the rule raises one
    alarm_type: str | None = None
    policy: DeliveryPolicy | None = None  # per-rule overrides; None = the tenant's defaults


class Notifier(Protocol):
    """The notifications service as the rule engine and the alarm service see it."""

    async def submit(self, request: NotificationRequest) -> str:
        """Apply the delivery policy and queue the deliveries; never waits for them (see Outcome)."""
        ...

    async def alarm_acknowledged(
        self, tenant_id: str, rule_id: str, device_id: str, alarm_type: str, at: datetime
    ) -> None:
        """Stop reminders and escalation of this alarm."""
        ...
