"""The rule drawn as a flow: devices -> triggers -> conditions -> then / else actions.

Only geometry is computed here; ``templates/_diagram.html`` draws it as SVG (autoescaped text).
Each box carries its node path, so an error or a trace step can highlight the node it names.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from editor.draft import SECTIONS, group_op
from editor.forms import format_duration
from engine.registry import REGISTRY

BOX_W = 168
BOX_H = 44
GAP_Y = 14
COL_GAP = 34
INDENT = 14
TOP = 30


@dataclass(frozen=True, slots=True)
class Box:
    """A node's rectangle."""

    path: str
    x: int
    y: int
    w: int
    h: int
    title: str
    detail: str
    kind: str  # devices, trigger, group, condition, action
    error: bool = False
    highlight: bool = False

    @property
    def cx(self) -> int:
        """The middle of the box, horizontally."""
        return self.x + self.w // 2


@dataclass(frozen=True, slots=True)
class Edge:
    """An arrow between two points."""

    x1: int
    y1: int
    x2: int
    y2: int
    label: str = ""
    kind: str = "flow"


@dataclass(slots=True)
class Diagram:
    """Everything the template needs to draw the rule."""

    width: int
    height: int
    boxes: list[Box] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)
    headings: list[tuple[int, str]] = field(default_factory=list)


def _short(text: str, limit: int = 27) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def summary(node: Mapping[str, Any]) -> str:
    """A few words saying what a node is set to."""
    options = node.get("options") if isinstance(node.get("options"), dict) else {}
    assert isinstance(options, dict)
    key = node.get("type")
    if key == "telemetry.threshold":
        clear = f", clear {options['clear_at']:g}" if isinstance(options.get("clear_at"), int | float) else ""
        level = f"{options.get('operator', 'above')} {options.get('value', '?')}"
        return _short(f"{options.get('metric', '?')} {level}{clear}")
    if key == "duration" and isinstance(options.get("seconds"), int | float):
        return f"for {format_duration(options['seconds'])}"
    parts = []
    for value in options.values():
        if isinstance(value, list):
            value = ", ".join(str(v) for v in value)
        if value not in (None, "", []):
            parts.append(str(value))
    return _short(" · ".join(parts))


def devices_summary(devices: Mapping[str, Any], count: int | None) -> str:
    """The selector in a few words."""
    parts = []
    if devices.get("type"):
        parts.append(str(devices["type"]))
    labels = devices.get("labels") or {}
    parts.extend(f"{k}={v}" for k, v in sorted(labels.items()))
    if devices.get("ids"):
        parts.append(f"{len(devices['ids'])} id(s)")
    text = " · ".join(parts) or "every device"
    return _short(text if count is None else f"{text} ({count})")


def layout(
    doc: Mapping[str, Any],
    *,
    errors: Collection[str] = (),
    highlight: Collection[str] = (),
    device_count: int | None = None,
) -> Diagram:
    """Place the rule's nodes in four columns and connect them."""
    columns = [16 + i * (BOX_W + COL_GAP) for i in range(4)]
    boxes: list[Box] = []
    edges: list[Edge] = []

    def box(path: str, x: int, y: int, title: str, detail: str, kind: str, w: int = BOX_W) -> Box:
        b = Box(path, x, y, w, BOX_H, _short(title, 28), detail, kind, path in errors, path in highlight)
        boxes.append(b)
        return b

    devices = box(
        "devices",
        columns[0],
        TOP,
        "Devices",
        devices_summary(doc.get("devices") or {}, device_count),
        "devices",
    )
    triggers = []
    for i, node in enumerate(doc.get("when") or []):
        triggers.append(
            box(f"when/{i}", columns[1], TOP + i * (BOX_H + GAP_Y), _title(node), summary(node), "trigger")
        )
    for t in triggers:
        edges.append(Edge(devices.x + devices.w, devices.y + BOX_H // 2, t.x, t.y + BOX_H // 2))

    rows: list[Box] = []

    def place(node: Any, path: str, depth: int) -> None:
        y = TOP + len(rows) * (BOX_H + GAP_Y)
        x = columns[2] + depth * INDENT
        w = BOX_W - depth * INDENT
        op = group_op(node) if isinstance(node, dict) else None
        if op is not None:
            title = {"all": "ALL of", "any": "ANY of", "not": "NOT"}[op]
            rows.append(box(path, x, y, title, "", "group", w))
            body = node[op]
            children = ([] if isinstance(body, list) else [body]) if op == "not" else body
        else:
            rows.append(
                box(path, x, y, _title(node), summary(node) if isinstance(node, dict) else "", "condition", w)
            )
            child = node.get("condition") if isinstance(node, dict) else None
            children = [] if child is None else [child]
        for i, child in enumerate(children):
            place(child, f"{path}/{i}", depth + 1)

    for i, node in enumerate(doc.get("if") or []):
        place(node, f"if/{i}", 0)
    entry: Box | None = rows[0] if rows else None
    if entry is None:
        entry = box("if", columns[2], TOP, "Always", "no conditions", "group")
        rows.append(entry)
    for t in triggers:
        edges.append(Edge(t.x + t.w, t.y + BOX_H // 2, entry.x, entry.y + BOX_H // 2))
    for upper, lower in itertools.pairwise(rows):
        if lower.x > upper.x:  # nested: a connector from the parent's left edge
            edges.append(Edge(upper.x + 6, upper.y + BOX_H, lower.x, lower.y + BOX_H // 2, kind="nest"))

    then = [
        box(f"then/{i}", columns[3], TOP + i * (BOX_H + GAP_Y), _title(n), summary(n), "action")
        for i, n in enumerate(doc.get("then") or [])
    ]
    else_top = TOP + max(len(then), 1) * (BOX_H + GAP_Y) + 24
    otherwise = [
        box(f"else/{i}", columns[3], else_top + i * (BOX_H + GAP_Y), _title(n), summary(n), "action")
        for i, n in enumerate(doc.get("else") or [])
    ]
    right = entry.x + entry.w
    for a in then:
        edges.append(Edge(right, entry.y + BOX_H // 2, a.x, a.y + BOX_H // 2, "true" if a is then[0] else ""))
    for a in otherwise:
        edges.append(
            Edge(
                right,
                entry.y + BOX_H // 2,
                a.x,
                a.y + BOX_H // 2,
                "false" if a is otherwise[0] else "",
                "else",
            )
        )
    bottom = max(b.y + b.h for b in boxes) + 16
    headings = [
        (columns[0], "devices"),
        (columns[1], "when"),
        (columns[2], "if"),
        (columns[3], "then / else"),
    ]
    return Diagram(columns[3] + BOX_W + 16, bottom, boxes, edges, headings)


def _title(node: Any) -> str:
    if not isinstance(node, dict):
        return "?"
    node_type = REGISTRY.get(str(node.get("type")))
    return node_type.title if node_type else f"unknown: {node.get('type')}"


def error_paths(paths: Collection[str]) -> set[str]:
    """Problem paths as diagram boxes (a problem on a section marks no box)."""
    return {p for p in paths if p == "devices" or ("/" in p and p.split("/")[0] in SECTIONS)}
