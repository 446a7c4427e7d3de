"""What a requested backtest covers: the rule compiled as saved, the tenant's devices, the time range.

A backtest is asked for while a rule is being edited, so it must answer in seconds: the range is
at most a week and at most ``MAX_DEVICES`` devices are replayed (``bench/backtest.py`` measures a
week of one-minute readings of 10 and 100 devices). Past either limit the request is refused with
a 422 that says how to narrow it, rather than left to run for minutes.

Devices are always looked up in the caller's tenant: an id of another tenant's device is unknown
here, exactly like an id that does not exist.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from enum import StrEnum

from devices.registry import DeviceFilter, DeviceRepository
from engine.compiler import CompiledRule, compile_rule
from engine.context import compile_context
from engine.document import RuleDocument
from engine.evaluation import DeviceView
from model.errors import InvalidInputError, NotFoundError
from storage.database import TenantScope

MAX_DEVICES = 100
MAX_RANGE = timedelta(days=7)


class BacktestRange(StrEnum):
    """A range ending now (or at ``until``)."""

    LAST_HOUR = "last_hour"
    LAST_DAY = "last_day"
    LAST_WEEK = "last_week"


RANGE_LENGTHS = {
    BacktestRange.LAST_HOUR: timedelta(hours=1),
    BacktestRange.LAST_DAY: timedelta(days=1),
    BacktestRange.LAST_WEEK: timedelta(days=7),
}
DEFAULT_RANGE = BacktestRange.LAST_DAY


@dataclass(frozen=True, slots=True)
class BacktestPlan:
    """A compiled rule, the devices to replay it over and the range [start, end)."""

    rule: CompiledRule
    devices: list[DeviceView]
    start: datetime
    end: datetime


def _invalid(field: str, message: str) -> InvalidInputError:
    return InvalidInputError(message, [{"loc": [field], "msg": message, "type": "value_error"}])


def backtest_range(
    now: datetime,
    *,
    range_: BacktestRange | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> tuple[datetime, datetime]:
    """[start, end) from a ``range`` shorthand or ``since``/``until``; InvalidInputError if unusable.

    ``range`` counts back from ``until`` (default: now); without ``range`` or ``since`` the range
    is the last day. ``until`` in the future is taken as now: a backtest replays what happened.
    """
    for name, value in (("since", since), ("until", until)):
        if value is not None and value.tzinfo is None:
            raise _invalid(name, f"{name} needs a time zone (e.g. 2026-11-27T08:00:00Z)")
    if range_ is not None and since is not None:
        raise _invalid("range", "give either range or since (with an optional until), not both")
    end = min(until, now) if until is not None else now
    start = since if since is not None else end - RANGE_LENGTHS[range_ or DEFAULT_RANGE]
    if start >= end:
        raise _invalid(
            "since", f"the range must end after it starts ({start.isoformat()} .. {end.isoformat()})"
        )
    if end - start > MAX_RANGE:
        raise _invalid(
            "since",
            f"a backtest covers at most {MAX_RANGE.days} days ({start.isoformat()} .. {end.isoformat()} "
            "is longer); narrow since/until",
        )
    return start, end


async def plan_backtest(
    scope: TenantScope,
    document: RuleDocument,
    start: datetime,
    end: datetime,
    *,
    timezone: tzinfo,
    rule_id: str = "draft",
    version: int = 0,
    device_ids: Sequence[str] | None = None,
    allow_private_webhooks: bool = False,
) -> BacktestPlan:
    """Compile ``document`` against the tenant's catalogue and pick the devices to replay.

    With ``device_ids``, those devices (each must be the tenant's; the ones the rule's selector
    does not pick are reported as skipped by the backtest); without, every device the selector
    picks, refused when there are more than ``MAX_DEVICES``. RuleValidationError when the
    document does not compile, InvalidInputError for unknown devices or too many.
    """
    # No side effect, so the channels a notify action names need not exist (yet) to replay it.
    context = await compile_context(
        scope, document, allow_private_webhooks=allow_private_webhooks, check_channels=False
    )
    rule = compile_rule(document, context, rule_id=rule_id, version=version)
    repo = DeviceRepository(scope)
    if device_ids is not None:
        wanted = list(dict.fromkeys(device_ids))
        if len(wanted) > MAX_DEVICES:
            raise _invalid("device_ids", f"a backtest replays at most {MAX_DEVICES} devices")
        devices = []
        unknown = []
        for index, device_id in enumerate(wanted):
            try:
                devices.append(await repo.get(device_id))
            except NotFoundError:
                unknown.append({"loc": ["device_ids", index], "msg": f"unknown device {device_id!r}"})
        if unknown:
            names = ", ".join(str(e["msg"]).removeprefix("unknown device ") for e in unknown)
            raise InvalidInputError(
                f"unknown device(s) {names}", [{**e, "type": "value_error"} for e in unknown]
            )
    else:
        selector = document.devices
        if selector.ids:
            devices = [await repo.get(device_id) for device_id in selector.ids]
        else:
            page = await repo.list(
                DeviceFilter(type_id=selector.type, labels=selector.labels), limit=MAX_DEVICES + 1
            )
            devices = page.items
        devices = [d for d in devices if rule.selects(d.id, d.type_id, d.labels)]
        if len(devices) > MAX_DEVICES:
            raise _invalid(
                "device_ids",
                f"the rule selects more than {MAX_DEVICES} devices; a backtest replays at most "
                f"{MAX_DEVICES}: name them in device_ids",
            )
    views = [DeviceView(d.id, d.type_id, d.labels, timezone) for d in devices]
    return BacktestPlan(rule, views, start, end)
