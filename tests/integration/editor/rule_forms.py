"""Builder form data for tests: what a browser posts for a simple freezer rule."""

from __future__ import annotations

import json


def freezer_rule_form(
    name: str, *, value: str = "-10", expression: str | None = None
) -> list[tuple[str, str]]:
    """A rule: freezer temp above ``value`` raises an alarm (an expression condition if given)."""
    conditions: list[dict[str, object]] = [{"type": "telemetry.threshold", "options": {}}]
    fields = [
        ("n|if/0", "1"),
        ("o|if/0|metric", "temp"),
        ("o|if/0|operator", "above"),
        ("o|if/0|value", value),
        ("o|if/0|clear_at", ""),
    ]
    if expression is not None:
        conditions.append({"type": "expression", "options": {}})
        fields += [("n|if/1", "1"), ("o|if/1|expression", expression)]
    skeleton = {
        "enabled": True,
        "when": [{"type": "telemetry.received", "options": {}}],
        "if": conditions,
        "then": [{"type": "alarm.raise", "options": {}}],
        "else": [{"type": "alarm.clear", "options": {}}],
        "fire": "on_change",
    }
    return [
        ("skeleton", json.dumps(skeleton)),
        ("name", name),
        ("description", ""),
        ("dev_type", "freezer"),
        ("dev_labels", "region=north"),
        ("dev_ids", ""),
        ("fire", "on_change"),
        ("throttle", ""),
        ("n|when/0", "1"),
        ("o|when/0|metrics", "temp"),
        *fields,
        ("n|then/0", "1"),
        ("o|then/0|alarm_type", "freezer-warm"),
        ("o|then/0|severity", "major"),
        ("o|then/0|message", "{{ device.id }} is warm"),
        ("n|else/0", "1"),
        ("o|else/0|alarm_type", "freezer-warm"),
    ]
