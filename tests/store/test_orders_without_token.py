"""An order stops the shopper's flows even without the cart's token (a second device, an order
taken by phone): matched by normalised email or phone, if placed after the enrollment started.
Runs on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from cartback.services.ingest import EventStatus, ingest
from cartback.services.tick import tick
from cartback.store import tables as t
from tests.support.events import checkout, order
from tests.support.world import World


def _ingest(world: World, *events: object) -> list[EventStatus]:
    flow = world.app.registry.current("default")
    with world.app.engine.begin() as conn:
        results = ingest(conn, world.store, flow, list(events), world.now)  # type: ignore[arg-type]
    return [result.status for result in results]


def _enrollments(world: World) -> dict[str, tuple[str, str | None]]:
    e, c = t.enrollments.c, t.carts.c
    with world.app.engine.connect() as conn:
        rows = conn.execute(
            select(c.token, e.state, e.exit_reason).join(t.carts, c.id == e.cart_id)
        ).all()
    return {row.token: (row.state, row.exit_reason) for row in rows}


def test_an_order_from_a_second_device_matched_by_email_ends_the_enrollment(
    world: World,
) -> None:
    _ingest(world, checkout("phone-cart", world.now))
    world.clock.advance(timedelta(minutes=30))
    tick(world.app.engine, world.app.registry, world.now)
    # The laptop's checkout token was never sent to cartback; the email differs only in case
    # and is normalised at intake (here: already lower case, as intake leaves it).
    assert _ingest(world, order("laptop-token", world.now, email="kari@example.com")) == [
        EventStatus.ACCEPTED
    ]
    assert _enrollments(world) == {"phone-cart": ("exited", "order_placed")}
    with world.app.engine.connect() as conn:
        reasons = (
            conn.execute(select(t.decisions.c.reason).where(t.decisions.c.outcome == "exit"))
            .scalars()
            .all()
        )
        pending = conn.execute(
            select(t.outbox.c.status).where(t.outbox.c.status == "pending")
        ).all()
    assert reasons == ["exit: the shopper placed an order (matched by email or phone, not by cart)"]
    assert pending == []
    world.clock.advance(timedelta(days=4))
    assert tick(world.app.engine, world.app.registry, world.now).claimed == 0


def test_an_order_by_phone_without_any_token_ends_the_enrollment(world: World) -> None:
    _ingest(world, checkout("c1", world.now, email=None))
    world.clock.advance(timedelta(minutes=5))
    _ingest(world, order(None, world.now, order_id="phoned-in", phone="+4791234567"))
    assert _enrollments(world) == {"c1": ("exited", "order_placed")}


def test_an_order_placed_before_the_enrollment_started_does_not_end_it(world: World) -> None:
    start = world.now
    _ingest(world, checkout("c1", start))
    # A late-arriving order that was placed before this cart's enrollment began.
    _ingest(world, order("elsewhere", start - timedelta(hours=2), email="kari@example.com"))
    assert _enrollments(world) == {"c1": ("active", None)}


def test_an_order_of_another_shopper_leaves_the_enrollment_alone(world: World) -> None:
    _ingest(world, checkout("c1", world.now))
    world.clock.advance(timedelta(minutes=5))
    _ingest(world, order("other", world.now, email="ola@example.com", phone="+4798765432"))
    assert _enrollments(world) == {"c1": ("active", None)}
