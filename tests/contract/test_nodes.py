"""One contract over every registered rule node: schemas, examples, versions, registration."""

from __future__ import annotations

import json

import pytest

from engine.nodes.base import Options
from engine.registry import REGISTRY, DuplicateNodeError, NodeKind, NodeRegistry, NodeType, load_node_types

load_node_types()  # as at start-up: the built-in nodes and those of the installed node packages
NODES = list(REGISTRY)


def test_the_shipped_node_types_are_registered() -> None:
    keys = {t.key for t in NODES}
    assert {"telemetry.received", "device.status", "alarm.changed"} <= keys
    assert {
        "expression",
        "telemetry.threshold",
        "duration",
        "consecutive",
        "aggregate.window",
        "time.window",
    } <= keys
    assert {"alarm.raise", "alarm.clear", "notify", "webhook", "mqtt.publish", "metric.derived"} <= keys


@pytest.mark.parametrize("node", NODES, ids=lambda t: t.key)
def test_options_schema_round_trip_and_examples(node: NodeType) -> None:
    schema = node.options_schema()
    assert json.loads(json.dumps(schema)) == schema and schema["type"] == "object"
    assert schema.get("additionalProperties") is False, "unknown options must be refused"
    assert node.examples, f"{node.key} has no example configuration"
    for example in node.examples:
        options = node.options.model_validate(example)
        again = node.options.model_validate(options.model_dump(mode="json"))
        assert again == options
    assert node.title and node.description, f"{node.key} needs a title and a description for the docs"
    assert issubclass(node.options, Options)


@pytest.mark.parametrize("node", NODES, ids=lambda t: t.key)
def test_every_older_version_upgrades(node: NodeType) -> None:
    for version in range(1, node.version):
        assert node.upgrade is not None, f"{node.key} v{node.version} cannot upgrade from v{version}"
        upgraded = node.upgrade(version, dict(node.examples[0]))
        node.options.model_validate(upgraded)


def test_a_duplicate_key_fails_at_registration() -> None:
    registry = NodeRegistry()
    first = REGISTRY.get("expression")
    assert first is not None
    registry.add(first)
    with pytest.raises(DuplicateNodeError, match="'expression' is registered twice"):
        registry.add(first)


def test_every_kind_has_nodes() -> None:
    for kind in NodeKind:
        assert REGISTRY.of_kind(kind)
