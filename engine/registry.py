"""The node registry: every trigger, condition and action type under a stable dotted key.

A node type declares its options as a pydantic model (the one schema behind validation, the API,
the editor's forms and the generated docs), a version, and an upgrade hook so saved rules keep
working when a node changes. Third-party packages register through the ``flatgigs.nodes`` entry
point group: each entry point is a callable taking the registry.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from importlib.metadata import entry_points
from typing import Any

from pydantic import BaseModel, ValidationError

from engine.document import NodeRef
from engine.errors import RuleProblem

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "flatgigs.nodes"


class NodeKind(StrEnum):
    """Where a node can stand in a rule."""

    TRIGGER = "trigger"
    CONDITION = "condition"
    ACTION = "action"


class DuplicateNodeError(RuntimeError):
    """Two node types claimed the same key: a programming error, refused at start-up."""


class NodePackageError(RuntimeError):
    """An installed node package could not register its nodes: refused at start-up."""


Upgrade = Callable[[int, dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True, slots=True)
class NodeType:
    """A registered node type."""

    key: str
    kind: NodeKind
    version: int
    options: type[BaseModel]
    implementation: type[Any]
    title: str
    description: str
    wraps: bool = False
    upgrade: Upgrade | None = None
    examples: tuple[dict[str, Any], ...] = field(default_factory=tuple)

    def options_schema(self) -> dict[str, Any]:
        """The JSON Schema of the options (what the editor renders a form from)."""
        return self.options.model_json_schema()


class NodeRegistry:
    """Node types by key."""

    def __init__(self) -> None:
        self._types: dict[str, NodeType] = {}
        self._entry_points: set[str] = set()  # "name = module:attr" of the entry points loaded

    def add(self, node_type: NodeType) -> None:
        """Register a node type; DuplicateNodeError if its key is taken."""
        if node_type.key in self._types:
            existing = self._types[node_type.key].implementation
            raise DuplicateNodeError(
                f"node key {node_type.key!r} is registered twice "
                f"({existing.__module__}.{existing.__qualname__} and "
                f"{node_type.implementation.__module__}.{node_type.implementation.__qualname__})"
            )
        self._types[node_type.key] = node_type

    def register(
        self,
        key: str,
        kind: NodeKind,
        *,
        options: type[BaseModel],
        title: str,
        version: int = 1,
        wraps: bool = False,
        upgrade: Upgrade | None = None,
        examples: tuple[dict[str, Any], ...] = (),
    ) -> Callable[[type[Any]], type[Any]]:
        """Class decorator registering an implementation under ``key``."""

        def decorate(cls: type[Any]) -> type[Any]:
            description = (cls.__doc__ or "").strip()
            self.add(NodeType(key, kind, version, options, cls, title, description, wraps, upgrade, examples))
            cls.node_key = key
            return cls

        return decorate

    def get(self, key: str) -> NodeType | None:
        """The node type registered under ``key``."""
        return self._types.get(key)

    def __iter__(self) -> Iterator[NodeType]:
        return iter(sorted(self._types.values(), key=lambda t: t.key))

    def __len__(self) -> int:
        return len(self._types)

    def of_kind(self, kind: NodeKind) -> list[NodeType]:
        """The node types of one kind, by key."""
        return [t for t in self if t.kind is kind]

    def load_entry_points(self) -> list[str]:
        """Let installed packages register their nodes; returns the entry point names loaded now.

        Each entry point of the ``flatgigs.nodes`` group is a callable taking a registry. It
        registers into a registry of its own first, so an entry point is taken whole or not at
        all: a key that is already taken (a built-in's or another package's) raises
        DuplicateNodeError naming the entry point, and a package that fails to load raises
        NodePackageError; either way the process refuses to start. Entry points already loaded
        into this registry are skipped, so every app the process creates can call this.
        """
        loaded = []
        for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: (e.name, e.value)):
            ident = f"{ep.name} = {ep.value}"
            if ident in self._entry_points:
                continue
            origin = f"entry point {ident!r}" + (f" of {ep.dist.name} {ep.dist.version}" if ep.dist else "")
            staged = NodeRegistry()
            try:
                ep.load()(staged)
            except DuplicateNodeError as exc:
                raise DuplicateNodeError(f"{origin}: {exc}") from exc
            except Exception as exc:
                raise NodePackageError(f"{origin} failed to register its rule nodes: {exc!r}") from exc
            for node_type in staged:
                taken = self._types.get(node_type.key)
                if taken is not None:
                    raise DuplicateNodeError(
                        f"{origin} registers node key {node_type.key!r}, already registered by "
                        f"{taken.implementation.__module__}.{taken.implementation.__qualname__}"
                    )
            for node_type in staged:
                self._types[node_type.key] = node_type
            self._entry_points.add(ident)
            loaded.append(ep.name)
            logger.info("rule nodes %s registered by %s", [t.key for t in staged], origin)
        return loaded

    def options_for(self, ref: NodeRef, kind: NodeKind) -> tuple[NodeType, BaseModel] | RuleProblem:
        """Validate a node's options (upgrading older versions first), or say what is wrong."""
        node_type = self._types.get(ref.type)
        if node_type is None:
            known = [t.key for t in self.of_kind(kind)]
            return RuleProblem(
                ref.path, f"unknown {kind.value} type {ref.type!r}", "type", _closest(ref.type, known)
            )
        if node_type.kind is not kind:
            return RuleProblem(
                ref.path, f"{ref.type!r} is a {node_type.kind.value}, not a {kind.value}", "type"
            )
        options = dict(ref.options)
        if ref.version > node_type.version:
            return RuleProblem(
                ref.path, f"version {ref.version} of {ref.type!r} is newer than this server's", "version"
            )
        if ref.version < node_type.version:
            if node_type.upgrade is None:
                return RuleProblem(
                    ref.path, f"{ref.type!r} cannot upgrade from version {ref.version}", "version"
                )
            options = node_type.upgrade(ref.version, options)
        try:
            return node_type, node_type.options.model_validate(options)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            message = "unknown option" if err["type"] == "extra_forbidden" else err["msg"]
            return RuleProblem(ref.path, message, f"options.{where}" if where else "options")


def _closest(word: str, candidates: list[str]) -> str | None:
    import difflib

    found = difflib.get_close_matches(word, candidates, n=1, cutoff=0.5)
    return found[0] if found else None


REGISTRY = NodeRegistry()
"""The process-wide registry the built-in nodes register into (see engine.nodes)."""


def load_node_types(registry: NodeRegistry = REGISTRY) -> list[str]:
    """Register the built-in nodes, then those of installed packages; the entry points loaded now.

    Called when an app starts; DuplicateNodeError or NodePackageError stop the start-up.
    """
    import engine.nodes  # noqa: F401  (registers the built-in nodes into REGISTRY)

    return registry.load_entry_points()
