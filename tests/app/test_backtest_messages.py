"""The backtest's message book gives, for every cart, what compose gives: its cache is keyed by
everything the step's templates read, so a cached text never stands in for a different one."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from cartback.backtest.messages import MessageBook
from cartback.core import sandbox
from cartback.core.flows import Step, default_flow_path, load_flow, parse_flow
from cartback.core.model import (
    Cart,
    CartLine,
    CartStatus,
    Contact,
    Enrollment,
    EnrollmentState,
    Store,
)
from cartback.core.storepolicy import parse_store_policy_text
from cartback.services.compose import ComposeError, compose
from cartback.services.reports import money_from
from cartback.simulate import sample_code
from tests.app.backtest_sample import PausingClock

STORE = Store(
    id=1, name="DemoShop", brand="DemoShop", domains=("shop.example",), postal_address="1 Demo St"
)
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
PRODUCTS = ("Socks", "🧦 Holiday socks", "Waterproof hiking boots with Vibram sole " * 3, "Ærme")
NAMES = (None, "Sam", "Łucja", "Bartholomew-Alexander")


def _cases() -> list[tuple[Cart, Contact]]:
    cases = []
    for n, (product, name, locale, value) in enumerate(
        (p, f, loc, v)
        for p in PRODUCTS
        for f in NAMES
        for loc in ("en", "nb", "de")
        for v in ("40.00", "250.00")
    ):
        contact = Contact(
            id=1,
            store_id=1,
            phone="+4791234567",
            email="s@example.com",
            first_name=name,
            locale=locale,
            sms_marketing=True,
            email_marketing=True,
        )
        cart = Cart(
            id=n,
            store_id=1,
            token=f"c{n}",
            contact_id=1,
            lines=(CartLine(product, 1, Decimal(value)),),
            value=Decimal(value),
            currency="NOK",
            restore_url=f"https://shop.example/cart/c{n}" if n % 7 else "https://evil.example/x",
            status=CartStatus.OPEN,
            updated_at=NOW,
        )
        cases.append((cart, contact))
    return cases


def _enrollment(flow_name: str) -> Enrollment:
    return Enrollment(
        id=1,
        store_id=1,
        cart_id=1,
        flow_name=flow_name,
        flow_version="v",
        step_index=0,
        state=EnrollmentState.ACTIVE,
        abandoned_at=NOW,
        wake_at=NOW,
        variant=None,
        holdout=False,
    )


def _direct(
    cart: Cart, contact: Contact, flow_name: str, step: Step, store: Store = STORE
) -> tuple[object, ...]:
    try:
        row = compose(
            store,
            cart,
            contact,
            _enrollment(flow_name),
            step,
            NOW,
            "https://cb.example",
            codes=sample_code,
        ).outbox
    except ComposeError as error:
        return (None, None, error.rule)
    return (row["segments"], row["encoding"], None)


def test_every_sms_counts_as_compose_counts_it() -> None:
    flow = load_flow(default_flow_path())
    book = MessageBook(STORE, "https://cb.example", money_from({}, "NOK"))
    checked = 0
    for cart, contact in _cases() * 2:
        for step in flow.steps:
            got = book.render(flow.name, cart, contact, _enrollment(flow.name), step, NOW)
            expected = _direct(cart, contact, flow.name, step)
            if step.channel == "sms":
                assert (got.segments, got.encoding, got.error_rule) == expected
            else:
                assert got.error_rule == expected[2]
            checked += 1
    assert checked == len(_cases()) * 2 * len(flow.steps)
    # The second round came from the cache.
    assert book.composed < checked / 2
    # A restore URL off the store's domains stops the message, as compose stops it.
    evil, shopper = _cases()[0]
    assert evil.restore_url == "https://evil.example/x"
    refused = book.render(flow.name, evil, shopper, _enrollment(flow.name), flow.steps[0], NOW)
    assert refused.error_rule == "link"


def test_a_template_reading_a_name_the_key_does_not_follow_is_rendered_each_time() -> None:
    flow = parse_flow(
        "name: odd\nabandon_after: 10m\nsteps:\n  - id: sms1\n    at: 15m\n    channel: sms\n"
        "    body: '{{ brand }}: {{ nickname or product }} {{ link }}'\n",
        "odd.yaml",
    )
    book = MessageBook(STORE, "https://cb.example", money_from({}, "NOK"))
    cases = _cases()[:6]
    for cart, contact in cases:
        book.render("odd", cart, contact, _enrollment("odd"), flow.steps[0], NOW)
    assert book.composed == len(cases)
    again = replace(cases[0][0], id=99)
    book.render("odd", again, cases[0][1], _enrollment("odd"), flow.steps[0], NOW)
    assert book.composed == len(cases) + 1


def _as_compared(rendered: object) -> tuple[object, ...]:
    return (
        getattr(rendered, "segments", None),
        getattr(rendered, "encoding", None),
        getattr(rendered, "error_rule", None),
    )


def test_a_render_the_clock_stopped_is_rendered_again_not_kept_for_later_carts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    flow = load_flow(default_flow_path())
    sms1 = flow.steps[0]
    cart, contact = _cases()[1]
    expected = _direct(cart, contact, flow.name, sms1)
    assert expected[2] is None
    # A cart with the same key: the same step, language, name and product.
    twin = replace(cart, id=500, token="c500", restore_url="https://shop.example/cart/c500")
    book = MessageBook(STORE, "https://cb.example", money_from({}, "NOK"))
    # The pause falls on the clock's second reading, inside the first render of cart's text.
    clock = PausingClock(2)
    monkeypatch.setattr(sandbox, "time", clock)
    first = book.render(flow.name, cart, contact, _enrollment(flow.name), sms1, NOW)
    later = book.render(flow.name, twin, contact, _enrollment(flow.name), sms1, NOW)
    assert _as_compared(first) == expected
    assert _as_compared(later) == expected
    assert clock.paused > 0 and clock.readings > 3
    # Rendered twice for the first cart (the stopped render and the one after), then kept.
    assert book.composed == 2


def test_a_render_stopped_by_the_clock_every_time_is_a_template_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    flow = load_flow(default_flow_path())
    cart, contact = _cases()[1]
    book = MessageBook(STORE, "https://cb.example", money_from({}, "NOK"))
    monkeypatch.setattr(sandbox, "time", PausingClock(*range(2, 200, 2)))
    slow = book.render(flow.name, cart, contact, _enrollment(flow.name), flow.steps[0], NOW)
    assert slow.error_rule == "template"
    assert slow.error is not None and "longer than 1 s" in slow.error
    assert book.composed == 3


RATES_FLOW = """\
name: rates
abandon_after: 10m
amounts:
  large_cart: {EUR: 90}
discount_exclusions:
  tags: [no-discount]
steps:
  - id: sms1
    at: 15m
    channel: sms
    max_segments: 3
    body: >-
      {{ brand }}: {% if discount_code %}{{ discount_text }} your cart with code
      {{ discount_code }}, valid for the next 48 hours on everything in it, shipping
      included{% else %}Your cart is saved{% endif %}: {{ link }}
    discount:
      code: COMEBACK10
      percent: 10
      min_value: large_cart
"""


def test_a_discount_the_store_rates_offer_keeps_its_own_text() -> None:
    # The threshold is in euros only: a cart in dollars qualifies through the store's rates,
    # unless it is made only of excluded products. Two such carts differ only there.
    flow = parse_flow(RATES_FLOW, "rates.yaml")
    policy = parse_store_policy_text('exchange_rates:\n  base: EUR\n  USD: "0.92"\n', "s.yaml")
    store = replace(STORE, policy=policy)
    contact = _cases()[0][1]
    offered = replace(
        _cases()[1][0], currency="USD", value=Decimal("200.00"), restore_url=None, tags=()
    )
    excluded = replace(offered, id=77, token="c77", tags=("no-discount",))
    step = flow.steps[0]
    expected = {
        cart.id: _direct(cart, contact, "rates", step, store) for cart in (offered, excluded)
    }
    assert expected[offered.id] != expected[excluded.id]
    for order in ((offered, excluded), (excluded, offered)):
        book = MessageBook(store, "https://cb.example", money_from({}, "EUR"))
        for cart in order:
            got = book.render("rates", cart, contact, _enrollment("rates"), step, NOW)
            assert _as_compared(got) == expected[cart.id]
