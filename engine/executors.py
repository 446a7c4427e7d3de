"""Executing the actions a rule decided on: alarms, notifications, webhooks, MQTT and derived metrics.

Compiled rules only *plan* calls (engine.nodes.base.ActionCall); this module carries them out
through ports, so the same compiled rule runs live here and side-effect free in a backtest.
Every call is checked against the rule's tenant once more before it runs, templates are rendered
in the notifiers' sandbox, and a failure becomes an outcome in the trace, never an exception that
stops the other actions or rules.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import random
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx

from engine.alarms import Alarm, alarm_data
from engine.compiler import CompiledRule, Decision
from engine.nodes.actions import private_address_problem
from engine.nodes.base import ActionCall
from model.readings import Reading, Source
from notifiers.gateway import is_private_address
from notifiers.policy import DeliveryPolicy
from notifiers.port import NotificationRequest
from notifiers.templates import TemplateProblem, render

logger = logging.getLogger(__name__)

MQTT_PREFIX = "fg"
INGEST_TOPICS = frozenset({"telemetry", "status"})  # what the MQTT connector consumes: never a target
DERIVED_SOURCE_KIND = "rule"


class AlarmPort(Protocol):
    """Where alarm.raise and alarm.clear calls go (the alarm service implements it)."""

    async def raise_alarm(
        self,
        tenant_id: str,
        rule_id: str,
        device_id: str,
        alarm_type: str,
        severity: str,
        message: str,
        at: datetime,
    ) -> Any:
        """Raise (or keep) the alarm of (tenant, rule, device, type)."""
        ...

    async def clear_alarm(
        self, tenant_id: str, rule_id: str, device_id: str, alarm_type: str, *, at: datetime
    ) -> Any:
        """Clear it if active."""
        ...


class Publisher(Protocol):
    """Publishes MQTT messages for rules (the runtime's broker client implements it)."""

    async def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        """Publish and wait for the broker's acknowledgement (QoS 1)."""
        ...


class ReadingSubmitter(Protocol):
    """Where derived metrics go: the ingestion pipeline's bus."""

    async def submit(self, reading: Reading) -> None:
        """Hand a reading to ingestion."""
        ...


class NotifierPort(Protocol):
    """The notifiers' delivery service (see notifiers.port)."""

    async def submit(self, request: Any) -> str:
        """Queue a notification; returns at once with what the policy decided."""
        ...


Resolver = Callable[[str], Awaitable[list[str]]]


async def resolve(host: str) -> list[str]:
    """The addresses a host name resolves to (the webhook check looks at every one)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


class ActionFailed(Exception):
    """An action could not be carried out; the message goes into the trace."""


@dataclass(slots=True)
class ActionContext:
    """What templates of one firing can use."""

    rule: CompiledRule
    decision: Decision
    values: Mapping[str, Any]
    device_type: str
    labels: Mapping[str, str]
    alarm: dict[str, Any] | None = None

    def template_data(self) -> dict[str, Any]:
        """Plain data only: templates never see Python objects of the engine."""
        return {
            "rule": {
                "id": self.rule.rule_id,
                "name": self.rule.document.name,
                "version": self.rule.version,
            },
            "device": {"id": self.decision.device_id, "type": self.device_type, "labels": dict(self.labels)},
            "values": dict(self.values),
            "event": {
                "kind": "cleared" if self.decision.cleared else "fired",
                "trigger": self.decision.event.value,
                "at": self.decision.at.isoformat(),
            },
            "alarm": self.alarm,
            "tenant": {"id": self.rule.tenant_id},
        }


class ActionExecutor:
    """Runs ActionCalls through the ports this process has; a missing port is reported, not faked."""

    def __init__(
        self,
        *,
        alarms: AlarmPort | None = None,
        notifier: NotifierPort | None = None,
        publisher: Publisher | None = None,
        sink: ReadingSubmitter | None = None,
        http: httpx.AsyncClient | None = None,
        allow_private_webhooks: bool = False,
        resolver: Resolver = resolve,
        backoff_s: float = 0.5,
    ) -> None:
        self.alarms = alarms
        self.notifier = notifier
        self.publisher = publisher
        self.sink = sink
        self._http = http
        self._own_http = http is None
        self.allow_private_webhooks = allow_private_webhooks
        self.resolver = resolver
        self.backoff_s = backoff_s

    async def close(self) -> None:
        """Close the HTTP client if this executor made it."""
        if self._http is not None and self._own_http:
            await self._http.aclose()
            self._http = None

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            # No redirects: a redirect to a private address would get round the address check.
            self._http = httpx.AsyncClient(follow_redirects=False, trust_env=False)
        return self._http

    async def run(self, call: ActionCall, ctx: ActionContext) -> dict[str, Any]:
        """Execute one call; the outcome (status, detail) goes into the trace."""
        outcome: dict[str, Any] = {"path": call.path, "node": call.node}
        if call.tenant_id != ctx.rule.tenant_id:  # tenant-scoped at compile time, and again here
            return {**outcome, "status": "refused", "detail": "tenant mismatch"}
        handler = _HANDLERS.get(call.node)
        if handler is None:
            missing = f"no executor for {call.node!r} in this process"
            return {**outcome, "status": "skipped", "detail": missing}
        try:
            detail = await handler(self, call, ctx)
        except ActionFailed as exc:
            return {**outcome, "status": "failed", "detail": str(exc)[:500]}
        except TemplateProblem as exc:
            return {**outcome, "status": "failed", "detail": f"template: {exc}"[:500]}
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.exception("action %s of rule %s failed", call.path, ctx.rule.rule_id)
            return {**outcome, "status": "failed", "detail": f"{type(exc).__name__}: {exc}"[:500]}
        if detail is None:
            return {**outcome, "status": "done"}
        status, text = detail
        return {**outcome, "status": status, "detail": text}

    # --- handlers -----------------------------------------------------------------------------

    async def _raise(self, call: ActionCall, ctx: ActionContext) -> tuple[str, str] | None:
        if self.alarms is None:
            return ("skipped", "no alarm service in this process")
        o = call.options
        message = render(o.get("message", ""), ctx.template_data())
        alarm = await self.alarms.raise_alarm(
            call.tenant_id,
            ctx.rule.rule_id,
            call.device_id,
            o["alarm_type"],
            o["severity"],
            message,
            ctx.decision.at,
        )
        ctx.alarm = _alarm_data(alarm, o["alarm_type"], o["severity"], message)
        return None

    async def _clear(self, call: ActionCall, ctx: ActionContext) -> tuple[str, str] | None:
        if self.alarms is None:
            return ("skipped", "no alarm service in this process")
        alarm = await self.alarms.clear_alarm(
            call.tenant_id, ctx.rule.rule_id, call.device_id, call.options["alarm_type"], at=ctx.decision.at
        )
        if alarm is not None:
            ctx.alarm = _alarm_data(alarm, call.options["alarm_type"], None, None)
        return None

    async def _notify(self, call: ActionCall, ctx: ActionContext) -> tuple[str, str] | None:
        if self.notifier is None:
            return ("skipped", "no notification service in this process")
        o = call.options
        policy = o.get("policy")
        request = NotificationRequest(
            tenant_id=call.tenant_id,
            rule_id=ctx.rule.rule_id,
            rule_name=ctx.rule.document.name,
            device_id=call.device_id,
            channels=tuple(o["channels"]),
            title=o.get("title", ""),
            body=o.get("body", ""),
            context=ctx.template_data(),
            kind="cleared" if ctx.decision.cleared else "fired",
            at=ctx.decision.at,
            severity=(ctx.alarm or {}).get("severity"),
            alarm_type=(ctx.alarm or {}).get("alarm_type"),
            policy=_policy(policy),
        )
        decided = await self.notifier.submit(request)
        if decided == "queued":
            return ("done", "queued for delivery")
        if decided == "no_channel":
            raise ActionFailed("none of the channels exists in the tenant")
        return ("suppressed", f"delivery policy: {decided}")

    async def _webhook(self, call: ActionCall, ctx: ActionContext) -> tuple[str, str] | None:
        o = call.options
        url = str(o["url"])
        body_text = render(o.get("body", "{}"), ctx.template_data())
        try:
            body = json.loads(body_text)
        except ValueError as exc:
            raise ActionFailed(f"the rendered body is not JSON: {exc}") from exc
        if not self.allow_private_webhooks:
            await self._check_public(url)
        attempts = int(o.get("retries", 3)) + 1
        timeout = float(o.get("timeout_s", 5.0))
        last = ""
        for attempt in range(attempts):
            if attempt:
                jitter = 0.5 + random.random()  # noqa: S311 (jitter, not a secret)
                await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1) * jitter)
            try:
                response = await self._client().post(
                    url,
                    json=body,
                    timeout=timeout,
                    headers={"User-Agent": "flatgigs-rules", "X-Flatgigs-Rule": ctx.rule.rule_id},
                )
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
                continue
            if response.status_code < 300:
                return ("done", f"HTTP {response.status_code} after {attempt + 1} attempt(s)")
            last = f"HTTP {response.status_code}"
            if response.status_code < 500 and response.status_code not in (408, 429):
                break  # the receiver refused this request: sending it again will not help
        raise ActionFailed(f"{last} after {attempt + 1} attempt(s)")

    async def _check_public(self, url: str) -> None:
        problem = private_address_problem(url)
        if problem:
            raise ActionFailed(f"refused: {problem}")
        host = urlsplit(url).hostname or ""
        try:
            ipaddress.ip_address(host.strip("[]"))
            return  # a literal address, checked above
        except ValueError:
            pass  # a name: check every address it resolves to (the resolver is async here)
        try:
            addresses = await self.resolver(host)
        except OSError as exc:
            raise ActionFailed(f"{host} does not resolve: {exc}") from exc
        for address in addresses:
            ip = ipaddress.ip_address(address.split("%")[0])
            if is_private_address(ip):
                raise ActionFailed(f"refused: {host} resolves to the private address {ip}")

    async def _publish(self, call: ActionCall, ctx: ActionContext) -> tuple[str, str] | None:
        if self.publisher is None:
            return ("skipped", "no MQTT broker configured in this process")
        o = call.options
        data = ctx.template_data()
        topic = render(o["topic"], data)
        problem = topic_problem(topic, call.tenant_id)
        if problem:
            raise ActionFailed(problem)
        payload = render(o.get("payload", "{}"), data).encode()
        await self.publisher.publish(topic, payload, int(o.get("qos", 1)), bool(o.get("retain", False)))
        return ("done", f"published to {topic}")

    async def _derived(self, call: ActionCall, ctx: ActionContext) -> tuple[str, str] | None:
        if self.sink is None:
            return ("skipped", "no ingestion pipeline in this process")
        o = call.options
        if "value" not in o:
            raise ActionFailed("the expression could not be evaluated with the device's values")
        reading = Reading(
            call.tenant_id,
            call.device_id,
            ctx.decision.at,
            {o["metric"]: o["value"]},
            Source(DERIVED_SOURCE_KIND, ctx.rule.rule_id),
        )
        await self.sink.submit(reading)
        return ("done", f"{o['metric']} = {o['value']}")


def topic_problem(topic: str, tenant_id: str) -> str | None:
    """Why a rule may not publish to ``topic`` (None when it may).

    Rules publish only inside their tenant's namespace, ``fg/<tenant>/...``, and never to the
    topics ingestion consumes: a rule must not be able to forge readings or statuses.
    """
    levels = topic.split("/")
    if any(c in topic for c in "+#") or topic.startswith("$") or "" in levels:
        return f"topic {topic!r} must be a plain topic without wildcards or empty levels"
    if len(levels) < 3 or levels[0] != MQTT_PREFIX or levels[1] != tenant_id:
        return f"topic {topic!r} is outside the tenant's namespace {MQTT_PREFIX}/{tenant_id}/..."
    if len(levels) == 4 and levels[3] in INGEST_TOPICS:
        return f"topic {topic!r} is an ingestion topic; rules cannot publish readings or statuses"
    return None


def _alarm_data(alarm: Any, alarm_type: str, severity: str | None, message: str | None) -> dict[str, Any]:
    """What templates see of the alarm (the service returns the alarm, or (alarm, changed))."""
    found = alarm[0] if isinstance(alarm, tuple) else alarm
    if isinstance(found, Alarm):
        return alarm_data(found)
    return {"alarm_type": alarm_type, "severity": severity, "message": message}


def _policy(raw: Any) -> DeliveryPolicy | None:
    return DeliveryPolicy.model_validate(raw) if raw else None


Handler = Callable[[ActionExecutor, ActionCall, ActionContext], Awaitable[tuple[str, str] | None]]

_HANDLERS: dict[str, Handler] = {
    "alarm.raise": ActionExecutor._raise,
    "alarm.clear": ActionExecutor._clear,
    "notify": ActionExecutor._notify,
    "webhook": ActionExecutor._webhook,
    "mqtt.publish": ActionExecutor._publish,
    "metric.derived": ActionExecutor._derived,
}

# Actions that change the rule's own alarm state run in order with the evaluation; the others are
# side effects run as tasks under the rule's run mode, so a slow receiver never holds up readings.
_STATE_ACTIONS: set[str] = {"alarm.raise", "alarm.clear"}


def is_state_action(node: str) -> bool:
    """Whether ``node`` runs in order with evaluation (alarms) rather than as a side-effect task."""
    return node in _STATE_ACTIONS


def register_executor(node: str, handler: Handler, *, state: bool = False) -> None:
    """Add the executor of a new action node (e.g. device commands); one module per action."""
    if node in _HANDLERS:
        raise ValueError(f"an executor for {node!r} is already registered")
    _HANDLERS[node] = handler
    if state:
        _STATE_ACTIONS.add(node)
