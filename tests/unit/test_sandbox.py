"""Template limits: the static check `flows check` runs, and the runtime budget of each render."""

from __future__ import annotations

import threading
import time
import tracemalloc

import pytest

from cartback.core import sandbox
from cartback.core.render import RenderError, _render, check_template, compile_template
from cartback.core.sandbox import RenderInterrupted, interrupt_renders_on

# 1,000 x 1,000 iterations of 650 characters: 650 MB of text. The range sizes come from a
# variable, so only the runtime limits can stop it.
HUGE_OUTPUT = (
    "{% set n = 1000 %}{% for i in range(n) %}{% for j in range(n) %}"
    + "x" * 650
    + "{% endfor %}{% endfor %}"
)
# A macro calling itself twice per level: 2^40 calls, tiny output, endless time.
STUCK = "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(40) }}"


def _render_source(source: str) -> str:
    return _render(compile_template(source), {"items": [1, 2, 3], "product": "Mug"})


def test_nested_huge_ranges_are_refused_with_their_line() -> None:
    source = (
        "Hi\n{% for i in range(100000) %}\n{% for j in range(100000) %}x{% endfor %}{% endfor %}"
    )
    issues = check_template(source)
    assert [(issue.line, issue.message) for issue in issues] == [
        (2, "range() of 100000 items; at most 1000"),
        (3, "range() of 100000 items; at most 1000"),
    ]


def test_loops_nested_three_deep_are_refused() -> None:
    source = (
        "{% for a in items %}{% for b in items %}\n"
        "{% for c in items %}{{ c }}{% endfor %}{% endfor %}{% endfor %}"
    )
    assert [(i.line, i.message) for i in check_template(source)] == [
        (2, "loops nested 3 deep; at most 2")
    ]


def test_constant_ranges_multiplied_past_the_limit_are_refused() -> None:
    source = "{% for a in range(200) %}{% for b in range(-100, 100) %}x{% endfor %}{% endfor %}"
    assert [i.message for i in check_template(source)] == [
        "nested loops run 40000 times; at most 10000"
    ]


@pytest.mark.parametrize(
    "source",
    [
        "{% for item in items %}{{ item }}{% for i in range(3) %}*{% endfor %}{% endfor %}",
        "{% for i in range(1000) %}.{% endfor %}",
        "{% for i in range(n) %}{% endfor %}",
        "Hi {{ first_name }}",
    ],
)
def test_ordinary_loops_pass_the_check(source: str) -> None:
    assert check_template(source) == []


def test_syntax_errors_are_reported_with_their_line() -> None:
    assert [(i.line, i.message) for i in check_template("Hi\n{% if %}")] == [
        (2, "template error: Expected an expression, got 'end of statement block'")
    ]


def test_a_template_that_would_print_650_mb_stops_at_the_cap_quickly() -> None:
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(RenderError, match="longer than 100000 characters"):
            _render_source(HUGE_OUTPUT)
        elapsed = time.monotonic() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert elapsed < 0.5
    assert peak < 10_000_000


def test_output_captured_in_a_block_is_charged_too() -> None:
    source = "{% set x %}" + HUGE_OUTPUT + "{% endset %}{{ x | length }}"
    tracemalloc.start()
    try:
        with pytest.raises(RenderError, match="sandbox"):
            _render_source(source)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10_000_000


@pytest.mark.parametrize(
    "source",
    [
        "{% for i in range(100000) %}x{% endfor %}",
        "{{ 'x' | center(10 ** 9) }}",
        "{{ 'x'.ljust(10 ** 9) }}",
        "{{ '{:>999999999}'.format('x') }}",
        "{{ '%999999999d' % 1 }}",
        "{{ '%999999999d' | format(1) }}",
        "{{ ('x' * 99999).replace('', 'x' * 99999) }}",
        "{{ ('x' * 99999) | replace('', 'x' * 99999) }}",
        "{{ ('x\n' * 50000) | indent(100000) }}",
        "{% set ns = namespace(s='xx') %}{% for i in range(40) %}"
        "{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
        "{% set ns = namespace(s='xx') %}{% for i in range(40) %}"
        "{% set ns.s = ns.s + ns.s %}{% endfor %}",
        "{% for a in 'x' * 99999 %}{% for b in 'x' * 99999 %}{% endfor %}{% endfor %}",
    ],
)
def test_operations_that_would_build_huge_values_are_refused(source: str) -> None:
    started = time.monotonic()
    with pytest.raises(RenderError, match="sandbox"):
        _render_source(source)
    assert time.monotonic() - started < 0.5


def test_a_render_stops_at_its_time_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "RENDER_SECONDS", 0.2)
    started = time.monotonic()
    with pytest.raises(RenderError, match=r"longer than 0\.2 s") as stopped:
        _render_source(STUCK)
    assert time.monotonic() - started < 0.6
    # Told apart from the limits a template hits whatever the machine does.
    assert sandbox.timed_out(stopped.value)
    with pytest.raises(RenderError) as too_many:
        _render_source("{% for i in range(100000) %}x{% endfor %}")
    assert not sandbox.timed_out(too_many.value)


def test_a_shutdown_interrupts_a_render_in_progress() -> None:
    stopping = threading.Event()
    outcome: list[BaseException] = []

    def render() -> None:
        interrupt_renders_on(stopping)
        try:
            _render_source(STUCK)
        except BaseException as error:  # RenderInterrupted is one on purpose
            outcome.append(error)

    thread = threading.Thread(target=render)
    thread.start()
    time.sleep(0.1)
    stopping.set()
    thread.join(timeout=0.5)
    assert not thread.is_alive()
    assert [type(error) for error in outcome] == [RenderInterrupted]


def test_ordinary_templates_render_as_before() -> None:
    source = (
        "{% for i in items %}{{ loop.index }}:{{ i }} {% endfor %}{{ '%05d' | format(7) }} "
        "{{ 'ab'.center(6) }}|{% set ns = namespace(n=0) %}{% for i in range(3) %}"
        "{% set ns.n = ns.n + i %}{% endfor %}{{ ns.n }}"
    )
    assert _render_source(source) == "1:1 2:2 3:3 00007   ab  |3"
