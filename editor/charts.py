"""Line charts of a metric over time, with threshold lines and fire/clear marks (server-side SVG).

Only geometry is computed here; ``templates/_chart.html`` draws it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

WIDTH = 720
HEIGHT = 260
LEFT = 48
RIGHT = 12
TOP = 14
BOTTOM = 30


@dataclass(frozen=True, slots=True)
class Line:
    """A horizontal level (a threshold or its clear level)."""

    y: float
    value: float
    label: str
    kind: str  # threshold, clear


@dataclass(frozen=True, slots=True)
class Mark:
    """A moment the rule fired or cleared."""

    x: float
    y: float
    at: datetime
    kind: str  # fired, cleared
    label: str


@dataclass(slots=True)
class Chart:
    """What the template draws."""

    metric: str
    points: str  # SVG polyline points
    lines: list[Line] = field(default_factory=list)
    marks: list[Mark] = field(default_factory=list)
    y_ticks: list[tuple[float, str]] = field(default_factory=list)
    x_ticks: list[tuple[float, str]] = field(default_factory=list)
    width: int = WIDTH
    height: int = HEIGHT
    empty: bool = False
    samples: int = 0

    @property
    def fired(self) -> int:
        """Fire marks drawn."""
        return sum(1 for m in self.marks if m.kind == "fired")

    @property
    def cleared(self) -> int:
        """Clear marks drawn."""
        return sum(1 for m in self.marks if m.kind == "cleared")


def line_chart(
    metric: str,
    series: Sequence[tuple[datetime, float]],
    start: datetime,
    end: datetime,
    *,
    levels: Sequence[tuple[float, str, str]] = (),
    events: Sequence[tuple[datetime, str, str]] = (),
) -> Chart:
    """Scale the series, the levels ((value, label, kind)) and the events ((at, kind, label))."""
    values = [v for _, v in series] + [v for v, _, _ in levels]
    if not series:
        return Chart(metric, "", empty=True)
    low, high = min(values), max(values)
    if high == low:
        low, high = low - 1, high + 1
    pad = (high - low) * 0.08
    low, high = low - pad, high + pad
    span = max((end - start).total_seconds(), 1.0)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x_of(ts: datetime) -> float:
        return round(LEFT + (ts - start).total_seconds() / span * plot_w, 1)

    def y_of(value: float) -> float:
        return round(TOP + (high - value) / (high - low) * plot_h, 1)

    points = " ".join(f"{x_of(ts)},{y_of(v)}" for ts, v in series)
    lines = [Line(y_of(v), v, label, kind) for v, label, kind in levels]
    nearest = sorted(series)
    marks = []
    for at, kind, label in events:
        value = _value_at(nearest, at)
        marks.append(Mark(x_of(at), y_of(value) if value is not None else TOP, at, kind, label))
    y_ticks = [(y_of(low + (high - low) * i / 4), f"{low + (high - low) * i / 4:.3g}") for i in range(5)]
    fmt = "%H:%M" if span <= 2 * 86400 else "%d %b"
    x_ticks = []
    for i in range(5):
        ts = start + (end - start) * (i / 4)
        x_ticks.append((x_of(ts), ts.strftime(fmt)))
    return Chart(metric, points, lines, marks, y_ticks, x_ticks, samples=len(series))


def _value_at(series: Sequence[tuple[datetime, float]], at: datetime) -> float | None:
    best: tuple[float, float] | None = None
    for ts, value in series:
        distance = abs((ts - at).total_seconds())
        if best is None or distance < best[0]:
            best = (distance, value)
    return None if best is None else best[1]
