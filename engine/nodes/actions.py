"""Actions: alarms, notifications, webhooks, MQTT publishes and derived metrics.

Compiling an action checks its options; firing produces an ActionCall. Executing calls is the
action runner's job, through ports (alarm store, notifier, HTTP client, publisher, pipeline), so
a backtest can run the same compiled rule with no side effect at all.
"""

from __future__ import annotations

import contextlib
from typing import Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import Field, HttpUrl, model_validator

from engine.errors import RuleProblem, RuleValidationError
from engine.evaluation import EvalContext
from engine.expressions import ExpressionRuntimeError, compile_expression
from engine.nodes.base import Action, ActionCall, CompileContext, Options
from engine.nodes.triggers import MetricName
from engine.registry import REGISTRY, NodeKind
from notifiers.gateway import private_address_problem as host_problem
from notifiers.policy import DeliveryPolicy
from notifiers.templates import TemplateProblem
from notifiers.templates import check as check_template

Severity = Literal["critical", "major", "minor", "warning", "info"]
AlarmType = str


class TemplatedAction(Action):
    """An action whose options hold message templates: each is checked when the rule is saved."""

    templates: tuple[str, ...] = ()

    def __init__(self, path: str, options: Any, context: CompileContext) -> None:
        super().__init__(path, options, context)
        problems = []
        for name in self.templates:
            try:
                check_template(getattr(self.options, name))
            except TemplateProblem as exc:
                problems.append(RuleProblem(path, f"template: {exc}", f"options.{name}"))
        if problems:
            raise RuleValidationError(problems)


class RaiseAlarmOptions(Options):
    """The alarm to raise: one per rule, device and type, however often the rule fires."""

    alarm_type: AlarmType = Field(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    severity: Severity = "major"
    message: str = Field(default="", max_length=1000, json_schema_extra={"widget": "template"})


@REGISTRY.register(
    "alarm.raise",
    NodeKind.ACTION,
    options=RaiseAlarmOptions,
    title="Raise alarm",
    examples=({"alarm_type": "freezer-warm", "severity": "major", "message": "{{ device.id }} is warm"},),
)
class RaiseAlarm(TemplatedAction):
    """Raises (or keeps active) the device's alarm of this type for this rule."""

    templates = ("message",)


class ClearAlarmOptions(Options):
    """The alarm type to clear."""

    alarm_type: AlarmType = Field(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@REGISTRY.register(
    "alarm.clear",
    NodeKind.ACTION,
    options=ClearAlarmOptions,
    title="Clear alarm",
    examples=({"alarm_type": "freezer-warm"},),
)
class ClearAlarm(Action):
    """Clears the device's active alarm of this type raised by this rule."""


class NotifyOptions(Options):
    """Who to tell and what to say (channels are the tenant's notification channels)."""

    channels: list[str] = Field(min_length=1, max_length=10, json_schema_extra={"widget": "channels"})
    title: str = Field(default="{{ rule.name }}", max_length=200, json_schema_extra={"widget": "template"})
    body: str = Field(default="", max_length=4000, json_schema_extra={"widget": "template"})
    policy: DeliveryPolicy | None = Field(
        default=None, description="Delivery policy for this rule (the tenant's defaults when absent)."
    )


@REGISTRY.register(
    "notify",
    NodeKind.ACTION,
    options=NotifyOptions,
    title="Notify",
    examples=({"channels": ["night-shift"], "title": "{{ device.id }} too warm"},),
)
class Notify(TemplatedAction):
    """Sends a notification through the tenant's channels (delivery policy applies)."""

    templates = ("title", "body")


class WebhookOptions(Options):
    """An HTTP POST with a JSON body."""

    url: HttpUrl
    body: str = Field(default="{}", max_length=8000, json_schema_extra={"widget": "template"})
    timeout_s: float = Field(default=5.0, gt=0, le=30)
    retries: int = Field(default=3, ge=0, le=10)


def private_address_problem(url: str) -> str | None:
    """Why a webhook URL points at loopback, link-local or private space (None when it does not).

    A host name is checked against its resolved addresses when the call is made.
    """
    return host_problem(urlsplit(url).hostname or "")


@REGISTRY.register(
    "webhook",
    NodeKind.ACTION,
    options=WebhookOptions,
    title="Webhook",
    examples=({"url": "https://hooks.example.com/flatgigs", "body": '{"device": "{{ device.id }}"}'},),
)
class Webhook(TemplatedAction):
    """POSTs templated JSON to a URL, with a timeout and retries; private addresses are refused."""

    options: WebhookOptions
    templates = ("body",)

    def __init__(self, path: str, options: Any, context: CompileContext) -> None:
        super().__init__(path, options, context)
        problem = private_address_problem(str(self.options.url))
        if problem and not context.allow_private_webhooks:
            raise RuleValidationError(
                [RuleProblem(path, f"webhooks to {problem} are not allowed", "options.url")]
            )


class PublishOptions(Options):
    """An MQTT message to publish."""

    topic: str = Field(min_length=1, max_length=200)
    payload: str = Field(default="{}", max_length=8000, json_schema_extra={"widget": "template"})
    qos: Literal[0, 1] = 1
    retain: bool = False

    @model_validator(mode="after")
    def _no_wildcards(self) -> Self:
        if any(c in self.topic for c in "+#") or self.topic.startswith("$"):
            raise ValueError("the topic must not contain wildcards or start with $")
        return self


@REGISTRY.register(
    "mqtt.publish",
    NodeKind.ACTION,
    options=PublishOptions,
    title="Publish MQTT message",
    examples=({"topic": "fg/acme-retail/{{ device.id }}/commands", "payload": '{"setpoint": -20}'},),
)
class Publish(TemplatedAction):
    """Publishes a templated message (the topic is confined to the tenant's namespace)."""

    options: PublishOptions
    templates = ("topic", "payload")

    def __init__(self, path: str, options: Any, context: CompileContext) -> None:
        super().__init__(path, options, context)
        levels = self.options.topic.split("/")
        # Checked again on the rendered topic when the message is sent (the executors' topic check).
        if len(levels) < 3 or levels[0] != "fg" or levels[1] != context.tenant_id:
            raise RuleValidationError(
                [
                    RuleProblem(
                        path,
                        f"the topic must start with fg/{context.tenant_id}/ (the tenant's namespace)",
                        "options.topic",
                    )
                ]
            )
        if len(levels) == 4 and levels[3] in ("telemetry", "status"):
            raise RuleValidationError(
                [RuleProblem(path, "rules cannot publish to ingestion topics", "options.topic")]
            )


class DerivedOptions(Options):
    """A metric computed from the device's values and written back into the pipeline."""

    metric: MetricName
    expression: str = Field(min_length=1, max_length=500, json_schema_extra={"widget": "expression"})


@REGISTRY.register(
    "metric.derived",
    NodeKind.ACTION,
    options=DerivedOptions,
    title="Derived metric",
    examples=({"metric": "too_warm", "expression": "temp > -10"},),
)
class DerivedMetric(Action):
    """Writes a boolean metric computed by an expression back into the pipeline for the device."""

    options: DerivedOptions

    def __init__(self, path: str, options: Any, context: CompileContext) -> None:
        super().__init__(path, options, context)
        if self.options.metric in context.metrics:
            raise RuleValidationError(
                [
                    RuleProblem(
                        path,
                        f"{self.options.metric!r} is a metric of the device type; a derived metric "
                        "needs a name of its own",
                        "options.metric",
                    )
                ]
            )
        self.compiled = compile_expression(self.options.expression, context.metrics, path)

    def plan(self, ctx: EvalContext) -> ActionCall:
        """The call carries the value, computed now from the values the decision saw."""
        call = super().plan(ctx)
        inputs = {m: ctx.values.get(m) for m in self.compiled.symbols}
        if all(v is not None for v in inputs.values()):
            # When it cannot be evaluated the executor reports the call as failed, with the reason.
            with contextlib.suppress(ExpressionRuntimeError):
                call.options["value"] = self.compiled.evaluate(inputs)
        return call
