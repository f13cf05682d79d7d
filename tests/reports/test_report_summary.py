"""The daily report summary gives the live report's figures, before and after late facts.

A seeded random store (two flows, variants, holdouts, a channel holdout, three destination
countries, orders in three currencies, one of them without a rate, opt-outs) is summarised,
then changed the way late facts arrive: delivery receipts, failures, clicks and orders for
carts of days already built, a cart imported into a past day, a contact's new country. Each
time the report from the summary must equal the report read live, for several windows.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Connection, delete, func, select, update

from cartback.services import report_summary
from cartback.services.attribution import attribute_order, store_settings
from cartback.services.reports import flow_report
from cartback.store import tables as t
from cartback.worker import REPORT_SUMMARY_BATCH, Worker
from tests.support.world import World

DAYS = 8
CARTS = 240
COUNTRIES = ("NO", "SE", None)
MEASUREMENT = {
    "rates": {"EUR": "1.10"},  # GBP has no rate: reported as unconverted
    "prices": {"sms": {"NO": "0.50", "SE": "0.45"}, "email": "0.01"},
}


# A late fact for one cart: how many rows it changed (0: try another cart).
Late = Callable[[Connection, int], int]


class Seeder:
    def __init__(
        self, conn: Connection, store_id: int, start: datetime, seed: int, first_id: int = 1
    ) -> None:
        self.conn = conn
        self.store_id = store_id
        self.start = start
        self.rng = random.Random(seed)
        self.next_id = first_id
        self.settings = store_settings(conn, store_id)

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id

    def cart(self, at: datetime) -> tuple[int, int, int]:
        """A contact, a cart and its enrollment abandoned at `at`; their ids."""
        rng, n = self.rng, self._id()
        common = {"store_id": self.store_id, "created_at": at, "updated_at": at}
        self.conn.execute(
            t.contacts.insert().values(
                **common,
                id=n,
                phone=f"+4790{n:06d}",
                email=f"s{n}@example.com",
                phone_country=rng.choice(COUNTRIES),
                sms_marketing=True,
                email_marketing=True,
                orders_count=0,
                tags=[],
            )
        )
        self.conn.execute(
            t.carts.insert().values(
                **common,
                id=n,
                token=f"c{n}",
                contact_id=n,
                lines=[],
                value=Decimal("10"),
                currency="USD",
                status="open",
                tags=[],
                occurred_at=at,
            )
        )
        holdout = rng.random() < 0.15
        self.conn.execute(
            t.enrollments.insert().values(
                **common,
                id=n,
                cart_id=n,
                flow_name=rng.choice(("recover", "browse")),
                flow_version="1",
                step_index=1,
                state="active",
                abandoned_at=at,
                variant=None if holdout else rng.choice(("A", "B", None)),
                holdout=holdout,
                held_channel=rng.choice((None, None, None, "sms")),
            )
        )
        return n, n, n

    def message(self, enrollment: int, contact: int, step: str, at: datetime) -> int:
        rng, n = self.rng, self._id()
        channel = "email" if step.startswith("email") else "sms"
        sent = rng.random() < 0.85
        failed = sent and rng.random() < 0.1
        self.conn.execute(
            t.outbox.insert().values(
                id=n,
                store_id=self.store_id,
                enrollment_id=enrollment,
                contact_id=contact,
                step_id=step,
                channel=channel,
                to_address="x",
                body="x",
                segments=rng.choice((1, 1, 2, None)),
                status="failed" if failed else ("sent" if sent else "pending"),
                attempts=1,
                available_at=at,
                created_at=at,
                updated_at=at,
                sent_at=at if sent else None,
                failed_at=at if failed else None,
                delivered_at=at if sent and not failed and rng.random() < 0.6 else None,
                clicked_at=at if sent and rng.random() < 0.2 else None,
            )
        )
        return n

    def order(self, cart: int | None, contact: int, at: datetime, now: datetime) -> None:
        rng = self.rng
        order_id = self.conn.execute(
            t.orders.insert()
            .values(
                store_id=self.store_id,
                order_ref=f"o{self._id()}",
                cart_id=cart,
                contact_id=contact,
                value=Decimal(rng.randrange(500, 20000)) / 100,
                currency=rng.choice(("USD", "USD", "EUR", "GBP")),
                occurred_at=at,
            )
            .returning(t.orders.c.id)
        ).scalar_one()
        attribute_order(self.conn, order_id, self.settings, now)

    def opt_out(self, contact: int, channel: str, at: datetime) -> None:
        self.conn.execute(
            t.consent_events.insert().values(
                store_id=self.store_id,
                contact_id=contact,
                channel=channel,
                purpose="marketing",
                granted=False,
                source="keyword_reply" if channel == "sms" else "unsubscribe_link",
                at=at,
                received_at=at,
            )
        )

    def seed(self, now: datetime) -> list[tuple[int, datetime]]:
        carts = []
        for _ in range(CARTS):
            at = self.start + timedelta(minutes=self.rng.randrange(DAYS * 24 * 60))
            cart, contact, enrollment = self.cart(at)
            carts.append((cart, at))
            for hours, step in ((1, "sms1"), (20, "email1"), (50, "sms2")):
                if self.rng.random() < 0.8:
                    self.message(enrollment, contact, step, at + timedelta(hours=hours))
            if self.rng.random() < 0.3:
                self.order(cart, contact, at + timedelta(hours=self.rng.randrange(1, 30)), now)
            if self.rng.random() < 0.05:
                self.opt_out(contact, "sms", at + timedelta(hours=2))
        return carts


def _reports(conn: Connection, store_id: int, now: datetime) -> Iterator[dict[str, Any]]:
    """Summary and live reports for aligned and unaligned windows, with and without a flow."""
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    windows = [
        (now - timedelta(days=30), now),
        (midnight - timedelta(days=6), midnight - timedelta(days=1)),
        (now - timedelta(days=7, hours=5), now - timedelta(days=2, hours=3)),
    ]
    for since, until in windows:
        for flow in (None, "recover"):
            kwargs: dict[str, Any] = {"since": since, "until": until, "flow": flow}
            yield {
                "summary": flow_report(conn, store_id, **kwargs),
                "live": flow_report(conn, store_id, summary=False, **kwargs),
            }


def _assert_same(world: World) -> None:
    with world.app.engine.connect() as conn:
        for pair in _reports(conn, world.store.id, world.now):
            assert pair["summary"] == pair["live"]


def _stale_days(world: World) -> set[Any]:
    with world.app.engine.connect() as conn:
        return set(conn.execute(select(t.report_stale.c.day).distinct()).scalars())


@pytest.mark.parametrize("seed", [1, 2])
def test_summary_equals_live_report_before_and_after_late_facts(world: World, seed: int) -> None:
    now = world.now
    start = (now - timedelta(days=DAYS + 3)).replace(hour=0, minute=0, second=0, microsecond=0)
    with world.app.engine.begin() as conn:
        conn.execute(
            update(t.stores).where(t.stores.c.id == world.store.id).values(measurement=MEASUREMENT)
        )
        seeder = Seeder(conn, world.store.id, start, seed)
        carts = seeder.seed(now)
    done = report_summary.refresh(world.app.engine, now)
    assert done.built >= DAYS and done.rebuilt == 0
    assert _stale_days(world) == set()
    with world.app.engine.connect() as conn:
        fresh = report_summary.coverage(conn, world.store.id, start.date(), now.date()).fresh
        rows = conn.execute(select(func.count()).select_from(t.report_daily)).scalar_one()
    assert len(fresh) >= DAYS and rows > 0  # the reports below do read the summary
    _assert_same(world)

    # Late facts for carts of days already built, one at a time: each must mark its own day
    # (and no other), the report must read that day live, and its rebuild must match.
    rng = random.Random(seed)
    o, a = t.outbox.c, t.attributions.c

    def outbox_change(**values: Any) -> Late:
        def apply(conn: Connection, cart: int) -> int:
            where = (o.enrollment_id == cart, o.sent_at.is_not(None))
            return conn.execute(update(t.outbox).where(*where).values(**values)).rowcount

        return apply

    def order(conn: Connection, cart: int) -> int:
        at = conn.execute(select(t.enrollments.c.abandoned_at).where(t.enrollments.c.id == cart))
        seeder.order(cart, cart, at.scalar_one() + timedelta(hours=2), now)
        return 1

    def credit_withdrawn(conn: Connection, cart: int) -> int:
        return conn.execute(delete(t.attributions).where(a.enrollment_id == cart)).rowcount

    def new_country(conn: Connection, cart: int) -> int:
        conn.execute(update(t.contacts).where(t.contacts.c.id == cart).values(phone_country="DK"))
        return conn.execute(select(func.count()).where(o.contact_id == cart)).scalar_one()

    def new_variant(conn: Connection, cart: int) -> int:
        e = t.enrollments.c
        return conn.execute(
            update(t.enrollments).where(e.id == cart, e.holdout.is_(False)).values(variant="C")
        ).rowcount

    late: list[tuple[str, Late]] = [
        ("delivery receipt", outbox_change(delivered_at=now)),
        ("failure report", outbox_change(status="failed")),
        ("click", outbox_change(clicked_at=now)),
        ("segment count", outbox_change(segments=3)),
        ("order", order),
        ("credit withdrawn", credit_withdrawn),
        ("destination country", new_country),
        ("variant", new_variant),
    ]

    def first_changed(apply: Late) -> Any:
        """Apply the fact to random carts until one changes; that cart's day."""
        for cart, at in rng.sample(carts, len(carts)):
            with world.app.engine.begin() as conn:
                seeder.conn = conn
                if apply(conn, cart):
                    return at.date()
        raise AssertionError("no cart to change")

    for name, apply in late:
        day = first_changed(apply)
        assert _stale_days(world) == {day}, name
        _assert_same(world)  # the stale day is read live
        assert report_summary.refresh(world.app.engine, now).rebuilt == 1, name
        assert _stale_days(world) == set()
    _assert_same(world)

    # A cart imported into a past day.
    imported_at = start + timedelta(days=2, hours=7)
    with world.app.engine.begin() as conn:
        seeder.conn = conn
        seeder.cart(imported_at)
    assert _stale_days(world) == {imported_at.date()}
    _assert_same(world)


def test_a_day_with_no_carts_is_built_and_marked_by_a_late_import(world: World) -> None:
    now = world.now
    start = (now - timedelta(days=5)).replace(hour=0, minute=0, second=0, microsecond=0)
    with world.app.engine.begin() as conn:
        seeder = Seeder(conn, world.store.id, start, 3)
        seeder.cart(start + timedelta(hours=1))
    report_summary.refresh(world.app.engine, now)
    empty_day = start + timedelta(days=2, hours=3)
    with world.app.engine.connect() as conn:
        assert (
            empty_day.date()
            in report_summary.coverage(conn, world.store.id, start.date(), now.date()).fresh
        )
    with world.app.engine.begin() as conn:
        Seeder(conn, world.store.id, start, 4, first_id=1000).cart(empty_day)
    assert _stale_days(world) == {empty_day.date()}
    _assert_same(world)
    assert report_summary.refresh(world.app.engine, now).rebuilt == 1
    _assert_same(world)


def test_the_worker_builds_a_long_backlog_in_batches(world: World) -> None:
    now = world.now
    start = (now - timedelta(days=REPORT_SUMMARY_BATCH + 5)).replace(hour=0, minute=0)
    with world.app.engine.begin() as conn:
        seeder = Seeder(conn, world.store.id, start, 5)
        seeder.cart(start + timedelta(hours=3))
    Worker(world.app).refresh_report_summary()
    with world.app.engine.connect() as conn:
        built = set(conn.execute(select(t.report_days.c.day)).scalars())
    # Every ended day, though that is more than one batch.
    assert len(built) == (now.date() - start.date()).days > REPORT_SUMMARY_BATCH


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_a_write_under_way_when_its_day_is_built_is_never_lost(world: World) -> None:
    """PostgreSQL: a late receipt whose transaction is open when the build starts. The build
    waits for it (the day's advisory lock) and so counts it; a receipt written while the build
    runs waits for the build, then marks the day stale."""
    now = world.now
    start = (now - timedelta(days=3)).replace(hour=0, minute=0, second=0, microsecond=0)
    with world.app.engine.begin() as conn:
        seeder = Seeder(conn, world.store.id, start, 6)
        _cart, contact, enrollment = seeder.cart(start + timedelta(hours=1))
        message = seeder.message(enrollment, contact, "sms1", start + timedelta(hours=2))
        conn.execute(
            update(t.outbox)
            .where(t.outbox.c.id == message)
            .values(status="sent", sent_at=start, delivered_at=None, failed_at=None)
        )
    day = start.date()
    with world.app.engine.begin() as conn:
        report_summary.build_day(conn, world.store.id, day, now)

    writer = world.app.engine.connect()
    writer.begin()
    writer.execute(
        update(t.outbox).where(t.outbox.c.id == message).values(delivered_at=now)
    )  # the trigger holds the day's shared lock until commit
    finished = threading.Event()

    def build() -> None:
        with world.app.engine.begin() as conn:
            report_summary.build_day(conn, world.store.id, day, now)
        finished.set()

    builder = threading.Thread(target=build)
    builder.start()
    assert not finished.wait(0.5), "the build waits for the writer"
    writer.commit()
    writer.close()
    builder.join(10)
    assert finished.is_set()
    # The build saw the receipt; the mark it answered is gone, none other is left.
    assert _stale_days(world) == set()
    with world.app.engine.connect() as conn:
        delivered = conn.execute(
            select(func.sum(t.report_daily.c.delivered)).where(t.report_daily.c.day == day)
        ).scalar_one()
    assert delivered == 1
    _assert_same(world)
