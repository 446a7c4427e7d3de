"""The alarms page: active alarms, live, with acknowledge and clear."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from editor.pages.live import active_alarms
from editor.web import PREFIX, EditorRoute, Operator, User, render, services

router = APIRouter(route_class=EditorRoute)


@router.get(f"{PREFIX}/alarms", include_in_schema=False)
async def alarms_page(request: Request, user: User, rule: str = "") -> Response:
    """Active alarms, newest first; the table follows the alarm stream."""
    items = await active_alarms(request, user.tenant_id, rule[:40])
    return render(
        request, "alarms/list.html", {"user": user, "section": "alarms", "alarms": items, "rule": rule[:40]}
    )


@router.post(f"{PREFIX}/alarms/{{alarm_id}}/acknowledge", include_in_schema=False)
async def acknowledge(request: Request, alarm_id: str, user: Operator) -> Response:
    """Acknowledge (idempotent); answers the updated row."""
    alarm = await services(request).alarm_service().acknowledge(user.tenant_id, alarm_id, by=user.user_id)
    return render(request, "alarms/_row.html", {"alarm": alarm, "user": user})


@router.post(f"{PREFIX}/alarms/{{alarm_id}}/clear", include_in_schema=False)
async def clear(request: Request, alarm_id: str, user: Operator) -> Response:
    """Clear by hand (idempotent); the row goes away."""
    await services(request).alarm_service().clear(user.tenant_id, alarm_id, by=user.user_id)
    return Response(content="", media_type="text/html")
