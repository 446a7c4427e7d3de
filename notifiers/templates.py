"""Message templates: Jinja2 in a sandbox, checked on save, rendered with plain data only.

Templates are written by customers, so they run in Jinja2's immutable sandbox (no attribute
access to Python internals, no mutation of the data passed in), with undefined names rendering
as empty text instead of failing a notification at 3 a.m. A syntax error or an attempt to reach
internals is refused when the template is saved, with the line and the reason.

The sandbox stops a template from reaching internals, not from burning CPU or memory. So a
render also has a budget: ``range`` is capped, loops nest at most ``MAX_LOOP_DEPTH`` deep (checked
on save), every call, attribute or item lookup and intercepted operator counts against
``MAX_OPERATIONS``, string repetition and padding widths are bounded, and the output is consumed
piece by piece and cut at ``MAX_OUTPUT`` characters, so a loop that prints stops there.
"""

from __future__ import annotations

import contextvars
import re
from collections.abc import Callable, Iterator, Mapping
from functools import lru_cache
from typing import Any

from jinja2 import ChainableUndefined, TemplateSyntaxError, nodes
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_OUTPUT = 64_000  # characters: a template cannot blow up a message or the memory
MAX_RANGE = 1_000  # items a template's range() may produce
MAX_LOOP_DEPTH = 2  # nested {% for %} levels: 1000 x 1000 is the most a template can spin
MAX_OPERATIONS = 50_000  # calls, lookups and intercepted operators per render
MAX_WIDTH = 1_000  # padding/width/precision arguments of string formatting
# A format spec with a 4+ digit width, a '*' width or a nested {field} (a width from the arguments).
_WIDE_FORMAT = re.compile(r"[%{][^%{}]*?\d{4,}|%[^a-zA-Z%]*\*|\{[^{}]+\{")


class TemplateProblem(ValueError):
    """A template refused on save: the line (1-based, when known) and the reason."""

    def __init__(self, reason: str, line: int | None = None) -> None:
        super().__init__(f"line {line}: {reason}" if line else reason)
        self.reason = reason
        self.line = line


class _TooMuchWork(SecurityError):
    """The render went over its budget."""


_operations: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("operations", default=None)


def _spend(n: int = 1) -> None:
    counter = _operations.get()
    if counter is None:
        return
    counter[0] += n
    if counter[0] > MAX_OPERATIONS:
        raise _TooMuchWork(f"the template does too much work (more than {MAX_OPERATIONS} operations)")


def _bounded_range(*args: int) -> range:
    rng = range(*args)
    if len(rng) > MAX_RANGE:
        raise _TooMuchWork(f"range() is limited to {MAX_RANGE} items in templates")
    return rng


def _check_width(value: Any, what: str) -> None:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_WIDTH:
        raise _TooMuchWork(f"{what} is limited to {MAX_WIDTH}")


def _check_format(spec: Any) -> None:
    if isinstance(spec, str) and _WIDE_FORMAT.search(spec):
        raise _TooMuchWork(f"format widths are limited to {MAX_WIDTH}")


class _BoundedEnvironment(ImmutableSandboxedEnvironment):
    """The immutable sandbox with a work budget and bounded sizes."""

    intercepted_binops = frozenset({"*", "**", "%"})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        _spend()
        if operator == "**":
            if isinstance(right, int | float) and abs(right) > 64:
                raise _TooMuchWork("exponents are limited to 64 in templates")
            if isinstance(left, int) and left.bit_length() > 256:
                raise _TooMuchWork("powers of numbers this large are not allowed in templates")
            return left**right
        if operator == "%":
            _check_format(left)
            return left % right
        for seq, times in ((left, right), (right, left)):
            sized = isinstance(seq, str | list | tuple) and isinstance(times, int)
            if sized and len(seq) * times > MAX_OUTPUT:
                raise _TooMuchWork(f"repetition is limited to {MAX_OUTPUT} items")
        return left * right

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _spend()
        if getattr(__obj, "__self__", None).__class__ is str:  # a bound str method: ljust, format, ...
            for value in (*args, *kwargs.values()):
                _check_width(value, "string widths")
            _check_format(getattr(__obj, "__self__", None))
        return super().call(__context, __obj, *args, **kwargs)

    def getattr(self, obj: Any, attribute: str) -> Any:
        _spend()
        if isinstance(obj, str) and attribute in ("format", "format_map"):
            _check_format(obj)  # the sandbox hands out a wrapped str.format: check the spec here
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _spend()
        return super().getitem(obj, argument)


def _width_capped(name: str, positions: tuple[int, ...], keywords: tuple[str, ...]) -> Callable[..., Any]:
    original = _ENV.filters[name]

    def capped(*args: Any, **kwargs: Any) -> Any:
        _spend()
        for position in positions:
            if len(args) > position:
                _check_width(args[position], f"the {name} filter's width")
        for keyword in keywords:
            _check_width(kwargs.get(keyword), f"the {name} filter's {keyword}")
        if name == "format" and args:
            _check_format(args[0])
        return original(*args, **kwargs)

    return capped


# ChainableUndefined: ``{{ alarm.message }}`` is empty when there is no alarm, not an error at 3 a.m.
_ENV = _BoundedEnvironment(autoescape=False, keep_trailing_newline=False, undefined=ChainableUndefined)
_ENV.globals["range"] = _bounded_range
for _name, _positions, _keywords in (
    ("center", (1,), ("width",)),
    ("indent", (1,), ("width",)),
    ("wordwrap", (1,), ("width",)),
    ("truncate", (1,), ("length",)),
    ("format", (), ()),
):
    _ENV.filters[_name] = _width_capped(_name, _positions, _keywords)


def _walk_for_internals(tree: nodes.Template) -> None:
    # The sandbox refuses these at render time too; refusing them on save tells the author now.
    for node in tree.find_all((nodes.Getattr, nodes.Name, nodes.Const)):
        if isinstance(node, nodes.Getattr):
            name, hidden = node.attr, node.attr.startswith("_")
        elif isinstance(node, nodes.Name):
            name, hidden = node.name, node.name.startswith("_")
        elif isinstance(node, nodes.Const) and isinstance(node.value, str):
            name, hidden = node.value, node.value.startswith("__")  # x["__class__"]; "_" alone is text
        else:
            continue
        if hidden:
            raise TemplateProblem(f"{name!r} is not available in templates", node.lineno)


def _loop_depth(node: nodes.Node, depth: int = 0) -> Iterator[tuple[int, int]]:
    for child in node.iter_child_nodes():
        inner = depth + 1 if isinstance(child, nodes.For) else depth
        if isinstance(child, nodes.For):
            yield inner, child.lineno
        yield from _loop_depth(child, inner)


def check(source: str) -> None:
    """Raise TemplateProblem when the template cannot be used (syntax, internals, nesting)."""
    try:
        tree = _ENV.parse(source)
    except TemplateSyntaxError as exc:
        raise TemplateProblem(exc.message or "syntax error", exc.lineno) from exc
    _walk_for_internals(tree)
    for depth, line in _loop_depth(tree):
        if depth > MAX_LOOP_DEPTH:
            raise TemplateProblem(f"loops may nest at most {MAX_LOOP_DEPTH} deep", line)


@lru_cache(maxsize=4096)
def _compiled(source: str) -> Any:
    check(source)  # a template that was never checked (old data, direct calls) is checked once here
    return _ENV.from_string(source)


def render(source: str, context: Mapping[str, Any]) -> str:
    """Render a checked template with plain data; a render-time refusal becomes TemplateProblem.

    The output is cut at MAX_OUTPUT characters; a template over its work budget is refused.
    """
    if "{" not in source:
        return source  # most messages have no placeholders: no need to compile anything
    token = _operations.set([0])
    try:
        template = _compiled(source)
        parts: list[str] = []
        size = 0
        for piece in template.generate(**context):
            parts.append(piece)
            size += len(piece)
            if size >= MAX_OUTPUT:
                break
        text = "".join(parts)
    except TemplateProblem:
        raise
    except SecurityError as exc:
        raise TemplateProblem(str(exc)) from exc
    except TemplateSyntaxError as exc:
        raise TemplateProblem(exc.message or "syntax error", exc.lineno) from exc
    except RecursionError as exc:
        raise TemplateProblem("the template recurses too deeply") from exc
    except Exception as exc:  # a type error in the template's own logic, e.g. "a" + 1
        raise TemplateProblem(f"{type(exc).__name__}: {exc}") from exc
    finally:
        _operations.reset(token)
    return text[:MAX_OUTPUT]
