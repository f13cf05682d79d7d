"""The backtest's message book gives, for every cart, what compose gives: its cache is keyed by
everything the step's templates read, so a cached text never stands in for a different one."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal

from cartback.backtest.messages import MessageBook
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
from cartback.services.compose import ComposeError, compose
from cartback.services.reports import money_from
from cartback.simulate import sample_code

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


def _direct(cart: Cart, contact: Contact, flow_name: str, step: Step) -> tuple[object, ...]:
    try:
        row = compose(
            STORE,
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
