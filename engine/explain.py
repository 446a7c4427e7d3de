"""Why is (or isn't) a rule firing for this device right now? Evaluated on demand, with no side effect.

Traces record every change of a rule's outcome per device (ADR 0023). A device whose readings have
never moved a rule has no trace, and a trace can be old. ``explain`` answers the question for now:
it evaluates the rule's conditions for one device against the device's latest stored values and a
copy of the rule's stored state, and returns each step with its inputs, exactly as a trace would.
Nothing is written and no action runs.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from devices.registry import DeviceRepository
from engine.compiler import RULE_STATE, compile_rule
from engine.context import compile_context
from engine.document import RuleDocument
from engine.evaluation import DeviceView, EvalContext, Event, EventKind
from engine.rules import RuleRepository
from engine.store import RuleStateRepository
from model.errors import InvalidInputError
from model.readings import MetricValue, Reading, Source
from storage.database import TenantScope
from storage.telemetry.port import TelemetryStore


@dataclass(frozen=True, slots=True)
class Explanation:
    """The rule's conditions for one device, evaluated now."""

    rule_id: str
    version: int
    device_id: str
    at: datetime
    selected: bool
    values: Mapping[str, MetricValue]
    value_times: Mapping[str, datetime]
    result: bool | None
    active: bool
    steps: list[dict[str, Any]]
    summary: str

    def as_dict(self) -> dict[str, Any]:
        """As served by the API."""
        return {
            "rule_id": self.rule_id,
            "version": self.version,
            "device_id": self.device_id,
            "evaluated_at": self.at,
            "selected": self.selected,
            "values": dict(self.values),
            "value_times": dict(self.value_times),
            "result": self.result,
            "active": self.active,
            "steps": self.steps,
            "summary": self.summary,
        }


async def explain(
    scope: TenantScope,
    telemetry: TelemetryStore,
    rule_id: str,
    device_id: str,
    *,
    at: datetime,
    version: int | None = None,
    timezone: str = "UTC",
    allow_private_webhooks: bool = False,
) -> Explanation:
    """Evaluate the published (or given) version of a rule for one device, side-effect free."""
    rules = RuleRepository(scope)
    rule = await rules.get(rule_id)  # NotFoundError for an unknown or another tenant's rule
    chosen = version or rule.published_version or rule.latest_version
    stored = await rules.version(rule_id, chosen)
    device = await DeviceRepository(scope).get(device_id)  # the same 404 for a foreign device
    document = RuleDocument.model_validate(stored.document)
    context = await compile_context(scope, document, allow_private_webhooks=allow_private_webhooks)
    compiled = compile_rule(document, context, rule_id=rule_id, version=chosen)
    view = DeviceView(device.id, device.type_id, dict(device.labels), ZoneInfo(timezone))
    latest = await telemetry.latest(scope.tenant_id, device.id)
    values = {metric: sample.value for metric, sample in latest.items()}
    times = {metric: sample.ts for metric, sample in latest.items()}
    state = copy.deepcopy(await RuleStateRepository(scope).get(rule_id, device.id))
    active = bool(state.get(RULE_STATE, {}).get("active", False))
    if not compiled.selects(view.id, view.type_id, view.labels):
        why = "the rule's device selector does not pick this device"
        return Explanation(rule_id, chosen, device.id, at, False, values, times, None, active, [], why)
    if at.tzinfo is None:
        raise InvalidInputError("the time must have a time zone")
    reading = Reading(scope.tenant_id, device.id, at, values, Source("explain", rule_id)) if values else None
    ctx = EvalContext(
        Event(EventKind.READING, scope.tenant_id, device.id, at, reading), view, values, times, state
    )
    results = [condition.check(ctx) for condition in compiled.conditions]
    result: bool | None = False if False in results else (None if None in results else True)
    return Explanation(
        rule_id,
        chosen,
        device.id,
        at,
        True,
        values,
        times,
        result,
        active,
        [step.as_dict() for step in ctx.steps],
        _summary(result, active, values),
    )


def _summary(result: bool | None, active: bool, values: Mapping[str, MetricValue]) -> str:
    if not values:
        return "no stored values for this device yet: the conditions cannot be decided"
    if result is None:
        return "undecided: a value the conditions need is missing or not a number"
    if result and active:
        return "the conditions hold and the rule is active (it fired and has not cleared)"
    if result:
        return "the conditions hold now: the next evaluation fires the rule (throttle permitting)"
    if active:
        return "the conditions no longer hold: the next evaluation clears the rule"
    return "the conditions do not hold: see the step whose result is false"
