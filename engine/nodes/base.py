"""Base classes of rule nodes: the public method traces, the protected hook decides."""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from engine.evaluation import EvalContext, Event, EventKind
from model.devices import MetricSpec


class Options(BaseModel):
    """Base of every node's options: unknown options are refused, never ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True, slots=True)
class CompileContext:
    """What compilation knows: the metric catalogue of the devices the rule selects, and limits."""

    tenant_id: str
    metrics: Mapping[str, MetricSpec]
    allow_private_webhooks: bool = False


class Trigger(abc.ABC):
    """Decides whether an event starts an evaluation of the rule."""

    node_key: ClassVar[str]

    def __init__(self, path: str, options: Any, context: CompileContext) -> None:
        self.path = path
        self.options = options
        self.context = context

    @abc.abstractmethod
    def event_kinds(self) -> frozenset[EventKind]:
        """Kinds of events this trigger can match (the engine indexes rules by them)."""

    def metrics(self) -> frozenset[str] | None:
        """Metrics a reading must carry to matter (None: any reading)."""
        return None

    @abc.abstractmethod
    def matches(self, event: Event) -> bool:
        """Whether this event starts an evaluation."""


class Condition(abc.ABC):
    """A test on the device's state; ``check`` records the trace, ``_check`` decides."""

    node_key: ClassVar[str]

    def __init__(self, path: str, options: Any, context: CompileContext, child: Condition | None) -> None:
        self.path = path
        self.options = options
        self.context = context
        self.child = child

    def check(self, ctx: EvalContext) -> bool | None:
        """True, False, or None when it cannot be decided (e.g. no value yet); traced."""
        result, detail, inputs = self._check(ctx)
        ctx.record(self.path, self.node_key, result, detail, **inputs)
        return result

    @abc.abstractmethod
    def _check(self, ctx: EvalContext) -> tuple[bool | None, str, dict[str, Any]]:
        """Decide: (result, a sentence saying why, the inputs used)."""

    def metrics(self) -> frozenset[str]:
        """Metrics this condition reads (used to type-check and to index the rule)."""
        return frozenset()


@dataclass(frozen=True, slots=True)
class ActionCall:
    """An action the engine decided to run, with everything it needs (no side effect yet)."""

    path: str
    node: str
    tenant_id: str
    device_id: str
    options: dict[str, Any]


class Action:
    """Turns a firing into an ActionCall; executing it is the job of the action runner's ports."""

    node_key: ClassVar[str]

    def __init__(self, path: str, options: Any, context: CompileContext) -> None:
        self.path = path
        self.options = options
        self.context = context

    def plan(self, ctx: EvalContext) -> ActionCall:
        """The call to make for this firing."""
        return ActionCall(
            self.path,
            self.node_key,
            ctx.event.tenant_id,
            ctx.event.device_id,
            self.options.model_dump(mode="json"),
        )
