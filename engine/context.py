"""What a rule is compiled against: the tenant's device types and devices."""

from __future__ import annotations

from typing import Any

from devices.registry import DeviceRepository, DeviceTypeRepository
from engine.document import RuleDocument, parse
from engine.errors import RuleProblem, RuleValidationError
from engine.nodes.base import CompileContext
from model.devices import MetricSpec
from notifiers.channels import existing_channel_names
from storage.database import TenantScope


async def compile_context(
    scope: TenantScope,
    document: RuleDocument,
    *,
    allow_private_webhooks: bool = False,
    check_channels: bool = True,
) -> CompileContext:
    """The metric catalogue of the devices the rule selects; references must be this tenant's.

    With a device type in the selector, expressions are typed by that type's catalogue; without
    one, by the union of the tenant's catalogues. Device ids and the type must exist in the
    tenant: a rule can never name another tenant's device.
    """
    problems: list[RuleProblem] = []
    types = {t.id: t for t in await DeviceTypeRepository(scope).list()}
    selector = document.devices
    metrics: dict[str, MetricSpec] = {}
    if selector.type is not None:
        if selector.type not in types:
            problems.append(RuleProblem("devices", f"unknown device type {selector.type!r}", "type"))
        else:
            metrics = {m.name: m for m in types[selector.type].metrics}
    else:
        for device_type in types.values():
            for metric in device_type.metrics:
                metrics.setdefault(metric.name, metric)
    if selector.ids:
        found = await DeviceRepository(scope).existing_ids(selector.ids)
        for index, device_id in enumerate(selector.ids):
            if device_id not in found:
                problems.append(RuleProblem("devices", f"unknown device {device_id!r}", f"ids.{index}"))
    if check_channels:
        problems.extend(await _channel_problems(scope, document))
    if problems:
        raise RuleValidationError(problems)
    return CompileContext(scope.tenant_id, metrics, allow_private_webhooks)


def _named_channels(document: RuleDocument) -> list[tuple[str, str, str]]:
    """(node path, option field, channel name) of every channel the rule's notify actions name."""
    try:
        parsed = parse(document)
    except RuleValidationError:
        return []  # shape problems are reported by compilation, with their paths
    found: list[tuple[str, str, str]] = []
    for ref in (*parsed.then, *parsed.else_):
        if ref.type != "notify":
            continue
        options: dict[str, Any] = ref.options
        for i, name in enumerate(options.get("channels") or []):
            if isinstance(name, str):
                found.append((ref.path, f"options.channels.{i}", name))
        policy = options.get("policy") or {}
        for s, step in enumerate(policy.get("escalation") or [] if isinstance(policy, dict) else []):
            for i, name in enumerate(step.get("channels") or [] if isinstance(step, dict) else []):
                if isinstance(name, str):
                    found.append((ref.path, f"options.policy.escalation.{s}.channels.{i}", name))
    return found


async def _channel_problems(scope: TenantScope, document: RuleDocument) -> list[RuleProblem]:
    """A notify action may name only channels of the rule's tenant (another tenant's: unknown)."""
    named = _named_channels(document)
    if not named:
        return []
    existing = await existing_channel_names(scope, {name for _, _, name in named})
    return [
        RuleProblem(path, f"unknown notification channel {name!r}", field)
        for path, field, name in named
        if name not in existing
    ]
