"""The rule engine benchmark's workload: the fleet, its readings, the rule mix and its naive form.

``bench.engine`` measures the engine on what this module builds; everything here is seeded, so
every run gets the same readings and the same rules.

Fleet: 1,000 devices of one tenant in 100 stores (labels ``store=store-NNN``, ``region=region-RR``,
10 stores per region), each store with 7 freezers (temp, door_open, compressor_on every 10 s), a
power meter (voltage, current, energy_kwh every 5 s), a battery sensor (battery_pct, humidity every
60 s) and a gateway (door_count every 5 min), their values from the simulator's signal models
(``server.simulator.signals``; 2 % of the freezers failed two hours before the stream starts, so
some rules are true). The readings are those the fleet sends in its first 9 minutes, in time order.

Rules: a tenant's rules grow from broad to narrow, as they do in practice: up to 8 fleet-wide rules
(one per kind of problem: freezer too warm for 5 minutes, door left open, compressor off while
warm, meter under-voltage, ...), then up to 4 per region, then up to 10 per store, then per-device
rules (calibrated thresholds) for the rest. N rules are the first N of that sequence, so 10 rules
are fleet- and region-wide, 1,000 add per-store rules and 10,000 add about 9 rules per device. The
mix holds thresholds with hysteresis, expressions, durations, consecutive counts and a few sliding
windows, triggered by different metrics of different device types: a reading only reaches the
rules triggered by one of its metrics, and the device selector then filters. Every selector names
a device type, as the editor's rules do.

The rules are rule documents (``Doc``); ``compile_all`` validates and compiles them
(``engine.compiler.compile_rule``). For the naive loop, (a) in ``bench.engine``,
``naive_expression`` writes a rule as ONE rule_engine expression (selector, trigger, condition)
and ``naive_data`` gives a reading's metrics with its device's id, type and labels as that
expression's data.
"""

from __future__ import annotations

import heapq
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import rule_engine  # type: ignore[import-untyped]

from engine.compiler import CompiledRule, compile_rule
from engine.document import RuleDocument
from engine.evaluation import DeviceView
from engine.nodes.base import CompileContext
from model.devices import DataType, MetricSpec
from model.readings import Reading, Source
from server.simulator.signals import (
    BatterySignal,
    DoorCounterSignal,
    FreezerSignal,
    PowerMeterSignal,
    Signal,
    derive_seed,
)

TENANT = "acme-retail"
SEED = 20261127
STORES = 100
STORES_PER_REGION = 10
FREEZERS_PER_STORE = 7
STREAM_START = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)  # a Monday morning, store hours
BERLIN = ZoneInfo("Europe/Berlin")
SOURCE = Source("bench", "engine")

NUMBER, BOOLEAN = DataType.NUMBER, DataType.BOOLEAN
CATALOGUES: dict[str, dict[str, MetricSpec]] = {
    "freezer": {
        "temp": MetricSpec(name="temp", data_type=NUMBER),
        "door_open": MetricSpec(name="door_open", data_type=BOOLEAN),
        "compressor_on": MetricSpec(name="compressor_on", data_type=BOOLEAN),
    },
    "power-meter": {
        "voltage": MetricSpec(name="voltage", data_type=NUMBER),
        "current": MetricSpec(name="current", data_type=NUMBER),
        "energy_kwh": MetricSpec(name="energy_kwh", data_type=NUMBER),
    },
    "battery-sensor": {
        "battery_pct": MetricSpec(name="battery_pct", data_type=NUMBER),
        "humidity": MetricSpec(name="humidity", data_type=NUMBER),
    },
    "gateway": {"door_count": MetricSpec(name="door_count", data_type=NUMBER)},
}


# --- the fleet and its readings ---------------------------------------------------------------------


@dataclass(slots=True)
class BenchDevice:
    """One streamed device: what the engine sees of it, its signal and its reporting grid."""

    view: DeviceView
    signal: Signal
    interval_s: float
    phase_s: float


def store_name(store: int) -> str:
    return f"store-{store:03d}"


def region_name(store: int) -> str:
    return f"region-{(store - 1) // STORES_PER_REGION + 1:02d}"


def build_fleet(stores: int = STORES) -> list[BenchDevice]:
    """100 stores x (7 freezers, a power meter, a battery sensor, a gateway) = 1,000 devices."""
    rng = random.Random(SEED)
    start = STREAM_START.timestamp()
    fleet: list[BenchDevice] = []

    def add(device_id: str, type_id: str, store: int, signal: Signal, interval_s: float) -> None:
        labels = {"store": store_name(store), "region": region_name(store)}
        view = DeviceView(device_id, type_id, labels, BERLIN)
        fleet.append(BenchDevice(view, signal, interval_s, rng.uniform(0, interval_s)))

    for store in range(1, stores + 1):
        for n in range(1, FREEZERS_PER_STORE + 1):
            device_id = f"freezer-{store:03d}-{n}"
            failed = rng.random() < 0.02
            signal = FreezerSignal(
                derive_seed(SEED, device_id), fail_at=start - 7200 if failed else None, failures_per_day=0
            )
            add(device_id, "freezer", store, signal, 10.0)
        add(f"meter-{store:03d}", "power-meter", store, PowerMeterSignal(derive_seed(SEED, store, "m")), 5.0)
        add(
            f"battery-{store:03d}",
            "battery-sensor",
            store,
            BatterySignal(derive_seed(SEED, store, "b")),
            60.0,
        )
        add(f"gw-{store:03d}", "gateway", store, DoorCounterSignal(derive_seed(SEED, store, "g")), 300.0)
    return fleet


def stream(fleet: Sequence[BenchDevice], count: int) -> list[Reading]:
    """The first ``count`` readings the fleet sends from STREAM_START, in time order."""
    start = STREAM_START.timestamp()
    per_second = sum(1 / d.interval_s for d in fleet)
    horizon = count / per_second + 300

    def series(device: BenchDevice) -> Iterable[tuple[float, str, BenchDevice]]:
        t = start + device.phase_s
        while t < start + horizon:
            yield t, device.view.id, device
            t += device.interval_s

    out: list[Reading] = []
    for t, device_id, device in heapq.merge(*(series(d) for d in fleet)):
        out.append(
            Reading(TENANT, device_id, datetime.fromtimestamp(t, UTC), device.signal.sample(t), SOURCE)
        )
        if len(out) >= count:
            break
    return out


# --- the rule mix -----------------------------------------------------------------------------------

Doc = dict[str, Any]


def threshold(metric: str, value: float, operator: str = "above", clear_at: float | None = None) -> Doc:
    options: Doc = {"metric": metric, "operator": operator, "value": value}
    if clear_at is not None:
        options["clear_at"] = clear_at
    return {"type": "telemetry.threshold", "options": options}


def duration(seconds: float, condition: Doc, clear_seconds: float = 0) -> Doc:
    return {
        "type": "duration",
        "options": {"seconds": seconds, "clear_seconds": clear_seconds},
        "condition": condition,
    }


def consecutive(count: int, condition: Doc) -> Doc:
    return {"type": "consecutive", "options": {"count": count, "clear_count": 2}, "condition": condition}


def expression(text: str) -> Doc:
    return {"type": "expression", "options": {"expression": text}}


def window(metric: str, function: str, window_s: float, value: float) -> Doc:
    options = {"metric": metric, "function": function, "window_s": window_s, "value": value}
    return {"type": "aggregate.window", "options": options}


def _rule(
    name: str, type_id: str, trigger: list[str], condition: Doc, *, alarm: str, scope: Doc | None = None
) -> Doc:
    devices: Doc = {"type": type_id, **(scope or {})}
    return {
        "name": name,
        "devices": devices,
        "when": [{"type": "telemetry.received", "options": {"metrics": trigger}}],
        "if": [condition],
        "then": [
            {"type": "alarm.raise", "options": {"alarm_type": alarm, "severity": "major"}},
            {"type": "notify", "options": {"channels": ["ops"]}},
        ],
        "else": [{"type": "alarm.clear", "options": {"alarm_type": alarm}}],
        "throttle": {"min_interval_s": 900},
    }


Template = tuple[str, str, list[str], Doc, str]  # title, device type, trigger metrics, condition, alarm


def _from(template: Template, scope: Doc | None = None, prefix: str = "") -> Doc:
    title, type_id, trigger, condition, alarm = template
    return _rule(f"{prefix}{title}", type_id, trigger, condition, alarm=alarm, scope=scope)


def fleet_rules() -> list[Doc]:
    """The broad rules every tenant starts with (one per kind of problem, fleet-wide by type)."""
    warm = duration(300, threshold("temp", -10, clear_at=-12), clear_seconds=120)
    compressor = consecutive(6, expression("not compressor_on and temp > -14"))
    templates: list[Template] = [
        ("Freezer too warm", "freezer", ["temp"], warm, "warm"),
        ("Door left open", "freezer", ["door_open"], duration(180, expression("door_open")), "door"),
        ("Compressor off while warm", "freezer", ["temp", "compressor_on"], compressor, "compressor"),
        ("Freezer defrosting", "freezer", ["temp"], threshold("temp", 0), "defrost"),
        (
            "Under-voltage",
            "power-meter",
            ["voltage"],
            consecutive(3, threshold("voltage", 207, "below")),
            "uv",
        ),
        ("Over-current", "power-meter", ["current"], threshold("current", 160, clear_at=150), "oc"),
        ("Battery low", "battery-sensor", ["battery_pct"], threshold("battery_pct", 15, "below"), "battery"),
        ("Store crowded", "gateway", ["door_count"], threshold("door_count", 25), "crowd"),
    ]
    return [_from(t) for t in templates]


def region_rules(region: int, slot: int) -> Doc:
    """The ``slot``-th rule of a region (regions tune their own levels)."""
    name = f"region-{region:02d}"
    level = -11.0 + (region % 3) * 0.5
    templates: list[Template] = [
        ("warm, door shut", "freezer", ["temp"], expression(f"temp > {level} and not door_open"), "r-warm"),
        ("too cold", "freezer", ["temp"], threshold("temp", -26 - region % 3, "below"), "r-cold"),
        ("voltage sag", "power-meter", ["voltage"], window("voltage", "mean", 300, 215), "r-sag"),
        ("humid", "battery-sensor", ["humidity"], threshold("humidity", 70, clear_at=65), "r-humid"),
    ]
    return _from(templates[slot], {"labels": {"region": name}}, f"{name} ")


def store_rules(store: int, slot: int) -> Doc:
    """The ``slot``-th rule of a store (stores calibrate to their freezers and their load)."""
    name = store_name(store)
    warm = -9.0 - (store % 5) * 0.5
    door = duration(120, expression("door_open and temp > -14"))
    templates: list[Template] = [
        ("warm", "freezer", ["temp"], duration(300, threshold("temp", warm, clear_at=warm - 2)), "s-warm"),
        ("very warm", "freezer", ["temp"], threshold("temp", -5, clear_at=-8), "s-hot"),
        ("door", "freezer", ["door_open"], door, "s-door"),
        ("mean temp", "freezer", ["temp"], window("temp", "mean", 600, -15), "s-mean"),
        (
            "compressor",
            "freezer",
            ["compressor_on"],
            duration(1800, expression("not compressor_on")),
            "s-comp",
        ),
        ("load", "power-meter", ["current"], threshold("current", 130 + store % 20), "s-load"),
        ("voltage", "power-meter", ["voltage"], threshold("voltage", 212, "below", clear_at=215), "s-volt"),
        ("battery", "battery-sensor", ["battery_pct"], threshold("battery_pct", 25, "below"), "s-batt"),
        ("crowd", "gateway", ["door_count"], threshold("door_count", 15 + store % 10), "s-crowd"),
        (
            "humidity",
            "battery-sensor",
            ["humidity"],
            expression("humidity > 60 and battery_pct > 5"),
            "s-hum",
        ),
    ]
    return _from(templates[slot], {"labels": {"store": name}}, f"{name} ")


def device_rules(device: DeviceView, slot: int) -> Doc:
    """The ``slot``-th calibrated rule of one device (about 9 per device at 10,000 rules)."""
    scope, prefix = {"ids": [device.id]}, f"{device.id} #{slot} "
    if device.type_id == "freezer":
        level = -12.0 + (int(device.id.rsplit("-", 1)[-1]) % 4) * 0.5 + slot * 0.25
        conditions = [
            threshold("temp", level, clear_at=level - 1.5),
            duration(240 + 60 * slot, threshold("temp", level)),
            consecutive(3 + slot, threshold("temp", level)),
            expression(f"temp > {level} and compressor_on"),
        ]
        return _from(("warm", "freezer", ["temp"], conditions[slot % 4], f"d-{slot}"), scope, prefix)
    if device.type_id == "power-meter":
        if slot % 2:
            condition, metric = threshold("current", 100.0 + 5 * slot), "current"
        else:
            condition, metric = threshold("voltage", 205.0 + slot, "below"), "voltage"
        return _from(("power", "power-meter", [metric], condition, f"d-{slot}"), scope, prefix)
    if device.type_id == "battery-sensor":
        if slot % 2:
            condition, metric = threshold("battery_pct", 10 + slot, "below"), "battery_pct"
        else:
            condition, metric = threshold("humidity", 60 + slot), "humidity"
        return _from(("battery", "battery-sensor", [metric], condition, f"d-{slot}"), scope, prefix)
    return _from(
        ("crowd", "gateway", ["door_count"], threshold("door_count", 10 + slot), f"d-{slot}"), scope, prefix
    )


FLEET_CAP, REGION_SLOTS, STORE_SLOTS = 8, 4, 10


def rule_sequence(devices: Sequence[DeviceView], total: int, *, store_offset: int = 0) -> list[Doc]:
    """The tenant's rules, broad to narrow; the first N of the list are the N-rule mix.

    With ``store_offset``, the regional, store and device rules target stores (and their
    devices) that do not stream in this bench: the same rules, for another part of the tenant.
    """
    regions = STORES // STORES_PER_REGION
    docs = fleet_rules()[:FLEET_CAP]
    region_offset = store_offset // STORES_PER_REGION
    for slot in range(REGION_SLOTS):
        docs.extend(region_rules(r + region_offset, slot) for r in range(1, regions + 1))
    for slot in range(STORE_SLOTS):
        docs.extend(store_rules(s + store_offset, slot) for s in range(1, STORES + 1))
    slot = 0
    while len(docs) < total:
        for device in devices:
            doc = device_rules(device, slot)
            if store_offset:
                doc["devices"]["ids"] = [f"x{store_offset}-{device.id}"]
            docs.append(doc)
        slot += 1
    return docs[:total]


def compile_all(docs: Sequence[Doc], prefix: str) -> list[CompiledRule]:
    out = []
    for i, doc in enumerate(docs):
        context = CompileContext(TENANT, CATALOGUES[doc["devices"]["type"]])
        out.append(
            compile_rule(RuleDocument.model_validate(doc), context, rule_id=f"{prefix}{i:05d}", version=1)
        )
    return out


# --- the naive form, for (a): each rule as ONE rule_engine expression ------------------------------

_SYMBOL = re.compile(r"[^A-Za-z0-9_]")
NAIVE_CONTEXT = rule_engine.Context(default_value=None)


def _label_symbol(key: str) -> str:
    return "label_" + _SYMBOL.sub("_", key)


def _quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _naive_condition(node: Doc) -> str:
    if len(node) == 1 and next(iter(node)) in ("all", "any", "not"):
        op, body = next(iter(node.items()))
        if op == "not":
            return f"not ({_naive_condition(body)})"
        return "(" + f" {'and' if op == 'all' else 'or'} ".join(_naive_condition(c) for c in body) + ")"
    kind, options = node["type"], node.get("options", {})
    if kind in ("duration", "consecutive"):
        return _naive_condition(node["condition"])  # the naive loop has no memory: the inner test only
    if kind in ("telemetry.threshold", "aggregate.window"):  # a window as its latest value
        sign = ">" if options.get("operator", "above") == "above" else "<"
        metric = options["metric"]
        return f"({metric} != null and {metric} {sign} {options['value']})"
    if kind == "expression":
        text = options["expression"]
        names = sorted(
            set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", text)) - {"and", "or", "not", "true", "false"}
        )
        guard = " and ".join(f"{n} != null" for n in names)
        return f"({guard} and ({text}))" if guard else f"({text})"
    raise ValueError(f"no naive form for {kind}")


def naive_expression(doc: Doc) -> str:
    """The rule as ONE rule_engine expression: selector, then trigger metrics, then condition."""
    parts: list[str] = []
    devices = doc.get("devices", {})
    if devices.get("ids"):
        parts.append("device in [" + ", ".join(_quote(i) for i in devices["ids"]) + "]")
    if devices.get("type"):
        parts.append(f"type == {_quote(devices['type'])}")
    for key, value in sorted(devices.get("labels", {}).items()):
        parts.append(f"{_label_symbol(key)} == {_quote(value)}")
    for trigger in doc["when"]:
        metrics = trigger.get("options", {}).get("metrics", [])
        if metrics:
            parts.append("(" + " or ".join(f"{m} != null" for m in metrics) + ")")
    parts.extend(_naive_condition(c) for c in doc.get("if", []))
    return " and ".join(parts) if parts else "true"


def naive_data(reading: Reading, device: DeviceView) -> dict[str, Any]:
    data: dict[str, Any] = dict(reading.metrics)
    data["device"], data["type"] = device.id, device.type_id
    for key, value in device.labels.items():
        data[_label_symbol(key)] = value
    return data
