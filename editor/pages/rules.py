"""The rules list: status (with the reason of an invalid rule), last fired, open alarms, search,
filter, and enable/disable in place."""

from __future__ import annotations

from typing import Annotated

import sqlalchemy as sa
from fastapi import APIRouter, Query, Request, Response

from editor.web import PREFIX, Editor, EditorRoute, User, is_htmx, render, services
from engine.rules import Rule, RuleRepository, RuleStatus
from storage.database import TenantScope
from storage.tables import alarms

router = APIRouter(route_class=EditorRoute)
PAGE_SIZE = 100


async def open_alarm_counts(scope: TenantScope, rule_ids: list[str] | None = None) -> dict[str, int]:
    """Active alarms per rule, in one grouped query."""
    stmt = (
        scope.select(alarms, alarms.c.rule_id, sa.func.count().label("n"))
        .where(alarms.c.cleared_at.is_(None))
        .group_by(alarms.c.rule_id)
    )
    if rule_ids is not None:
        stmt = stmt.where(alarms.c.rule_id.in_(rule_ids))
    return {row.rule_id: int(row.n) for row in await scope.conn.execute(stmt)}


@router.get(f"{PREFIX}/rules", include_in_schema=False)
async def rules_page(
    request: Request,
    user: User,
    q: Annotated[str, Query(max_length=100)] = "",
    status: Annotated[str, Query(max_length=16)] = "",
    page: Annotated[int, Query(ge=1, le=10_000)] = 1,
) -> Response:
    """Every rule of the tenant, by name; the table alone for HTMX searches."""
    wanted = RuleStatus(status) if status in set(RuleStatus) else None
    async with services(request).database.tenant(user.tenant_id) as scope:
        found = await RuleRepository(scope).list(text=q.strip() or None)
        matching = [r for r in found if wanted is None or r.status is wanted]
        shown = matching[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
        counts = await open_alarm_counts(scope) if shown else {}
    context = {
        "user": user,
        "section": "rules",
        "rules": shown,
        "counts": counts,
        "q": q,
        "status": wanted.value if wanted else "",
        "statuses": list(RuleStatus),
        "total": len(matching),
        "page": page,
        "pages": max(1, -(-len(matching) // PAGE_SIZE)),
    }
    if is_htmx(request) and request.headers.get("hx-target") == "rules-table":
        return render(request, "rules/_table.html", context)
    return render(request, "rules/list.html", context)


async def _set_enabled(request: Request, user: Editor, rule_id: str, *, enabled: bool) -> Response:
    ctx = services(request)
    async with ctx.database.tenant(user.tenant_id) as scope:
        rule: Rule = await RuleRepository(scope).update(rule_id, {"enabled": enabled})
        counts = await open_alarm_counts(scope, [rule_id])
    await ctx.rules_changed(user.tenant_id, rule_id)
    return render(request, "rules/_row.html", {"user": user, "rule": rule, "counts": counts})


@router.post(f"{PREFIX}/rules/{{rule_id}}/enable", include_in_schema=False)
async def enable(request: Request, rule_id: str, user: Editor) -> Response:
    """Let the published version run; answers the updated row."""
    return await _set_enabled(request, user, rule_id, enabled=True)


@router.post(f"{PREFIX}/rules/{{rule_id}}/disable", include_in_schema=False)
async def disable(request: Request, rule_id: str, user: Editor) -> Response:
    """Stop the rule without unpublishing it; answers the updated row."""
    return await _set_enabled(request, user, rule_id, enabled=False)
