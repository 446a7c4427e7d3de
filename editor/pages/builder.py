"""The rule builder: a rule's page, validation as you type, structural edits, save, diff, publish,
restore, and the backtest of the draft."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request, Response

from devices.registry import DeviceTypeRepository
from editor import diagram
from editor.draft import (
    Checked,
    apply_edit,
    blank_document,
    check,
    format_labels,
    node_views,
    palette,
    read_form,
    skeleton,
    throttle_text,
    walk,
)
from editor.forms import FormContext, FormValues, dom_id, input_name
from editor.pages.channels import channel_names
from editor.selection import count_matching
from editor.session import EditorUser
from editor.web import PREFIX, Editor, EditorRoute, User, render, services
from engine.errors import RuleProblem
from engine.rules import Rule, RuleRepository, RuleVersion, diff
from model.devices import DeviceType
from model.errors import ConflictError, InvalidInputError
from storage.database import TenantScope

router = APIRouter(route_class=EditorRoute)
NEW = "new"


@dataclass(slots=True)
class ErrorIndex:
    """Problems by where the builder shows them: under a field, on a node, or in general."""

    problems: list[RuleProblem]
    field_slots: dict[str, list[str]] = field(default_factory=dict)
    node_slots: dict[str, list[str]] = field(default_factory=dict)

    def node(self, path: str) -> list[RuleProblem]:
        """Problems of one node not tied to one of its fields."""
        return [p for p in self.problems if p.path == path and not _option(p)]

    def field(self, path: str, name: str) -> list[RuleProblem]:
        """Problems of one option of one node."""
        return [p for p in self.problems if p.path == path and _option(p) == name]

    def top(self, name: str) -> list[RuleProblem]:
        """Problems of a rule-level field (``name``, ``devices``, ``throttle``)."""
        if name in ("devices", "throttle"):
            return [p for p in self.problems if p.path == name]
        return [p for p in self.problems if p.path == "" and (p.field or "").split(".")[0] == name]

    @property
    def paths(self) -> set[str]:
        """Paths that have a problem (for the diagram)."""
        return {p.path for p in self.problems}


def _option(problem: RuleProblem) -> str | None:
    if problem.field and problem.field.startswith("options."):
        return problem.field.split(".")[1]
    return None


def message(problem: RuleProblem) -> str:
    """A problem as the builder says it."""
    return problem.message


def _slug(path: str) -> str:
    return dom_id(path)


async def _types(scope: TenantScope) -> list[DeviceType]:
    return await DeviceTypeRepository(scope).list()


def _form_context(doc: dict[str, Any], types: list[DeviceType], channels: list[str]) -> FormContext:
    type_id = (doc.get("devices") or {}).get("type")
    metrics: dict[str, None] = {}
    for t in types:
        if not type_id or t.id == type_id:
            for m in t.metrics:
                metrics.setdefault(m.name, None)
    return FormContext(metrics=sorted(metrics), channels=channels)


async def _builder_context(
    request: Request,
    scope: TenantScope,
    user: EditorUser,
    doc: dict[str, Any],
    checked: Checked,
    *,
    rule: Rule | None,
    base_version: int | None,
    focus: str | None = None,
    highlight: set[str] | None = None,
) -> dict[str, Any]:
    types = await _types(scope)
    count = await count_matching(scope, doc.get("devices") or {})
    errors = ErrorIndex(checked.problems)
    return {
        "user": user,
        "section": "rules",
        "rule": rule,
        "doc": doc,
        "skeleton": skeleton(doc),
        "base_version": base_version,
        "base": f"{PREFIX}/rules/{rule.id if rule else NEW}",
        "types": types,
        "views": node_views(doc, _form_context(doc, types, await channel_names(scope))),
        "palettes": {s: palette(s) for s in ("when", "if", "then")},
        "errors": errors,
        "checked": checked,
        "device_count": count,
        "labels_text": format_labels((doc.get("devices") or {}).get("labels") or {}),
        "ids_text": ", ".join((doc.get("devices") or {}).get("ids") or []),
        "throttle_text": throttle_text(doc),
        "diagram": diagram.layout(doc, errors=errors.paths, highlight=highlight or set(), device_count=count),
        "editable": user.can_edit_rules,
        "focus": focus,
        "slug": _slug,
        "input_name": input_name,
        "node_paths": [p for p, _ in walk(doc)],
    }


async def validate_draft(
    request: Request, scope: TenantScope, doc: dict[str, Any], form_problems: list[RuleProblem]
) -> Checked:
    """Validate a draft with the request's webhook policy."""
    return await check(
        scope, doc, form_problems, allow_private_webhooks=services(request).allow_private_webhooks
    )


async def _form(request: Request) -> FormValues:
    form = await request.form()
    return FormValues((k, v) for k, v in form.multi_items() if isinstance(v, str))


# --- pages ------------------------------------------------------------------------------------------


@router.get(f"{PREFIX}/rules/new", include_in_schema=False)
async def new_rule(request: Request, user: Editor) -> Response:
    """An empty builder."""
    doc = blank_document()
    async with services(request).database.tenant(user.tenant_id) as scope:
        checked = Checked()
        ctx = await _builder_context(request, scope, user, doc, checked, rule=None, base_version=None)
    return render(request, "rules/page.html", ctx)


@router.get(f"{PREFIX}/rules/{{rule_id}}", include_in_schema=False)
async def rule_page(request: Request, rule_id: str, user: User, highlight: str = "") -> Response:
    """A rule: its latest version in the builder, versions, diff, backtest and live traces."""
    async with services(request).database.tenant(user.tenant_id) as scope:
        repo = RuleRepository(scope)
        rule = await repo.get(rule_id)
        version = await repo.version(rule_id, rule.latest_version)
        versions = await repo.versions(rule_id)
        doc = version.document
        checked = await validate_draft(request, scope, doc, [])
        ctx = await _builder_context(
            request,
            scope,
            user,
            doc,
            checked,
            rule=rule,
            base_version=rule.latest_version,
            highlight={highlight} if highlight else None,
        )
    ctx["versions"] = versions
    ctx["flash"] = request.query_params.get("flash", "")[:200]
    return render(request, "rules/page.html", ctx)


# --- validation as you type and structural edits -----------------------------------------------------


async def _rule_or_none(scope: TenantScope, rule_id: str) -> Rule | None:
    return None if rule_id == NEW else await RuleRepository(scope).get(rule_id)


@router.post(f"{PREFIX}/rules/{{rule_id}}/check", include_in_schema=False)
async def check_draft(request: Request, rule_id: str, user: User) -> Response:
    """Out-of-band fragments: the diagram, the problem list, each node's and field's errors."""
    form = await _form(request)
    doc, form_problems = read_form(form)
    async with services(request).database.tenant(user.tenant_id) as scope:
        rule = await _rule_or_none(scope, rule_id)
        checked = await validate_draft(request, scope, doc, form_problems)
        ctx = await _builder_context(request, scope, user, doc, checked, rule=rule, base_version=None)
    return render(request, "rules/_check.html", ctx)


@router.post(f"{PREFIX}/rules/{{rule_id}}/edit", include_in_schema=False)
async def edit_draft(request: Request, rule_id: str, user: Editor) -> Response:
    """Add or remove a node; answers the whole builder, with the diagram out of band."""
    form = await _form(request)
    doc, form_problems = read_form(form)
    try:
        focus = apply_edit(doc, form.get("op"), form)
    except (KeyError, IndexError, ValueError):
        focus = None
    async with services(request).database.tenant(user.tenant_id) as scope:
        rule = await _rule_or_none(scope, rule_id)
        checked = await validate_draft(request, scope, doc, form_problems)
        base = int(form.get("base_version")) if form.get("base_version").isdigit() else None
        ctx = await _builder_context(
            request, scope, user, doc, checked, rule=rule, base_version=base, focus=focus
        )
    ctx["oob"] = True
    return render(request, "rules/_builder.html", ctx)


# --- save, publish, restore, diff -------------------------------------------------------------------


@router.post(f"{PREFIX}/rules/{{rule_id}}/save", include_in_schema=False)
async def save(request: Request, rule_id: str, user: Editor) -> Response:
    """Save the draft as a new version (a new rule for ``new``); refused while it has problems."""
    form = await _form(request)
    doc, form_problems = read_form(form)
    comment = form.get("comment")[:500]
    async with services(request).database.tenant(user.tenant_id) as scope:
        rule = await _rule_or_none(scope, rule_id)
        checked = await validate_draft(request, scope, doc, form_problems)
        base = int(form.get("base_version")) if form.get("base_version").isdigit() else None
        if not checked.valid or checked.document is None:
            ctx = await _builder_context(request, scope, user, doc, checked, rule=rule, base_version=base)
            ctx["oob"] = True
            ctx["save_error"] = f"Not saved: the rule has {len(checked.problems)} problem(s) to fix first."
            return render(request, "rules/_builder.html", ctx)
        repo = RuleRepository(scope)
        try:
            if rule is None:
                rule, version = await repo.create(checked.document, author=user.user_id, comment=comment)
            else:
                rule, version = await repo.save(
                    rule.id, checked.document, base_version=base or 0, author=user.user_id, comment=comment
                )
        except ConflictError as exc:
            ctx = await _builder_context(request, scope, user, doc, checked, rule=rule, base_version=base)
            ctx["oob"] = True
            ctx["save_error"] = f"Not saved: {exc.detail}"
            return render(request, "rules/_builder.html", ctx)
    return _redirect(rule.id, f"Saved version {version.version}.")


def _redirect(rule_id: str, flash: str) -> Response:
    from urllib.parse import quote

    return Response(
        status_code=204, headers={"HX-Redirect": f"{PREFIX}/rules/{rule_id}?flash={quote(flash)}"}
    )


@router.post(f"{PREFIX}/rules/{{rule_id}}/publish", include_in_schema=False)
async def publish(request: Request, rule_id: str, user: Editor) -> Response:
    """Publish a version (default: the latest) after compiling it again, as the API does."""
    form = await _form(request)
    ctx = services(request)
    async with ctx.database.tenant(user.tenant_id) as scope:
        repo = RuleRepository(scope)
        rule = await repo.get(rule_id)
        wanted = int(form.get("version")) if form.get("version").isdigit() else rule.latest_version
        version = await repo.version(rule_id, wanted)
        checked = await validate_draft(request, scope, version.document, [])
        if not checked.valid:
            raise InvalidInputError(
                "this version no longer compiles: " + "; ".join(str(p) for p in checked.problems[:5])
            )
        await repo.publish(rule_id, version.version)
    await ctx.rules_changed(user.tenant_id, rule_id)
    return _redirect(rule_id, f"Published version {version.version}; it runs now.")


@router.post(f"{PREFIX}/rules/{{rule_id}}/restore", include_in_schema=False)
async def restore(request: Request, rule_id: str, user: Editor) -> Response:
    """A new version with an earlier version's document (publish it to make it run)."""
    form = await _form(request)
    if not form.get("version").isdigit():
        raise InvalidInputError("choose a version to restore")
    async with services(request).database.tenant(user.tenant_id) as scope:
        _, version = await RuleRepository(scope).restore(
            rule_id, int(form.get("version")), author=user.user_id
        )
    return _redirect(
        rule_id, f"Restored version {form.get('version')} as version {version.version} (not published yet)."
    )


@router.get(f"{PREFIX}/rules/{{rule_id}}/diff", include_in_schema=False)
async def diff_page(request: Request, rule_id: str, user: User) -> Response:
    """Changes from the published version (or version 1) to the latest."""
    async with services(request).database.tenant(user.tenant_id) as scope:
        repo = RuleRepository(scope)
        rule = await repo.get(rule_id)
        old_v = rule.published_version or 1
        old: RuleVersion = await repo.version(rule_id, old_v)
        new: RuleVersion = await repo.version(rule_id, rule.latest_version)
    changes = diff(old.document, new.document)
    return render(
        request,
        "rules/_diff.html",
        {"changes": changes, "from_version": old_v, "to_version": rule.latest_version, "rule": rule},
    )
