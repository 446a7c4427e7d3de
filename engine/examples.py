"""Olivia's freezer rule from the scenarios, as one builder shared by the docs, tests and benchmarks.

"When a freezer in region north stays above -10 °C for 5 minutes, raise a major alarm and notify
the night shift; clear it when the temperature is back below -12 °C for 2 minutes."
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def freezer_rule(
    *,
    name: str = "Freezer too warm",
    labels: Mapping[str, str] | None = None,
    value: float = -10,
    clear_at: float = -12,
    seconds: float = 300,
    clear_seconds: float = 120,
    channels: Sequence[str] = ("night-shift",),
    notify: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Olivia's rule (labels default to ``region=north``), with its levels, delays and channels
    as parameters; ``notify`` adds options to the notify action (title, body, policy), and no
    channels means no notify action."""
    devices: dict[str, Any] = {"type": "freezer"}
    chosen = {"region": "north"} if labels is None else dict(labels)
    if chosen:
        devices["labels"] = chosen
    then: list[dict[str, Any]] = [
        {"type": "alarm.raise", "options": {"alarm_type": "freezer-warm", "severity": "major"}}
    ]
    if channels:
        then.append({"type": "notify", "options": {"channels": list(channels), **(notify or {})}})
    return {
        "name": name,
        "devices": devices,
        "when": [{"type": "telemetry.received", "options": {"metrics": ["temp"]}}],
        "if": [
            {
                "type": "duration",
                "options": {"seconds": seconds, "clear_seconds": clear_seconds},
                "condition": {
                    "type": "telemetry.threshold",
                    "options": {"metric": "temp", "value": value, "clear_at": clear_at},
                },
            }
        ],
        "then": then,
        "else": [{"type": "alarm.clear", "options": {"alarm_type": "freezer-warm"}}],
    }
