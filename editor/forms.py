"""Node forms generated from the node registry's option schemas (ADR 0020).

A node type's pydantic options model is the only description of its form: the JSON Schema gives
each field's type, bounds, choices and default; ``json_schema_extra={"widget": ...}`` hints pick a
richer widget (metric pickers from the device type's catalogue, durations, templates,
expressions, channels). A new node type therefore gets a working form without template work; a
schema shape this module does not know falls back to a JSON text area, never to nothing.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import time
from typing import Any

from engine.registry import NodeType

SEP = "|"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d)?\s*$", re.IGNORECASE)
_UNITS = {"": 1.0, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


@dataclass(frozen=True, slots=True)
class Choice:
    """One option of a select or checkbox group."""

    value: str
    label: str


@dataclass(slots=True)
class FormField:
    """One input of a node form, ready for the template."""

    name: str  # the option's name in the schema
    input_name: str  # the HTML name: o|<node path>|<option>
    label: str
    widget: str  # text, number, integer, duration, select, checkboxes, list, checkbox, time,
    # template, expression, url, json
    required: bool
    value: Any
    help: str = ""
    choices: list[Choice] = field(default_factory=list)
    selected: set[str] = field(default_factory=set)
    placeholder: str = ""
    minimum: float | None = None
    maximum: float | None = None

    @property
    def dom_id(self) -> str:
        """An HTML id for the input (labels point at it)."""
        return dom_id(self.input_name)


def dom_id(name: str) -> str:
    """A safe HTML id for a field or node path."""
    return "f-" + re.sub(r"[^A-Za-z0-9_-]", "-", name)


def input_name(path: str, option: str) -> str:
    """The form name of a node option."""
    return f"o{SEP}{path}{SEP}{option}"


def _label(name: str, prop: Mapping[str, Any]) -> str:
    title = str(prop.get("title") or name.replace("_", " ").capitalize())
    words = title.split()
    if words and words[-1] == "S":  # window_s -> "Window S": say what the unit is
        words[-1] = "(seconds)"
    return " ".join(words)


def _resolve(prop: Mapping[str, Any], defs: Mapping[str, Any]) -> dict[str, Any]:
    """Follow a $ref and collapse ``anyOf [X, null]`` (an optional X) into X."""
    out = dict(prop)
    ref = out.pop("$ref", None)
    if isinstance(ref, str):
        out = {**defs.get(ref.rsplit("/", 1)[-1], {}), **out}
    variants = out.get("anyOf")
    if isinstance(variants, list):
        concrete = [v for v in variants if v.get("type") != "null"]
        if len(concrete) == 1:
            out = {**_resolve(concrete[0], defs), **{k: v for k, v in out.items() if k != "anyOf"}}
            out["nullable"] = True
    return out


@dataclass(frozen=True, slots=True)
class FormContext:
    """What pickers can offer: the catalogue's metric names and the tenant's channels."""

    metrics: Sequence[str] = ()
    channels: Sequence[str] = ()


def _widget(prop: Mapping[str, Any], ctx: FormContext) -> tuple[str, list[Choice]]:
    hint = prop.get("widget")
    kind = prop.get("type")
    if hint == "metric":
        return ("select" if ctx.metrics else "text"), [Choice(m, m) for m in ctx.metrics]
    if hint == "metrics":
        return ("checkboxes" if ctx.metrics else "list"), [Choice(m, m) for m in ctx.metrics]
    if hint == "channels":
        return ("checkboxes" if ctx.channels else "list"), [Choice(c, c) for c in ctx.channels]
    if hint in ("duration", "template", "expression", "time"):
        return str(hint), []
    if "enum" in prop:
        return "select", [Choice(str(v), str(v)) for v in prop["enum"]]
    if kind == "array":
        items = prop.get("items", {})
        if isinstance(items, dict) and "enum" in items:
            return "checkboxes", [Choice(str(v), str(v)) for v in items["enum"]]
        if isinstance(items, dict) and items.get("type") in ("string", "number", "integer"):
            return "list", []
        return "json", []
    if kind == "boolean":
        return "checkbox", []
    if kind == "integer":
        return "integer", []
    if kind == "number":
        return "number", []
    if kind == "string":
        if prop.get("format") == "uri":
            return "url", []
        if prop.get("format") == "time":
            return "time", []
        return "text", []
    return "json", []


def _default(node_type: NodeType, name: str) -> Any:
    info = node_type.options.model_fields.get(name)
    if info is None or info.is_required():
        return None
    return info.get_default(call_default_factory=True)


def format_duration(seconds: Any) -> str:
    """Seconds as the shortest exact text: 300 -> "5m", 90 -> "90s"."""
    if not isinstance(seconds, int | float) or isinstance(seconds, bool):
        return "" if seconds is None else str(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _display(widget: str, value: Any) -> Any:
    if value is None:
        return ""
    if widget == "duration":
        return format_duration(value)
    if widget == "list":
        return ", ".join(str(v) for v in value) if isinstance(value, list) else str(value)
    if widget == "json":
        return json.dumps(value)
    if widget == "time" and isinstance(value, time):
        return value.strftime("%H:%M")
    if widget == "time" and isinstance(value, str) and len(value) == 8 and value.endswith(":00"):
        return value[:5]
    if isinstance(value, float) and widget in ("number", "integer") and value.is_integer():
        return f"{value:g}"
    return value


def node_form(
    node_type: NodeType, path: str, options: Mapping[str, Any], ctx: FormContext
) -> list[FormField]:
    """The form of one node: a field per option, filled from ``options`` (or the defaults)."""
    schema = node_type.options_schema()
    defs = schema.get("$defs", {})
    required = set(schema.get("required", []))
    fields = []
    for name, raw_prop in schema.get("properties", {}).items():
        prop = _resolve(raw_prop, defs)
        widget, choices = _widget(prop, ctx)
        value = options[name] if name in options else _default(node_type, name)
        selected: set[str] = set()
        if widget == "checkboxes":
            selected = {str(v) for v in value} if isinstance(value, list) else set()
            known = {c.value for c in choices}
            choices = choices + [Choice(v, v) for v in sorted(selected - known)]
        elif widget == "select" and value is not None:
            selected = {str(value)}
            if str(value) not in {c.value for c in choices}:
                choices = [*choices, Choice(str(value), str(value))]
        if widget == "select" and name in required and value is None:
            choices = [Choice("", "choose…"), *choices]
        fields.append(
            FormField(
                name=name,
                input_name=input_name(path, name),
                label=_label(name, prop),
                widget=widget,
                required=name in required,
                value=_display(widget, value),
                help=str(prop.get("description", "")),
                choices=choices,
                selected=selected,
                placeholder=_placeholder(widget),
                minimum=prop.get("minimum", prop.get("exclusiveMinimum")),
                maximum=prop.get("maximum"),
            )
        )
    return fields


def _placeholder(widget: str) -> str:
    return {
        "duration": "e.g. 90s, 5m, 2h",
        "list": "comma-separated",
        "expression": "e.g. temp > -10 and not door_open",
        "json": "JSON",
        "template": "{{ device.id }} …",
    }.get(widget, "")


# --- reading a submitted form back into options -----------------------------------------------------


def parse_duration(text: str) -> float | str:
    """Seconds in "90", "90s", "5m", "2h", "1d"; the text itself when it is not one (pydantic says why)."""
    match = _DURATION.match(text)
    if match is None:
        return text
    return float(match.group(1)) * _UNITS[(match.group(2) or "").lower()]


def _number(text: str, integer: bool) -> float | int | str:
    try:
        value = float(text.replace(",", ".")) if not integer else int(text)
    except ValueError:
        return text
    if isinstance(value, float) and not math.isfinite(value):
        return text
    return value


def read_options(node_type: NodeType, path: str, form: FormValues) -> dict[str, Any]:
    """The options a node's form fields hold; values pydantic must judge are passed on as typed."""
    schema = node_type.options_schema()
    defs = schema.get("$defs", {})
    required = set(schema.get("required", []))
    options: dict[str, Any] = {}
    for name, raw_prop in schema.get("properties", {}).items():
        prop = _resolve(raw_prop, defs)
        key = input_name(path, name)
        widget, _ = _widget(prop, FormContext(metrics=("x",), channels=("x",)))
        if widget == "checkboxes":
            options[name] = form.getlist(key)
            items = prop.get("items", {})
            if isinstance(items, dict) and items.get("type") == "integer":
                options[name] = [_number(v, True) for v in options[name]]
            continue
        if widget == "checkbox":
            options[name] = key in form
            continue
        if key not in form:
            continue
        text = form.get(key).strip()
        if text == "" and widget not in ("template", "text") and name not in required:
            continue  # empty optional field: its default
        if text == "" and widget in ("template",) and name not in required:
            options[name] = ""
            continue
        if widget == "duration":
            options[name] = parse_duration(text) if text else text
        elif widget in ("number", "integer"):
            options[name] = _number(text, widget == "integer") if text else None
        elif widget == "select" and prop.get("type") == "integer":
            options[name] = _number(text, True)
        elif widget == "list":
            options[name] = [part.strip() for part in text.split(",") if part.strip()]
        elif widget == "json":
            try:
                options[name] = json.loads(text)
            except ValueError:
                options[name] = text
        elif text == "" and name not in required:
            continue
        else:
            options[name] = text
    return options


class FormValues:
    """Submitted form values (a read-only multi-dict view over Starlette's FormData or a dict)."""

    def __init__(self, items: Iterable[tuple[str, str]]) -> None:
        self._values: dict[str, list[str]] = {}
        for key, value in items:
            self._values.setdefault(key, []).append(value)

    def __contains__(self, key: object) -> bool:
        return key in self._values

    def get(self, key: str, default: str = "") -> str:
        """The first value of ``key``."""
        values = self._values.get(key)
        return values[0] if values else default

    def getlist(self, key: str) -> list[str]:
        """Every value of ``key``."""
        return list(self._values.get(key, []))

    def keys(self) -> list[str]:
        """Every submitted name."""
        return list(self._values)
