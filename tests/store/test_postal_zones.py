"""A postal code picks the zone where the state has several: a Miami ZIP is Eastern time only."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from sqlalchemy import select

from cartback.core.events import CheckoutUpdated, ConsentFlags, ContactInfo
from cartback.core.model import CartLine
from cartback.services.ingest import ingest
from cartback.services.tick import tick
from cartback.store import tables as t
from tests.support.world import World

EASTERN = ZoneInfo("America/New_York")
MIAMI_PHONE = "+13055550143"
# Tuesday 9 June 2026, 20:30 in Miami: the first text falls due after Florida's 20:00 close.
EVENING = datetime(2026, 6, 9, 20, 30, tzinfo=EASTERN)


def _checkout(at: datetime, *, postal_code: str | None, region: str = "FL") -> CheckoutUpdated:
    line = CartLine(title="Rain jacket", quantity=1, price=Decimal("120.00"))
    return CheckoutUpdated(
        event_id=f"co-{at.isoformat()}-{postal_code}",
        occurred_at=at.astimezone(UTC),
        cart_token="c1",
        contact=ContactInfo(
            phone=MIAMI_PHONE,
            email="sam@example.com",
            first_name="Sam",
            country="US",
            region=region,
            postal_code=postal_code,
        ),
        lines=(line,),
        value=line.total,
        currency="USD",
        restore_url="https://shop.example/cart/c1",
        consent=ConsentFlags(
            sms_marketing=True, email_marketing=True, cart_reminders=True, double_opt_in=True
        ),
    )


def _ingest(world: World, event: CheckoutUpdated) -> None:
    flow = world.app.registry.current("default")
    with world.app.engine.begin() as conn:
        ingest(conn, world.store, flow, [event], world.now)


def _contact_row(world: World) -> dict[str, object]:
    with world.app.engine.connect() as conn:
        return dict(conn.execute(select(t.contacts)).mappings().one())


def _sms1_defer(world: World) -> tuple[str | None, str]:
    """The first text's decision after the timer runs at 20:56 Miami time."""
    world.clock.set(EVENING.astimezone(UTC) + timedelta(minutes=26))
    tick(world.app.engine, world.app.registry, world.now)
    with world.app.engine.connect() as conn:
        row = (
            conn.execute(
                select(t.decisions.c.outcome, t.decisions.c.rule, t.decisions.c.reason).where(
                    t.decisions.c.step_id == "sms1"
                )
            )
            .mappings()
            .one()
        )
        holds = conn.execute(select(t.enrollments.c.holds)).scalar_one()
    assert row["outcome"] == "defer", row
    # The text is held on its own until then; the enrollment may wake earlier for an email.
    held_until = datetime.fromisoformat(holds["held"]["sms1"])
    return row["rule"], f"{row['reason']}|{held_until.astimezone(UTC).isoformat()}"


def test_a_miami_zip_and_a_305_number_wait_for_8am_eastern(world: World) -> None:
    world.clock.set(EVENING.astimezone(UTC))
    _ingest(world, _checkout(EVENING, postal_code="33130-1234"))
    row = _contact_row(world)
    assert (row["postal_code"], row["postal_zones"]) == ("33130-1234", "America/New_York")

    rule, found = _sms1_defer(world)
    reason, wake_at = found.split("|")
    assert rule == "us.fl.quiet_hours"
    # 08:00 Eastern on Wednesday, not 08:00 Central (13:00 UTC).
    assert wake_at == "2026-06-10T12:00:00+00:00"
    assert "it is 20:56 on Tuesday in America/New_York" in reason
    assert "next allowed 2026-06-10 08:00 America/New_York (12:00 UTC)" in reason
    assert "America/Chicago" not in reason


def test_without_a_postal_code_florida_waits_for_8am_in_both_zones(world: World) -> None:
    world.clock.set(EVENING.astimezone(UTC))
    _ingest(world, _checkout(EVENING, postal_code=None))
    assert _contact_row(world)["postal_zones"] is None

    rule, found = _sms1_defer(world)
    reason, wake_at = found.split("|")
    assert rule == "us.fl.quiet_hours"
    assert wake_at == "2026-06-10T13:00:00+00:00"
    # Every zone checked, each with its own time.
    assert "it is 20:56 on Tuesday in America/New_York, 19:56 on Tuesday in America/Chicago" in (
        reason
    )
    assert (
        "next allowed 2026-06-10 09:00 America/New_York, 2026-06-10 08:00 America/Chicago "
        "(13:00 UTC)" in reason
    )


def test_a_pensacola_zip_is_central(world: World) -> None:
    world.clock.set(EVENING.astimezone(UTC))
    _ingest(world, _checkout(EVENING, postal_code="32501"))
    assert _contact_row(world)["postal_zones"] == "America/Chicago"


def test_a_new_address_replaces_the_postal_zones(world: World) -> None:
    world.clock.set(EVENING.astimezone(UTC))
    _ingest(world, _checkout(EVENING, postal_code="33130"))
    later = EVENING + timedelta(minutes=1)
    # A new address without a postal code: the Miami zone must not outlive it.
    _ingest(world, _checkout(later, postal_code=None, region="TX"))
    row = _contact_row(world)
    assert (row["region"], row["postal_code"], row["postal_zones"]) == ("TX", None, None)


def test_a_zip_from_another_state_settles_nothing(world: World) -> None:
    world.clock.set(EVENING.astimezone(UTC))
    # A Miami ZIP on a Texas address: the address contradicts itself, so both Texas zones stay.
    _ingest(world, _checkout(EVENING, postal_code="33130", region="TX"))
    assert _contact_row(world)["postal_zones"] == ""


def test_an_event_without_a_code_at_the_same_address_keeps_it(world: World) -> None:
    world.clock.set(EVENING.astimezone(UTC))
    _ingest(world, _checkout(EVENING, postal_code="33130"))
    # A later event that names only the country and state (a consent change, a cart event).
    _ingest(world, _checkout(EVENING + timedelta(minutes=1), postal_code=None))
    row = _contact_row(world)
    assert (row["postal_code"], row["postal_zones"]) == ("33130", "America/New_York")


def test_a_miami_evening_cart_texts_at_8_eastern_and_emails_that_evening(world: World) -> None:
    """Florida, a Miami ZIP and a 305 number, abandoned at 20:30 local: the first text waits
    for 08:00 Eastern (not Central), while email1 goes at its own time that evening."""
    checkout_at = EVENING - timedelta(minutes=10)  # ten idle minutes: abandoned at 20:30
    world.clock.set(checkout_at.astimezone(UTC))
    _ingest(world, _checkout(checkout_at, postal_code="33130"))
    for _ in range(40):
        with world.app.engine.connect() as conn:
            wake_at = conn.execute(select(t.enrollments.c.wake_at)).scalar_one()
        if wake_at is None:
            break
        world.clock.set(max(wake_at, world.now))
        tick(world.app.engine, world.app.registry, world.now)
        with world.app.engine.connect() as conn:
            sent = {
                row.step_id: row.created_at
                for row in conn.execute(select(t.outbox.c.step_id, t.outbox.c.created_at))
            }
        if {"sms1", "email1"} <= set(sent):
            break
    assert sent["email1"] == (EVENING + timedelta(hours=1)).astimezone(UTC)
    assert sent["sms1"] == datetime(2026, 6, 10, 8, 0, tzinfo=EASTERN).astimezone(UTC)
