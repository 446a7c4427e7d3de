"""CompiledExpression's fast path: which expressions get one, and a randomized check that it is exact."""

from __future__ import annotations

import copy
import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from random import Random
from typing import Any

import pytest
import rule_engine

from engine import expressions
from engine.errors import RuleValidationError
from engine.expressions import CompiledExpression, ExpressionRuntimeError, compile_expression
from tests.unit.engine._rules import catalogue

NUMBERS = ("temp", "humidity", "battery_pct", "count")
FLAGS = ("door_open", "compressor_on")
CATALOGUE = catalogue(("temp", "humidity", "battery_pct"), ("count",), FLAGS, ("mode",))
Outcome = tuple[str, bool | None]


def compiled(text: str) -> CompiledExpression:
    return compile_expression(text, CATALOGUE, "p")


def outcome(call: Callable[[Mapping[str, Any]], bool], values: Mapping[str, Any]) -> Outcome:
    """What a call returned, or which way it failed: the thing both routes must agree on."""
    try:
        result = call(values)
    except ExpressionRuntimeError:
        return ("error", None)
    except ValueError:  # an int too long for str(), raised by evaluate's conversion on either route
        return ("ValueError", None)
    assert type(result) is bool
    return ("value", result)


# --- which expressions get a fast path -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fast"),
    [
        # the subset
        ("temp > -10 and not door_open", True),
        ("humidity > 60 and battery_pct > 5", True),
        ("not compressor_on and temp > -14", True),
        ("-10 < temp", True),
        ("temp > 3 or (humidity <= 1e3 and not (count != 0x10))", True),
        ("temp >= 2 * 5 and temp < -(4)", True),  # literals folded by rule_engine
        ("temp == 1 / 3", True),
        ("temp < inf and temp > -1e400", True),
        ("mode == 'auto' or mode != \"manual\"", True),
        ("door_open", True),
        ("door_open == true or compressor_on != false", True),
        ("true", True),
        ("false and temp > 1", True),
        ("temp or door_open", True),  # a number used as a boolean: Decimal truthiness on both routes
        ("not temp", True),
        ("mode and door_open", True),
        ("true ? temp > 3 : false", True),  # folded by the parser into ``temp > 3``
        # outside it
        ("temp + 1 > 0", False),
        ("temp * 2 <= 10", False),
        ("-temp > 1", False),
        ("temp > humidity", False),
        ("1 < temp and temp <= humidity", False),
        ("temp == door_open", False),
        ("(temp > 1) == door_open", False),
        ("temp > 1 == true", False),
        ("door_open ? temp > 1 : false", False),
        ("temp in [1, 2]", False),
        ("temp.floor > 1", False),
        ("temp == null", False),
        ("temp > nan", False),
        ("temp == nan", False),
        ("temp == 'x'", False),  # a number against a string: rule_engine's type rule, not taken over
        ("mode == 1", False),
        ("mode < 'b'", False),
        ("door_open < true", False),
        ("temp == true", False),
        ("(true ? temp > 3 : humidity > 1) and door_open", False),  # humidity folded away
    ],
)
def test_which_expressions_get_a_fast_path(text: str, fast: bool) -> None:
    assert (compiled(text)._fast is not None) is fast


def test_regular_expressions_get_no_fast_path() -> None:
    """compile_expression refuses them outright; a Rule built by hand shows the walk declines them too."""
    with pytest.raises(RuleValidationError):
        compiled("mode =~ 'a'")
    types = rule_engine.type_resolver_from_dict({"mode": rule_engine.DataType.STRING})
    rule = rule_engine.Rule("mode =~ 'a.'", context=rule_engine.Context(type_resolver=types))
    expression = CompiledExpression("mode =~ 'a.'", rule, frozenset({"mode"}))
    assert expression._fast is None
    assert expression.evaluate({"mode": "ab"}) is True and expression.evaluate({"mode": "b"}) is False


# --- hand-worked values ----------------------------------------------------------------------------

NAN, INF = math.nan, math.inf


@pytest.mark.parametrize(
    ("text", "values", "expected", "taken"),
    [
        ("temp > -10 and not door_open", {"temp": -4.5, "door_open": False}, ("value", True), True),
        ("temp > -10 and not door_open", {"temp": -10, "door_open": False}, ("value", False), True),
        ("temp > -10 and not door_open", {"temp": -9.99, "door_open": True}, ("value", False), True),
        ("not compressor_on and temp > -14", {"compressor_on": False, "temp": -14.0}, ("value", False), True),
        # a bool or a string for a number, a number for a flag: rule_engine's type error
        ("temp > -10 and not door_open", {"temp": True, "door_open": False}, ("error", None), False),
        ("temp > -10 and not door_open", {"temp": "5", "door_open": False}, ("error", None), False),
        ("temp > -10 and not door_open", {"temp": 5, "door_open": 0}, ("error", None), False),
        ("mode == 'auto'", {"mode": 1}, ("error", None), False),
        # ... unless a short-circuit never reaches the symbol
        ("not door_open and temp > -10", {"door_open": True, "temp": "x"}, ("value", False), False),
        ("door_open or temp > -10", {"door_open": True, "temp": True}, ("value", True), False),
        # NaN: an ordered comparison raises, an equality is false
        ("temp > -10 and not door_open", {"temp": NAN, "door_open": False}, ("error", None), False),
        ("temp == 0 or door_open", {"temp": NAN, "door_open": True}, ("value", True), False),
        ("temp != 0", {"temp": NAN}, ("value", True), False),
        # infinities, zeros, exact decimals
        ("temp < inf", {"temp": INF}, ("value", False), True),
        ("temp > -inf", {"temp": -INF}, ("value", False), True),
        ("temp > 1e308", {"temp": INF}, ("value", True), True),
        ("temp == 0", {"temp": -0.0}, ("value", True), True),
        ("not temp", {"temp": -0.0}, ("value", True), True),
        ("temp == 0.1", {"temp": 0.1}, ("value", True), True),  # str(0.1) is '0.1'
        ("temp == 1 / 3", {"temp": 1 / 3}, ("value", False), True),  # 16 digits against 28
        ("temp > 9007199254740992", {"temp": 9007199254740993}, ("value", True), True),  # floats would tie
        ("temp > 9007199254740992", {"temp": 9007199254740993.0}, ("value", False), True),
        ("count >= 3", {"count": 3.0}, ("value", True), True),
        ("door_open == true", {"door_open": True}, ("value", True), True),
        ("mode != 'auto'", {"mode": "manual"}, ("value", True), True),
        # missing, extra and None values go to rule_engine as well
        ("temp > 1", {}, ("error", None), False),
        ("temp > 1", {"temp": None}, ("error", None), False),
        ("temp > 1", {"temp": 2, "humidity": 1}, ("value", True), False),
        ("door_open or temp > 1", {"door_open": True}, ("value", True), False),
        # an int too long for str(): evaluate's own conversion raises ValueError, as it always did
        ("temp > 1", {"temp": 10**5000}, ("ValueError", None), False),
    ],
)
def test_hand_worked_values(text: str, values: dict[str, Any], expected: Outcome, taken: bool) -> None:
    expression = compiled(text)
    assert expression._fast is not None
    assert outcome(expression.evaluate, values) == outcome(expression._evaluate_slow, values) == expected
    assert (expression._fast(values) is not None) is taken


def test_the_fast_path_survives_a_deep_copy() -> None:
    expression = compiled("temp > -10 and not door_open")
    copied = copy.deepcopy(expression)  # as bench/engine.py's fork does with whole engine cores
    assert copied._fast is not None
    assert copied.evaluate({"temp": 0, "door_open": False}) is True
    assert copied.evaluate({"temp": -10.0, "door_open": False}) is False


# --- randomized equivalence ------------------------------------------------------------------------

LITERALS: tuple[tuple[str, float | int], ...] = (
    ("0", 0),
    ("1", 1),
    ("-1", -1),
    ("2.5", 2.5),
    ("-10", -10),
    ("60", 60),
    ("0.1", 0.1),
    ("-0.5", -0.5),
    (".5", 0.5),
    ("1e1", 10),
    ("0x10", 16),
    ("(3 * 2)", 6),
    ("(1 / 3)", 1 / 3),
    ("2.0", 2),
    ("-0", 0),
    ("0.30000000000000004", 0.30000000000000004),
    ("1e308", 1e308),
    ("-1e308", -1e308),
    ("1e-300", 1e-300),
    ("5e-324", 5e-324),
    ("9007199254740992", 2**53),
    ("9007199254740993", 2**53 + 1),
    ("100000000000000000000", 10**20),
    ("1e400", INF),
    ("inf", INF),
    ("-inf", -INF),
    ("nan", NAN),
)
OPS = ("<", "<=", ">", ">=", "==", "!=")
STRING_LITERALS = ("'auto'", "'manual'", "''", '"x"')
ODD_NUMBERS: tuple[float | int, ...] = (
    NAN,
    INF,
    -INF,
    -0.0,
    0,
    0.0,
    5e-324,
    -5e-324,
    1e-300,
    1e308,
    -1e308,
    2**53,
    2**53 + 1,
    float(2**53),
    10**30,
    -(10**30),
    1e30,
)


@dataclass
class Generator:
    """Random expressions: mostly the fast path's subset, mixed with constructs outside it."""

    rng: Random
    literals: list[float | int] = field(default_factory=list)

    def literal(self) -> str:
        text, value = self.rng.choice(LITERALS)
        self.literals.append(value)
        return text

    def comparison(self) -> str:
        r = self.rng.random()
        if r < 0.7:
            left, right = self.rng.choice(NUMBERS), self.literal()
            if self.rng.random() < 0.3:
                left, right = right, left
            return f"{left} {self.rng.choice(OPS)} {right}"
        if r < 0.85:
            return f"mode {self.rng.choice(('==', '!='))} {self.rng.choice(STRING_LITERALS)}"
        flag = self.rng.choice(FLAGS)
        return f"{flag} {self.rng.choice(('==', '!='))} {self.rng.choice(('true', 'false'))}"

    def outside(self, depth: int) -> str:
        number, other = self.rng.choice(NUMBERS), self.rng.choice(NUMBERS)
        op = self.rng.choice(OPS)
        return self.rng.choice(
            (
                f"{number} + {self.literal()} {op} {self.literal()}",
                f"{number} * 2 {op} {self.literal()}",
                f"-{number} {op} {self.literal()}",
                f"{number} {op} {other}",
                f"{number} in [1, 2.5]",
                f"{number}.floor {op} {self.literal()}",
                f"{number} == null",
                "mode < 'm'",
                "mode == 1",
                f"{self.rng.choice(FLAGS)} == {self.rng.choice(FLAGS)}",
                f"({self.boolean(depth - 1)}) == ({self.boolean(depth - 1)})",
                f"({self.boolean(depth - 1)} ? {self.boolean(depth - 1)} : {self.boolean(depth - 1)})",
            )
        )

    def boolean(self, depth: int) -> str:
        r = self.rng.random()
        if depth <= 0 or r < 0.3:
            return self.comparison()
        if r < 0.4:
            flag = self.rng.choice(FLAGS)
            return self.rng.choice(
                (flag, f"not {flag}", "true", "false", self.rng.choice(NUMBERS), "mode", f"not {NUMBERS[0]}")
            )
        if r < 0.53:
            return self.outside(depth)
        if r < 0.6:
            return f"not ({self.boolean(depth - 1)})"
        joiner = self.rng.choice((" and ", " or "))
        return f"({self.boolean(depth - 1)}{joiner}{self.boolean(depth - 1)})"

    # values

    def number(self) -> Any:
        r = self.rng.random()
        finite = [v for v in self.literals if not math.isnan(v)]
        if finite and r < 0.4:  # at a literal, as int or float, or its float neighbours
            c = self.rng.choice(finite)
            options: list[Any] = [c, float(c)]
            if math.isfinite(c) and float(c).is_integer():
                options.append(int(c))
            if math.isfinite(c):
                options += [math.nextafter(float(c), INF), math.nextafter(float(c), -INF)]
            if c == 0:
                options.append(-0.0)
            return self.rng.choice(options)
        if r < 0.52:
            return self.rng.choice(ODD_NUMBERS)
        if r < 0.6:  # a reading of the wrong type for the catalogue
            return self.rng.choice((True, False, "1", "x", ""))
        if r < 0.605:
            return 10**5000  # too long for str()
        if r < 0.8:
            return self.rng.randint(-20, 70)
        return round(self.rng.uniform(-20, 70), self.rng.choice((0, 1, 3, 17)))

    def value(self, name: str) -> Any:
        if name in NUMBERS:
            return self.number()
        if name in FLAGS:
            return (
                self.rng.random() < 0.5 if self.rng.random() < 0.9 else self.rng.choice((0, 1, 1.0, "true"))
            )
        return (
            self.rng.choice(("auto", "manual", "", "x"))
            if self.rng.random() < 0.9
            else self.rng.choice((0, 1.5, True))
        )

    def values(self, symbols: frozenset[str]) -> dict[str, Any]:
        values = {name: self.value(name) for name in sorted(symbols)}
        r = self.rng.random()
        if r < 0.03 and values:
            del values[self.rng.choice(sorted(values))]
        elif r < 0.06:
            values["unused"] = self.rng.choice((1, "x", 10**5000))
        elif r < 0.08 and values:
            values[self.rng.choice(sorted(values))] = None
        return values


@dataclass
class Tally:
    expressions: int = 0
    fast_expressions: int = 0
    calls: int = 0
    fast_calls: int = 0  # the fast path answered
    fast_true: int = 0  # ... true
    declined_calls: int = 0  # on an expression with a fast path, handed to rule_engine
    declined_errors: int = 0  # ... where rule_engine then raised
    fast_at_a_literal: int = 0  # answered with some numeric value equal to a literal of the expression
    fast_odd: int = 0  # answered with -0.0, an infinity, a huge or a tiny number
    disagreements: list[tuple[str, dict[str, Any], Outcome, Outcome, bool | None]] = field(
        default_factory=list
    )


def odd(v: float | int) -> bool:
    """-0.0, an infinity, or a number far from the usual range."""
    return (v == 0 and str(v).startswith("-")) or not (v == 0 or 1e-100 < abs(v) < 1e20)


def check(seed: int, expressions: int, calls: int) -> Tally:
    rng = Random(seed)
    tally = Tally()
    while tally.expressions < expressions:
        generator = Generator(rng)
        text = generator.boolean(rng.randint(0, 4))
        try:
            expression = compiled(text)
        except RuleValidationError:
            continue
        tally.expressions += 1
        fast = expression._fast
        tally.fast_expressions += fast is not None
        literals = {Decimal(str(v)) for v in generator.literals if not math.isnan(v)}
        for _ in range(calls):
            values = generator.values(expression.symbols)
            tally.calls += 1
            slow = outcome(expression._evaluate_slow, values)
            through_evaluate = outcome(expression.evaluate, values)
            answered = None if fast is None else fast(values)
            if fast is not None and answered is None:
                tally.declined_calls += 1
                tally.declined_errors += slow[0] != "value"
            if answered is not None:
                tally.fast_calls += 1
                tally.fast_true += answered
                numbers = [
                    v for k, v in values.items() if k in expression.symbols and type(v) in (int, float)
                ]
                tally.fast_at_a_literal += any(v == v and Decimal(repr(v)) in literals for v in numbers)
                tally.fast_odd += any(odd(v) for v in numbers)
            if through_evaluate != slow or (answered is not None and ("value", answered) != slow):
                tally.disagreements.append((text, values, slow, through_evaluate, answered))
    return tally


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_the_fast_path_agrees_with_rule_engine_on_random_expressions(seed: int) -> None:
    tally = check(seed, expressions=400, calls=50)
    assert tally.disagreements == []
    assert tally.fast_expressions >= 200
    assert tally.expressions - tally.fast_expressions >= 50
    assert tally.fast_calls >= 8000
    assert 3000 <= tally.fast_true <= tally.fast_calls - 3000
    assert tally.declined_calls >= 1500 and tally.declined_errors >= 1000
    assert tally.fast_at_a_literal >= 1200
    assert tally.fast_odd >= 1000


def _literals_as_floats(monkeypatch: pytest.MonkeyPatch) -> None:
    real = expressions._fast_literal

    def as_float(node: Any, kind: str, ordered: bool) -> Any:
        value = real(node, kind, ordered)
        return float(value) if isinstance(value, Decimal) else value

    monkeypatch.setattr(expressions, "_fast_literal", as_float)


def _le_as_lt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(expressions._ORDERED_OPS, "le", operator.lt)


@pytest.mark.parametrize("breakage", [_literals_as_floats, _le_as_lt])
def test_the_random_check_catches_a_broken_fast_path(
    monkeypatch: pytest.MonkeyPatch, breakage: Callable[[pytest.MonkeyPatch], None]
) -> None:
    breakage(monkeypatch)
    tally = check(1, expressions=200, calls=40)
    assert len(tally.disagreements) >= 20
