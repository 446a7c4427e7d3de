"""CompiledExpression.levels: hand-worked cases and a randomized check of its soundness contract."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from random import Random

import pytest

from engine.errors import RuleValidationError
from engine.expressions import CompiledExpression, ExpressionRuntimeError, compile_expression
from model.readings import MetricValue
from tests.unit.engine._rules import catalogue

NUMBERS = ("temp", "humidity", "battery_pct", "count")
FLAGS = ("door_open", "alarm")
CATALOGUE = catalogue(("temp", "humidity", "battery_pct"), ("count",), FLAGS, ("mode",))
Levels = Mapping[str, tuple[float, ...] | None]


def levels(text: str) -> dict[str, tuple[float, ...] | None]:
    return dict(compile_expression(text, CATALOGUE, "p").levels)


# --- hand-worked cases ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("temp > -10 and not door_open", {"temp": (-10.0,), "door_open": None}),
        ("temp > -11 and temp < 5 or temp == 0", {"temp": (-11.0, 0.0, 5.0)}),
        ("humidity > 60 and battery_pct > 5", {"humidity": (60.0,), "battery_pct": (5.0,)}),
        ("temp + 2 > 0", {"temp": None}),
        ("temp > humidity", {"temp": None, "humidity": None}),
        ("-10 < temp", {"temp": (-10.0,)}),
        ("5 >= temp and 5 != temp", {"temp": (5.0,)}),
        ("not (temp > 3)", {"temp": (3.0,)}),
        ("temp > 3 and temp * 2 < 10", {"temp": None}),
        ("temp > 3 or humidity - temp > 1", {"temp": None, "humidity": None}),
        ("temp > 3 and door_open", {"temp": (3.0,), "door_open": None}),
        ("door_open == alarm", {"door_open": None, "alarm": None}),
        # literal forms the language accepts (and rule_engine folds to one literal)
        (
            "temp < 1e3 and temp > .5 and temp != 5. and temp >= 0x10 and temp <= 2.50",
            {"temp": (0.5, 2.5, 5.0, 16.0, 1000.0)},
        ),
        (
            "temp > 0b101 or temp < 0o17 or temp == -(3) or temp == 2 * 4 or temp < 1E-2",
            {"temp": (-3.0, 0.01, 5.0, 8.0, 15.0)},
        ),
        ("count == 3 and count != 3.0", {"count": (3.0,)}),
        ("temp > -0 or temp < 0", {"temp": (0.0,)}),
        ("temp > 0.1", {"temp": (0.1,)}),
        # comparisons combined in other ways are still only comparisons with literals
        ("(temp > 3) == door_open", {"temp": (3.0,), "door_open": None}),
        ("temp > 3 == true", {"temp": (3.0,)}),
        ("door_open ? temp > 1 : humidity < 2", {"door_open": None, "temp": (1.0,), "humidity": (2.0,)}),
        # other uses
        ("-temp > 1", {"temp": None}),
        ("temp.floor > 1", {"temp": None}),
        ("temp in [1, 2] or temp > 1", {"temp": None}),
        ("temp == null", {"temp": None}),
        ("mode == 'auto' and count > 2", {"mode": None, "count": (2.0,)}),
        ("door_open == true", {"door_open": None}),
        # literals that cannot serve as float levels
        ("temp > nan", {"temp": None}),
        ("temp < inf", {"temp": None}),
        ("temp < 1e20", {"temp": None}),
        ("temp < 9007199254740993", {"temp": None}),
        ("temp < 9007199254740991", {"temp": (9007199254740991.0,)}),
        # folded away by the parser: the value cannot matter, but it is reported conservatively
        ("true ? temp > 3 : humidity > 1", {"temp": (3.0,), "humidity": None}),
    ],
)
def test_hand_worked_levels(text: str, expected: dict[str, tuple[float, ...] | None]) -> None:
    assert levels(text) == expected


def test_levels_cover_the_symbols_are_floats_and_computed_at_compile_time() -> None:
    compiled = compile_expression("temp > 1 and temp > 1.0 and not door_open", CATALOGUE, "p")
    assert set(compiled.levels) == compiled.symbols
    assert compiled.levels["temp"] == (1.0,) and all(type(x) is float for x in compiled.levels["temp"])
    before = compiled.levels
    assert compiled.evaluate({"temp": 2, "door_open": False}) is True
    assert compiled.levels is before
    assert "levels" not in repr(compiled)
    copied = copy.deepcopy(compiled)  # as bench/engine.py's fork does with whole engine cores
    assert copied.levels == compiled.levels and copied.evaluate({"temp": 0, "door_open": False}) is False


# --- randomized soundness check --------------------------------------------------------------------

LITERALS = (
    ("0", 0.0),
    ("1", 1.0),
    ("-1", -1.0),
    ("2.5", 2.5),
    ("-10", -10.0),
    ("60", 60.0),
    ("0.1", 0.1),
    ("-0.5", -0.5),
    (".5", 0.5),
    ("1e1", 10.0),
    ("0x10", 16.0),
    ("3 * 2", 6.0),
    ("-(4)", -4.0),
    ("1 / 3", 1 / 3),
    ("2.0", 2.0),
)
OPS = ("<", "<=", ">", ">=", "==", "!=")


@dataclass
class Generator:
    rng: Random
    literals: set[float] = field(default_factory=set)

    def literal(self) -> str:
        text, value = self.rng.choice(LITERALS)
        self.literals.add(value)
        return f"({text})" if " " in text else text

    def number(self) -> str:
        """A numeric operand: mostly a bare symbol, sometimes arithmetic."""
        r = self.rng.random()
        symbol = self.rng.choice(NUMBERS)
        if r < 0.75:
            return symbol
        op = self.rng.choice(("+", "-", "*", "/", "%"))
        other = self.rng.choice((*NUMBERS, self.literal()))
        return f"({symbol} {op} {other})"

    def boolean(self, depth: int) -> str:
        r = self.rng.random()
        if depth <= 0 or r < 0.35:  # the common leaf: a symbol compared with a literal
            left, right = self.rng.choice(NUMBERS), self.literal()
            if self.rng.random() < 0.3:
                left, right = right, left
            return f"{left} {self.rng.choice(OPS)} {right}"
        if r < 0.45:  # arithmetic or a symbol on one side
            return (
                f"{self.number()} {self.rng.choice(OPS)} {self.rng.choice((self.number(), self.literal()))}"
            )
        if r < 0.52:
            flag = self.rng.choice(FLAGS)
            return self.rng.choice((flag, f"not {flag}", f"{flag} == {self.rng.choice(FLAGS)}"))
        if r < 0.56:
            return f"({self.boolean(depth - 1)}) == ({self.boolean(depth - 1)})"
        if r < 0.60:
            return f"({self.boolean(depth - 1)} ? {self.boolean(depth - 1)} : {self.boolean(depth - 1)})"
        if r < 0.63:
            return self.rng.choice(
                (
                    f"{self.rng.choice(NUMBERS)}.floor > {self.literal()}",
                    f"{self.rng.choice(NUMBERS)} in [1, 2.5]",
                )
            )
        if r < 0.73:
            return f"not ({self.boolean(depth - 1)})"
        joiner = self.rng.choice((" and ", " or "))
        return f"({self.boolean(depth - 1)}{joiner}{self.boolean(depth - 1)})"


def outcome(compiled: CompiledExpression, values: Mapping[str, MetricValue]) -> tuple[str, bool | None]:
    try:
        return ("value", compiled.evaluate(values))
    except ExpressionRuntimeError:
        return ("error", None)


def sign(value: float, level: float) -> int:
    return (value > level) - (value < level)


def premise(levels: Levels, a: Mapping[str, MetricValue], b: Mapping[str, MetricValue]) -> bool:
    """The contract's premise, checked independently of how the pair was made."""
    for name, cuts in levels.items():
        x, y = a[name], b[name]
        if cuts is None:
            if type(x) is not type(y) or x != y:
                return False
            if isinstance(x, float) and isinstance(y, float) and math.copysign(1, x) != math.copysign(1, y):
                return False
            continue
        for v in (x, y):
            if (
                isinstance(v, bool)
                or not isinstance(v, int | float)
                or (isinstance(v, float) and math.isnan(v))
            ):
                return False
        assert isinstance(x, int | float) and isinstance(y, int | float)
        if any(sign(x, c) != sign(y, c) for c in cuts):
            return False
    return True


def start_value(rng: Random, cuts: tuple[float, ...]) -> float | int:
    r = rng.random()
    if r < 0.02:
        return rng.choice((math.inf, -math.inf))
    if cuts and r < 0.3:
        c = rng.choice(cuts)
        return int(c) if c.is_integer() and rng.random() < 0.5 else c
    if cuts and r < 0.55:
        c = rng.choice(cuts)
        return rng.choice((math.nextafter(c, math.inf), math.nextafter(c, -math.inf), c + 0.25, c - 1))
    if r < 0.75:
        return rng.randint(-20, 70)
    return round(rng.uniform(-20, 70), rng.choice((0, 1, 3, 9)))


def same_cell(rng: Random, value: float | int, cuts: tuple[float, ...]) -> float | int:
    """A value with the same 3-way sign against every level: equal to it, or between the same two."""
    if math.isinf(value):  # infinities are in the premise too (beyond every level)
        return rng.choice((value, math.copysign(1e300, value), 10**400 if value > 0 else -(10**400)))
    hit = [c for c in cuts if value == c]
    if hit:
        c = hit[0]
        options: list[float | int] = [c, value]
        if c.is_integer():
            options.append(int(c))
        if c == 0:
            options.append(-0.0)
        return rng.choice(options)
    lo = max((c for c in cuts if c < value), default=None)
    hi = min((c for c in cuts if c > value), default=None)
    low = lo if lo is not None else value - rng.choice((1, 30, 1e6))
    high = hi if hi is not None else value + rng.choice((1, 30, 1e6))
    options = [value, rng.uniform(low, high), round(rng.uniform(low, high), 2)]
    if lo is not None:
        options.append(math.nextafter(lo, math.inf))
    if hi is not None:
        options.append(math.nextafter(hi, -math.inf))
    first, last = math.floor(low) + 1, math.ceil(high) - 1
    if first <= last:
        options.append(rng.randint(first, last))
    inside = [v for v in options if (lo is None or v > lo) and (hi is None or v < hi)]
    return rng.choice(inside)


def other_value(rng: Random, name: str) -> MetricValue:
    if name in FLAGS:
        return rng.random() < 0.5
    if name == "mode":
        return rng.choice(("auto", "manual"))
    return rng.choice((-3, -1, 0, 0.0, 0.5, 1, 2, 2.5, 7, -0.5, 10, 60.0))


@dataclass
class Tally:
    expressions: int = 0
    with_levels: int = 0
    pairs: int = 0
    pairs_moving_a_level_symbol: int = 0
    counterexamples: list[tuple[str, dict[str, MetricValue], dict[str, MetricValue]]] = field(
        default_factory=list
    )


def check(seed: int, expressions: int, pairs: int, wrong_levels: bool = False) -> Tally:
    """Random expressions, random pairs of assignments meeting the premise; count disagreements.

    With ``wrong_levels``, the levels are replaced by an unsound version (every numeric symbol that
    got None is given all the literals of the expression as levels) to show the check has teeth.
    """
    rng = Random(seed)
    tally = Tally()
    while tally.expressions < expressions:
        generator = Generator(rng)
        text = generator.boolean(rng.randint(1, 4))
        try:
            compiled = compile_expression(text, CATALOGUE, "p")
        except RuleValidationError:
            continue
        tally.expressions += 1
        used: Levels = compiled.levels
        if wrong_levels:
            cuts = tuple(sorted(generator.literals))
            used = {k: cuts if v is None and k in NUMBERS else v for k, v in used.items()}
        if any(v is not None for v in used.values()):
            tally.with_levels += 1
        for _ in range(pairs):
            a: dict[str, MetricValue] = {}
            b: dict[str, MetricValue] = {}
            for name, cut in used.items():
                if cut is None:
                    a[name] = other_value(rng, name)
                    b[name] = a[name]
                else:
                    a[name] = start_value(rng, cut)
                    b[name] = same_cell(rng, a[name], cut)  # type: ignore[arg-type]
            if rng.random() < 0.1:  # now and then an unrelated pair, kept only if it meets the premise
                b = {
                    name: other_value(rng, name) if cut is None else start_value(rng, cut)
                    for name, cut in used.items()
                }
            if not premise(used, a, b):
                continue
            tally.pairs += 1
            if any(used[k] is not None and (a[k] != b[k] or type(a[k]) is not type(b[k])) for k in used):
                tally.pairs_moving_a_level_symbol += 1
            if outcome(compiled, a) != outcome(compiled, b):
                tally.counterexamples.append((text, a, b))
    return tally


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_levels_are_sound_on_random_expressions(seed: int) -> None:
    tally = check(seed, expressions=150, pairs=40)
    assert tally.counterexamples == []
    assert tally.with_levels >= 100
    assert tally.pairs >= 5000
    assert tally.pairs_moving_a_level_symbol >= 2500


def test_the_random_check_catches_unsound_levels() -> None:
    tally = check(7, expressions=150, pairs=40, wrong_levels=True)
    assert len(tally.counterexamples) >= 10


def test_why_literals_from_2_pow_53_get_no_levels() -> None:
    """There, values on the same side of the literal's float (or equal to it) can compare differently."""
    exact = compile_expression("temp == 1180591620717411303424", CATALOGUE, "p")  # 2**70, a float exactly
    assert exact.levels == {"temp": None}
    assert 2**70 == 2.0**70 and exact.evaluate({"temp": 2**70}) != exact.evaluate({"temp": 2.0**70})
    rounded = compile_expression("temp > 9007199254740993", CATALOGUE, "p")  # 2**53 + 1: its float is 2**53
    assert rounded.levels == {"temp": None}
    assert 9007199254740993 > 2.0**53 and 9007199254740994 > 2.0**53
    assert rounded.evaluate({"temp": 9007199254740993}) != rounded.evaluate({"temp": 9007199254740994})
