"""The engine on a real database: ingest, timers, the outbox. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select

from cartback.channels.dev import NullChannel
from cartback.core.model import Channel
from cartback.services.dispatch import Dispatcher
from cartback.services.ingest import EventStatus, ingest
from cartback.services.tick import tick
from cartback.store import tables as t
from tests.support.events import checkout, emptied, order
from tests.support.world import World


def _ingest(world: World, *events: object) -> list[EventStatus]:
    flow = world.app.registry.current("default")
    with world.app.engine.begin() as conn:
        results = ingest(conn, world.store, flow, list(events), world.now)  # type: ignore[arg-type]
    return [result.status for result in results]


def _tick(world: World) -> int:
    return tick(world.app.engine, world.app.registry, world.now).claimed


def _outbox(world: World) -> list[tuple[str, str]]:
    with world.app.engine.connect() as conn:
        rows = conn.execute(
            select(t.outbox.c.step_id, t.outbox.c.status).order_by(t.outbox.c.id)
        ).all()
    return [(row.step_id, row.status) for row in rows]


def _enrollment(world: World) -> dict[str, object]:
    with world.app.engine.connect() as conn:
        return dict(conn.execute(select(t.enrollments)).mappings().one())


def _follow_the_timer(world: World) -> None:
    """Tick at each wake time of the one enrollment, as a worker that is never down would."""
    for _ in range(50):
        wake_at = _enrollment(world)["wake_at"]
        if wake_at is None:
            return
        assert isinstance(wake_at, datetime)
        world.clock.set(max(wake_at, world.now))
        _tick(world)
    raise AssertionError("the enrollment never finished")


def test_checkout_enrolls_once_with_the_timer_at_the_first_step(world: World) -> None:
    start = world.now
    assert _ingest(world, checkout("c1", start)) == [EventStatus.ACCEPTED]
    row = _enrollment(world)
    assert row["state"] == "active"
    assert row["abandoned_at"] == start + timedelta(minutes=10)
    assert row["wake_at"] == start + timedelta(minutes=25)


def test_nothing_fires_before_the_due_time_and_the_step_fires_once_after(world: World) -> None:
    _ingest(world, checkout("c1", world.now))
    world.clock.advance(timedelta(minutes=24, seconds=59))
    assert _tick(world) == 0
    assert _outbox(world) == []
    world.clock.advance(timedelta(seconds=1))
    assert _tick(world) == 1
    assert _outbox(world) == [("sms1", "pending")]
    assert _tick(world) == 0
    assert _enrollment(world)["wake_at"] == world.now - timedelta(minutes=25) + timedelta(
        minutes=70
    )


def test_dispatch_marks_the_message_sent(world: World) -> None:
    _ingest(world, checkout("c1", world.now))
    world.clock.advance(timedelta(minutes=25))
    _tick(world)
    dispatcher = Dispatcher(world.app.engine, {Channel.SMS: NullChannel(Channel.SMS)})
    try:
        stats = dispatcher.run_once(world.now)
    finally:
        dispatcher.close()
    assert stats.sent == 1
    assert _outbox(world) == [("sms1", "sent")]


def test_duplicate_event_ids_are_acknowledged_and_ignored(world: World) -> None:
    event = checkout("c1", world.now, event_id="same")
    assert _ingest(world, event) == [EventStatus.ACCEPTED]
    assert _ingest(world, event, event) == [EventStatus.DUPLICATE, EventStatus.DUPLICATE]
    with world.app.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(t.enrollments)).scalar() == 1
        assert conn.execute(select(func.count()).select_from(t.carts)).scalar() == 1


def test_an_older_event_arriving_late_changes_nothing(world: World) -> None:
    start = world.now
    _ingest(world, checkout("c1", start + timedelta(minutes=5), title="New title"))
    assert _ingest(world, checkout("c1", start, title="Old title")) == [EventStatus.STALE]
    with world.app.engine.connect() as conn:
        lines = conn.execute(select(t.carts.c.lines)).scalar_one()
    assert lines[0]["title"] == "New title"


def test_updates_before_the_first_step_push_abandonment_back(world: World) -> None:
    start = world.now
    _ingest(world, checkout("c1", start))
    world.clock.advance(timedelta(minutes=8))
    _ingest(world, checkout("c1", start + timedelta(minutes=8)))
    assert _enrollment(world)["abandoned_at"] == start + timedelta(minutes=18)


def test_an_update_after_the_sequence_started_changes_content_not_schedule(world: World) -> None:
    start = world.now
    _ingest(world, checkout("c1", start))
    world.clock.advance(timedelta(minutes=25))
    _tick(world)
    before = _enrollment(world)
    _ingest(world, checkout("c1", world.now, title="Rain jacket", price="150"))
    after = _enrollment(world)
    assert (after["abandoned_at"], after["wake_at"], after["step_index"]) == (
        before["abandoned_at"],
        before["wake_at"],
        before["step_index"],
    )
    world.clock.advance(timedelta(hours=1))
    _tick(world)
    with world.app.engine.connect() as conn:
        body = conn.execute(
            select(t.outbox.c.body).where(t.outbox.c.step_id == "email1")
        ).scalar_one()
    assert "Rain jacket" in body


def test_an_order_exits_the_flow_and_withdraws_unsent_messages(world: World) -> None:
    _ingest(world, checkout("c1", world.now))
    world.clock.advance(timedelta(minutes=25))
    _tick(world)
    _ingest(world, order("c1", world.now))
    assert _outbox(world) == [("sms1", "cancelled")]
    row = _enrollment(world)
    assert (row["state"], row["exit_reason"], row["wake_at"]) == ("exited", "order_placed", None)
    world.clock.advance(timedelta(days=4))
    assert _tick(world) == 0
    assert _outbox(world) == [("sms1", "cancelled")]


def test_an_emptied_cart_exits(world: World) -> None:
    _ingest(world, checkout("c1", world.now))
    _ingest(world, emptied("c1", world.now + timedelta(seconds=1)))
    assert _enrollment(world)["exit_reason"] == "cart_emptied"


def test_the_full_default_sequence_runs_in_order(world: World) -> None:
    _ingest(world, checkout("c1", world.now, price="600"))
    _follow_the_timer(world)
    # sms3 needs a large cart, 1,000 or more in kroner: this one is 1,200, so all six send.
    assert [step for step, _ in _outbox(world)] == [
        "sms1",
        "email1",
        "sms2",
        "email2",
        "sms3",
        "email3",
    ]
    assert _enrollment(world)["state"] == "completed"


def test_without_sms_consent_only_emails_go_out_and_skips_are_explained(world: World) -> None:
    _ingest(world, checkout("c1", world.now, sms=False))
    _follow_the_timer(world)
    assert [step for step, _ in _outbox(world)] == ["email1", "email2", "email3"]
    with world.app.engine.connect() as conn:
        reasons = conn.execute(
            select(t.decisions.c.step_id, t.decisions.c.reason).where(
                t.decisions.c.outcome == "skip"
            )
        ).all()
    assert {row.step_id for row in reasons} == {"sms1", "sms2", "sms3"}
    assert all("sms_consent" in row.reason for row in reasons)
