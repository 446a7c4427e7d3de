"""Expressions in rules: the rule-engine language, typed from the metric catalogue, sandboxed.

The language cannot reach Python objects at all (it resolves names only through the typed
context built here). What remains dangerous is CPU: regular-expression operators (catastrophic
backtracking) and exponentiation (huge numbers) are refused, as are ``$`` symbols such as
``$now``, which would make a backtest differ from the live run. Unknown names and type errors
are caught when the rule is saved, with a "did you mean" suggestion.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import rule_engine  # type: ignore[import-untyped]
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

    def evaluate(self, values: Mapping[str, MetricValue | None]) -> bool:
        """The expression's truth for these metric values (numbers as the engine's Decimal)."""
        data: dict[str, Any] = {
            k: (Decimal(str(v)) if isinstance(v, int | float) and not isinstance(v, bool) else v)
            for k, v in values.items()
        }
        try:
            return bool(self.rule.evaluate(data))
        except (rule_errors.EngineError, ArithmeticError, TypeError, ValueError) as exc:
            raise ExpressionRuntimeError(str(getattr(exc, "message", exc))) from exc


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
