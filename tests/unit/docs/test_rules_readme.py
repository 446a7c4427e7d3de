"""docs/rules/README.md: every JSON example is a valid rule (or part of one, or a backtest request),
and Olivia's rule does what the page says it does."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from api.routers.rule_backtests import RuleBacktestIn
from engine.backtest import replay
from engine.compiler import CompiledRule, compile_rule
from engine.document import RuleDocument
from engine.evaluation import DeviceView
from engine.nodes.base import CompileContext
from model.devices import DataType, MetricSpec
from model.readings import Reading, Source

README = Path(__file__).resolve().parents[3] / "docs" / "rules" / "README.md"
JSON_BLOCK = re.compile(r"```json\n(.*?)```", re.DOTALL)
FREEZER = {
    "temp": MetricSpec(name="temp", data_type=DataType.NUMBER),
    "door_open": MetricSpec(name="door_open", data_type=DataType.BOOLEAN),
    "compressor_on": MetricSpec(name="compressor_on", data_type=DataType.BOOLEAN),
}
TENANT = "acme-retail"
T0 = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)


def _examples() -> list[Any]:
    blocks = JSON_BLOCK.findall(README.read_text())
    assert len(blocks) >= 3, "the README lost its examples"
    return [json.loads(block) for block in blocks]


def _compile(document: dict[str, Any]) -> CompiledRule:
    """Compiled as the API does on save: the document model, then every node through the registry."""
    return compile_rule(RuleDocument.model_validate(document), CompileContext(TENANT, FREEZER), rule_id="r")


@pytest.mark.parametrize("example", _examples(), ids=lambda e: str(e.get("name") or e.get("type") or list(e)))
def test_every_example_compiles(example: dict[str, Any]) -> None:
    if "when" in example:  # a whole rule
        _compile(example)
    elif {"range", "since", "device_ids"} & set(example):  # a backtest request body
        RuleBacktestIn.model_validate(example)
    else:  # a condition node or group, shown alone: put it where it goes
        trigger = {"type": "telemetry.received", "options": {"metrics": ["temp"]}}
        _compile({"name": "snippet", "when": [trigger], "if": [example]})


def test_olivias_rule_does_what_the_page_says() -> None:
    [olivia] = [e for e in _examples() if "when" in e]
    assert olivia["devices"] == {"type": "freezer", "labels": {"region": "north"}}
    rule = _compile(olivia)
    north = DeviceView("freezer-01-1", "freezer", {"region": "north"}, ZoneInfo("Europe/Berlin"))
    south = DeviceView("freezer-21-1", "freezer", {"region": "south"}, ZoneInfo("Europe/Berlin"))
    # Every 10 s: a door opening (2 minutes at -5), cold, the compressor failing (10 minutes at -5),
    # back into the hysteresis band (-11: still active), then below -12 for good.
    temps = [-18.0] * 6 + [-5.0] * 12 + [-18.0] * 12 + [-5.0] * 60 + [-11.0] * 30 + [-14.0] * 30
    source = Source("test", "readme")

    def readings(device: DeviceView) -> list[Reading]:
        return [
            Reading(TENANT, device.id, T0 + timedelta(seconds=10 * i), {"temp": t}, source)
            for i, t in enumerate(temps)
        ]

    report = replay(rule, [(north, readings(north)), (south, readings(south))])
    assert report.skipped == [south.id]
    [firing] = report.firings  # the door opening never lasted 5 minutes
    failed_at = T0 + timedelta(seconds=10 * 30)
    assert firing.at == failed_at + timedelta(minutes=5)
    assert firing.calls == ("alarm.raise", "notify")
    [clear] = report.clears  # not in the band at -11; 2 minutes after going below -12
    below_at = T0 + timedelta(seconds=10 * 120)
    assert clear.at == below_at + timedelta(minutes=2) and clear.calls == ("alarm.clear",)
    [alarm] = report.alarms
    assert (alarm.alarm_type, alarm.severity) == ("freezer-warm", "major")
    assert (alarm.raised_at, alarm.cleared_at) == (firing.at, clear.at)
    assert report.notifications == 1
