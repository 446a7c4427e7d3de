"""Message templates: Jinja2 in a sandbox, checked on save, rendered with plain data only.

Templates are written by customers, so they run in Jinja2's immutable sandbox (no attribute
access to Python internals, no mutation of the data passed in), with undefined names rendering
as empty text instead of failing a notification at 3 a.m. A syntax error or an attempt to reach
internals is refused when the template is saved, with the line and the reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from jinja2 import TemplateSyntaxError, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

MAX_OUTPUT = 64_000  # characters: a template cannot blow up a message or the memory


class TemplateProblem(ValueError):
    """A template refused on save: the line (1-based, when known) and the reason."""

    def __init__(self, reason: str, line: int | None = None) -> None:
        super().__init__(f"line {line}: {reason}" if line else reason)
        self.reason = reason
        self.line = line


_ENV = ImmutableSandboxedEnvironment(autoescape=False, keep_trailing_newline=False)


def _walk_for_internals(tree: nodes.Template) -> None:
    # The sandbox refuses these at render time too; refusing them on save tells the author now.
    for node in tree.find_all((nodes.Getattr, nodes.Name, nodes.Const)):
        name = (
            node.attr
            if isinstance(node, nodes.Getattr)
            else node.name
            if isinstance(node, nodes.Name)
            else node.value
            if isinstance(node.value, str)
            else ""
        )
        if isinstance(name, str) and name.startswith("_") and not isinstance(node, nodes.Const):
            raise TemplateProblem(f"{name!r} is not available in templates", node.lineno)
        if isinstance(node, nodes.Const) and isinstance(name, str) and name.startswith("__"):
            raise TemplateProblem(f"{name!r} is not available in templates", node.lineno)


def check(source: str) -> None:
    """Raise TemplateProblem when the template cannot be used (syntax, internals)."""
    try:
        tree = _ENV.parse(source)
    except TemplateSyntaxError as exc:
        raise TemplateProblem(exc.message or "syntax error", exc.lineno) from exc
    _walk_for_internals(tree)


@lru_cache(maxsize=4096)
def _compiled(source: str) -> Any:
    return _ENV.from_string(source)


def render(source: str, context: Mapping[str, Any]) -> str:
    """Render a checked template with plain data; a render-time refusal becomes TemplateProblem."""
    if "{" not in source:
        return source  # most messages have no placeholders: no need to compile anything
    try:
        text = str(_compiled(source).render(**context))
    except SecurityError as exc:
        raise TemplateProblem(str(exc)) from exc
    except TemplateSyntaxError as exc:
        raise TemplateProblem(exc.message or "syntax error", exc.lineno) from exc
    except Exception as exc:  # a type error in the template's own logic, e.g. "a" + 1
        raise TemplateProblem(f"{type(exc).__name__}: {exc}") from exc
    return text[:MAX_OUTPUT]
