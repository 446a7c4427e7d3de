"""Message templates: sandboxed, checked on save, and bounded in the work a render may do."""

from __future__ import annotations

import pytest

from notifiers.templates import MAX_OUTPUT, TemplateProblem, check, render

CONTEXT = {"device": {"id": "fz-1"}, "values": {"temp": -7.5}, "rule": {"name": "Warm"}}


def test_renders_plain_data() -> None:
    assert render("{{ device.id }}: {{ values.temp }} ({{ missing.name }})", CONTEXT) == "fz-1: -7.5 ()"
    assert render("no placeholders", CONTEXT) == "no placeholders"


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("{{ ''.__class__.__mro__ }}", "is not available"),
        ("{{ values['__class__'] }}", "is not available"),
        ("{{ cycler.__init__.__globals__ }}", "is not available"),
        (
            "{% for a in range(2) %}{% for b in range(2) %}{% for c in range(2) %}{% endfor %}"
            "{% endfor %}{% endfor %}",
            "nest at most 2",
        ),
        ("{{ device.id }", "unexpected '}'"),
    ],
)
def test_refused_on_save(source: str, reason: str) -> None:
    with pytest.raises(TemplateProblem, match=reason):
        check(source)


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("{% for i in range(100000) %}x{% endfor %}", "range"),
        ("{{ 'a' * 1000000000 }}", "repetition"),
        ("{{ '%1000000000d' % 1 }}", "format widths"),
        ("{{ '{:>1000000000}'.format(1) }}", "format widths"),
        ("{{ '{:>{w}}'.format(1, w=1000000000) }}", "format widths"),
        ("{{ 'x'.ljust(1000000000) }}", "string widths"),
        ("{{ 'x'|center(1000000000) }}", "center filter"),
        ("{{ 10 ** 1000 }}", "exponents"),
        (
            "{% macro f(n) %}{% if n %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}{% endmacro %}{{ f(40) }}",
            "too much work",
        ),
        ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "recurses"),
    ],
)
def test_cpu_and_memory_bombs_are_refused_at_render(source: str, reason: str) -> None:
    with pytest.raises(TemplateProblem, match=reason):
        render(source, CONTEXT)


def test_output_is_cut_at_the_limit() -> None:
    text = render("{% for i in range(1000) %}{% for j in range(1000) %}{{ i }}{% endfor %}{% endfor %}", {})
    assert len(text) == MAX_OUTPUT


def test_ordinary_formatting_still_works() -> None:
    assert render("{{ '%.1f' % values.temp }} {{ '{:>6}'.format(device.id) }}", CONTEXT) == "-7.5   fz-1"
