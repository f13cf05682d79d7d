"""The condition language: what it accepts, what it refuses, and how it evaluates."""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cartback.core.conditions import (
    MAX_LENGTH,
    Condition,
    ConditionError,
    ProductExclusions,
    build_facts,
    parse_condition,
)
from cartback.core.model import Cart, CartLine, CartStatus, Contact, StepOutcome


def cond(source: str, known: tuple[str, ...] = ("sms1", "email1")) -> Condition:
    return parse_condition(source, known)


# ---- refused constructs -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("__import__('os')", "function calls cannot be used in conditions"),
        ("().__class__", "attribute access is only allowed on names, like cart.value"),
        ("cart.__class__", "names starting with an underscore (__class__) are not allowed"),
        ("__builtins__", "names starting with an underscore (__builtins__) are not allowed"),
        ("cart.value + 1 > 3", "arithmetic (+) cannot be used in conditions"),
        ("cart.value * 2 > 3", "arithmetic (*) cannot be used in conditions"),
        ("-cart.value < 0", "arithmetic (unary -) cannot be used in conditions"),
        ("contact.tags[0] == 'vip'", "subscripts ([...]) cannot be used in conditions"),
        ("lambda: True", "lambda cannot be used in conditions"),
        ("f'{cart.value}' == '1'", "f-strings cannot be used in conditions"),
        ("(x := 1)", "assignment expressions (:=) cannot be used in conditions"),
        ("[t for t in cart.tags]", "comprehensions cannot be used in conditions"),
        ("any(t for t in cart.tags)", "function calls cannot be used in conditions"),
        ("cart.value if true else false", "if/else expressions cannot be used in conditions"),
        ("{'a': 1}", "dict literals cannot be used in conditions"),
        ("'a' in {'a', 'b'}", "set literals (use a list: [a, b]) cannot be used in conditions"),
        ("cart.value is None", "`is` / `is not` are not supported; use == or !="),
        (
            "contact.country == None",
            "None is not supported: a missing value already makes comparisons false",
        ),
        ("cart.value > '100'", "cannot compare a number with text using `>`"),
        ("contact.sms_consent == 1", "cannot compare true/false with a number using `==`"),
        ("contact.country < 'US'", "`<` compares numbers, not text"),
        ("contact.tags == 'vip'", 'tags cannot be compared with `==`; use "tag" in ...tags'),
        ("cart.value in [1, 'two']", "cannot compare a number with text using `in`"),
        ("'vip' in contact.country", "`in` needs a list [..] or a tags name on its right"),
        (
            "contact.sms_concent",
            "unknown name contact.sms_concent (did you mean contact.sms_consent?)",
        ),
        ("cart", "unknown name cart"),
        ("[1, 2]", "a list is only allowed on the right of `in` / `not in`"),
        ("sms1", "use sms1.sent, .delivered, .opened, .clicked or .skipped"),
        ("cart.value.cents > 1", "unknown name cart.value.cents (did you mean cart.value?)"),
        ("", "the condition is empty"),
        ("cart.value >", "syntax error"),
        ("0x10 == cart.value", "unsupported number literal 0x10"),
    ],
)
def test_refused_constructs_name_the_problem(source: str, message: str) -> None:
    with pytest.raises(ConditionError) as caught:
        cond(source)
    assert str(caught.value).startswith(message)


def test_length_limit() -> None:
    padding = " " * (MAX_LENGTH - len("cart.value > 1"))
    assert cond("cart.value > 1" + padding).source == "cart.value > 1"
    long_source = " or ".join(["contact.sms_consent"] * 30)
    assert len(long_source) > MAX_LENGTH
    with pytest.raises(ConditionError, match="longer than 500 characters"):
        cond(long_source)


def test_steps_must_be_earlier() -> None:
    with pytest.raises(ConditionError, match="step email2 does not come before this step"):
        parse_condition("email2.clicked", ["sms1"], all_steps=["sms1", "email2"])
    with pytest.raises(ConditionError, match=r"unknown name sms9\.sent"):
        parse_condition("sms9.sent", ["sms1"], all_steps=["sms1", "email2"])
    with pytest.raises(ConditionError, match=r"sms1\.sent: this condition cannot refer to steps"):
        parse_condition("sms1.sent", [], all_steps=["sms1"], steps_allowed=False)
    with pytest.raises(ConditionError, match=r"sms1\.sent: step sms1 does not come before"):
        parse_condition("sms1.sent", [], all_steps=["sms1"])
    assert parse_condition("sms1.opened or not sms1.sent", ["sms1"]).step_refs == {"sms1"}


def test_accepted_forms() -> None:
    accepted = [
        "contact.sms_consent and not email1.opened",
        "(contact.returning or contact.new) and cart.item_count >= 2",
        "1 <= cart.value < 250.50",
        "'vip' in contact.tags and 'wholesale' not in cart.tags",
        "contact.country in ['US', 'CA'] or contact.region not in ('FL', 'OK')",
        "variant == 'b'",
        "contact.sms_consent == true and contact.email_consent != False",
        "cart.value > -1",
        "cart.value >= 1_000",
    ]
    for source in accepted:
        assert cond(source).source == source


# ---- evaluation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "facts", "expected"),
    [
        # Decimal comparisons are exact: 0.1 is not the float 0.1000000000000000055...
        ("cart.value == 0.1", {"cart": {"value": Decimal("0.1")}}, True),
        ("cart.value >= 100", {"cart": {"value": Decimal("100.00")}}, True),
        ("cart.value >= 100", {"cart": {"value": Decimal("99.99")}}, False),
        ("cart.value > 99.995", {"cart": {"value": Decimal("99.996")}}, True),
        ("cart.value < 10", {"cart": {"value": 9}}, True),
        ("cart.value == 19.99", {"cart": {"value": 19.99}}, True),
        ("1 < cart.item_count <= 3", {"cart": {"item_count": 3}}, True),
        ("1 < cart.item_count <= 3", {"cart": {"item_count": 4}}, False),
        # A missing value (None) makes every comparison false, whichever way round.
        ("contact.country == 'US'", {"contact": {}}, False),
        ("contact.country != 'US'", {"contact": {}}, False),
        ("not contact.country == 'US'", {"contact": {}}, True),
        ("contact.country in ['US']", {}, False),
        ("contact.country not in ['US']", {}, False),
        ("cart.value < 100", {"cart": {"value": None}}, False),
        ("cart.value >= 100", {}, False),
        ("'vip' in contact.tags", {"contact": {"tags": None}}, False),
        ("'vip' not in contact.tags", {"contact": {}}, False),
        ("contact.region", {"contact": {"region": None}}, False),
        # Values of the wrong kind never raise: the comparison is false.
        ("cart.value > 1", {"cart": {"value": "lots"}}, False),
        ("cart.value > 1", {"cart": {"value": float("nan")}}, False),
        ("cart.value > 1", {"cart": "not a mapping"}, False),
        ("contact.country == 'US'", {"contact": {"country": 1}}, False),
        # Membership.
        ("'vip' in contact.tags", {"contact": {"tags": ("vip", "b2b")}}, True),
        ("'vip' in contact.tags", {"contact": {"tags": ["b2b"]}}, False),
        ("'vip' not in cart.tags", {"cart": {"tags": ()}}, True),
        ("contact.country in ['US', 'CA']", {"contact": {"country": "CA"}}, True),
        ("contact.country not in ['US', 'CA']", {"contact": {"country": "NO"}}, True),
        ("cart.value in [10, 20]", {"cart": {"value": Decimal("20.0")}}, True),
        # Steps that have not run count as all-false.
        ("sms1.sent", {}, False),
        ("not email1.opened", {}, True),
        ("not email1.opened", {"email1": {"opened": True}}, False),
        ("sms1.clicked", {"sms1": {"sent": True}}, False),
        ("variant == 'b'", {"variant": "b"}, True),
        ("variant == 'b'", {"variant": None}, False),
        (
            "contact.sms_consent and contact.email_consent",
            {"contact": {"sms_consent": True}},
            False,
        ),
        ("contact.sms_consent or contact.email_consent", {"contact": {"sms_consent": True}}, True),
        ("cart.item_count", {"cart": {"item_count": 0}}, False),
        ("cart.tags", {"cart": {"tags": ("a",)}}, True),
    ],
)
def test_evaluation(source: str, facts: Mapping[str, object], expected: bool) -> None:
    assert cond(source).evaluate(facts) is expected


def _cart(value: str = "120.00", tags: tuple[str, ...] = ("sale",)) -> Cart:
    lines = (CartLine("Shoe", 2, Decimal("50")), CartLine("Sock", 1, Decimal("20")))
    at = datetime(2025, 1, 1, tzinfo=UTC)
    return Cart(1, 1, "tok", 7, lines, Decimal(value), "NOK", None, CartStatus.OPEN, at, tags)


def test_build_facts_from_domain_records() -> None:
    contact = Contact(
        id=7,
        store_id=1,
        phone="+4712345678",
        email=None,
        country="NO",
        sms_marketing=True,
        orders_count=2,
        tags=("vip",),
    )
    history = {"sms1": StepOutcome(sent=True, clicked=True)}
    facts = build_facts(_cart(), contact, "b", history)
    checks = {
        "contact.sms_consent and not contact.email_consent": True,
        "contact.has_phone and not contact.has_email": True,
        "contact.returning and not contact.new and contact.orders_count == 2": True,
        "cart.item_count == 3 and cart.value == 120 and cart.currency == 'NOK'": True,
        "'vip' in contact.tags and 'sale' in cart.tags": True,
        "contact.country == 'NO' and contact.region != 'x'": False,
        "sms1.clicked and not sms1.opened and not email1.sent": True,
        "variant == 'b'": True,
    }
    for source, expected in checks.items():
        assert cond(source).evaluate(facts) is expected, source


def test_build_facts_without_contact_makes_contact_facts_false() -> None:
    facts = build_facts(_cart(), None, None, {})
    assert not cond("contact.sms_consent or contact.new or contact.orders_count >= 0").evaluate(
        facts
    )
    assert cond("not contact.has_phone").evaluate(facts)


def test_new_contact() -> None:
    facts = build_facts(_cart(), Contact(id=1, store_id=1), None, {})
    assert cond("contact.new and not contact.returning").evaluate(facts)


# ---- property: random boolean combinations match a Python reference ------------------------------

Facts = dict[str, object]
Reference = Callable[[Facts], bool]

_OPS: dict[str, Callable[[Decimal, Decimal], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_BOOL_FACTS = [("contact", "sms_consent"), ("contact", "email_consent"), ("sms1", "opened")]


def _get(facts: Facts, group: str, name: str) -> object:
    section = facts.get(group)
    return section.get(name) if isinstance(section, dict) else None


def _bool_atom(group: str, name: str) -> tuple[str, Reference]:
    return f"{group}.{name}", lambda facts: _get(facts, group, name) is True


def _value_atom(op: str, literal: Decimal) -> tuple[str, Reference]:
    def reference(facts: Facts) -> bool:
        value = _get(facts, "cart", "value")
        return isinstance(value, Decimal) and _OPS[op](value, literal)

    return f"cart.value {op} {literal}", reference


def _tag_atom(tag: str, negated: bool) -> tuple[str, Reference]:
    def reference(facts: Facts) -> bool:
        tags = _get(facts, "contact", "tags")
        if not isinstance(tags, tuple):
            return False
        return (tag in tags) != negated

    return f"'{tag}' {'not in' if negated else 'in'} contact.tags", reference


_TAGS = ["vip", "b2b", "new"]
_atoms = st.one_of(
    st.sampled_from(_BOOL_FACTS).map(lambda pair: _bool_atom(*pair)),
    st.builds(
        _value_atom,
        st.sampled_from(sorted(_OPS)),
        st.decimals(min_value=-5, max_value=500, places=2, allow_nan=False),
    ),
    st.builds(_tag_atom, st.sampled_from(_TAGS), st.booleans()),
)


def _not(inner: tuple[str, Reference]) -> tuple[str, Reference]:
    return f"not ({inner[0]})", lambda facts: not inner[1](facts)


def _combine(is_and: bool, parts: list[tuple[str, Reference]]) -> tuple[str, Reference]:
    joiner = " and " if is_and else " or "
    source = joiner.join(f"({part[0]})" for part in parts)
    combine = all if is_and else any
    return source, lambda facts: combine(part[1](facts) for part in parts)


_expressions = st.recursive(
    _atoms,
    lambda children: st.one_of(
        children.map(_not),
        st.builds(_combine, st.booleans(), st.lists(children, min_size=2, max_size=3)),
    ),
    max_leaves=8,
)

_maybe_bool = st.one_of(st.none(), st.booleans())
_facts = st.fixed_dictionaries(
    {
        "cart": st.fixed_dictionaries(
            {"value": st.one_of(st.none(), st.decimals(-5, 500, places=2, allow_nan=False))}
        ),
        "contact": st.fixed_dictionaries(
            {
                "sms_consent": _maybe_bool,
                "email_consent": _maybe_bool,
                "tags": st.one_of(st.none(), st.lists(st.sampled_from(_TAGS)).map(tuple)),
            }
        ),
        "sms1": st.one_of(st.none(), st.fixed_dictionaries({"opened": st.booleans()})),
    }
)


@settings(max_examples=300, deadline=None)
@given(_expressions, _facts)
def test_random_combinations_match_reference(
    expression: tuple[str, Reference], facts: Facts
) -> None:
    source, reference = expression
    if len(source) > MAX_LENGTH:
        return
    assert parse_condition(source, ["sms1"]).evaluate(facts) is reference(facts)


_junk = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(),
        st.text(max_size=5),
        st.decimals(),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=6,
)
_FACT_NAMES = ["cart", "contact", "sms1", "variant", "email1"]


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(_FACT_NAMES), _junk))
def test_evaluation_never_raises_on_odd_facts(facts: Facts) -> None:
    sources = [
        "cart.value >= 100 and 'vip' in contact.tags",
        "contact.country in ['US', 'CA'] or variant == 'a'",
        "not sms1.sent and (cart.item_count < 3 or contact.region != 'FL')",
        "contact.tags or cart.currency",
    ]
    for source in sources:
        assert isinstance(cond(source).evaluate(facts), bool)


def test_product_and_history_facts() -> None:
    lines = (
        CartLine(title="Gift card", quantity=1, price=Decimal(50), sku="GIFT-50"),
        CartLine(title="Socks", quantity=2, price=Decimal(30), sku="SOCK-1"),
    )
    cart = Cart(
        id=1,
        store_id=1,
        token="t",
        contact_id=1,
        lines=lines,
        value=Decimal(110),
        currency="NOK",
        restore_url=None,
        status=CartStatus.OPEN,
        updated_at=datetime(2026, 6, 1, tzinfo=UTC),
    )
    contact = Contact(id=1, store_id=1, phone="+4791234567", orders_count=2, abandoned_count=3)
    gifts = ProductExclusions(skus=frozenset({"GIFT-50"}))

    def holds(source: str, exclusions: ProductExclusions = gifts, on: Cart = cart) -> bool:
        facts = build_facts(on, contact, None, {}, exclusions)
        return parse_condition(source, ()).evaluate(facts)

    assert holds("'SOCK-1' in cart.skus and 'GIFT-50' in cart.skus")
    assert holds("cart.has_excluded_products and not cart.only_excluded_products")
    assert not holds("cart.has_excluded_products", ProductExclusions())
    only_gift = replace(cart, lines=lines[:1], value=Decimal(50))
    assert holds("cart.only_excluded_products", on=only_gift)
    tagged = ProductExclusions(tags=frozenset({"no-discount"}))
    assert holds("cart.only_excluded_products", tagged, replace(cart, tags=("no-discount",)))
    assert holds("contact.abandoned_count >= 3 and contact.orders_count == 2")
    assert not holds("contact.abandoned_count > 3")
    with pytest.raises(ConditionError, match=r"did you mean cart\.skus"):
        parse_condition("'x' in cart.sku", ())


def test_facts_read_names_each_fact_with_its_value_in_reading_order() -> None:
    condition = parse_condition(
        'contact.sms_consent and not email1.opened and cart.value >= 100 and variant in ["a"]',
        ["email1"],
    )
    facts = {
        "contact": {"sms_consent": True},
        "email1": {"opened": True},
        "cart": {"value": 120},
        "variant": None,
    }
    assert condition.facts_read(facts) == {
        "contact.sms_consent": True,
        "email1.opened": True,
        "cart.value": Decimal(120),
        "variant": None,
    }
    # A step that has not run reads as false, as evaluate() reads it.
    assert condition.facts_read({})["email1.opened"] is False
