"""contact.abandoned_count and contact.orders_count, loaded in the timer's batch. Runs on SQLite
and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update

from cartback.services.facts import abandoned_this_year
from cartback.services.ingest import ingest
from cartback.services.tick import tick
from cartback.store import tables as t
from tests.support.events import checkout
from tests.support.world import World

REPEAT_FLOW = """
name: repeat
abandon_after: 0s
steps:
  - id: sms1
    at: 0s
    channel: sms
    when: contact.abandoned_count >= 2 and contact.orders_count == 0
    body: "{{ brand }}: welcome back: {{ link }}"
"""


def test_repeat_abandoners_are_counted_in_the_batch(world: World) -> None:
    flow = world.app.registry.register_text(REPEAT_FLOW, "repeat.yaml", world.now)
    events = [
        checkout("a1", world.now, phone="+4740000001", email="a@x.no"),
        checkout("a2", world.now, phone="+4740000001", email="a@x.no"),
        checkout("b1", world.now, phone="+4740000002", email="b@x.no"),
    ]
    with world.app.engine.begin() as conn:
        ingest(conn, world.store, flow, events, world.now)
    world.clock.advance(timedelta(seconds=1))
    tick(world.app.engine, world.app.registry, world.now)
    with world.app.engine.connect() as conn:
        sent_to = set(conn.execute(select(t.outbox.c.to_address)).scalars())
        skipped = (
            conn.execute(select(t.decisions.c.reason).where(t.decisions.c.outcome == "skip"))
            .scalars()
            .all()
        )
    assert sent_to == {"+4740000001"}
    assert skipped == [
        "condition is false: contact.abandoned_count >= 2 and contact.orders_count == 0"
    ]


def test_only_this_years_enrollments_count(world: World) -> None:
    flow = world.app.registry.current("default")
    with world.app.engine.begin() as conn:
        ingest(
            conn,
            world.store,
            flow,
            [checkout("old", world.now), checkout("new", world.now)],
            world.now,
        )
        last_year = world.now.replace(year=world.now.year - 1)
        conn.execute(
            update(t.enrollments)
            .where(
                t.enrollments.c.cart_id.in_(select(t.carts.c.id).where(t.carts.c.token == "old"))
            )
            .values(created_at=last_year)
        )
        contact_id = conn.execute(select(t.contacts.c.id)).scalar_one()
        assert abandoned_this_year(conn, [contact_id], world.now) == {contact_id: 1}
        assert abandoned_this_year(conn, [], world.now) == {}
