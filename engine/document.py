"""The rule document: versioned JSON that customers build in the editor and engineers send to the API.

Every node has a stable path used by errors, traces and the editor: ``when/0`` (a trigger),
``if/1`` (a condition; ``if/1/0`` inside a group or wrapper), ``then/2`` and ``else/0`` (actions).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from engine.errors import RuleProblem, RuleValidationError
from model.devices import Labels, Name, ObjectId

SCHEMA_VERSION = 1
MAX_NODES = 200
MAX_DEPTH = 8


class RunMode(StrEnum):
    """What happens when a rule fires again while its actions still run."""

    SINGLE = "single"  # ignore the new firing
    QUEUED = "queued"  # run after the current one
    RESTART = "restart"  # cancel the current one, run the new one
    PARALLEL = "parallel"  # run both


class FireMode(StrEnum):
    """When ``then`` runs."""

    ON_CHANGE = "on_change"  # when the condition becomes true (and ``else`` when it becomes false)
    ALWAYS = "always"  # on every evaluation where the condition holds


class TraceMode(StrEnum):
    """Which evaluations leave a stored trace."""

    CHANGES = "changes"  # firings, clears, throttles, and every change of outcome per device
    ALL = "all"  # every evaluation (for debugging a rule; costs a row per reading per device)


class DeviceSelector(BaseModel):
    """Which devices a rule applies to: all of the tenant's unless narrowed (criteria are ANDed)."""

    model_config = ConfigDict(extra="forbid")

    ids: list[ObjectId] = Field(default_factory=list, max_length=1000)
    type: ObjectId | None = None
    labels: Labels = Field(default_factory=dict)

    def matches(self, device_id: str, type_id: str, labels: Mapping[str, str]) -> bool:
        """Whether a device is selected."""
        if self.ids and device_id not in self.ids:
            return False
        if self.type is not None and type_id != self.type:
            return False
        return all(labels.get(k) == v for k, v in self.labels.items())


class Throttle(BaseModel):
    """At most one firing per device per interval."""

    model_config = ConfigDict(extra="forbid")

    min_interval_s: float = Field(default=0, ge=0, le=7 * 86400)


class RuleDocument(BaseModel):
    """A rule as stored and exchanged. Node contents are checked against the node registry."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    schema_version: int = Field(default=SCHEMA_VERSION, ge=1, le=SCHEMA_VERSION)
    name: Name
    description: str = Field(default="", max_length=2000)
    enabled: bool = True
    devices: DeviceSelector = Field(default_factory=DeviceSelector)
    when: list[dict[str, Any]] = Field(min_length=1, max_length=20)
    if_: list[dict[str, Any]] = Field(default_factory=list, alias="if", max_length=50)
    then: list[dict[str, Any]] = Field(default_factory=list, max_length=20)
    else_: list[dict[str, Any]] = Field(default_factory=list, alias="else", max_length=20)
    fire: FireMode = FireMode.ON_CHANGE
    throttle: Throttle = Field(default_factory=Throttle)
    run_mode: RunMode = RunMode.SINGLE
    trace: TraceMode = TraceMode.CHANGES


class Section(StrEnum):
    """The parts of a rule that hold nodes."""

    WHEN = "when"
    IF = "if"
    THEN = "then"
    ELSE = "else"


@dataclass(frozen=True, slots=True)
class NodeRef:
    """A node of the rule tree: its path, its type key and version, its raw options."""

    path: str
    section: Section
    type: str
    version: int
    options: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Group:
    """``all`` / ``any`` / ``not`` over child conditions."""

    path: str
    op: str
    children: list[ConditionTree]


@dataclass(frozen=True, slots=True)
class Leaf:
    """A condition node, possibly wrapping one child (``duration``, ``consecutive``)."""

    node: NodeRef
    child: ConditionTree | None = None


ConditionTree = Group | Leaf


@dataclass(slots=True)
class ParsedRule:
    """A document broken into node references with paths, ready for validation and compilation."""

    document: RuleDocument
    triggers: list[NodeRef] = field(default_factory=list)
    conditions: list[ConditionTree] = field(default_factory=list)
    then: list[NodeRef] = field(default_factory=list)
    else_: list[NodeRef] = field(default_factory=list)

    def nodes(self) -> Iterator[NodeRef]:
        """Every typed node, in document order."""
        yield from self.triggers
        for tree in self.conditions:
            yield from _tree_nodes(tree)
        yield from self.then
        yield from self.else_


def _tree_nodes(tree: ConditionTree) -> Iterator[NodeRef]:
    if isinstance(tree, Group):
        for child in tree.children:
            yield from _tree_nodes(child)
    else:
        yield tree.node
        if tree.child is not None:
            yield from _tree_nodes(tree.child)


def parse(document: RuleDocument) -> ParsedRule:
    """Turn a document into a tree of node references; RuleValidationError on shape problems."""
    problems: list[RuleProblem] = []
    parsed = ParsedRule(document)
    counter = [0]
    parsed.triggers = [
        n
        for i, raw in enumerate(document.when)
        if (n := _node(raw, f"when/{i}", Section.WHEN, problems, counter))
    ]
    parsed.conditions = [
        t for i, raw in enumerate(document.if_) if (t := _condition(raw, f"if/{i}", problems, counter, 1))
    ]
    parsed.then = [
        n
        for i, raw in enumerate(document.then)
        if (n := _node(raw, f"then/{i}", Section.THEN, problems, counter))
    ]
    parsed.else_ = [
        n
        for i, raw in enumerate(document.else_)
        if (n := _node(raw, f"else/{i}", Section.ELSE, problems, counter))
    ]
    if counter[0] > MAX_NODES:
        problems.append(RuleProblem("", f"the rule has {counter[0]} nodes; at most {MAX_NODES} are allowed"))
    if problems:
        raise RuleValidationError(problems[:50])
    return parsed


_NODE_KEYS = {"type", "version", "options", "condition", "id", "label"}


def _node(
    raw: Any, path: str, section: Section, problems: list[RuleProblem], counter: list[int]
) -> NodeRef | None:
    counter[0] += 1
    if counter[0] > MAX_NODES:
        return None
    if not isinstance(raw, dict):
        problems.append(RuleProblem(path, "a node must be an object with 'type' and 'options'"))
        return None
    unknown = sorted(set(raw) - _NODE_KEYS)
    if unknown:
        problems.append(RuleProblem(path, f"unknown key(s) {unknown}", field=unknown[0]))
        return None
    node_type = raw.get("type")
    if not isinstance(node_type, str) or not node_type:
        problems.append(RuleProblem(path, "missing node 'type'", field="type"))
        return None
    version = raw.get("version", 1)
    options = raw.get("options", {})
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        problems.append(RuleProblem(path, "'version' must be a positive integer", field="version"))
        return None
    if not isinstance(options, dict):
        problems.append(RuleProblem(path, "'options' must be an object", field="options"))
        return None
    return NodeRef(path, section, node_type, version, options)


def _condition(
    raw: Any, path: str, problems: list[RuleProblem], counter: list[int], depth: int
) -> ConditionTree | None:
    if depth > MAX_DEPTH:
        problems.append(RuleProblem(path, f"conditions nest deeper than {MAX_DEPTH} levels"))
        return None
    if counter[0] > MAX_NODES:
        return None
    if isinstance(raw, dict) and len(raw) == 1 and next(iter(raw)) in ("all", "any", "not"):
        counter[0] += 1
        op, body = next(iter(raw.items()))
        items = [body] if op == "not" else body
        if not isinstance(items, list) or not items or (op == "not" and isinstance(body, list)):
            shape = "one condition" if op == "not" else "a non-empty list of conditions"
            problems.append(RuleProblem(path, f"'{op}' takes {shape}"))
            return None
        children = [
            c
            for i, item in enumerate(items)
            if (c := _condition(item, f"{path}/{i}", problems, counter, depth + 1))
        ]
        return Group(path, op, children)
    node = _node(raw, path, Section.IF, problems, counter)
    if node is None:
        return None
    child_raw = raw.get("condition")
    child = (
        _condition(child_raw, f"{path}/0", problems, counter, depth + 1) if child_raw is not None else None
    )
    return Leaf(node, child)
