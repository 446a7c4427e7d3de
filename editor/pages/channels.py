"""Notification channels: listed here once the notifications work lands (see the page's note)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from editor.web import PREFIX, EditorRoute, User, render

router = APIRouter(route_class=EditorRoute)


@router.get(f"{PREFIX}/channels", include_in_schema=False)
async def channels_page(request: Request, user: User) -> Response:
    """The tenant's notification channels."""
    return render(request, "channels.html", {"user": user, "section": "channels"})
