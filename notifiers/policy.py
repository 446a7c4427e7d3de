"""Delivery policy: what a notification may do (dedup, throttle, repeat, escalate, notify on clear)
and per-channel quiet hours. Plain data, validated once; ``notifiers.episodes`` applies it.

A tenant has default policy; a rule's notify action may override any field of it (only the fields
the rule sets are taken, see ``effective_policy``).
"""

from __future__ import annotations

from datetime import datetime, time, timedelta, tzinfo
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from notifiers import templates

Severity = Literal["critical", "major", "minor", "warning", "info"]
# Higher is worse; a notification without a severity (no alarm) ranks below info.
SEVERITY_RANK: dict[str | None, int] = {
    None: 0,
    "info": 1,
    "warning": 2,
    "minor": 3,
    "major": 4,
    "critical": 5,
}
MAX_DELAY_S = 7 * 86_400


class EscalationStep(BaseModel):
    """If the alarm is still active and unacknowledged ``after_s`` seconds after it was first
    notified, notify these channels as well."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    after_s: float = Field(gt=0, le=MAX_DELAY_S, description="Seconds after the alarm's first notification.")
    channels: tuple[str, ...] = Field(min_length=1, max_length=10, description="Channel names to add.")


class DeliveryPolicy(BaseModel):
    """How often and to whom a rule's notifications go. Every field has a default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dedup_key: str | None = Field(
        default=None,
        max_length=300,
        description="Jinja2 template naming what counts as 'the same notification'. "
        "Default (null): the rule, the device and the alarm type.",
    )
    throttle_s: float = Field(
        default=300,
        ge=0,
        le=86_400,
        description="Window in which at most throttle_count notifications of one key are sent; "
        "changes inside the window are summed up by one notification of the latest state at its end.",
    )
    throttle_count: int = Field(default=1, ge=1, le=100)
    repeat_every_s: float | None = Field(
        default=None,
        ge=1,
        le=MAX_DELAY_S,
        description="Remind at this interval while the alarm is active and unacknowledged (null: never).",
    )
    repeat_max: int = Field(default=3, ge=0, le=100, description="Reminders at most, per alarm.")
    escalation: tuple[EscalationStep, ...] = Field(default=(), max_length=5)
    notify_on_clear: bool = Field(default=True, description="Tell the same channels when the alarm clears.")

    @field_validator("dedup_key")
    @classmethod
    def _template_is_usable(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                templates.check(value)
            except templates.TemplateProblem as exc:
                raise ValueError(f"dedup_key: {exc}") from exc
        return value

    @model_validator(mode="after")
    def _steps_in_order(self) -> Self:
        delays = [step.after_s for step in self.escalation]
        if delays != sorted(set(delays)) or len(delays) != len(set(delays)):
            raise ValueError("escalation steps must have strictly increasing after_s")
        return self


DEFAULT_POLICY = DeliveryPolicy()


def effective_policy(tenant_default: DeliveryPolicy, rule: DeliveryPolicy | None) -> DeliveryPolicy:
    """The tenant's defaults with the fields a rule's policy sets explicitly laid over them."""
    if rule is None or not rule.model_fields_set:
        return tenant_default
    return tenant_default.model_copy(update={name: getattr(rule, name) for name in rule.model_fields_set})


class QuietHours(BaseModel):
    """A daily period, in the tenant's time zone, when a channel only receives severe notifications;
    the rest is held and delivered when the period ends (unless the alarm cleared or was
    acknowledged meanwhile). ``start`` after ``end`` spans midnight (22:00-07:00)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    start: time
    end: time
    days: tuple[int, ...] = Field(
        default=(0, 1, 2, 3, 4, 5, 6),
        min_length=1,
        max_length=7,
        description="Weekdays the period starts on (0 = Monday).",
    )
    min_severity: Severity = Field(
        default="critical", description="Notifications at this severity or above are delivered anyway."
    )

    @model_validator(mode="after")
    def _sane(self) -> Self:
        if self.start == self.end:
            raise ValueError("start and end of quiet hours must differ")
        if any(not 0 <= d <= 6 for d in self.days) or len(set(self.days)) != len(self.days):
            raise ValueError("days are distinct weekdays 0 (Monday) to 6 (Sunday)")
        if self.start.tzinfo is not None or self.end.tzinfo is not None:
            raise ValueError("quiet hours are in the tenant's time zone: give times without an offset")
        return self

    def lets_through(self, severity: str | None) -> bool:
        """Whether a notification of ``severity`` overrides the quiet period."""
        return SEVERITY_RANK.get(severity, 0) >= SEVERITY_RANK[self.min_severity]

    def quiet_until(self, at: datetime, zone: tzinfo) -> datetime | None:
        """The end of the quiet period ``at`` falls in (UTC), or None when ``at`` is not quiet."""
        local = at.astimezone(zone)
        # A period that started yesterday (spanning midnight) can still be running today.
        for days_back in (0, 1):
            day = local.date() - timedelta(days=days_back)
            if day.weekday() not in self.days:
                continue
            begins = datetime.combine(day, self.start, tzinfo=zone)
            ends_day = day if self.end > self.start else day + timedelta(days=1)
            ends = datetime.combine(ends_day, self.end, tzinfo=zone)
            if begins <= local < ends:
                return ends.astimezone(at.tzinfo)
        return None
