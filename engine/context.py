"""What a rule is compiled against: the tenant's device types and devices."""

from __future__ import annotations

from devices.registry import DeviceRepository, DeviceTypeRepository
from engine.document import RuleDocument
from engine.errors import RuleProblem, RuleValidationError
from engine.nodes.base import CompileContext
from model.devices import MetricSpec
from storage.database import TenantScope


async def compile_context(
    scope: TenantScope, document: RuleDocument, *, allow_private_webhooks: bool = False
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
    if problems:
        raise RuleValidationError(problems)
    return CompileContext(scope.tenant_id, metrics, allow_private_webhooks)
