"""Notification channels: pick a kind from Apprise's list, fill its fields, save, test.

A channel's URLs are secrets (sealed at rest by the notifications service): the page builds the
URL from the kind's template and fields on the server, stores it through the same repository as
the API, and only ever shows the previews the repository keeps.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request, Response

from editor.forms import FormValues
from editor.session import EditorUser
from editor.web import PREFIX, EditorRoute, User, render, services
from model.errors import InvalidInputError, PermissionDeniedError
from notifiers import gateway
from notifiers.channels import ChannelRepository
from storage.database import TenantScope
from storage.tables import notification_channels

router = APIRouter(route_class=EditorRoute)
_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")
# Parts that are written into the URL as they are (Apprise checks them); everything else is quoted.
_RAW = {"host", "port", "path"}


@lru_cache(maxsize=1)
def kinds() -> tuple[dict[str, Any], ...]:
    """Apprise's channel kinds (its own description of its plugins), loaded once."""
    return tuple(gateway.channel_kinds())


def kind(service: str) -> dict[str, Any] | None:
    """One kind by service name."""
    return next((k for k in kinds() if k["service"] == service), None)


async def channel_names(scope: TenantScope) -> list[str]:
    """The tenant's channel names (what a rule's Notify action refers to)."""
    stmt = scope.select(notification_channels, notification_channels.c.name).order_by(
        notification_channels.c.name
    )
    return [str(n) for n in (await scope.conn.execute(stmt)).scalars()]


def template_fields(service_kind: dict[str, Any], template: str) -> list[dict[str, Any]]:
    """The inputs a URL template needs, described by Apprise's tokens."""
    tokens = {t["name"]: t for t in service_kind["tokens"]}
    fields = []
    for name in _PLACEHOLDER.findall(template):
        token = tokens.get(name, {})
        fields.append(
            {
                "name": name,
                "label": token.get("label") or name.replace("_", " ").capitalize(),
                "private": bool(token.get("private")),
                "required": name == "schema" or bool(token.get("required")),
                "list": str(token.get("type", "")).startswith("list"),
                "choices": service_kind["schemes"] if name == "schema" else None,
            }
        )
    return fields


def build_url(template: str, values: FormValues) -> str:
    """The Apprise URL: each placeholder filled from its field (quoted unless it is structural)."""

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        value = values.get(f"t|{name}").strip()
        if not value:
            raise InvalidInputError(f"fill in {name.replace('_', ' ')}")
        if name == "schema" or name in _RAW:
            return value
        if name == "targets":
            return "/".join(quote(part.strip(), safe="@+") for part in value.split(",") if part.strip())
        return quote(value, safe="")

    return _PLACEHOLDER.sub(fill, template)


def _require_write(user: EditorUser) -> None:
    if not user.can("channels:write"):
        raise PermissionDeniedError("your role can look at channels but not change them")


async def _page(request: Request, user: User, **extra: Any) -> Response:
    notifier = services(request).require_notifier()
    async with services(request).database.tenant(user.tenant_id) as scope:
        channels = await ChannelRepository(scope, notifier.sealer).list()
    context = {"user": user, "section": "channels", "channels": channels, "kinds": kinds(), **extra}
    return render(request, "channels/list.html", context)


@router.get(f"{PREFIX}/channels", include_in_schema=False)
async def channels_page(request: Request, user: User) -> Response:
    """The tenant's channels and the form for a new one."""
    return await _page(request, user)


@router.get(f"{PREFIX}/channels/fields", include_in_schema=False)
async def channel_fields(request: Request, user: User, service: str = "", template: int = 0) -> Response:
    """The fields of one kind and URL form (swapped into the new-channel form)."""
    found = kind(service)
    if found is None or not found["templates"]:
        return render(request, "channels/_fields.html", {"kind": None})
    index = template if 0 <= template < len(found["templates"]) else 0
    chosen = found["templates"][index]
    return render(
        request,
        "channels/_fields.html",
        {"kind": found, "index": index, "template": chosen, "fields": template_fields(found, chosen)},
    )


@router.post(f"{PREFIX}/channels", include_in_schema=False)
async def create_channel(request: Request, user: User) -> Response:
    """Build the URL, let the repository check and seal it, store the channel."""
    _require_write(user)
    form = await request.form()
    values = FormValues((k, v) for k, v in form.multi_items() if isinstance(v, str))
    found = kind(values.get("service"))
    if found is None:
        raise InvalidInputError("choose a kind of channel")
    index = int(values.get("template")) if values.get("template").isdigit() else 0
    if not 0 <= index < len(found["templates"]):
        raise InvalidInputError("choose a URL form")
    url = build_url(found["templates"][index], values)
    ctx = services(request)
    notifier = ctx.require_notifier()
    async with ctx.database.tenant(user.tenant_id) as scope:
        channel = await ChannelRepository(scope, notifier.sealer).create(
            values.get("name").strip(),
            [url],
            description=values.get("description").strip(),
            allow_private=ctx.allow_private_webhooks,
        )
    notifier.channels_changed(user.tenant_id)
    return Response(
        status_code=204, headers={"HX-Redirect": f"{PREFIX}/channels?created={quote(channel.name)}"}
    )


@router.post(f"{PREFIX}/channels/{{channel_id}}/test", include_in_schema=False)
async def test_channel(request: Request, channel_id: str, user: User) -> Response:
    """Send one test message now; say what each service answered."""
    _require_write(user)
    notifier = services(request).require_notifier()
    results = await notifier.test_channel(
        user.tenant_id, channel_id, "flatgigs test notification", "If you can read this, the channel works."
    )
    return render(request, "channels/_test.html", {"results": results})
