"""The backtest replays carts with the worker's own engine and policy: for one cart it decides
exactly what `cartback flows test` shows, and across carts it applies the store's lineup, the
suppression window and what the engagement draws made shoppers do."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from cartback.backtest.engagement import Engagement, load_engagement
from cartback.backtest.replay import Replayer, Setup
from cartback.core.events import ShopEvent
from cartback.core.flows import default_flow_path, load_flow, parse_flow
from cartback.core.lineup import (
    CHECKOUT_UPDATED,
    PRIORITY_RULE,
    SUPPRESSION_RULE,
    AssignedFlow,
    Lineup,
)
from cartback.core.model import Store
from cartback.services.reports import money_from
from cartback.simulate import timeline
from cartback.web.intake import parse_event_document

STORE = Store(
    id=1, name="DemoShop", brand="DemoShop", domains=("shop.example",), postal_address="1 Demo St"
)
DEFAULT = load_flow(default_flow_path())
QUIET = load_engagement(
    None, "-", ["sms.click=0", "email.open=0", "email.click=0", "sms.opt_out=0", "email.opt_out=0"]
)
CONSENT_ALL = {
    "sms_marketing": True,
    "email_marketing": True,
    "cart_reminders": True,
    "double_opt_in": True,
}


def _checkout(token: str, at: str, phone: str, country: str, **extra: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "id": f"e-{token}-{at}",
        "type": "checkout.updated",
        "occurred_at": at,
        "cart_token": token,
        "contact": {"phone": phone, "email": "shopper@example.com", "first_name": "Sam"},
        "shipping": {"country": country},
        "lines": [{"title": "Rain jacket", "quantity": 1, "price": "120.00"}],
        "currency": "USD",
        "restore_url": f"https://shop.example/cart/{token}",
        "consent": CONSENT_ALL,
    }
    event.update(extra)
    return event


def _events(*documents: dict[str, Any]) -> list[ShopEvent]:
    return [event for d in documents for event in parse_event_document(json.dumps(d).encode())]


def _replayer(lineup: Lineup, engagement: Engagement = QUIET) -> Replayer:
    money = money_from({"prices": {"sms": {"*": "0.05"}, "email": "0.001"}}, "USD")
    return Replayer(Setup(lineup, STORE, engagement, money, seed=1))


@pytest.mark.parametrize(
    ("at", "phone", "country", "extra"),
    [
        ("2026-11-23T10:00:00+01:00", "+4791234567", "NO", {}),
        (
            "2026-11-23T14:00:00-05:00",
            "+12125550123",
            "US",
            {"shipping": {"country": "US", "region": "NY"}},
        ),
        (
            "2026-11-23T19:40:00-05:00",
            "+13055550123",
            "US",
            {"shipping": {"country": "US", "region": "FL"}},
        ),
        ("2026-11-23T23:30:00+01:00", "+4791234567", "NO", {"consent": {"email_marketing": True}}),
    ],
)
def test_one_cart_gets_the_decisions_flows_test_shows(
    at: str, phone: str, country: str, extra: dict[str, Any]
) -> None:
    events = _events(_checkout("c1", at, phone, country, **extra))
    expected: Counter[tuple[str, str]] = Counter()
    for entry in timeline(DEFAULT, STORE, events):
        if entry.step_id is not None and entry.outcome in ("send", "skip", "defer", "holdout"):
            outcome = "send" if entry.outcome == "send" else entry.rule or entry.outcome
            expected[(entry.step_id, f"{entry.outcome}:{outcome}")] += 1
    replayer = _replayer(Lineup.single(DEFAULT))
    replayer.shopper([events])
    found: Counter[tuple[str, str]] = Counter()
    for step_id, counts in replayer.tally.flow("default").steps.items():
        found[(step_id, "send:send")] += counts.sent
        for rule, n in counts.skips.items():
            kind = "holdout" if rule in ("holdout", "channel_holdout") else "skip"
            found[(step_id, f"{kind}:{rule}")] += n
        for rule, n in counts.defers.items():
            found[(step_id, f"defer:{rule}")] += n
    assert +found == +expected


def _flow(name: str, enroll_when: str) -> Any:
    return parse_flow(
        f"""\
name: {name}
currency: USD
abandon_after: 10m
enroll_when: {enroll_when}
steps:
  - id: email1
    at: 1h
    channel: email
    subject: 'Your cart'
    body: 'Hi {{{{ first_name }}}}, your cart: {{{{ link }}}}'
""",
        f"{name}.yaml",
    )


def test_a_cart_matching_two_flows_enters_the_first_and_the_other_records_why() -> None:
    first, second = _flow("checkouts", "contact.has_email"), _flow("carts", "contact.has_email")
    lineup = Lineup.of(
        [AssignedFlow(second, 2, CHECKOUT_UPDATED), AssignedFlow(first, 1, CHECKOUT_UPDATED)]
    )
    replayer = _replayer(lineup)
    replayer.shopper([_events(_checkout("c1", "2026-11-23T10:00:00Z", "+4791234567", "NO"))])
    assert replayer.tally.flow("checkouts").enrolled == 1
    assert replayer.tally.flow("checkouts").step("email1").sent == 1
    carts = replayer.tally.flow("carts")
    assert carts.enrolled == 0 and carts.not_enrolled == {PRIORITY_RULE: 1}


def test_a_shopper_in_one_flow_is_not_enrolled_by_another_within_the_window() -> None:
    big, small = _flow("big", "cart.value >= 100"), _flow("small", "cart.value < 100")
    lineup = Lineup.of(
        [AssignedFlow(big, 1, CHECKOUT_UPDATED), AssignedFlow(small, 2, CHECKOUT_UPDATED)],
        suppression=timedelta(days=2),
    )
    cheap = {"lines": [{"title": "Socks", "quantity": 1, "price": "20.00"}]}
    shopper = [
        _events(_checkout("c1", "2026-11-23T10:00:00Z", "+4791234567", "NO")),
        # Half an hour later, while the first flow still waits for its email.
        _events(_checkout("c2", "2026-11-23T10:30:00Z", "+4791234567", "NO", **cheap)),
        # Three days later the first flow is long over.
        _events(_checkout("c3", "2026-11-26T10:00:00Z", "+4791234567", "NO", **cheap)),
    ]
    replayer = _replayer(lineup)
    replayer.shopper(shopper)
    assert replayer.tally.flow("big").enrolled == 1
    small_counts = replayer.tally.flow("small")
    assert small_counts.enrolled == 1
    assert small_counts.not_enrolled == {SUPPRESSION_RULE: 1}


def test_an_order_drawn_after_a_click_ends_the_flow() -> None:
    clicks = load_engagement(None, "-", ["sms.click=1", "sms.recover=1", "sms.opt_out=0"])
    replayer = _replayer(Lineup.single(DEFAULT), clicks)
    replayer.shopper([_events(_checkout("c1", "2026-11-23T10:00:00+01:00", "+4791234567", "NO"))])
    flow = replayer.tally.flow("default")
    assert flow.step("sms1").sent == 1 and flow.step("sms1").recovered == 1
    assert flow.exits == {"order_placed": 1}
    # The order came 1 h 30 min after sms1, before email1's turn came round again.
    assert sum(step.sent for step in flow.steps.values()) <= 2
    # Every step not yet decided counts the cart that left.
    undecided = [name for name, step in flow.steps.items() if step.exits_before == 1]
    assert undecided and all(flow.steps[name].sent == 0 for name in undecided)


def test_an_opt_out_drawn_stops_the_channel_and_the_flow() -> None:
    leaves = load_engagement(None, "-", ["sms.opt_out=1", "sms.click=0", "email.click=0"])
    replayer = _replayer(Lineup.single(DEFAULT), leaves)
    replayer.shopper([_events(_checkout("c1", "2026-11-23T10:00:00+01:00", "+4791234567", "NO"))])
    flow = replayer.tally.flow("default")
    assert flow.step("sms1").opted_out == 1
    assert flow.exits == {"opted_out": 1}
    assert [flow.step(s.id).sent for s in DEFAULT.steps] == [1] + [0] * (len(DEFAULT.steps) - 1)


def test_a_cart_seen_only_before_checkout_sets_off_only_cart_flows() -> None:
    cart_event = {
        "id": "k1",
        "type": "cart.updated",
        "occurred_at": "2026-11-23T10:00:00Z",
        "cart_token": "k1",
        "contact": {"email": "shopper@example.com"},
        "lines": [{"title": "Rain jacket", "quantity": 1, "price": "120.00"}],
        "currency": "USD",
        "restore_url": "https://shop.example/cart/k1",
    }
    checkouts_only = _replayer(Lineup.single(_flow("checkouts", "contact.has_email")))
    checkouts_only.shopper([_events(cart_event)])
    assert checkouts_only.tally.not_enrolled == 1
    carts = _flow("carts", "contact.has_email")
    both = _replayer(Lineup.of([AssignedFlow(carts, 1, "cart.updated")]))
    both.shopper([_events(cart_event)])
    email1 = both.tally.flow("carts").step("email1")
    # A cart event carries no consent: the email is skipped for it, not sent.
    assert both.tally.flow("carts").enrolled == 1
    assert email1.sent == 0 and email1.skips == {"consent.marketing": 1}


@pytest.mark.parametrize(("rates", "enrolled"), [(None, 0), ({"base": "USD", "NOK": "0.1"}, 1)])
def test_the_backtest_compares_money_through_the_stores_exchange_rates(
    rates: dict[str, str] | None, enrolled: int
) -> None:
    """A NOK 1,200 cart against a USD 100 threshold: comparable only through the store's
    rates, as the worker compares it."""
    big = _flow("big", "cart.value >= 100")
    store = replace(STORE, policy={"exchange_rates": rates} if rates else None)
    money = money_from({"prices": {"sms": {"*": "0.05"}, "email": "0.001"}}, "USD")
    replayer = Replayer(Setup(Lineup.single(big), store, QUIET, money, seed=1))
    nok = {"currency": "NOK", "lines": [{"title": "Jakke", "quantity": 1, "price": "1200.00"}]}
    replayer.shopper([_events(_checkout("c1", "2026-11-23T10:00:00Z", "+4791234567", "NO", **nok))])
    assert replayer.tally.flow("big").enrolled == enrolled
