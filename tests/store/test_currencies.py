"""Money in its currency on a real database: the default flow's large-cart step meets each cart
in its own currency, and the store's exchange rates reach the timer."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from decimal import Decimal

from sqlalchemy import select

from cartback.core.storepolicy import check
from cartback.services import admin
from cartback.services.ingest import ingest
from cartback.services.tick import tick
from cartback.store import tables as t
from tests.support.events import checkout
from tests.support.world import World


def _sms3_decisions(world: World, carts: list[tuple[str, str, str]]) -> dict[str, tuple[str, str]]:
    """Each cart (token, currency, price) through three days of hourly timer runs: sms3's
    outcome and rule, by token."""
    flow = world.app.registry.current("default")
    events = []
    for number, (token, currency, price) in enumerate(carts):
        base = checkout(
            token,
            world.now,
            phone=f"+474000000{number}",
            email=f"{token}@example.com",
            price=price,
            quantity=1,
        )
        events.append(replace(base, currency=currency, value=Decimal(price)))
    with world.app.engine.begin() as conn:
        ingest(conn, world.store, flow, events, world.now)
    for _ in range(80):
        world.clock.advance(timedelta(hours=1))
        tick(world.app.engine, world.app.registry, world.now)
    d, c = t.decisions.c, t.carts.c
    with world.app.engine.connect() as conn:
        rows = conn.execute(
            select(c.token, d.outcome, d.rule)
            .join(t.carts, t.carts.c.id == d.cart_id)
            .where(d.step_id == "sms3", d.outcome != "defer")
        ).all()
    return {row.token: (row.outcome, row.rule or "") for row in rows}


def test_each_cart_meets_the_threshold_of_its_own_currency(world: World) -> None:
    found = _sms3_decisions(
        world,
        [("nok1200", "NOK", "1200"), ("usd90", "USD", "90"), ("jpy", "JPY", "20000")],
    )
    assert found["nok1200"] == ("send", "")
    assert found["usd90"] == ("skip", "when")
    # The default flow states no yen figure and the store gives no rates.
    assert found["jpy"] == ("skip", "flow.currency")


def test_the_stores_exchange_rates_settle_another_currency(world: World) -> None:
    settings = check({"exchange_rates": {"base": "USD", "JPY": "0.0065"}})
    with world.app.engine.begin() as conn:
        admin.set_store_policy(conn, world.store.id, settings)
        world.store = replace(world.store, policy=settings)
    # USD 100 is 15,384.62 yen at 0.0065.
    found = _sms3_decisions(world, [("big", "JPY", "20000"), ("small", "JPY", "15000")])
    assert found["big"] == ("send", "")
    assert found["small"] == ("skip", "when")
