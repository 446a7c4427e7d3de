"""Compilation: a rule document becomes evaluator objects, checked once, indexed by what they need.

Evaluation of a compiled rule for one device and one event is deterministic: it reads only the
event, the device's latest values and the rule's state for that device, so the same code serves
live evaluation, restarts (state is plain JSON, keyed by tenant, rule and device) and backtests.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from engine.document import FireMode, Group, Leaf, RuleDocument, parse
from engine.errors import RuleProblem, RuleValidationError
from engine.evaluation import DeviceView, EvalContext, Event, EventKind, TraceStep
from engine.guards import Guard, guard_for
from engine.nodes.base import Action, ActionCall, CompileContext, Condition, Trigger
from engine.registry import REGISTRY, NodeKind, NodeRegistry
from model.readings import MetricValue

RULE_STATE = "rule"


class GroupCondition(Condition):
    """``all`` / ``any`` / ``not`` with three-valued logic (None = undecided).

    Every child is evaluated, never short-circuited: stateful children (durations, hysteresis,
    windows) must see every event to stay correct, and the trace should say why for each.
    """

    node_key = "group"

    def __init__(self, path: str, op: str, children: list[Condition], context: CompileContext) -> None:
        super().__init__(path, None, context, None)
        self.op = op
        self.children = children

    def metrics(self) -> frozenset[str]:
        return frozenset().union(*(c.metrics() for c in self.children))

    def _check(self, ctx: EvalContext) -> tuple[bool | None, str, dict[str, Any]]:
        results = [child.check(ctx) for child in self.children]
        if self.op == "not":
            value = None if results[0] is None else not results[0]
        elif self.op == "all":
            value = False if False in results else (None if None in results else True)
        else:
            value = True if True in results else (None if None in results else False)
        return value, f"{self.op} of {len(results)}: {_word(value)}", {}


def _word(value: bool | None) -> str:
    return "undecided" if value is None else str(value).lower()


@dataclass(slots=True)
class Decision:
    """What one evaluation decided, with the trace that explains it."""

    rule_id: str
    rule_version: int
    tenant_id: str
    device_id: str
    at: datetime
    event: EventKind
    result: bool | None
    fired: bool = False
    cleared: bool = False
    throttled: bool = False
    calls: list[ActionCall] = field(default_factory=list)
    steps: list[TraceStep] = field(default_factory=list)
    wake_at: datetime | None = None
    traced: bool = True  # whether the engine stores it as a trace (engine.core)

    @property
    def outcome(self) -> str:
        """One word for lists and filters: fired, cleared, throttled, true, false or undecided."""
        if self.fired:
            return "fired"
        if self.cleared:
            return "cleared"
        if self.throttled:
            return "throttled"
        return _word(self.result)

    @property
    def result_word(self) -> str:
        """The conditions' verdict alone: true, false or undecided."""
        return _word(self.result)


@dataclass(slots=True)
class CompiledRule:
    """A rule ready to evaluate."""

    rule_id: str
    version: int
    tenant_id: str
    document: RuleDocument
    triggers: list[Trigger]
    conditions: list[Condition]
    then: list[Action]
    otherwise: list[Action]
    guard: Guard | None = None  # when readings can be skipped (engine.guards)

    @property
    def event_kinds(self) -> frozenset[EventKind]:
        """Events any trigger of the rule can match."""
        return frozenset().union(*(t.event_kinds() for t in self.triggers))

    @property
    def metrics(self) -> frozenset[str] | None:
        """Metrics a reading must carry for the rule to care (None: any reading)."""
        found: set[str] = set()
        for trigger in self.triggers:
            if EventKind.READING not in trigger.event_kinds():
                continue
            wanted = trigger.metrics()
            if wanted is None:
                return None
            found |= wanted
        return frozenset(found)

    def selects(self, device_id: str, type_id: str, labels: Mapping[str, str]) -> bool:
        """Whether the rule applies to the device."""
        return self.document.devices.matches(device_id, type_id, labels)

    def evaluate(
        self,
        event: Event,
        device: DeviceView,
        values: Mapping[str, MetricValue],
        value_times: Mapping[str, datetime],
        state: dict[str, dict[str, Any]],
    ) -> Decision | None:
        """Evaluate for one event; None when no trigger matches. ``state`` is updated in place."""
        matching = [t for t in self.triggers if t.matches(event)]
        if not matching:
            return None
        ctx = EvalContext(event, device, values, value_times, state)
        for trigger in matching:
            ctx.record(trigger.path, trigger.node_key, True, f"{event.kind.value} matched")
        results = [c.check(ctx) for c in self.conditions]
        result: bool | None = False if False in results else (None if None in results else True)
        rule_state = ctx.node_state(RULE_STATE)
        was_active = bool(rule_state.get("active", False))
        decision = Decision(
            self.rule_id, self.version, self.tenant_id, device.id, event.ts, event.kind, result
        )
        if result is True and (self.document.fire is FireMode.ALWAYS or not was_active):
            last = rule_state.get("last_fired")
            interval = timedelta(seconds=self.document.throttle.min_interval_s)
            if last is not None and interval and event.ts - datetime.fromisoformat(last) < interval:
                decision.throttled = True
                ctx.record(RULE_STATE, "throttle", False, f"fired less than {interval} ago; throttled")
            else:
                decision.fired = True
                rule_state["last_fired"] = event.ts.isoformat()
                decision.calls = [a.plan(ctx) for a in self.then]
        elif result is False and was_active:
            decision.cleared = True
            decision.calls = [a.plan(ctx) for a in self.otherwise]
        if result is not None:
            rule_state["active"] = result
        decision.steps = ctx.steps
        decision.wake_at = ctx.wake_at
        return decision


def compile_rule(
    document: RuleDocument,
    context: CompileContext,
    *,
    rule_id: str = "draft",
    version: int = 0,
    registry: NodeRegistry = REGISTRY,
) -> CompiledRule:
    """Check every node and build the evaluators; RuleValidationError lists every problem."""
    parsed = parse(document)
    problems: list[RuleProblem] = []
    triggers = [
        t for ref in parsed.triggers if (t := _build(ref, NodeKind.TRIGGER, registry, context, problems))
    ]
    conditions = [c for tree in parsed.conditions if (c := _condition(tree, registry, context, problems))]
    then = [a for ref in parsed.then if (a := _build(ref, NodeKind.ACTION, registry, context, problems))]
    otherwise = [
        a for ref in parsed.else_ if (a := _build(ref, NodeKind.ACTION, registry, context, problems))
    ]
    if problems:
        raise RuleValidationError(problems)
    return CompiledRule(
        rule_id,
        version,
        context.tenant_id,
        document,
        triggers,
        conditions,
        then,
        otherwise,
        guard_for(document, conditions, triggers, [*then, *otherwise]),
    )


def validate(document: RuleDocument, context: CompileContext, registry: NodeRegistry = REGISTRY) -> None:
    """Raise RuleValidationError if the rule cannot be compiled."""
    compile_rule(document, context, registry=registry)


def _build(
    ref: Any, kind: NodeKind, registry: NodeRegistry, context: CompileContext, problems: list[RuleProblem]
) -> Any:
    found = registry.options_for(ref, kind)
    if isinstance(found, RuleProblem):
        problems.append(found)
        return None
    node_type, options = found
    try:
        return node_type.implementation(ref.path, options, context)
    except RuleValidationError as exc:
        problems.extend(exc.problems)
        return None


def _condition(
    tree: Group | Leaf, registry: NodeRegistry, context: CompileContext, problems: list[RuleProblem]
) -> Condition | None:
    if isinstance(tree, Group):
        children = [c for child in tree.children if (c := _condition(child, registry, context, problems))]
        return GroupCondition(tree.path, tree.op, children, context) if children else None
    found = registry.options_for(tree.node, NodeKind.CONDITION)
    if isinstance(found, RuleProblem):
        problems.append(found)
        return None
    node_type, options = found
    child = None
    if node_type.wraps:
        if tree.child is None:
            problems.append(
                RuleProblem(tree.node.path, f"{node_type.key!r} wraps a 'condition'", "condition")
            )
            return None
        child = _condition(tree.child, registry, context, problems)
        if child is None:
            return None
    elif tree.child is not None:
        problems.append(
            RuleProblem(tree.node.path, f"{node_type.key!r} does not take a 'condition'", "condition")
        )
        return None
    try:
        condition: Condition = node_type.implementation(tree.node.path, options, context, child)
    except RuleValidationError as exc:
        problems.extend(exc.problems)
        return None
    return condition


def _ensure_builtin_nodes() -> None:
    import engine.nodes  # noqa: F401  (registers the built-in nodes)


_ensure_builtin_nodes()
