"""docs/rules/nodes.md is generated from the node registry: a test fails when code and file differ."""

from __future__ import annotations

import difflib
import json
import re
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, Field

import engine.nodes  # noqa: F401  (registers the built-in nodes)
from engine.node_docs import builtin_node_types, render_node_docs
from engine.nodes.base import Condition, Options
from engine.registry import REGISTRY, NodeKind, NodeType

NODES_MD = Path(__file__).resolve().parents[2] / "docs" / "rules" / "nodes.md"


def test_committed_node_docs_match_the_registry() -> None:
    committed = NODES_MD.read_text()
    generated = render_node_docs(builtin_node_types())
    if committed != generated:
        diff = "".join(
            list(difflib.unified_diff(committed.splitlines(True), generated.splitlines(True), n=1))[:40]
        )
        raise AssertionError(f"docs/rules/nodes.md is out of date; run `make docs`:\n{diff}")


def test_every_built_in_node_has_a_section_with_every_option_and_example() -> None:
    text = render_node_docs(builtin_node_types())
    sections = re.split(r"\n(?=<a id=\")", text)[1:]
    assert len(sections) == len(builtin_node_types()) == len(list(REGISTRY))
    for node_type, section in zip(sorted(builtin_node_types(), key=_order), sections, strict=True):
        assert f"### `{node_type.key}`: {node_type.title}\n" in section
        assert f"{node_type.kind.value.capitalize()}, version {node_type.version}" in section
        assert node_type.description.split("\n")[0].replace("``", "`") in section
        for option in node_type.options_schema().get("properties", {}):
            assert f"\n| `{option}` |" in section, f"{node_type.key}: option {option} is not documented"
        shown = [json.loads(block) for block in re.findall(r"```json\n(.*?)```", section, re.DOTALL)]
        assert [node["options"] for node in shown] == list(node_type.examples)
        assert all(node["type"] == node_type.key for node in shown)


def _order(node_type: NodeType) -> tuple[int, str]:
    return list(NodeKind).index(node_type.kind), node_type.key


class Unit(StrEnum):
    CELSIUS = "celsius"
    FAHRENHEIT = "fahrenheit"


class Band(BaseModel):
    low: float
    high: float


class SampleOptions(Options):
    """Options with what pydantic puts behind $ref: an enum and a nested model."""

    unit: Unit = Unit.CELSIUS
    band: Band | None = Field(default=None, description="Allowed | band.")
    tags: list[str] = Field(default_factory=list, max_length=1)


class SampleCondition(Condition):
    """A sample condition.

    Its second paragraph says ``more``.
    """


def test_references_enums_defaults_and_pipes_are_rendered() -> None:
    node_type = NodeType(
        "sample.node",
        NodeKind.CONDITION,
        2,
        SampleOptions,
        SampleCondition,
        "Sample",
        SampleCondition.__doc__ or "",
        wraps=True,
        examples=({"unit": "fahrenheit"},),
    )
    text = render_node_docs([node_type])
    assert (
        "Condition, version 2 · wraps one condition, given in the node's `condition` · refuses version 1"
        in text
    )
    assert "Its second paragraph says `more`." in text
    assert '| `unit` | `"celsius"` \\| `"fahrenheit"` | `"celsius"` |' in text
    assert "| `band` | object or null | `null` |  |  | Allowed \\| band. |" in text
    assert "| `tags` | list of string | `[]` | at most 1 item |" in text
