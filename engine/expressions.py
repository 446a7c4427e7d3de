"""Expressions in rules: the rule-engine language, typed from the metric catalogue, sandboxed.

The language cannot reach Python objects at all (it resolves names only through the typed
context built here). What remains dangerous is CPU: regular-expression operators (catastrophic
backtracking) and exponentiation (huge numbers) are refused, as are ``$`` symbols such as
``$now``, which would make a backtest differ from the live run. Unknown names and type errors
are caught when the rule is saved, with a "did you mean" suggestion.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import rule_engine  # type: ignore[import-untyped]
from rule_engine import ast as rule_ast
from rule_engine import errors as rule_errors

from engine.errors import RuleProblem, RuleValidationError
from model.devices import DataType, MetricSpec
from model.readings import MetricValue

_TYPES = {
    DataType.NUMBER: rule_engine.DataType.FLOAT,
    DataType.INTEGER: rule_engine.DataType.FLOAT,
    DataType.BOOLEAN: rule_engine.DataType.BOOLEAN,
    DataType.STRING: rule_engine.DataType.STRING,
}
_STRINGS = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")
_FORBIDDEN = (
    ("=~~", "regular-expression matches are not allowed in rules"),
    ("!~~", "regular-expression matches are not allowed in rules"),
    ("=~", "regular-expression matches are not allowed in rules"),
    ("!~", "regular-expression matches are not allowed in rules"),
    ("**", "exponentiation is not allowed in rules"),
    ("$", "built-in symbols such as $now are not allowed (a backtest must behave like the live rule)"),
)


class ExpressionRuntimeError(Exception):
    """An expression failed for particular values (division by zero, overflow, a type surprise)."""


@dataclass(frozen=True, slots=True)
class CompiledExpression:
    """A parsed, type-checked boolean expression and the metrics it reads."""

    text: str
    rule: rule_engine.Rule
    symbols: frozenset[str]
    levels: Mapping[str, tuple[float, ...] | None] = field(init=False, repr=False, compare=False)
    """Per symbol: the sorted, distinct numeric literals it is only ever compared with, or None
    when it is used any other way.

    Computed once, when the expression is compiled, by walking the parsed tree (after rule_engine's
    constant folding, so ``-10`` or ``2 * 5`` are literals). A symbol gets a tuple only when every
    occurrence of it is directly one side of ``<``, ``<=``, ``>``, ``>=``, ``==`` or ``!=`` whose other
    side is a numeric literal (any form: ``-10``, ``1e3``, ``.5``, ``0x10``), on either side, however
    the comparisons are combined (``and``, ``or``, ``not``, compared with each other, in a ternary).
    Any other use makes it None: arithmetic, comparison with another symbol or a non-numeric
    literal, use as a boolean, attributes, functions, containment, and every symbol beneath a node
    this walk does not know. A literal that is NaN, infinite, or whose float is 2**53 or larger in
    magnitude also makes the symbol None (see below). Symbols the parser folded away (the untaken
    branch of ``true ? a : b``) are None too.

    Soundness contract (what a guard may rely on): take two assignments A and B of values to the
    symbols. If, for every symbol s with a tuple L_s, A[s] and B[s] are both finite int/float values
    (not bool) with ``sign(A[s] - c) == sign(B[s] - c)`` for every c in L_s (the exact sign: compare
    with ``<``/``>``, which Python does exactly between int and float, rather than subtract), and for
    every symbol with None A[s] and B[s] are equal and of the same type, then ``evaluate(A)`` and
    ``evaluate(B)`` return the same result or both raise ExpressionRuntimeError. (Infinite values of
    a symbol with levels are fine too, as every use of it is a comparison with a finite literal; NaN
    and non-numeric values are outside the premise: treat each as its own state. "Equal" for a None
    symbol should also tell -0.0 from 0.0, which ``temp.to_str`` can see.)

    The caveat of float levels: rule_engine compares ``Decimal(str(v))`` with the literal's exact
    Decimal, the guard compares v with the literal's float, and a literal such as ``0.1`` has no exact
    float. Rounding to nearest is monotonic, so for any v other than float(c) both comparisons agree;
    when v equals float(c) exactly the guard's sign is 0 even if the Decimal comparison is not
    "equal", which is harmless because that sign-0 state holds one number only, and the guard's
    3-way sign keeps it apart from both neighbours. This argument needs every integer near the level
    to be a float and the float of an integer value to print exactly, hence the 2**53 bound above.
    """

    _fast: Callable[[Mapping[str, Any]], bool | None] | None = field(init=False, repr=False, compare=False)
    """The expression as a plain Python closure, when it lies in the subset ``_fast_path`` translates
    (see there); None otherwise. It returns None for any call whose values it does not take (then
    ``evaluate`` asks rule_engine), else exactly what rule_engine's route would return."""

    def __post_init__(self) -> None:
        expression = self.rule.statement.expression
        object.__setattr__(self, "levels", _levels(expression, self.symbols))
        object.__setattr__(self, "_fast", _fast_path(expression, self.symbols))

    def evaluate(self, values: Mapping[str, MetricValue | None]) -> bool:
        """The expression's truth for these metric values (numbers as the engine's Decimal)."""
        fast = self._fast
        if fast is not None:
            result = fast(values)
            if result is not None:
                return result
        return self._evaluate_slow(values)

    def _evaluate_slow(self, values: Mapping[str, MetricValue | None]) -> bool:
        """``evaluate`` through rule_engine, always: the reference the fast path must match."""
        data: dict[str, Any] = {
            k: (Decimal(str(v)) if isinstance(v, int | float) and not isinstance(v, bool) else v)
            for k, v in values.items()
        }
        try:
            return bool(self.rule.evaluate(data))
        except (rule_errors.EngineError, ArithmeticError, TypeError, ValueError) as exc:
            raise ExpressionRuntimeError(str(getattr(exc, "message", exc))) from exc


_COMPARISON_OPS = frozenset({"eq", "ne", "lt", "le", "gt", "ge"})
# Nodes whose result depends only on the outcomes (value or exception) of their children: the walk
# can look inside them. Any other node type is opaque and its symbols become None.
_TRANSPARENT: dict[type[Any], tuple[str, ...]] = {
    rule_ast.LogicExpression: ("left", "right"),
    rule_ast.ComparisonExpression: ("left", "right"),
    rule_ast.ArithmeticComparisonExpression: ("left", "right"),
    rule_ast.ArithmeticExpression: ("left", "right"),
    rule_ast.AddExpression: ("left", "right"),
    rule_ast.SubtractExpression: ("left", "right"),
    rule_ast.CoalesceExpression: ("left", "right"),
    rule_ast.UnaryExpression: ("right",),
    rule_ast.TernaryExpression: ("condition", "case_true", "case_false"),
    rule_ast.BooleanExpression: (),
    rule_ast.FloatExpression: (),
    rule_ast.StringExpression: (),
    rule_ast.NullExpression: (),
    rule_ast.DatetimeExpression: (),
    rule_ast.TimedeltaExpression: (),
    rule_ast.BytesExpression: (),
}
_EXACT_INTEGERS = float(2**53)


def _level(node: Any) -> float | None:
    """The usable float of a numeric literal node, None if the literal cannot serve as a level."""
    value = node.value
    if not isinstance(value, Decimal) or not value.is_finite():
        return None
    level = float(value) + 0.0  # -0 and 0 are the same level
    return level if abs(level) < _EXACT_INTEGERS else None


def _symbols_beneath(node: Any, seen: set[int] | None = None) -> Iterator[str]:
    """Every symbol name in an opaque subtree: children found through its attributes, whatever they are."""
    seen = set() if seen is None else seen
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, rule_ast.SymbolExpression):
        yield node.name
        return
    if isinstance(node, tuple | list | set | frozenset):
        children: list[Any] = list(node)
    elif isinstance(node, dict):
        children = [*node.keys(), *node.values()]
    elif isinstance(node, rule_ast.ASTNodeBase):
        names = {
            f"_{cls.__name__.lstrip('_')}{slot}"
            if slot.startswith("__") and not slot.endswith("__")
            else slot
            for cls in type(node).__mro__
            for slot in cls.__dict__.get("__slots__", ())
        }
        names.update(getattr(node, "__dict__", {}))
        names.discard("context")
        children = [getattr(node, name, None) for name in sorted(names)]
    else:
        return
    for child in children:
        yield from _symbols_beneath(child, seen)


def _levels(expression: Any, symbols: frozenset[str]) -> Mapping[str, tuple[float, ...] | None]:
    """The walk behind CompiledExpression.levels (see there)."""
    found: dict[str, set[float]] = {}
    other: set[str] = set()

    def walk(node: Any) -> None:
        kind = type(node)
        if kind is rule_ast.SymbolExpression:
            other.add(node.name)
            return
        if kind not in _TRANSPARENT:
            other.update(_symbols_beneath(node))
            return
        if kind in (rule_ast.ComparisonExpression, rule_ast.ArithmeticComparisonExpression):
            if node.type not in _COMPARISON_OPS:
                other.update(_symbols_beneath(node))
                return
            for symbol, literal in ((node.left, node.right), (node.right, node.left)):
                if (
                    type(symbol) is rule_ast.SymbolExpression
                    and symbol.scope is None
                    and type(literal) is rule_ast.FloatExpression
                ):
                    level = _level(literal)
                    if level is None:
                        other.add(symbol.name)
                    else:
                        found.setdefault(symbol.name, set()).add(level)
                    return
        for name in _TRANSPARENT[kind]:
            walk(getattr(node, name))

    walk(expression)
    # a plain dict (read-only by its type) rather than a MappingProxyType, which cannot be deep-copied
    return {
        name: None if name in other or name not in found else tuple(sorted(found[name]))
        for name in sorted(symbols)
    }


# --- the fast path ---------------------------------------------------------------------------------
#
# rule_engine spends 8-20 µs (depending on the machine) on a condition such as ``temp > -10 and not
# door_open``, mostly in its generic machinery (symbol resolution, type checks, coercion, a decimal
# context). Most rule conditions are a few comparisons of a metric with a literal combined by
# and/or/not; for those, CompiledExpression keeps a closure that computes the same thing directly,
# in about a tenth of the time.
#
# Exactness: the closure reproduces rule_engine's route only for calls where that route cannot
# fail, and declines every other call (returns None, and evaluate asks rule_engine):
# - every value is converted exactly as evaluate does (``Decimal(str(v))``) and compared with the
#   literal's own Decimal by the same operator rule_engine applies (comparisons of non-NaN Decimals
#   are exact and independent of the decimal context);
# - a call is taken only when the mapping holds exactly the expression's symbols and each value has
#   its symbol's expected type: int or float (not bool, not NaN, printable as a decimal string) for a
#   FLOAT symbol, bool for a BOOLEAN one, str for a STRING one. Those are precisely the calls in which
#   rule_engine resolves every symbol without a type error and no comparison can signal (NaN is the
#   only value for which an ordered Decimal comparison raises), so its result is a plain bool, which
#   the closure computes with the same operators, truthiness and short-circuits (``and``/``or``
#   return ``bool(left and right)``, ``not`` is ``operator.not_``, ``==``/``!=`` compare values of the
#   same type). Wrong types, NaN, None, missing or extra keys, and ints too long for ``str`` go to
#   rule_engine, which raises (or short-circuits past them) exactly as before.
# - an expression is translated only when every node is in the subset: and, or, not, boolean
#   literals, bare symbols, and ``== != < <= > >=`` between a symbol and a literal of the symbol's
#   own type (numeric, not NaN, for any operator; string or boolean for ``==``/``!=`` only), on either
#   side. Anything else (arithmetic, two symbols, ternaries, attributes, functions, ``in``, regular
#   expressions, null, dates...) keeps rule_engine for every call, as does an expression whose
#   symbols were partly folded away by the parser.

_Node = Callable[[dict[str, Any]], Any]
_NUMBER, _BOOLEAN, _STRING = "number", "boolean", "string"
_SYMBOL_KINDS = (
    (rule_engine.DataType.FLOAT, _NUMBER),
    (rule_engine.DataType.BOOLEAN, _BOOLEAN),
    (rule_engine.DataType.STRING, _STRING),
)
_ORDERED_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "lt": operator.lt,
    "le": operator.le,
    "gt": operator.gt,
    "ge": operator.ge,
}
_EQUALITY_OPS: dict[str, Callable[[Any, Any], bool]] = {"eq": operator.eq, "ne": operator.ne}
_LITERALS = frozenset({rule_ast.FloatExpression, rule_ast.StringExpression, rule_ast.BooleanExpression})
_EQUALITY_LITERALS = frozenset(
    {(rule_ast.StringExpression, str, _STRING), (rule_ast.BooleanExpression, bool, _BOOLEAN)}
)


class _Unsupported(Exception):
    """A node outside the fast path's subset: the expression keeps rule_engine."""


def _fast_symbol(node: Any, kinds: dict[str, str]) -> str:
    """The name of a plain symbol of a type the fast path handles, its kind recorded in ``kinds``."""
    if type(node) is not rule_ast.SymbolExpression or node.scope is not None:
        raise _Unsupported
    for data_type, kind in _SYMBOL_KINDS:
        if node.result_type is data_type:
            kinds[node.name] = kind
            return str(node.name)
    raise _Unsupported


def _fast_literal(node: Any, kind: str, ordered: bool) -> Any:
    """The value of a literal that a symbol of ``kind`` may be compared with on the fast path."""
    literal = type(node)
    if literal not in _LITERALS:  # another symbol, arithmetic, null, a list...
        raise _Unsupported
    value = node.value
    if (literal, type(value), kind) == (rule_ast.FloatExpression, Decimal, _NUMBER):
        if not value.is_nan():  # an ordered comparison with NaN raises; == and != are left alone too
            return value
    elif not ordered and (literal, type(value), kind) in _EQUALITY_LITERALS:
        return value
    raise _Unsupported


def _fast_comparison(node: Any, kinds: dict[str, str]) -> _Node:
    op = _ORDERED_OPS.get(node.type)
    ordered = op is not None
    if op is None:
        op = _EQUALITY_OPS.get(node.type)
    if op is None:
        raise _Unsupported
    if type(node.left) is rule_ast.SymbolExpression:
        name = _fast_symbol(node.left, kinds)
        literal = _fast_literal(node.right, kinds[name], ordered)
        return lambda env: op(env[name], literal)
    name = _fast_symbol(node.right, kinds)
    literal = _fast_literal(node.left, kinds[name], ordered)
    return lambda env: op(literal, env[name])


def _fast_node(node: Any, kinds: dict[str, str]) -> _Node:
    """A closure computing what ``node.evaluate`` returns, for values of the expected types."""
    kind = type(node)
    if kind is rule_ast.LogicExpression:
        left, right = _fast_node(node.left, kinds), _fast_node(node.right, kinds)
        if node.type == "and":
            return lambda env: bool(left(env) and right(env))
        if node.type == "or":
            return lambda env: bool(left(env) or right(env))
        raise _Unsupported
    if kind is rule_ast.UnaryExpression and node.type == "not":
        inner = _fast_node(node.right, kinds)
        return lambda env: not inner(env)
    if kind is rule_ast.BooleanExpression and type(node.value) is bool:
        value = node.value
        return lambda env: value
    if kind is rule_ast.SymbolExpression:
        name = _fast_symbol(node, kinds)
        return lambda env: env[name]
    if kind in (rule_ast.ComparisonExpression, rule_ast.ArithmeticComparisonExpression):
        return _fast_comparison(node, kinds)
    raise _Unsupported


def _fast_path(expression: Any, symbols: frozenset[str]) -> Callable[[Mapping[str, Any]], bool | None] | None:
    """The closure behind CompiledExpression._fast, or None if the expression is outside the subset."""
    kinds: dict[str, str] = {}
    try:
        tree = _fast_node(expression, kinds)
    except (_Unsupported, RecursionError):
        return None
    if set(kinds) != symbols:  # symbols the parser folded away: rare, left to rule_engine
        return None
    specs = tuple(sorted(kinds.items()))
    count = len(specs)

    def fast(values: Mapping[str, Any]) -> bool | None:
        if len(values) != count:
            return None
        env: dict[str, Any] = {}
        for name, kind in specs:
            value = values.get(name)
            given = type(value)
            if kind is _NUMBER:
                if given is float:
                    if value != value:  # NaN: ordered comparisons raise, rule_engine decides
                        return None
                elif given is not int:
                    return None
                try:
                    env[name] = Decimal(str(value))  # exactly as _evaluate_slow converts it
                except ValueError:  # an int too long for str(): _evaluate_slow raises it
                    return None
            elif given is (bool if kind is _BOOLEAN else str):
                env[name] = value
            else:
                return None
        return bool(tree(env))

    return fast


def compile_expression(text: str, catalogue: Mapping[str, MetricSpec], path: str) -> CompiledExpression:
    """Parse ``text`` against the catalogue; RuleValidationError pointing at ``path`` otherwise."""
    bare = _STRINGS.sub("''", text)
    for token, message in _FORBIDDEN:
        if token in bare:
            raise RuleValidationError([RuleProblem(path, message, "options.expression")])
    used: set[str] = set()
    types = {name: _TYPES[spec.data_type] for name, spec in catalogue.items()}
    resolver = rule_engine.type_resolver_from_dict(types)

    def tracking_resolver(name: str) -> Any:
        result = resolver(name)
        used.add(name)
        return result

    context = rule_engine.Context(type_resolver=tracking_resolver, default_timezone="utc")
    try:
        rule = rule_engine.Rule(text, context=context)
    except rule_errors.SymbolResolutionError as exc:
        known = ", ".join(sorted(catalogue)) or "none"
        raise RuleValidationError(
            [
                RuleProblem(
                    path,
                    f"unknown metric {exc.symbol_name!r} (known: {known})",
                    "options.expression",
                    exc.suggestion,
                )
            ]
        ) from exc
    except rule_errors.RuleSyntaxError as exc:
        where = f" near {exc.token.value!r}" if getattr(exc, "token", None) is not None else ""
        raise RuleValidationError([RuleProblem(path, f"syntax error{where}", "options.expression")]) from exc
    except rule_errors.EngineError as exc:
        raise RuleValidationError([RuleProblem(path, str(exc.message), "options.expression")]) from exc
    except RecursionError as exc:
        raise RuleValidationError(
            [RuleProblem(path, "the expression nests too deeply", "options.expression")]
        ) from exc
    if rule.statement.expression.result_type is not rule_engine.DataType.BOOLEAN:
        raise RuleValidationError(
            [
                RuleProblem(
                    path, "the expression must be true or false (add a comparison)", "options.expression"
                )
            ]
        )
    return CompiledExpression(text, rule, frozenset(used))
