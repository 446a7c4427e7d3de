"""The backtest of the draft in the builder: replay stored readings, chart the result."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request, Response

from editor.charts import Chart, line_chart
from editor.draft import read_form, walk
from editor.forms import FormValues
from editor.pages.builder import validate_draft
from editor.selection import matching_views
from editor.web import PREFIX, EditorRoute, User, render, services
from engine.backtest import BacktestReport, DeviceReport, backtest
from storage.tenancy import TenantRepository

router = APIRouter(route_class=EditorRoute)
RANGES = {"1h": timedelta(hours=1), "1d": timedelta(days=1), "7d": timedelta(days=7)}
MAX_DEVICES = 500


def levels(doc: dict[str, Any], metric: str) -> list[tuple[float, str, str]]:
    """Threshold and clear levels of the conditions that read ``metric``."""
    found: list[tuple[float, str, str]] = []
    for _, node in walk(doc):
        options = node.get("options") or {}
        if options.get("metric") != metric:
            continue
        if isinstance(options.get("value"), int | float):
            found.append((float(options["value"]), f"threshold {options['value']:g}", "threshold"))
        if isinstance(options.get("clear_at"), int | float):
            found.append((float(options["clear_at"]), f"clears at {options['clear_at']:g}", "clear"))
    return found


def _chart_device(report: BacktestReport, wanted: str) -> DeviceReport | None:
    if wanted:
        for device in report.devices:
            if device.device_id == wanted:
                return device
    with_series = [d for d in report.devices if d.series]
    if not with_series:
        return None
    return max(with_series, key=lambda d: (d.fired, d.cleared, d.readings))


def chart_of(report: BacktestReport, device: DeviceReport, doc: dict[str, Any]) -> Chart:
    """The device's series with the rule's levels and its fire/clear moments."""
    assert report.start is not None and report.end is not None and report.metric is not None
    events = [(t.at, "fired", f"fired {t.at:%H:%M:%S}: {t.summary}") for t in device.firings]
    events += [(t.at, "cleared", f"cleared {t.at:%H:%M:%S}") for t in device.clears]
    return line_chart(
        report.metric,
        device.series,
        report.start,
        report.end,
        levels=levels(doc, report.metric),
        events=events,
    )


@router.post(f"{PREFIX}/rules/{{rule_id}}/backtest", include_in_schema=False)
async def run_backtest(request: Request, rule_id: str, user: User) -> Response:
    """Replay the chosen range through the draft; totals, a chart and the first firings."""
    form = await request.form()
    values = FormValues((k, v) for k, v in form.multi_items() if isinstance(v, str))
    doc, form_problems = read_form(values)
    span = RANGES.get(values.get("bt_range"), RANGES["1d"])
    ctx = services(request)
    store = ctx.require_telemetry()
    async with ctx.database.platform() as conn:
        tenant = await TenantRepository(conn).get(user.tenant_id)
    async with ctx.database.tenant(user.tenant_id) as scope:
        checked = await validate_draft(request, scope, doc, form_problems)
        if not checked.valid or checked.compiled is None:
            return render(request, "rules/_backtest.html", {"problems": checked.problems})
        views, truncated = await matching_views(
            scope, doc.get("devices") or {}, tenant.timezone, limit=MAX_DEVICES
        )
    end = datetime.now(UTC).replace(microsecond=0)
    start = end - span
    report = await backtest(checked.compiled, store, views, start, end)
    device = _chart_device(report, values.get("bt_device").strip())
    chart = chart_of(report, device, doc) if device is not None and report.metric else None
    return render(
        request,
        "rules/_backtest.html",
        {
            "problems": [],
            "totals": report.as_dict()["totals"],
            "truncated": truncated,
            "start": start,
            "end": end,
            "chart": chart,
            "chart_device": device.device_id if device else "",
            "firings": report.firings[:10],
        },
    )
