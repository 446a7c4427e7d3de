"""Every registered node type gets a working form from its options schema alone."""

from __future__ import annotations

import pytest

from editor.draft import node_views, read_form
from editor.forms import FormContext, FormValues, format_duration, node_form, parse_duration
from editor.web import templates
from engine.compiler import REGISTRY
from engine.registry import NodeKind, NodeType

SECTION = {NodeKind.TRIGGER: "when", NodeKind.CONDITION: "if", NodeKind.ACTION: "then"}
CTX = FormContext(metrics=("temp", "door_open"), channels=("night-shift",))


def _render(node_type: NodeType, options: dict[str, object]) -> str:
    section = SECTION[node_type.kind]
    node: dict[str, object] = {"type": node_type.key, "options": options}
    if node_type.wraps:
        node["condition"] = {"type": "telemetry.threshold", "options": {"metric": "temp", "value": -10}}
    doc = {"when": [], "if": [], "then": [], "else": [], section: [node]}
    views = node_views(doc, CTX)
    macros = templates.env.get_template("rules/_macros.html").make_module(
        {"slug": lambda p: p.replace("/", "-")}
    )
    html = str(macros.node_box(views[section][0], _NoErrors(), True, "/app/rules/new", {"if": []}, None))
    return html


class _NoErrors:
    def node(self, path: str) -> list[object]:
        return []

    def field(self, path: str, name: str) -> list[object]:
        return []


@pytest.mark.parametrize("node_type", list(REGISTRY), ids=lambda t: t.key)
def test_every_node_type_renders_a_labelled_field_per_option(node_type: NodeType) -> None:
    section = SECTION[node_type.kind]
    path = f"{section}/0"
    fields = node_form(node_type, path, {}, CTX)
    assert [f.name for f in fields] == list(node_type.options_schema().get("properties", {}))
    html = _render(node_type, {})
    for field in fields:
        assert f'name="{field.input_name}"' in html, (node_type.key, field.name)
        if field.widget == "checkboxes":
            assert f"<legend>{field.label}" in html
        elif field.widget == "checkbox":  # labelled by the <label> around it
            assert f'<label><input type="checkbox" id="{field.dom_id}"' in html
        else:
            assert f'for="{field.dom_id}"' in html and f'id="{field.dom_id}"' in html, (
                node_type.key,
                field.name,
            )
        if field.widget == "json":  # only nested objects fall back to a JSON text area
            prop = node_type.options_schema()["properties"][field.name]
            assert "$ref" in prop or "anyOf" in prop or prop.get("type") == "object", (
                node_type.key,
                field.name,
            )


@pytest.mark.parametrize("node_type", list(REGISTRY), ids=lambda t: t.key)
def test_every_node_types_examples_survive_a_round_trip_through_its_form(node_type: NodeType) -> None:
    """Render an example into the form, read the form back: the options validate to the same."""
    section = SECTION[node_type.kind]
    path = f"{section}/0"
    for example in node_type.examples or ({},):
        fields = node_form(node_type, path, example, CTX)
        posted: list[tuple[str, str]] = [("skeleton", "{}"), ("n|" + path, "1")]
        for field in fields:
            if field.widget == "checkboxes":
                posted += [(field.input_name, c.value) for c in field.choices if c.value in field.selected]
            elif field.widget == "checkbox":
                if field.value:
                    posted.append((field.input_name, "on"))
            elif field.widget == "select":
                posted.append((field.input_name, next(iter(field.selected), "")))
            else:
                posted.append((field.input_name, str(field.value)))
        node: dict[str, object] = {"type": node_type.key, "options": {}}
        doc_json = {"when": [], "if": [], "then": [], "else": [], section: [node]}
        import json

        posted[0] = ("skeleton", json.dumps(doc_json))
        doc, _ = read_form(FormValues(posted))
        options = doc[section][0]["options"]
        if not example:
            continue
        assert node_type.options.model_validate(options) == node_type.options.model_validate(example)


def test_widgets_follow_the_schema_hints() -> None:
    threshold = REGISTRY.get("telemetry.threshold")
    assert threshold is not None
    widgets = {f.name: f.widget for f in node_form(threshold, "if/0", {}, CTX)}
    assert widgets == {"metric": "select", "operator": "select", "value": "number", "clear_at": "number"}
    duration = REGISTRY.get("duration")
    assert duration is not None
    assert {f.name: f.widget for f in node_form(duration, "if/0", {"seconds": 300}, CTX)}[
        "seconds"
    ] == "duration"
    notify = REGISTRY.get("notify")
    assert notify is not None
    channels = next(f for f in node_form(notify, "then/0", {}, CTX) if f.name == "channels")
    assert channels.widget == "checkboxes" and [c.value for c in channels.choices] == ["night-shift"]
    no_channels = next(f for f in node_form(notify, "then/0", {}, FormContext()) if f.name == "channels")
    assert no_channels.widget == "list"  # no channel list known: type names


def test_durations_read_and_print_in_units() -> None:
    assert parse_duration("5m") == 300 and parse_duration("2h") == 7200 and parse_duration("90") == 90
    assert parse_duration("soon") == "soon"  # pydantic reports it on the field
    assert format_duration(300) == "5m" and format_duration(90) == "90s" and format_duration(7200) == "2h"
