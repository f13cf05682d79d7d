"""Plain templates are rendered by substitution: the text must be exactly Jinja's."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from cartback.core.render import _render, compile_template, plain_parts, render_text

NAMES = ("brand", "first_name", "product", "link", "cart_value", "discount_code", "missing")
VALUES = st.one_of(
    st.text(max_size=30),
    st.none(),
    st.decimals(allow_nan=False, allow_infinity=False, places=2),
    st.integers(),
    st.tuples(st.text(max_size=5)),
)
# Text between tags, with what Jinja treats specially nearby: braces, newlines, spaces.
TEXT = st.text(alphabet=st.sampled_from("ab {}%#-\n\t:/é"), max_size=12).filter(
    lambda text: (
        "{{" not in text
        and "{%" not in text
        and "{#" not in text
        and "}" not in text
        # "{" before "{{" would open an expression with a dict literal.
        and not text.endswith("{")
    )
)


@st.composite
def plain_templates(draw: st.DrawFn) -> str:
    pieces = []
    for _ in range(draw(st.integers(0, 5))):
        pieces.append(draw(TEXT))
        left = draw(st.sampled_from(["{{ ", "{{", "{{- "]))
        right = draw(st.sampled_from([" }}", "}}", " -}}"]))
        pieces.append(f"{left}{draw(st.sampled_from(NAMES))}{right}")
    pieces.append(draw(TEXT))
    return "".join(pieces) + draw(st.sampled_from(["", "\n", "\n\n"]))


@settings(max_examples=400, deadline=None)
@given(
    source=plain_templates(),
    values=st.fixed_dictionaries({}, optional=dict.fromkeys(NAMES, VALUES)),
)
def test_a_plain_template_renders_as_jinja_renders_it(source: str, values: dict[str, Any]) -> None:
    assert plain_parts(source) is not None
    assert render_text(source, values) == _render(compile_template(source), values)


def test_templates_with_logic_stay_with_jinja() -> None:
    for source in (
        "{% if first_name %}Hi {{ first_name }}{% endif %}",
        "{{ first_name | upper }}",
        "{{ items[0].title }}",
        "{{ 'x' }}",
        "{{ a ~ b }}",
    ):
        assert plain_parts(source) is None
    variables = {"first_name": "kari", "items": ()}
    assert render_text("{{ first_name | upper }}!", variables) == "KARI!"


def test_a_name_jinja_would_find_among_its_globals_goes_through_jinja() -> None:
    # `range` is not a message variable; Jinja prints its global, the substitution cannot.
    assert render_text("{{ range }}", {}) == _render(compile_template("{{ range }}"), {})


def test_values_print_as_jinja_prints_them() -> None:
    values = {"a": None, "b": Decimal("1.10"), "c": ("x",)}
    assert render_text("{{ a }} {{ b }} {{ c }}", values) == "None 1.10 ('x',)"


@settings(max_examples=200, deadline=None)
@given(
    amount=st.decimals(min_value=-(10**7), max_value=10**7, places=2, allow_nan=False),
    currency=st.sampled_from(["USD", "EUR", "NOK", "JPY", "BRL", "GBP"]),
    locale=st.sampled_from(["en_US", "nb_NO", "de_AT", "ja_JP", "pt_BR", "fr", "en"]),
)
def test_money_formatted_with_a_kept_locale_reads_as_babel_formats_it(
    amount: Decimal, currency: str, locale: str
) -> None:
    import babel.numbers

    from cartback.core.render import format_money, resolve_locale

    expected = babel.numbers.format_currency(amount, currency, locale=locale)
    assert format_money(amount, currency, resolve_locale(locale)) == expected
