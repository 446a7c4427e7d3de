"""Rules: create, save versions, validate, publish, diff, restore, enable; node types and schema."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response, status
from pydantic import BaseModel, Field

from api.auth import Principal, require
from api.context import api_context
from api.problems import PROBLEM_RESPONSES
from api.routers._schema import RequestBody
from engine.compiler import compile_rule
from engine.context import compile_context
from engine.document import RuleDocument
from engine.registry import REGISTRY
from engine.rules import Rule, RuleRepository, RuleStatus, RuleVersion, diff
from storage.database import TenantScope

router = APIRouter(tags=["rules"], responses=PROBLEM_RESPONSES)


class RuleOut(BaseModel):
    """A rule as listed."""

    id: str
    name: str
    status: RuleStatus
    enabled: bool
    latest_version: int
    published_version: int | None
    invalid_reason: str | None
    last_fired_at: datetime | None
    created_at: datetime
    updated_at: datetime


class VersionOut(BaseModel):
    """One saved version."""

    version: int
    author: str
    comment: str
    created_at: datetime
    document: dict[str, Any] | None = None


class RuleDetail(RuleOut):
    """A rule with the document of its latest version."""

    document: dict[str, Any]


class RuleIn(RequestBody):
    """A new rule."""

    document: RuleDocument
    comment: str = Field(default="", max_length=500)


class RuleSave(RequestBody):
    """A new version, based on the version the editor loaded (stale bases get 409)."""

    document: RuleDocument
    base_version: int = Field(ge=1)
    comment: str = Field(default="", max_length=500)


class VersionRef(RequestBody):
    """A version to publish or restore (publish defaults to the latest)."""

    version: int | None = Field(default=None, ge=1)


class Validated(BaseModel):
    """The outcome of validating a draft."""

    valid: bool
    metrics: list[str]


class Change(BaseModel):
    """One difference between two versions."""

    path: str
    op: str
    old: Any = None
    new: Any = None


class DiffOut(BaseModel):
    """The differences from one version to another."""

    from_version: int
    to_version: int
    changes: list[Change]


class NodeTypeOut(BaseModel):
    """A node type the editor's palettes and forms are built from."""

    key: str
    kind: str
    version: int
    title: str
    description: str
    wraps: bool
    options_schema: dict[str, Any]
    examples: list[dict[str, Any]]


def _out(rule: Rule) -> dict[str, Any]:
    return {
        "id": rule.id,
        "name": rule.name,
        "status": rule.status,
        "enabled": rule.enabled,
        "latest_version": rule.latest_version,
        "published_version": rule.published_version,
        "invalid_reason": rule.invalid_reason,
        "last_fired_at": rule.last_fired_at,
        "created_at": rule.created_at,
        "updated_at": rule.updated_at,
    }


def _detail(rule: Rule, version: RuleVersion) -> RuleDetail:
    return RuleDetail(**_out(rule), document=version.document)


def _author(principal: Principal) -> str:
    return principal.user_id or f"token:{principal.token_id}"


async def _check(request: Request, scope: TenantScope, document: RuleDocument) -> list[str]:
    context = await compile_context(
        scope, document, allow_private_webhooks=api_context(request).allow_private_webhooks
    )
    compiled = compile_rule(document, context)
    return sorted(compiled.metrics or [])


@router.get("/rule-nodes", summary="Node types for triggers, conditions and actions")
async def node_types(_: Annotated[Principal, Depends(require("rules:read"))]) -> list[NodeTypeOut]:
    """Every registered node type with its options schema (forms are generated from it)."""
    return [
        NodeTypeOut(
            key=t.key,
            kind=t.kind.value,
            version=t.version,
            title=t.title,
            description=t.description,
            wraps=t.wraps,
            options_schema=t.options_schema(),
            examples=list(t.examples),
        )
        for t in REGISTRY
    ]


@router.get("/rules/schema", summary="JSON Schema of rule documents")
async def rule_schema(_: Annotated[Principal, Depends(require("rules:read"))]) -> dict[str, Any]:
    """The schema every saved rule document is validated against (node options: see /rule-nodes)."""
    return RuleDocument.model_json_schema(by_alias=True)


@router.post("/rules/validate", summary="Validate a draft without saving")
async def validate_rule(
    request: Request, body: RuleIn, principal: Annotated[Principal, Depends(require("rules:read"))]
) -> Validated:
    """200 when the rule compiles; 422 with every problem and its node path otherwise."""
    async with api_context(request).database.tenant(principal.tenant) as scope:
        metrics = await _check(request, scope, body.document)
    return Validated(valid=True, metrics=metrics)


@router.get("/rules", summary="List rules")
async def list_rules(
    request: Request,
    principal: Annotated[Principal, Depends(require("rules:read"))],
    q: Annotated[str | None, Query(max_length=100, description="Text in the name.")] = None,
    status_: Annotated[RuleStatus | None, Query(alias="status")] = None,
) -> list[RuleOut]:
    """The tenant's rules by name, with status (draft, published, disabled, invalid)."""
    async with api_context(request).database.tenant(principal.tenant) as scope:
        found = await RuleRepository(scope).list(text=q)
    return [RuleOut(**_out(r)) for r in found if status_ is None or r.status is status_]


@router.post("/rules", status_code=status.HTTP_201_CREATED, summary="Create a rule")
async def create_rule(
    request: Request,
    response: Response,
    body: RuleIn,
    principal: Annotated[Principal, Depends(require("rules:write"))],
) -> RuleDetail:
    """Validate and save version 1 as a draft (publish it to make it run)."""
    async with api_context(request).database.tenant(principal.tenant) as scope:
        await _check(request, scope, body.document)
        rule, version = await RuleRepository(scope).create(
            body.document, author=_author(principal), comment=body.comment
        )
    response.headers["Location"] = f"{request.url.path}/{rule.id}"
    return _detail(rule, version)


@router.get("/rules/{rule_id}", summary="Read a rule")
async def get_rule(
    request: Request, rule_id: str, principal: Annotated[Principal, Depends(require("rules:read"))]
) -> RuleDetail:
    """The rule and its latest document; 404 for an unknown or foreign id."""
    async with api_context(request).database.tenant(principal.tenant) as scope:
        repo = RuleRepository(scope)
        rule = await repo.get(rule_id)
        return _detail(rule, await repo.version(rule_id, rule.latest_version))


@router.put("/rules/{rule_id}", summary="Save a new version")
async def save_rule(
    request: Request,
    rule_id: str,
    body: RuleSave,
    principal: Annotated[Principal, Depends(require("rules:write"))],
) -> RuleDetail:
    """A new immutable version; 409 if ``base_version`` is not the latest (no lost updates)."""
    async with api_context(request).database.tenant(principal.tenant) as scope:
        repo = RuleRepository(scope)
        await repo.get(rule_id)
        await _check(request, scope, body.document)
        rule, version = await repo.save(
            rule_id,
            body.document,
            base_version=body.base_version,
            author=_author(principal),
            comment=body.comment,
        )
    return _detail(rule, version)


@router.delete("/rules/{rule_id}", status_code=status.HTTP_204_NO_CONTENT, summary="Delete a rule")
async def delete_rule(
    request: Request, rule_id: str, principal: Annotated[Principal, Depends(require("rules:write"))]
) -> None:
    """Delete the rule and its history."""
    ctx = api_context(request)
    async with ctx.database.tenant(principal.tenant) as scope:
        await RuleRepository(scope).delete(rule_id)
    await ctx.rules_changed(principal.tenant, rule_id)


@router.get("/rules/{rule_id}/versions", summary="List a rule's versions")
async def list_versions(
    request: Request, rule_id: str, principal: Annotated[Principal, Depends(require("rules:read"))]
) -> list[VersionOut]:
    """Every version, newest first, with author and time."""
    async with api_context(request).database.tenant(principal.tenant) as scope:
        versions = await RuleRepository(scope).versions(rule_id)
    return [
        VersionOut(version=v.version, author=v.author, comment=v.comment, created_at=v.created_at)
        for v in versions
    ]


@router.get("/rules/{rule_id}/versions/{version}", summary="Read one version")
async def get_version(
    request: Request,
    rule_id: str,
    version: int,
    principal: Annotated[Principal, Depends(require("rules:read"))],
) -> VersionOut:
    """One version with its document."""
    async with api_context(request).database.tenant(principal.tenant) as scope:
        v = await RuleRepository(scope).version(rule_id, version)
    return VersionOut(
        version=v.version, author=v.author, comment=v.comment, created_at=v.created_at, document=v.document
    )


@router.get("/rules/{rule_id}/diff", summary="Compare two versions")
async def diff_versions(
    request: Request,
    rule_id: str,
    principal: Annotated[Principal, Depends(require("rules:read"))],
    from_: Annotated[
        int | None, Query(alias="from", ge=1, description="Default: the published version.")
    ] = None,
    to: Annotated[int | None, Query(ge=1, description="Default: the latest version.")] = None,
) -> DiffOut:
    """Changes by document path (``if/0/options/value``: changed from -10 to -8)."""
    async with api_context(request).database.tenant(principal.tenant) as scope:
        repo = RuleRepository(scope)
        rule = await repo.get(rule_id)
        old_v = from_ or rule.published_version or 1
        new_v = to or rule.latest_version
        old, new = await repo.version(rule_id, old_v), await repo.version(rule_id, new_v)
    return DiffOut(
        from_version=old_v, to_version=new_v, changes=[Change(**c) for c in diff(old.document, new.document)]
    )


@router.post("/rules/{rule_id}/publish", summary="Publish a version")
async def publish_rule(
    request: Request,
    rule_id: str,
    body: VersionRef,
    principal: Annotated[Principal, Depends(require("rules:write"))],
) -> RuleOut:
    """Make a version (default: the latest) the one that runs, after compiling it again."""
    ctx = api_context(request)
    async with ctx.database.tenant(principal.tenant) as scope:
        repo = RuleRepository(scope)
        rule = await repo.get(rule_id)
        version = await repo.version(rule_id, body.version or rule.latest_version)
        await _check(request, scope, RuleDocument.model_validate(version.document))
        rule = await repo.publish(rule_id, version.version)
    await ctx.rules_changed(principal.tenant, rule_id)
    return RuleOut(**_out(rule))


@router.post("/rules/{rule_id}/restore", summary="Restore an earlier version")
async def restore_rule(
    request: Request,
    rule_id: str,
    body: VersionRef,
    principal: Annotated[Principal, Depends(require("rules:write"))],
) -> RuleDetail:
    """A new version with an earlier version's document (history is never rewritten)."""
    async with api_context(request).database.tenant(principal.tenant) as scope:
        repo = RuleRepository(scope)
        target = body.version or (await repo.get(rule_id)).published_version or 1
        rule, version = await repo.restore(rule_id, target, author=_author(principal))
    return _detail(rule, version)


@router.post("/rules/{rule_id}/enable", summary="Enable a rule")
async def enable_rule(
    request: Request, rule_id: str, principal: Annotated[Principal, Depends(require("rules:write"))]
) -> RuleOut:
    """Let the published version run."""
    return await _set_enabled(request, rule_id, principal, enabled=True)


@router.post("/rules/{rule_id}/disable", summary="Disable a rule")
async def disable_rule(
    request: Request, rule_id: str, principal: Annotated[Principal, Depends(require("rules:write"))]
) -> RuleOut:
    """Stop the rule without unpublishing it."""
    return await _set_enabled(request, rule_id, principal, enabled=False)


async def _set_enabled(request: Request, rule_id: str, principal: Principal, *, enabled: bool) -> RuleOut:
    ctx = api_context(request)
    async with ctx.database.tenant(principal.tenant) as scope:
        rule = await RuleRepository(scope).update(rule_id, {"enabled": enabled})
    await ctx.rules_changed(principal.tenant, rule_id)
    return RuleOut(**_out(rule))


class TraceOut(BaseModel):
    """Why a rule fired or did not, for one device at one moment."""

    id: int
    rule_id: str
    rule_version: int
    device_id: str
    at: datetime
    event: str
    outcome: str
    steps: list[dict[str, Any]]
    actions: list[dict[str, Any]]


@router.get("/rules/{rule_id}/traces", summary="Decision traces of a rule")
async def list_traces(
    request: Request,
    rule_id: str,
    principal: Annotated[Principal, Depends(require("rules:read"))],
    device: Annotated[str | None, Query(max_length=128)] = None,
    outcome: Annotated[
        str | None, Query(max_length=16, description="fired, cleared, throttled, true, false")
    ] = None,
    since: datetime | None = None,
    until: datetime | None = None,
    before: Annotated[int | None, Query(ge=1, description="Older than this trace id (paging).")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[TraceOut]:
    """Newest first: every step with its inputs and result, and what each action did."""
    from engine.store import TraceRepository

    async with api_context(request).database.tenant(principal.tenant) as scope:
        await RuleRepository(scope).get(rule_id)
        rows = await TraceRepository(scope).list(
            rule_id,
            device_id=device,
            outcome=outcome,
            since=since,
            until=until,
            before_id=before,
            limit=limit,
        )
    return [TraceOut(**row) for row in rows]
