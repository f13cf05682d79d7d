"""Money in its currency: flow amounts per currency or in a base currency, exact decimals, and a
named skip for a cart the flow cannot compare."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cartback.core.conditions import ConditionError, MoneyTerms, build_facts, parse_condition
from cartback.core.engine import Outcome, advance, may_enroll
from cartback.core.flows import Flow, FlowError, default_flow_path, load_flow, parse_flow
from cartback.core.model import (
    Cart,
    CartLine,
    CartStatus,
    Contact,
    Enrollment,
    EnrollmentState,
)
from cartback.core.money import CURRENCY_RULE, Amount, Rates, round_to_minor_unit
from cartback.core.storepolicy import StorePolicyError, check, store_policy

START = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
CONTACT = Contact(id=7, store_id=1, phone="+4791234567", email="a@example.com", sms_marketing=True)
RATES = Rates("USD", {"NOK": Decimal("0.093"), "EUR": Decimal("1.08")})


def cart(value: str, currency: str) -> Cart:
    return Cart(
        id=1,
        store_id=1,
        token="tok",
        contact_id=7,
        lines=(CartLine("Boots", 1, Decimal(value)),),
        value=Decimal(value),
        currency=currency,
        restore_url=None,
        status=CartStatus.OPEN,
        updated_at=START,
    )


# ---- amounts -------------------------------------------------------------------------------------


def test_an_amount_gives_its_own_figure_for_each_currency() -> None:
    large = Amount.of({"USD": Decimal(100), "NOK": Decimal(1000)})
    assert large.in_currency("USD") == Decimal(100)
    assert large.in_currency("nok") == Decimal(1000)
    assert large.in_currency("SEK") is None
    assert large.describe() == "NOK 1000, USD 100"


def test_rates_convert_exactly_without_a_float() -> None:
    usd = Amount.of({"USD": Decimal(100)})
    # 100 USD in NOK at 1 NOK = 0.093 USD: 1075.268817... NOK, as a Decimal.
    in_nok = usd.in_currency("NOK", RATES)
    assert isinstance(in_nok, Decimal)
    assert in_nok == Decimal(100) / Decimal("0.093")
    # Between two non-base currencies through the base: 90 EUR = 97.2 USD = 1045.16 NOK.
    eur = Amount.of({"EUR": Decimal(90)})
    assert eur.in_currency("NOK", RATES) == Decimal(90) * Decimal("1.08") / Decimal("0.093")
    assert usd.in_currency("SEK", RATES) is None  # no rate for the cart's currency
    assert Amount.of({"SEK": Decimal(1000)}).in_currency("NOK", RATES) is None


@pytest.mark.parametrize(
    ("value", "currency", "expected"),
    [("53.7634", "NOK", "53.76"), ("1234.5", "JPY", "1234"), ("1.23456", "KWD", "1.235")],
)
def test_converted_amounts_keep_the_currencys_minor_unit(
    value: str, currency: str, expected: str
) -> None:
    assert round_to_minor_unit(Decimal(value), currency) == Decimal(expected)


# ---- conditions ----------------------------------------------------------------------------------

TERMS = MoneyTerms(
    base=None,
    amounts={"large_cart": Amount.of({"USD": Decimal(100), "NOK": Decimal(1000)}, "amounts.large")},
)


def holds(
    source: str, the_cart: Cart, terms: MoneyTerms = TERMS, rates: Rates | None = None
) -> bool:
    condition = parse_condition(source, (), money=terms)
    return condition.evaluate(build_facts(the_cart, CONTACT, None, {}, rates=rates))


def test_a_threshold_per_currency_meets_each_cart_in_its_own() -> None:
    source = "cart.value >= amounts.large_cart"
    assert holds(source, cart("1200", "NOK"))
    assert not holds(source, cart("90", "USD"))
    assert not holds(source, cart("999.99", "NOK"))
    assert holds(source, cart("100.00", "USD"))


def test_a_plain_number_needs_a_currency() -> None:
    with pytest.raises(ConditionError, match="100 names no currency"):
        parse_condition("cart.value >= 100", (), money=TERMS)
    in_usd = MoneyTerms(base="USD")
    assert holds("cart.value >= 100", cart("100", "USD"), in_usd)
    # 100 USD is not 100 NOK: without rates, the krone cart meets nothing.
    assert not holds("cart.value >= 100", cart("5000", "NOK"), in_usd)
    assert not holds("cart.value < 100", cart("1", "NOK"), in_usd)
    # With the store's rates 100 USD is 1075.27 NOK.
    assert holds("cart.value >= 100", cart("1075.27", "NOK"), in_usd, RATES)
    assert not holds("cart.value >= 100", cart("1075.26", "NOK"), in_usd, RATES)
    assert holds("50 < cart.value <= 100", cart("75", "USD"), in_usd)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("cart.value >= amounts.big", "unknown name amounts.big; the flow's amounts: large_cart"),
        ("cart.value in [10, 20]", "compare money with <, <=, >, >=, == or !=, not with a list"),
        ("cart.value > cart.item_count", "cannot compare money with a number using `>`"),
        ("amounts.large_cart > 'x'", "cannot compare money with text using `>`"),
    ],
)
def test_money_mistakes_are_named(source: str, message: str) -> None:
    with pytest.raises(ConditionError) as caught:
        parse_condition(source, (), money=TERMS)
    assert message in str(caught.value)


def test_a_condition_lists_the_amounts_it_compares() -> None:
    condition = parse_condition(
        "cart.value >= amounts.large_cart or cart.value < 5",
        (),
        money=MoneyTerms("EUR", TERMS.amounts),
    )
    assert [amount.currencies for amount in condition.amounts] == [("NOK", "USD"), ("EUR",)]


@given(
    st.decimals(min_value=0, max_value=10**6, places=2, allow_nan=False, allow_infinity=False),
    st.decimals(min_value=0, max_value=10**6, places=2, allow_nan=False, allow_infinity=False),
)
def test_comparison_is_exact(value: Decimal, threshold: Decimal) -> None:
    terms = MoneyTerms(amounts={"t": Amount.of({"NOK": threshold})})
    assert holds("cart.value >= amounts.t", cart(str(value), "NOK"), terms) is (value >= threshold)


# ---- flow files ----------------------------------------------------------------------------------

FLOW = """\
name: money
abandon_after: 10m
amounts:
  large_cart: {USD: 100, EUR: 90, NOK: 1000}
steps:
  - id: sms1
    at: 15m
    channel: sms
    body: one
  - id: sms2
    at: 1h
    channel: sms
    when: cart.value >= amounts.large_cart
    body: "{{ discount_text }} {{ discount_code }}"
    discount: {code: TEN, amount: {USD: 10, NOK: 100}, min_value: large_cart}
"""


def enrollment(flow_version: str) -> Enrollment:
    return Enrollment(
        id=1,
        store_id=1,
        cart_id=1,
        flow_name="money",
        flow_version=flow_version,
        step_index=1,
        state=EnrollmentState.ACTIVE,
        abandoned_at=START,
        wake_at=None,
    )


def run_second_step(the_cart: Cart, rates: Rates | None = None) -> tuple[str, str | None, str]:
    flow = parse_flow(FLOW, "money.yaml")
    result = advance(
        flow, enrollment(flow.version), the_cart, CONTACT, START.replace(hour=13), rates=rates
    )
    decision = result.decisions[0]
    return (str(decision.outcome), decision.rule, decision.reason)


def test_a_nok_cart_of_1200_and_a_usd_cart_of_90_meet_the_right_thresholds() -> None:
    assert run_second_step(cart("1200", "NOK"))[0] == Outcome.SEND
    outcome, rule, _ = run_second_step(cart("90", "USD"))
    assert (outcome, rule) == (Outcome.SKIP, "when")
    flow = parse_flow(FLOW, "money.yaml")
    discount = flow.step("sms2").discount
    assert discount is not None
    assert discount.offered_for(cart("1200", "NOK"))
    assert discount.amount_for("NOK") == Decimal(100)
    assert not discount.offered_for(cart("90", "USD"))


def test_a_cart_in_a_currency_the_flow_cannot_compare_is_skipped_by_name() -> None:
    outcome, rule, reason = run_second_step(cart("5000", "SEK"))
    assert (outcome, rule) == (Outcome.SKIP, CURRENCY_RULE)
    assert reason == (
        "a SEK cart cannot be compared: amounts.large_cart is stated in EUR 90, NOK 1000, "
        "USD 100; amount is stated in NOK 100, USD 10, and the store gives no exchange rates"
    )
    # With a rate for SEK the store's table settles it: 100 USD at 1 SEK = 0.095 USD.
    rates = Rates("USD", {"SEK": Decimal("0.095")})
    assert run_second_step(cart("1052.64", "SEK"), rates)[0] == Outcome.SEND
    assert run_second_step(cart("1052.63", "SEK"), rates)[1] == "when"


def test_enroll_when_on_an_uncomparable_currency_does_not_enroll() -> None:
    flow = parse_flow(
        FLOW.replace("steps:", "enroll_when: cart.value >= 10\ncurrency: EUR\nsteps:")
    )
    assert may_enroll(flow, cart("10", "EUR"), CONTACT)
    assert not may_enroll(flow, cart("1000", "SEK"), CONTACT)
    assert may_enroll(
        flow, cart("100", "SEK"), CONTACT, rates=Rates("EUR", {"SEK": Decimal("0.1")})
    )


@pytest.mark.parametrize(
    ("fragment", "replacement", "message"),
    [
        (
            "{USD: 100, EUR: 90, NOK: 1000}",
            "{USD: 100, nok: 1000}",
            "money.yaml:4: amounts.large_cart.nok: 'nok' is not a currency: use an ISO 4217 code "
            "in capitals, like NOK",
        ),
        (
            "{USD: 100, EUR: 90, NOK: 1000}",
            "{USD: lots}",
            "money.yaml:4: amounts.large_cart.USD: expected an amount, got text",
        ),
        (
            "{USD: 100, EUR: 90, NOK: 1000}",
            "{USD: -1}",
            "money.yaml:4: amounts.large_cart.USD: must be 0 or more, got -1",
        ),
        (
            "{USD: 100, EUR: 90, NOK: 1000}",
            "{}",
            "money.yaml:4: amounts.large_cart: give at least one currency, like {USD: 100}",
        ),
        (
            "{USD: 100, EUR: 90, NOK: 1000}",
            "100",
            "money.yaml:4: amounts.large_cart: 100 names no currency",
        ),
        (
            "amount: {USD: 10, NOK: 100}",
            "amount: {USD: 0}",
            "money.yaml:15: steps[1].discount.amount.USD: must be more than 0, got 0",
        ),
        (
            "min_value: large_cart",
            "min_value: huge_cart",
            "money.yaml:15: steps[1].discount.min_value: 'huge_cart' is not one of the flow's "
            "amounts; the flow's amounts: large_cart",
        ),
        (
            "when: cart.value >= amounts.large_cart",
            "when: cart.value >= 100",
            "money.yaml:13: steps[1].when: cart.value is money, and 100 names no currency",
        ),
        (
            "name: money\n",
            "name: money\ncurrency: usd\n",
            "money.yaml:2: currency: 'usd' is not valid: an ISO 4217 code in capitals",
        ),
    ],
)
def test_flows_check_names_bad_money_with_file_and_line(
    fragment: str, replacement: str, message: str
) -> None:
    assert fragment in FLOW
    with pytest.raises(FlowError) as caught:
        parse_flow(FLOW.replace(fragment, replacement), "money.yaml")
    assert message in str(caught.value), str(caught.value)


def test_a_base_currency_keeps_plain_numbers() -> None:
    text = FLOW.replace("name: money\n", "name: money\ncurrency: NOK\n").replace(
        "cart.value >= amounts.large_cart", "cart.value >= 1000"
    )
    flow = parse_flow(text.replace("amount: {USD: 10, NOK: 100}", "amount: 100"))
    assert flow.currency == "NOK"
    discount = flow.step("sms2").discount
    assert discount is not None and discount.amount == Amount.of({"NOK": Decimal(100)})
    # Converted for a dollar cart by the store's rates, to whole cents.
    assert discount.amount_for("USD", RATES) == Decimal("9.30")


def test_a_stored_version_keeps_the_old_bare_numbers() -> None:
    old = FLOW.replace("cart.value >= amounts.large_cart", "cart.value >= 100").replace(
        "amount: {USD: 10, NOK: 100}, min_value: large_cart", "amount: 5, min_value: 100"
    )
    with pytest.raises(FlowError):
        parse_flow(old, "old.yaml")
    flow = parse_flow(old, "old.yaml", check_templates=False)
    discount = flow.step("sms2").discount
    assert discount is not None and discount.amount_for("SEK") == Decimal(5)
    assert run_old(flow, cart("100", "SEK")) == Outcome.SEND
    assert run_old(flow, cart("99", "NOK")) == Outcome.SKIP


def run_old(flow: Flow, the_cart: Cart) -> str:
    result = advance(flow, enrollment(flow.version), the_cart, CONTACT, START.replace(hour=13))
    return str(result.decisions[0].outcome)


def test_the_shipped_flows_state_their_thresholds_per_currency() -> None:
    for path in (default_flow_path(), default_flow_path().with_name("demo.yaml")):
        flow = load_flow(path)
        sms3 = flow.step("sms3")
        assert sms3.discount is not None
        assert sms3.discount.min_value == flow.amounts["large_cart"]
        assert flow.amounts["large_cart"].in_currency("NOK") == Decimal(1000)
        assert flow.amounts["large_cart"].in_currency("USD") == Decimal(100)


# ---- the store's rates ---------------------------------------------------------------------------


def test_store_rates_are_checked_and_kept_exact() -> None:
    settings = check({"exchange_rates": {"base": "USD", "NOK": 0.093, "EUR": "1.08", "SEK": 1}})
    assert settings["exchange_rates"] == {"base": "USD", "NOK": "0.093", "EUR": "1.08", "SEK": "1"}
    rates = store_policy(settings, "UTC").rates
    assert rates == Rates(
        "USD", {"NOK": Decimal("0.093"), "EUR": Decimal("1.08"), "SEK": Decimal(1)}
    )
    assert rates is not None and rates.per_unit["NOK"] == Decimal("0.093")


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"NOK": 1}, "exchange_rates.base: is required"),
        ({"base": "USD", "nok": 1}, "exchange_rates.nok: 'nok' is not a currency"),
        ({"base": "USD", "NOK": 0}, "exchange_rates.NOK: expected a rate above 0"),
        ({"base": "USD", "NOK": "x"}, "exchange_rates.NOK: expected a rate above 0"),
        ([1, 2], "exchange_rates: expected {base: USD"),
    ],
)
def test_bad_store_rates_are_named(table: object, message: str) -> None:
    with pytest.raises(StorePolicyError) as caught:
        check({"exchange_rates": table})
    assert message in str(caught.value)


def test_a_nok_cart_in_the_default_flow_meets_its_threshold() -> None:
    flow = load_flow(default_flow_path())
    sms3 = flow.step("sms3")
    assert sms3.when is not None
    history_facts = {"email2": {"clicked": False}}
    for the_cart, expected in ((cart("1200", "NOK"), True), (cart("90", "USD"), False)):
        facts = {**build_facts(the_cart, CONTACT, None, {}), **history_facts}
        assert sms3.when.evaluate(facts) is expected
        assert sms3.discount is not None and sms3.discount.offered_for(the_cart) is expected


def test_a_broken_amount_is_reported_once_where_it_is_declared() -> None:
    text = FLOW.replace("{USD: 100, EUR: 90, NOK: 1000}", "{USD: lots}")
    with pytest.raises(FlowError) as caught:
        parse_flow(text, "money.yaml")
    assert [str(issue) for issue in caught.value.issues] == [
        "money.yaml:4: amounts.large_cart.USD: expected an amount, got text",
        "money.yaml:13: steps[1].when: amounts.large_cart cannot be used until its entry under "
        "amounts is fixed",
        "money.yaml:15: steps[1].discount.min_value: 'large_cart' cannot be used until its "
        "amount is fixed",
    ]
