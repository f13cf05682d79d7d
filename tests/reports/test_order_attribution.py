"""Orders are credited as they arrive, through ingest, to the message a shopper acted on."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update

from cartback.core.events import ContactInfo, OrderPlaced
from cartback.services import tracking
from cartback.services.ingest import ingest
from cartback.services.reports import flow_report
from cartback.services.tick import tick
from cartback.store import tables as t
from tests.support.events import checkout, order
from tests.support.world import World

BROWSER = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15"


def _sent_and_clicked(world: World, *, click: str) -> None:
    flow = world.app.registry.current("default")
    with world.app.engine.begin() as conn:
        ingest(conn, world.store, flow, [checkout("c1", world.now)], world.now)
    for wait in (timedelta(minutes=25), timedelta(minutes=45)):
        world.clock.advance(wait)
        tick(world.app.engine, world.app.registry, world.now, base_url="https://go.example")
    with world.app.engine.begin() as conn:
        conn.execute(update(t.outbox).values(sent_at=world.now, status="sent"))
        token = conn.execute(
            select(t.links.c.token).where(t.links.c.step_id == click, t.links.c.purpose == "click")
        ).scalar_one()
        world.clock.advance(timedelta(minutes=5))
        tracking.follow(conn, token, method="GET", user_agent=BROWSER, headers={}, now=world.now)


def _credits(world: World) -> list[tuple[str, str, str, str]]:
    a = t.attributions.c
    with world.app.engine.connect() as conn:
        return [
            (row.step_id, row.touch, row.matched_by, f"{row.revenue:.2f} {row.currency}")
            for row in conn.execute(select(a.step_id, a.touch, a.matched_by, a.revenue, a.currency))
        ]


def test_an_order_is_credited_in_its_own_transaction_once(world: World) -> None:
    _sent_and_clicked(world, click="sms1")
    flow = world.app.registry.current("default")
    world.clock.advance(timedelta(hours=2))
    placed = order("c1", world.now, value="120")
    with world.app.engine.begin() as conn:
        ingest(conn, world.store, flow, [placed], world.now)
    with world.app.engine.begin() as conn:
        ingest(conn, world.store, flow, [placed], world.now)  # the shop sends it again
    assert _credits(world) == [("sms1", "click", "cart", "120.00 NOK")]


def test_an_order_without_a_token_is_matched_by_the_shopper(world: World) -> None:
    _sent_and_clicked(world, click="email1")
    flow = world.app.registry.current("default")
    world.clock.advance(timedelta(days=1))
    placed = OrderPlaced(
        event_id="o-phone",
        occurred_at=world.now,
        order_id="o-phone",
        value=order("x", world.now).value,
        currency="EUR",
        contact=ContactInfo(phone="+4791234567"),
    )
    with world.app.engine.begin() as conn:
        ingest(conn, world.store, flow, [placed], world.now)
    assert _credits(world) == [("email1", "click", "contact", "120.00 EUR")]
    # No rate for EUR in a USD store: the revenue is left out and named, never added as USD.
    with world.app.engine.connect() as conn:
        report = flow_report(
            conn, world.store.id, since=world.now - timedelta(days=30), until=world.now
        )
    assert report["unconverted"] == {"EUR": "120.00"}
    assert report["flows"][0]["totals"]["recovered"] == 1
    assert report["flows"][0]["totals"]["revenue"] == "0.00"


def test_an_order_outside_every_window_is_not_credited(world: World) -> None:
    _sent_and_clicked(world, click="sms1")
    flow = world.app.registry.current("default")
    world.clock.advance(timedelta(days=6))
    with world.app.engine.begin() as conn:
        ingest(conn, world.store, flow, [order("c1", world.now)], world.now)
    assert _credits(world) == []
