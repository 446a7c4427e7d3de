"""Notifications: channels (CRUD, test), channel kinds, template preview, the delivery log, dead
letters (list, re-send) and the tenant's default delivery policy.

Channel URLs are write-only: the API accepts them and answers with previews (scheme and host in
Apprise's privacy form), never the URLs themselves.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response, status
from pydantic import BaseModel, Field

from api.auth import Principal, require
from api.context import api_context
from api.problems import PROBLEM_RESPONSES
from api.routers._schema import PageOut, RequestBody
from model.errors import InvalidInputError
from notifiers import gateway, templates
from notifiers.channels import CHANNEL_NAME_PATTERN, Channel, ChannelRepository
from notifiers.defaults import PolicyDefaults
from notifiers.deliveries import DeliveryLog, DeliveryRecord, DeliveryStatus
from notifiers.policy import DeliveryPolicy, QuietHours

router = APIRouter(prefix="/notifications", tags=["notifications"], responses=PROBLEM_RESPONSES)

ChannelName = Annotated[str, Field(pattern=CHANNEL_NAME_PATTERN, description="What rules refer to.")]
Url = Annotated[str, Field(min_length=1, max_length=gateway.MAX_URL_LENGTH)]


class UrlPreviewOut(BaseModel):
    """What is shown of a channel URL: its service and a preview without secrets."""

    service: str
    preview: str


class ChannelOut(BaseModel):
    """A notification channel. Its URLs are secrets: only previews are returned."""

    id: str
    name: str
    description: str
    urls: list[UrlPreviewOut]
    quiet_hours: QuietHours | None
    created_at: datetime
    updated_at: datetime


class ChannelIn(RequestBody):
    """A new channel: a name, one or more Apprise URLs, optional quiet hours."""

    name: ChannelName
    urls: list[Url] = Field(
        min_length=1, max_length=10, description="Apprise URLs (secrets; never returned)."
    )
    description: str = Field(default="", max_length=1000)
    quiet_hours: QuietHours | None = None


class ChannelPatch(RequestBody):
    """Changes to a channel; ``urls`` replaces all URLs; ``quiet_hours: null`` removes them."""

    name: ChannelName | None = None
    urls: list[Url] | None = Field(default=None, min_length=1, max_length=10)
    description: str | None = Field(default=None, max_length=1000)
    quiet_hours: QuietHours | None = None


class TestIn(RequestBody):
    """The message a channel test sends (defaults say it is a test)."""

    title: str = Field(default="flatgigs test notification", max_length=200)
    body: str = Field(default="If you can read this, the channel works.", max_length=4000)


class TestResultOut(BaseModel):
    """The outcome through one URL of the channel."""

    service: str
    preview: str
    ok: bool
    error: str | None


class TestOut(BaseModel):
    """A channel test: ``ok`` when every URL accepted the message."""

    ok: bool
    results: list[TestResultOut]


class ChannelFieldOut(BaseModel):
    """One field of a channel kind, as Apprise describes it."""

    name: str
    label: str
    type: str
    required: bool
    private: bool
    default: str | int | float | bool | None
    values: list[str] | None


class ChannelKindOut(BaseModel):
    """A kind of channel Apprise can deliver to, with its URL templates and fields."""

    service: str
    schemes: list[str]
    setup_url: str | None
    templates: list[str]
    tokens: list[ChannelFieldOut]
    args: list[ChannelFieldOut]


class PreviewIn(RequestBody):
    """Templates to render with sample data (``context`` overrides or adds variables)."""

    title: str = Field(default="", max_length=200)
    body: str = Field(default="", max_length=4000)
    context: dict[str, Any] = Field(default_factory=dict)


class PreviewOut(BaseModel):
    """The rendered templates."""

    title: str
    body: str


class DeliveryOut(BaseModel):
    """One entry of the delivery log: what went to which channel, when, with what outcome."""

    id: str
    channel_id: str | None
    channel_name: str
    rule_id: str | None
    device_id: str | None
    alarm_type: str | None
    severity: str | None
    kind: str
    title: str
    body: str
    status: DeliveryStatus
    attempts: int
    last_error: str | None
    resent: int
    created_at: datetime
    updated_at: datetime
    sent_at: datetime | None


SAMPLE_CONTEXT: dict[str, Any] = {
    "rule": {"id": "rul_sample", "name": "Freezer too warm"},
    "device": {
        "id": "freezer-12-3",
        "name": "Freezer 3, store 12",
        "type": "freezer",
        "labels": {"region": "north"},
    },
    "values": {"temp": -7.5, "door_open": False},
    "alarm": {"type": "freezer-warm", "severity": "major", "message": "freezer-12-3 is warm"},
    "event": {"kind": "fired", "at": "2026-11-27T02:00:00+00:00"},
    "links": {
        "platform": "https://flatgigs.example.com",
        "alarm": "https://flatgigs.example.com/alarms/alm_sample",
    },
    "notification": {"kind": "fired", "suppressed": 0},
}


def _channel_out(channel: Channel) -> ChannelOut:
    return ChannelOut(
        id=channel.id,
        name=channel.name,
        description=channel.description,
        urls=[UrlPreviewOut(service=u.service, preview=u.preview) for u in channel.urls],
        quiet_hours=channel.quiet_hours,
        created_at=channel.created_at,
        updated_at=channel.updated_at,
    )


def _delivery_out(record: DeliveryRecord) -> DeliveryOut:
    return DeliveryOut(
        id=record.id,
        channel_id=record.channel_id,
        channel_name=record.channel_name,
        rule_id=record.rule_id,
        device_id=record.device_id,
        alarm_type=record.alarm_type,
        severity=record.severity,
        kind=record.kind,
        title=record.title,
        body=record.body,
        status=record.status,
        attempts=record.attempts,
        last_error=record.last_error,
        resent=record.resent,
        created_at=record.created_at,
        updated_at=record.updated_at,
        sent_at=record.sent_at,
    )


# --- channels --------------------------------------------------------------------------------------


@router.get("/channels", summary="List notification channels")
async def list_channels(
    request: Request, principal: Annotated[Principal, Depends(require("channels:read"))]
) -> list[ChannelOut]:
    """The tenant's channels by name, URLs as previews only."""
    notifier = api_context(request).require_notifier()
    async with notifier.database.tenant(principal.tenant) as scope:
        return [_channel_out(c) for c in await ChannelRepository(scope, notifier.sealer).list()]


@router.post("/channels", status_code=status.HTTP_201_CREATED, summary="Create a notification channel")
async def create_channel(
    request: Request, body: ChannelIn, principal: Annotated[Principal, Depends(require("channels:write"))]
) -> ChannelOut:
    """Check the URLs with Apprise (an unknown kind, a missing part, or a loopback/private target
    when FLATGIGS_ALLOW_PRIVATE_WEBHOOKS is off: 422), seal them and store the channel."""
    ctx = api_context(request)
    notifier = ctx.require_notifier()
    async with notifier.database.tenant(principal.tenant) as scope:
        channel = await ChannelRepository(scope, notifier.sealer).create(
            body.name,
            body.urls,
            description=body.description,
            quiet_hours=body.quiet_hours,
            allow_private=ctx.allow_private_webhooks,
        )
    notifier.channels_changed(principal.tenant)
    return _channel_out(channel)


@router.get("/channels/{channel_id}", summary="Read a notification channel")
async def get_channel(
    request: Request, channel_id: str, principal: Annotated[Principal, Depends(require("channels:read"))]
) -> ChannelOut:
    """One channel; 404 for an unknown or foreign id."""
    notifier = api_context(request).require_notifier()
    async with notifier.database.tenant(principal.tenant) as scope:
        return _channel_out(await ChannelRepository(scope, notifier.sealer).get(channel_id))


@router.patch("/channels/{channel_id}", summary="Change a notification channel")
async def update_channel(
    request: Request,
    channel_id: str,
    body: ChannelPatch,
    principal: Annotated[Principal, Depends(require("channels:write"))],
) -> ChannelOut:
    """Rename, replace the URLs (checked as on create), change the description or quiet hours."""
    ctx = api_context(request)
    notifier = ctx.require_notifier()
    given = body.model_fields_set
    async with notifier.database.tenant(principal.tenant) as scope:
        repo = ChannelRepository(scope, notifier.sealer)
        kwargs: dict[str, Any] = {}
        if "quiet_hours" in given:
            kwargs["quiet_hours"] = body.quiet_hours
        channel = await repo.update(
            channel_id,
            name=body.name,
            urls=body.urls,
            description=body.description,
            allow_private=ctx.allow_private_webhooks,
            **kwargs,
        )
    notifier.channels_changed(principal.tenant)
    return _channel_out(channel)


@router.delete(
    "/channels/{channel_id}", status_code=status.HTTP_204_NO_CONTENT, summary="Delete a notification channel"
)
async def delete_channel(
    request: Request, channel_id: str, principal: Annotated[Principal, Depends(require("channels:write"))]
) -> Response:
    """Delete the channel. Rules naming it record ``no_channel`` in the delivery log until changed."""
    notifier = api_context(request).require_notifier()
    async with notifier.database.tenant(principal.tenant) as scope:
        await ChannelRepository(scope, notifier.sealer).delete(channel_id)
    notifier.channels_changed(principal.tenant)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/channels/{channel_id}/test", summary="Send a test notification")
async def test_channel(
    request: Request,
    channel_id: str,
    principal: Annotated[Principal, Depends(require("channels:write"))],
    body: TestIn | None = None,
) -> TestOut:
    """Send one message through every URL of the channel now (one attempt, no retries) and say
    what each service answered. Not written to the delivery log."""
    notifier = api_context(request).require_notifier()
    message = body or TestIn()
    results = await notifier.test_channel(principal.tenant, channel_id, message.title, message.body)
    return TestOut(
        ok=all(r.ok for r in results),
        results=[
            TestResultOut(service=r.service, preview=r.preview, ok=r.ok, error=r.error) for r in results
        ],
    )


@router.get("/channel-kinds", summary="List the kinds of channel")
async def channel_kinds(
    principal: Annotated[Principal, Depends(require("channels:read"))],
    q: Annotated[
        str | None, Query(max_length=100, description="Only kinds whose service or scheme contains this.")
    ] = None,
) -> list[ChannelKindOut]:
    """Every service Apprise can deliver to here, with URL templates and fields, as Apprise
    describes them (the list follows the installed Apprise version)."""
    kinds = gateway.channel_kinds()
    if q:
        needle = q.lower()
        kinds = [k for k in kinds if needle in k["service"].lower() or any(needle in s for s in k["schemes"])]
    return [ChannelKindOut.model_validate(k) for k in kinds]


# --- templates -------------------------------------------------------------------------------------


@router.post("/templates/preview", summary="Render message templates with sample data")
async def preview_templates(
    body: PreviewIn, principal: Annotated[Principal, Depends(require("channels:read"))]
) -> PreviewOut:
    """Check and render a title and body template with sample rule, device, values, alarm and
    links (``context`` overrides them). A bad template answers 422 naming the field and line."""
    context = {**SAMPLE_CONTEXT, **body.context}
    rendered: dict[str, str] = {}
    for field in ("title", "body"):
        source = getattr(body, field)
        try:
            templates.check(source)
            rendered[field] = templates.render(source, context)
        except templates.TemplateProblem as exc:
            raise InvalidInputError(
                f"{field}: {exc}", errors=[{"loc": [field], "msg": exc.reason, "line": exc.line}]
            ) from exc
    return PreviewOut(**rendered)


# --- delivery log and dead letters -----------------------------------------------------------------


@router.get("/deliveries", summary="Read the delivery log")
async def list_deliveries(
    request: Request,
    principal: Annotated[Principal, Depends(require("channels:read"))],
    status_: Annotated[
        list[DeliveryStatus] | None, Query(alias="status", description="Only these (repeatable).")
    ] = None,
    channel: Annotated[str | None, Query(max_length=40, description="Only this channel id.")] = None,
    rule: Annotated[str | None, Query(max_length=40)] = None,
    device: Annotated[str | None, Query(max_length=128)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> PageOut[DeliveryOut]:
    """Newest first: every notification to every channel, with its outcome and attempts."""
    return await _page(request, principal, status_ or [], channel, rule, device, limit, cursor)


@router.get("/deliveries/{delivery_id}", summary="Read one delivery")
async def get_delivery(
    request: Request, delivery_id: str, principal: Annotated[Principal, Depends(require("channels:read"))]
) -> DeliveryOut:
    """One entry of the delivery log; 404 for an unknown or foreign id."""
    notifier = api_context(request).require_notifier()
    await notifier.flush()
    async with notifier.database.tenant(principal.tenant) as scope:
        return _delivery_out(await DeliveryLog(scope, notifier.database.dialect).get(delivery_id))


@router.get("/dead-letters", summary="List notification dead letters")
async def list_dead_letters(
    request: Request,
    principal: Annotated[Principal, Depends(require("channels:read"))],
    channel: Annotated[str | None, Query(max_length=40, description="Only this channel id.")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> PageOut[DeliveryOut]:
    """Deliveries whose every attempt failed (``status: dead``), newest first, with the last error."""
    return await _page(request, principal, [DeliveryStatus.DEAD], channel, None, None, limit, cursor)


@router.post("/dead-letters/{delivery_id}/resend", status_code=status.HTTP_202_ACCEPTED, summary="Re-send")
async def resend_dead_letter(
    request: Request, delivery_id: str, principal: Annotated[Principal, Depends(require("channels:write"))]
) -> DeliveryOut:
    """Queue a dead letter again with fresh attempts (409 if it is not dead or its channel is gone).
    Follow its outcome in the delivery log."""
    notifier = api_context(request).require_notifier()
    await notifier.flush()
    return _delivery_out(await notifier.resend(principal.tenant, delivery_id))


async def _page(
    request: Request,
    principal: Principal,
    statuses: list[DeliveryStatus],
    channel: str | None,
    rule: str | None,
    device: str | None,
    limit: int,
    cursor: str | None,
) -> PageOut[DeliveryOut]:
    notifier = api_context(request).require_notifier()
    await notifier.flush()  # read what this process has decided so far
    async with notifier.database.tenant(principal.tenant) as scope:
        page = await DeliveryLog(scope, notifier.database.dialect).list(
            statuses=statuses, channel_id=channel, rule_id=rule, device_id=device, limit=limit, cursor=cursor
        )
    return PageOut[DeliveryOut](items=[_delivery_out(r) for r in page.items], next_cursor=page.next_cursor)


# --- default policy --------------------------------------------------------------------------------


@router.get("/policy", summary="Read the default delivery policy")
async def get_policy(
    request: Request, principal: Annotated[Principal, Depends(require("channels:read"))]
) -> DeliveryPolicy:
    """The tenant's defaults for every notify action (a rule's ``policy`` overrides single fields)."""
    notifier = api_context(request).require_notifier()
    async with notifier.database.tenant(principal.tenant) as scope:
        return await PolicyDefaults(scope, notifier.database.dialect).get()


@router.put("/policy", summary="Replace the default delivery policy")
async def put_policy(
    request: Request,
    body: DeliveryPolicy,
    principal: Annotated[Principal, Depends(require("channels:write"))],
) -> DeliveryPolicy:
    """Replace the tenant's defaults (omitted fields take the built-in defaults)."""
    notifier = api_context(request).require_notifier()
    async with notifier.database.tenant(principal.tenant) as scope:
        policy = await PolicyDefaults(scope, notifier.database.dialect).put(body)
    notifier.policy_changed(principal.tenant)
    return policy
