"""Steps keep their own time on a real database: the timer holds a step that one channel's rule
defers, sends the steps after it on other channels at their time, and spaces a released message
from an email. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import pairwise
from zoneinfo import ZoneInfo

from sqlalchemy import func, select

from cartback.core.events import CheckoutUpdated, ConsentFlags, ContactInfo
from cartback.core.model import CartLine
from cartback.services.ingest import ingest
from cartback.services.tick import tick
from cartback.store import tables as t
from tests.support.events import checkout
from tests.support.world import World

EASTERN = ZoneInfo("America/New_York")


def local(day: int, hour: int, minute: int = 0) -> datetime:
    """An instant given in Baltimore's time, in UTC as the store keeps it."""
    return datetime(2026, 11, day, hour, minute, tzinfo=EASTERN).astimezone(UTC)


def _checkout_in_maryland(world: World, at: datetime) -> None:
    """A Baltimore shopper (410 number, Maryland address) with every consent, at `at`."""
    line = CartLine(title="Rain jacket", quantity=1, price=Decimal("120.00"))
    event = CheckoutUpdated(
        event_id=f"co-{at.isoformat()}",
        occurred_at=at,
        cart_token="c1",
        contact=ContactInfo(
            phone="+14105550123",
            email="sam@example.com",
            first_name="Sam",
            country="US",
            region="MD",
        ),
        lines=(line,),
        value=line.total,
        currency="USD",
        restore_url="https://shop.example/cart/c1",
        consent=ConsentFlags(
            sms_marketing=True, email_marketing=True, cart_reminders=True, double_opt_in=True
        ),
    )
    world.clock.set(at)
    with world.app.engine.begin() as conn:
        ingest(conn, world.store, world.app.registry.current("default"), [event], world.now)


def _enrollment(world: World) -> dict[str, object]:
    with world.app.engine.connect() as conn:
        return dict(conn.execute(select(t.enrollments)).mappings().one())


def _wake(world: World) -> bool:
    """Tick at the enrollment's next wake time; False once it has none."""
    wake_at = _enrollment(world)["wake_at"]
    if wake_at is None:
        return False
    assert isinstance(wake_at, datetime)
    world.clock.set(max(wake_at, world.now))
    tick(world.app.engine, world.app.registry, world.now)
    return True


def _follow_the_timer(world: World) -> None:
    for _ in range(60):
        if not _wake(world):
            return
    raise AssertionError("the enrollment never finished")


def _sent(world: World) -> dict[str, datetime]:
    with world.app.engine.connect() as conn:
        rows = conn.execute(
            select(t.outbox.c.step_id, t.outbox.c.created_at).order_by(t.outbox.c.id)
        ).all()
    return {row.step_id: row.created_at for row in rows}


def _decisions(world: World, step_id: str, outcome: str) -> list[tuple[datetime, str, str]]:
    d = t.decisions.c
    with world.app.engine.connect() as conn:
        rows = conn.execute(
            select(d.at, d.rule, d.reason)
            .where(d.step_id == step_id, d.outcome == outcome)
            .order_by(d.id)
        ).all()
    return [(row.at, row.rule, row.reason) for row in rows]


def test_sms1_waits_for_0800_while_email1_goes_at_2130_the_evening_before(world: World) -> None:
    # Abandoned at 20:30 in Baltimore (checkout at 20:20, ten idle minutes): sms1 is due at
    # 20:45, after Maryland's 20:00 close; email1 is due at 21:30 and has no quiet hours.
    _checkout_in_maryland(world, local(23, 20, 20))
    assert _wake(world)
    row = _enrollment(world)
    assert row["holds"] == {"held": {"sms1": local(24, 8).isoformat()}, "released": []}
    assert row["step_index"] == 1
    assert row["wake_at"] == local(23, 21, 30)
    [(at, rule, reason)] = _decisions(world, "sms1", "defer")
    assert at == local(23, 20, 45)
    assert rule == "us.md.quiet_hours"
    assert "sms1 is held until 2026-11-24 13:00 UTC" in reason
    assert "other channels keep their own time" in reason

    _follow_the_timer(world)
    sent = _sent(world)
    assert sent["email1"] == local(23, 21, 30)
    assert sent["sms1"] == local(24, 8, 0)
    # The emails after it keep their own offsets from abandonment (21h and 72h)...
    assert sent["email2"] == local(23, 20, 30) + timedelta(hours=21)
    assert sent["email3"] == local(23, 20, 30) + timedelta(hours=72)
    # ...and the US allows one text per cart: sms2 and sms3 are skipped for that, not for time.
    assert {rule for _, rule, _ in _decisions(world, "sms2", "skip")} == {"us.cart_sms_once"}
    row = _enrollment(world)
    assert row["state"] == "completed"
    # Every SMS step waited (sms2 behind sms1, sms3 for 08:00) and none is held any more.
    assert row["holds"] == {"held": {}, "released": ["sms1", "sms2", "sms3"]}
    [(_, _, released)] = _decisions(world, "sms1", "send")
    assert "released from its hold" in released


def test_a_released_sms_that_meets_email1_follows_it_by_the_30_minute_spacing(
    world: World,
) -> None:
    # Abandoned at 07:00: sms1 (07:15) is held until 08:00, exactly when email1 is due.
    _checkout_in_maryland(world, local(24, 6, 50))
    _follow_the_timer(world)
    sent = _sent(world)
    assert sent["email1"] == local(24, 8, 0)
    assert sent["sms1"] == local(24, 8, 30)
    spaced = [entry for entry in _decisions(world, "sms1", "defer") if entry[1] == "flow.spacing"]
    [(at, _, reason)] = spaced
    assert at == local(24, 8, 0)
    assert "spaced 30m after email1" in reason and "held until 2026-11-24 13:30 UTC" in reason


def test_a_released_sms_lets_email1_due_ten_minutes_later_go_first(world: World) -> None:
    # Abandoned at 07:10: sms1 (07:25) is held until 08:00; email1 is due at 08:10.
    _checkout_in_maryland(world, local(24, 7, 0))
    _follow_the_timer(world)
    sent = _sent(world)
    assert sent["email1"] == local(24, 8, 10)
    assert sent["sms1"] == local(24, 8, 40)
    rules = [rule for _, rule, _ in _decisions(world, "sms1", "defer")]
    # Before 08:00 the federal window is shut too: it is the first rule named. Then sms1 yields
    # to email1 at 08:00, and at 08:10 it is spaced 30 minutes after it.
    assert rules == ["us.quiet_hours", "flow.spacing", "flow.spacing"]
    times = sorted(sent.values())
    assert all(later - earlier >= timedelta(minutes=30) for earlier, later in pairwise(times))


def test_two_carts_of_one_shopper_never_message_them_within_the_spacing(world: World) -> None:
    flow = world.app.registry.current("default")
    with world.app.engine.begin() as conn:
        ingest(
            conn, world.store, flow, [checkout("a", world.now), checkout("b", world.now)], world.now
        )
    e = t.enrollments.c
    for _ in range(200):
        with world.app.engine.connect() as conn:
            wake_at = conn.execute(select(func.min(e.wake_at))).scalar_one()
        if wake_at is None:
            break
        world.clock.set(max(wake_at, world.now))
        tick(world.app.engine, world.app.registry, world.now)
    else:
        raise AssertionError("the enrollments never finished")
    with world.app.engine.connect() as conn:
        times = sorted(conn.execute(select(t.outbox.c.created_at)).scalars())
        spaced = (
            conn.execute(
                select(t.decisions.c.reason).where(t.decisions.c.rule == "shopper.spacing")
            )
            .scalars()
            .all()
        )
    # Both carts got their emails, and no two messages reached the shopper within 30 minutes.
    assert len(times) >= 6
    assert all(later - earlier >= timedelta(minutes=30) for earlier, later in pairwise(times))
    # At 1h10m both carts' email1 were due: the second waited for the first.
    assert spaced and all("another cart of this shopper" in reason for reason in spaced)
