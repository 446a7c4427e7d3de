"""The rule being edited: a rule document carried by the builder form, its edits and its problems.

The form holds the document's shape (node types, nesting) in a hidden ``skeleton`` field and
every option in a field of its own (``o|if/0/0|metric``). Each request rebuilds the document
from both, applies at most one structural edit (add, remove), and validates it with the same
functions the API uses (``RuleDocument``, ``compile_context``, ``compile_rule``), so the editor
can never accept a rule the API would refuse, nor refuse one it would accept.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from editor.forms import (
    FormContext,
    FormField,
    FormValues,
    format_duration,
    node_form,
    parse_duration,
    read_options,
)
from engine.compiler import CompiledRule, compile_rule
from engine.context import compile_context
from engine.document import RuleDocument
from engine.errors import RuleProblem, RuleValidationError
from engine.registry import REGISTRY, NodeKind
from storage.database import TenantScope

SECTIONS = ("when", "if", "then", "else")
GROUP_OPS = ("all", "any", "not")
_SECTION_KIND = {
    "when": NodeKind.TRIGGER,
    "if": NodeKind.CONDITION,
    "then": NodeKind.ACTION,
    "else": NodeKind.ACTION,
}


def blank_document() -> dict[str, Any]:
    """A new rule: any reading of any device triggers it; nothing else yet."""
    return {
        "name": "",
        "description": "",
        "enabled": True,
        "devices": {"ids": [], "type": None, "labels": {}},
        "when": [{"type": "telemetry.received", "options": {}}],
        "if": [],
        "then": [],
        "else": [],
        "fire": "on_change",
        "throttle": {"min_interval_s": 0},
    }


def group_op(node: Any) -> str | None:
    """``all``/``any``/``not`` when ``node`` is a group."""
    if isinstance(node, dict) and len(node) == 1:
        op = str(next(iter(node)))
        if op in GROUP_OPS:
            return op
    return None


def _children(node: dict[str, Any]) -> list[Any]:
    op = group_op(node)
    if op == "not":
        body = node["not"]
        return [] if isinstance(body, list) else [body]
    if op is not None:
        body = node[op]
        return body if isinstance(body, list) else []
    child = node.get("condition")
    return [] if child is None else [child]


def _node(doc: dict[str, Any], path: str) -> Any:
    parts = path.split("/")
    if parts[0] not in SECTIONS or len(parts) < 2:
        raise KeyError(path)
    node = doc[parts[0]][int(parts[1])]
    for part in parts[2:]:
        node = _children(node)[int(part)]
    return node


def walk(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every typed node (not groups) with its path, in document order."""
    for section in SECTIONS:
        for index, node in enumerate(doc.get(section, [])):
            yield from _walk(node, f"{section}/{index}")


def _walk(node: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if not isinstance(node, dict):
        return
    if group_op(node) is None:
        yield path, node
    for index, child in enumerate(_children(node)):
        yield from _walk(child, f"{path}/{index}")


# --- reading the form ---------------------------------------------------------------------------


def _labels(text: str, problems: list[RuleProblem]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            problems.append(RuleProblem("devices", f"{part!r} is not key=value", "labels"))
            continue
        labels[key.strip()] = value.strip()
    return labels


def format_labels(labels: dict[str, str]) -> str:
    """Labels as the builder shows them: ``region=north, store=store-01``."""
    return ", ".join(f"{k}={v}" for k, v in sorted(labels.items()))


def read_form(form: FormValues) -> tuple[dict[str, Any], list[RuleProblem]]:
    """The document the form describes, and problems only the form can have (bad label syntax)."""
    problems: list[RuleProblem] = []
    try:
        doc = json.loads(form.get("skeleton") or "{}")
    except ValueError:
        doc = {}
    if not isinstance(doc, dict):
        doc = {}
    base = blank_document()
    for key, value in base.items():
        doc.setdefault(key, value)
    doc["name"] = form.get("name").strip()
    doc["description"] = form.get("description").strip()
    ids = [i.strip() for i in form.get("dev_ids").split(",") if i.strip()]
    doc["devices"] = {
        "ids": ids,
        "type": form.get("dev_type") or None,
        "labels": _labels(form.get("dev_labels"), problems),
    }
    if form.get("fire") in ("on_change", "always"):
        doc["fire"] = form.get("fire")
    throttle = form.get("throttle").strip()
    doc["throttle"] = {"min_interval_s": parse_duration(throttle) if throttle else 0}
    for path, node in walk(doc):
        node_type = REGISTRY.get(str(node.get("type")))
        if node_type is not None and f"n|{path}" in form:
            node["options"] = read_options(node_type, path, form)
    return doc, problems


def skeleton(doc: dict[str, Any]) -> str:
    """The hidden field's value: the document's shape (options travel in their own fields)."""
    shape = copy.deepcopy(doc)
    for _, node in walk(shape):
        node["options"] = {}
    for key in ("name", "description", "devices", "throttle"):
        shape.pop(key, None)
    return json.dumps(shape, separators=(",", ":"))


# --- structural edits -------------------------------------------------------------------------------


def _new_node(type_key: str) -> dict[str, Any] | None:
    if type_key in GROUP_OPS:
        return {type_key: []}
    node_type = REGISTRY.get(type_key)
    if node_type is None:
        return None
    return {"type": type_key, "version": node_type.version, "options": {}}


def apply_edit(doc: dict[str, Any], op: str, form: FormValues) -> str | None:
    """Apply ``add|<section>[|<parent>]`` or ``remove|<path>``; returns the path to focus next."""
    verb, _, rest = op.partition("|")
    if verb == "add":
        section, _, parent = rest.partition("|")
        if section not in SECTIONS:
            return None
        choice = form.get(f"new|{section}|{parent}") if section == "if" else form.get(f"new|{section}")
        node = _new_node(choice)
        if node is None or (section != "if" and group_op(node)):
            return None
        if section != "if" or not parent:
            doc[section].append(node)
            return f"{section}/{len(doc[section]) - 1}"
        target = _node(doc, parent)
        gop = group_op(target)
        if gop == "not":
            target["not"] = node
            return f"{parent}/0"
        if gop is not None:
            target[gop].append(node)
            return f"{parent}/{len(target[gop]) - 1}"
        target["condition"] = node
        return f"{parent}/0"
    if verb == "remove":
        parts = rest.split("/")
        if len(parts) == 2:
            del doc[parts[0]][int(parts[1])]
            return None
        parent_path = "/".join(parts[:-1])
        parent = _node(doc, parent_path)
        gop = group_op(parent)
        if gop == "not":
            parent["not"] = []
        elif gop is not None:
            del parent[gop][int(parts[-1])]
        else:
            parent.pop("condition", None)
        return parent_path
    return None


# --- validation -------------------------------------------------------------------------------------


def _pydantic_problems(exc: ValidationError) -> list[RuleProblem]:
    problems = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        if loc and loc[0] in ("devices", "throttle"):
            problems.append(RuleProblem(loc[0], err["msg"], ".".join(loc[1:]) or None))
        elif loc and loc[0] in SECTIONS and len(loc) == 1:
            problems.append(RuleProblem(loc[0], _section_message(loc[0], err["msg"])))
        else:
            problems.append(RuleProblem("", err["msg"], ".".join(loc) or None))
    return problems


def _section_message(section: str, message: str) -> str:
    if section == "when" and "at least 1" in message:
        return "add a trigger: a rule needs at least one"
    return message


@dataclass(slots=True)
class Checked:
    """The outcome of validating a draft."""

    problems: list[RuleProblem] = field(default_factory=list)
    document: RuleDocument | None = None
    compiled: CompiledRule | None = None
    metrics: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        """Whether the draft can be saved and published."""
        return not self.problems and self.compiled is not None

    def for_path(self, path: str) -> list[RuleProblem]:
        """Problems of one node (or section)."""
        return [p for p in self.problems if p.path == path]


async def check(
    scope: TenantScope, doc: dict[str, Any], form_problems: list[RuleProblem], *, allow_private_webhooks: bool
) -> Checked:
    """Validate as the API does: the document's schema, then compilation against the tenant."""
    checked = Checked(problems=list(form_problems))
    try:
        document = RuleDocument.model_validate(doc)
    except ValidationError as exc:
        checked.problems.extend(_pydantic_problems(exc))
        return checked
    checked.document = document
    try:
        context = await compile_context(scope, document, allow_private_webhooks=allow_private_webhooks)
        compiled = compile_rule(document, context)
    except RuleValidationError as exc:
        checked.problems.extend(exc.problems)
        return checked
    if not form_problems:
        checked.compiled = compiled
    checked.metrics = sorted(compiled.metrics or [])
    return checked


# --- what the template draws ------------------------------------------------------------------------


@dataclass(slots=True)
class NodeView:
    """One node of the builder: a typed node with its form, or a group with its children."""

    path: str
    section: str
    type_key: str
    title: str
    description: str = ""
    fields: list[FormField] = field(default_factory=list)
    children: list[NodeView] = field(default_factory=list)
    op: str | None = None
    wraps: bool = False
    known: bool = True

    @property
    def accepts_child(self) -> bool:
        """Whether the palette can add a condition inside this node."""
        if self.op in ("all", "any"):
            return True
        if self.op == "not" or self.wraps:
            return not self.children
        return False


_GROUP_TITLES = {"all": "All of these", "any": "Any of these", "not": "Not"}


def node_views(doc: dict[str, Any], ctx: FormContext) -> dict[str, list[NodeView]]:
    """The builder's sections, each a list of node views."""
    return {
        section: [_view(node, f"{section}/{i}", section, ctx) for i, node in enumerate(doc.get(section, []))]
        for section in SECTIONS
    }


def _view(node: Any, path: str, section: str, ctx: FormContext) -> NodeView:
    if not isinstance(node, dict):
        return NodeView(path, section, "?", "Malformed node", known=False)
    op = group_op(node)
    if op is not None:
        view = NodeView(path, section, op, _GROUP_TITLES[op], op=op)
    else:
        key = str(node.get("type"))
        node_type = REGISTRY.get(key)
        if node_type is None:
            return NodeView(path, section, key, f"Unknown node type {key}", known=False)
        options = node.get("options") if isinstance(node.get("options"), dict) else {}
        view = NodeView(
            path,
            section,
            key,
            node_type.title,
            node_type.description.split("\n")[0],
            node_form(node_type, path, options or {}, ctx),
            wraps=node_type.wraps,
        )
    view.children = [_view(child, f"{path}/{i}", section, ctx) for i, child in enumerate(_children(node))]
    return view


def palette(section: str) -> list[tuple[str, str]]:
    """(key, title) of the node types that can be added to a section."""
    return [(t.key, t.title) for t in REGISTRY.of_kind(_SECTION_KIND[section])]


def throttle_text(doc: dict[str, Any]) -> str:
    """The throttle interval as the builder shows it."""
    seconds = (doc.get("throttle") or {}).get("min_interval_s", 0)
    return "" if not seconds else format_duration(seconds)
