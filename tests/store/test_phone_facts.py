"""A phone number is examined once, when it is stored; the timer reads what was stored."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update

from cartback.services.ingest import ingest
from cartback.services.tick import tick
from cartback.store import tables as t
from cartback.store.rows import contact_from_row
from tests.support.events import checkout
from tests.support.world import World

MIAMI = "+13055550143"


def _ingest(world: World, *events: object) -> None:
    flow = world.app.registry.current("default")
    with world.app.engine.begin() as conn:
        ingest(conn, world.store, flow, list(events), world.now)  # type: ignore[arg-type]


def _contact_row(world: World) -> dict[str, object]:
    with world.app.engine.connect() as conn:
        return dict(conn.execute(select(t.contacts)).mappings().one())


def test_ingest_stores_what_the_phone_number_says(world: World) -> None:
    _ingest(world, checkout("c1", world.now, phone="+4791234567"))
    row = _contact_row(world)
    assert (row["phone_country"], row["phone_region"]) == ("NO", None)
    assert "Europe/Oslo" in str(row["phone_zones"]).split()


def test_a_number_with_many_zones_keeps_them_all(world: World) -> None:
    # Grenada shares +1 with the US: phonenumbers gives it every zone of the numbering plan.
    _ingest(world, checkout("c1", world.now, phone="+14734031234"))
    zones = str(_contact_row(world)["phone_zones"]).split()
    assert len(zones) > 20 and "America/Grenada" in zones


def test_a_new_number_brings_its_own_facts(world: World) -> None:
    _ingest(world, checkout("c1", world.now, phone="+4791234567"))
    later = world.now + timedelta(minutes=1)
    _ingest(world, checkout("c1", later, phone=MIAMI))  # same email, so the same shopper
    row = _contact_row(world)
    assert (row["phone"], row["phone_country"], row["phone_region"]) == (MIAMI, "US", "FL")
    assert str(row["phone_zones"]).split() == ["America/New_York"]


def test_a_contact_stored_before_facts_were_kept_gets_them_on_its_next_event(
    world: World,
) -> None:
    _ingest(world, checkout("c1", world.now))
    with world.app.engine.begin() as conn:
        conn.execute(update(t.contacts).values(phone_country=None, phone_zones=None))
    row = _contact_row(world)
    assert contact_from_row(row).phone_facts is None  # read as "parse the number"
    _ingest(world, checkout("c1", world.now + timedelta(minutes=1)))
    facts = contact_from_row(_contact_row(world)).phone_facts
    assert facts is not None and facts.country == "NO"


def test_the_timer_applies_the_stored_facts_not_a_fresh_parse(world: World) -> None:
    _ingest(world, checkout("c1", world.now))
    # Say the stored facts put this Norwegian number in Florida: the US rules must then apply,
    # which proves the timer read the columns rather than parsing the number again.
    with world.app.engine.begin() as conn:
        conn.execute(
            update(t.contacts).values(
                phone_country="US", phone_region="FL", phone_zones="America/New_York"
            )
        )
    world.clock.advance(timedelta(minutes=25))
    tick(world.app.engine, world.app.registry, world.now)
    with world.app.engine.connect() as conn:
        rules = conn.execute(
            select(t.decisions.c.rule).where(t.decisions.c.step_id == "sms1")
        ).scalars()
        named = [rule for rule in rules if rule]
    assert named and all(rule.startswith("us.") for rule in named), named
