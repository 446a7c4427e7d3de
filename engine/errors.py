"""Errors of the rule engine, each pointing at the node path that caused it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from model.errors import InvalidInputError


@dataclass(frozen=True, slots=True)
class RuleProblem:
    """One thing wrong with a rule: where (``if/1/0 -> options.metric``), what, and a hint."""

    path: str
    message: str
    field: str | None = None
    suggestion: str | None = None

    def as_dict(self) -> dict[str, str]:
        """The problem as an API error entry."""
        entry = {"path": self.path, "msg": self.message}
        if self.field:
            entry["field"] = self.field
        if self.suggestion:
            entry["suggestion"] = self.suggestion
        return entry

    def __str__(self) -> str:
        where = f"{self.path} -> {self.field}" if self.field else self.path
        hint = f" (did you mean {self.suggestion!r}?)" if self.suggestion else ""
        return f"{where}: {self.message}{hint}"


class RuleValidationError(InvalidInputError):
    """A rule that cannot be saved or compiled; ``problems`` say where and why."""

    slug = "invalid-rule"
    title = "Invalid rule"

    def __init__(self, problems: Sequence[RuleProblem]) -> None:
        self.problems = list(problems)
        summary = "; ".join(str(p) for p in self.problems[:5])
        more = f" (+{len(self.problems) - 5} more)" if len(self.problems) > 5 else ""
        super().__init__(f"the rule is invalid: {summary}{more}", errors=[p.as_dict() for p in self.problems])
