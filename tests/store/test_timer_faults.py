"""The timer under faults: a poison enrollment in a batch, and a worker that was down for days.
Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, func, select, update

from cartback.core.model import Cart
from cartback.core.render import RenderError
from cartback.core.sandbox import TimeLimitExceeded
from cartback.services import tick as tick_module
from cartback.services.compose import Composed, ComposeError
from cartback.services.ingest import ingest
from cartback.services.tick import TickStats, resume, tick
from cartback.store import tables as t
from tests.support.events import checkout, order
from tests.support.pg import acquire_server, temporary_database
from tests.support.world import World, make_world

POISON = "c07"
TOKENS = [f"c{n:02d}" for n in range(21)]


def _ingest(world: World, tokens: list[str], *, sms: bool = True, first: int = 0) -> None:
    flow = world.app.registry.current("default")
    events = [
        checkout(
            token,
            world.now,
            phone=f"+474{first + n:07d}" if sms else None,
            email=f"{token}@example.com",
            sms=sms,
        )
        for n, token in enumerate(tokens)
    ]
    with world.app.engine.begin() as conn:
        ingest(conn, world.store, flow, events, world.now)  # type: ignore[arg-type]


def _tick(world: World) -> TickStats:
    return tick(world.app.engine, world.app.registry, world.now)


def _messages(world: World) -> list[tuple[str, str, datetime]]:
    """(cart token, step, queued at) for every outbox row."""
    o, c = t.outbox.c, t.carts.c
    with world.app.engine.connect() as conn:
        rows = conn.execute(
            select(c.token, o.step_id, o.created_at)
            .join(t.enrollments, t.enrollments.c.id == o.enrollment_id)
            .join(t.carts, c.id == t.enrollments.c.cart_id)
            .order_by(o.id)
        ).all()
    return [(row.token, row.step_id, row.created_at) for row in rows]


def _enrollment(world: World, token: str) -> dict[str, Any]:
    e = t.enrollments.c
    with world.app.engine.connect() as conn:
        row = (
            conn.execute(
                select(t.enrollments)
                .join(t.carts, t.carts.c.id == e.cart_id)
                .where(t.carts.c.token == token)
            )
            .mappings()
            .one()
        )
    return dict(row)


def _decisions(world: World, token: str) -> list[dict[str, Any]]:
    d = t.decisions.c
    with world.app.engine.connect() as conn:
        rows = conn.execute(
            select(d.at, d.step_id, d.outcome, d.rule, d.reason)
            .join(t.carts, t.carts.c.id == d.cart_id)
            .where(t.carts.c.token == token)
            .order_by(d.id)
        ).mappings()
        return [dict(row) for row in rows]


# ---- a poison enrollment ---------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["compose_raises", "write_fails"])
def test_one_poison_enrollment_never_blocks_the_batch(
    world: World, fault: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """One cart whose step fails: its composer raises, or its outbox row cannot be written
    (a NOT NULL column left empty: an IntegrityError on both backends)."""
    real = tick_module.compose
    broken = {POISON}

    def compose(store: Any, cart: Cart, *args: Any, **kwargs: Any) -> Composed:
        composed = real(store, cart, *args, **kwargs)
        if cart.token not in broken:
            return composed
        if fault == "compose_raises":
            raise RuntimeError(f"template broke for {composed.outbox['to_address']}")
        return Composed({**composed.outbox, "body": None}, composed.links)

    monkeypatch.setattr(tick_module, "compose", compose)
    _assert_poison_is_isolated_then_parked(world, caplog, fix=broken.clear)


def _stalled_render() -> ComposeError:
    """The error compose raises when the sandbox's clock stops a render, with its real chain."""
    try:
        try:
            raise TimeLimitExceeded("rendering took longer than 1 s")
        except TimeLimitExceeded as stopped:
            raise RenderError(f"template failed to render: {stopped}") from stopped
    except RenderError as failed:
        try:
            raise ComposeError("template", f"template error: {failed}") from failed
        except ComposeError as error:
            return error


def test_a_render_stopped_by_the_clock_is_tried_again_not_skipped(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A busy or collecting worker can stop a render that takes a millisecond: the message is
    tried again at the next retry, not skipped as a broken template."""
    real = tick_module.compose
    stalled = {POISON}

    def compose(store: Any, cart: Cart, *args: Any, **kwargs: Any) -> Composed:
        if cart.token in stalled:
            raise _stalled_render()
        return real(store, cart, *args, **kwargs)

    monkeypatch.setattr(tick_module, "compose", compose)
    _ingest(world, TOKENS)
    world.clock.advance(timedelta(minutes=25))
    stats = _tick(world)
    assert (stats.sent, stats.skipped, stats.failed) == (20, 0, 1)
    assert not [d for d in _decisions(world, POISON) if d["outcome"] == "skip"]
    assert _enrollment(world, POISON)["wake_at"] == world.now + timedelta(minutes=1)

    stalled.clear()
    world.clock.advance(timedelta(minutes=1))
    assert _tick(world).sent == 1
    assert (POISON, "sms1") in {(token, step) for token, step, _ in _messages(world)}


@pytest.fixture
def postgres_world() -> Iterator[World]:
    with temporary_database(acquire_server()) as url, make_world(url) as made:
        yield made


@pytest.mark.postgres
def test_a_nul_byte_in_a_stored_cart_blocks_only_its_own_enrollment_on_postgres(
    postgres_world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """PostgreSQL refuses NUL in text: the message for this cart can never be written."""

    def set_title(title: str) -> None:
        # Straight into the table: the API would reject (or strip) the NUL.
        with postgres_world.app.engine.begin() as conn:
            conn.execute(
                update(t.carts)
                .where(t.carts.c.token == POISON)
                .values(lines=[{"title": title, "quantity": 2, "price": "60.00"}])
            )

    # The SMS composer refuses the character itself, so this is about the email's body.
    _assert_poison_is_isolated_then_parked(
        postgres_world,
        caplog,
        poison=lambda: set_title("Wool\u0000socks"),
        fix=lambda: set_title("Wool socks"),
        email_only=True,
    )


def _assert_poison_is_isolated_then_parked(
    world: World,
    caplog: pytest.LogCaptureFixture,
    *,
    fix: Callable[[], None],
    poison: Callable[[], None] | None = None,
    email_only: bool = False,
) -> None:
    caplog.set_level(logging.INFO)
    start = world.now
    # (step, due) of the first two messages: texts and emails, or emails only.
    first, second = (
        (("email1", timedelta(minutes=70)), ("email2", timedelta(hours=21, minutes=10)))
        if email_only
        else (("sms1", timedelta(minutes=25)), ("email1", timedelta(minutes=70)))
    )
    _ingest(world, TOKENS, sms=not email_only)
    if poison is not None:
        poison()
    world.clock.set(start + first[1])

    stats = _tick(world)
    assert (stats.claimed, stats.sent, stats.failed, stats.parked) == (21, 20, 1, 0)
    sent = {token for token, step, _ in _messages(world) if step == first[0]}
    assert sent == set(TOKENS) - {POISON}
    row = _enrollment(world, POISON)
    assert (row["state"], row["step_index"]) == ("active", 0)
    assert row["wake_at"] == world.now + timedelta(minutes=1)

    # Retried alone, later, a bounded number of times.
    world.clock.advance(timedelta(minutes=1))
    assert (_tick(world).claimed, _enrollment(world, POISON)["state"]) == (1, "active")
    world.clock.advance(timedelta(minutes=5))
    third = _tick(world)
    assert (third.claimed, third.failed, third.parked) == (1, 1, 1)
    row = _enrollment(world, POISON)
    assert (row["state"], row["wake_at"]) == ("parked", None)

    errors = [d for d in _decisions(world, POISON) if d["outcome"] == "error"]
    assert [d["rule"] for d in errors] == ["timer.retry", "timer.retry", "timer.parked"]
    assert all(d["step_id"] == first[0] for d in errors)
    assert "parked after 3 failed attempts" in errors[-1]["reason"]
    assert all(d["reason"].split(": ")[1].endswith("failed") for d in errors)
    # Ids and exception classes only: no phone, address, title or body in decisions or logs.
    for text in [d["reason"] for d in errors] + [caplog.text]:
        assert "@example.com" not in text and "+47" not in text and "Wool" not in text
    assert f"enrollment {row['id']} parked" in caplog.text

    # Not stuck: the others' next step goes out on time, the parked one stays put.
    world.clock.set(start + second[1])
    later = _tick(world)
    assert (later.claimed, later.sent, later.failed) == (20, 20, 0)
    assert _tick(world).sent == 0

    # An operator resumes it once the cart is fixed: it runs now, as if due now.
    fix()
    world.clock.advance(timedelta(minutes=1))
    with world.app.engine.begin() as conn:
        assert resume(conn, row["id"], world.now)
        assert not resume(conn, row["id"], world.now)
    resumed = _tick(world)
    assert (resumed.claimed, resumed.sent, resumed.failed) == (1, 1, 0)
    # Texts: sms1, where it was parked. Emails only: it waited at sms1 (skipped by its
    # condition) and failed on email1, which is now a day late: email2 goes out.
    resumed_with = second[0] if email_only else first[0]
    assert [step for token, step, _ in _messages(world) if token == POISON] == [resumed_with]
    assert _enrollment(world, POISON)["state"] == "active"
    rules = [(d["outcome"], d["rule"]) for d in _decisions(world, POISON)]
    assert rules[rules.index(("resume", "timer.resumed")) :][-1] == ("send", None)


def test_isolation_adds_no_query_per_enrollment_on_the_happy_path(world: World) -> None:
    """The statements of a tick do not grow with its batch: 3 carts or 30, the same count."""
    counts = []
    for first, batch in ((0, TOKENS[:3]), (100, [f"x{n:02d}" for n in range(30)])):
        _ingest(world, batch, first=first)
        world.clock.advance(timedelta(minutes=25))
        statements: list[str] = []

        def count(*args: Any, statements: list[str] = statements) -> None:
            statements.append(args[2])

        event.listen(world.app.engine, "before_cursor_execute", count)
        try:
            stats = _tick(world)
        finally:
            event.remove(world.app.engine, "before_cursor_execute", count)
        assert (stats.claimed, stats.sent, stats.failed) == (len(batch), len(batch), 0)
        counts.append(len(statements))
    assert counts[0] == counts[1]


@pytest.mark.parametrize(
    ("table", "values", "error"),
    [
        ("enrollments", {"flow_version": "000000000000"}, "UnknownFlow"),
        ("carts", {"lines": [{"title": "Socks", "quantity": 1, "price": "n/a"}]}, "Invalid"),
        # A hold time edited by hand into something that is no instant.
        ("enrollments", {"holds": {"held": {"sms1": 5}, "released": []}}, "ValueError"),
    ],
)
def test_an_unreadable_row_fails_only_its_own_enrollment(
    world: World, table: str, values: dict[str, Any], error: str
) -> None:
    _ingest(world, TOKENS[:5])
    poison = _enrollment(world, TOKENS[0])
    target = t.metadata.tables[table]
    key = poison["id"] if table == "enrollments" else poison["cart_id"]
    with world.app.engine.begin() as conn:
        conn.execute(update(target).where(target.c.id == key).values(**values))
    world.clock.advance(timedelta(minutes=25))
    stats = _tick(world)
    assert (stats.claimed, stats.sent, stats.failed) == (5, 4, 1)
    for wait in (1, 5):
        world.clock.advance(timedelta(minutes=wait))
        _tick(world)
    assert _enrollment(world, TOKENS[0])["state"] == "parked"
    reason = _decisions(world, TOKENS[0])[-1]["reason"]
    assert reason.startswith(f"parked after 3 failed attempts: advance failed: {error}")


def test_an_order_ends_a_parked_enrollment(world: World) -> None:
    """Resuming a parked enrollment after the shopper ordered must send nothing."""
    _ingest(world, TOKENS[:2])
    poison = _enrollment(world, TOKENS[0])
    with world.app.engine.begin() as conn:
        conn.execute(
            update(t.enrollments)
            .where(t.enrollments.c.id == poison["id"])
            .values(flow_version="000000000000")
        )
    world.clock.advance(timedelta(minutes=25))
    _tick(world)
    for wait in (1, 5):
        world.clock.advance(timedelta(minutes=wait))
        _tick(world)
    assert _enrollment(world, TOKENS[0])["state"] == "parked"
    flow = world.app.registry.current("default")
    with world.app.engine.begin() as conn:
        ingest(conn, world.store, flow, [order(TOKENS[0], world.now)], world.now)
    ended = _enrollment(world, TOKENS[0])
    assert (ended["state"], ended["exit_reason"], ended["wake_at"]) == (
        "exited",
        "order_placed",
        None,
    )


# ---- a worker that was down for three days ---------------------------------------------------


def _run_worker(world: World, until: datetime) -> None:
    """A healthy worker: it ticks at every wake time, never twice at the same instant (it polls
    every 2 s), until nothing is due before `until`."""
    e = t.enrollments.c
    earliest = world.now
    for _ in range(1000):
        with world.app.engine.connect() as conn:
            wake = conn.execute(select(func.min(e.wake_at))).scalar()
        if wake is None or wake > until:
            return
        world.clock.set(max(wake, earliest))
        _tick(world)
        earliest = world.now + timedelta(seconds=2)
    raise AssertionError("the worker never caught up")


def test_after_three_days_down_the_worker_catches_up_without_a_burst(world: World) -> None:
    start = world.now
    restart = start + timedelta(days=3, hours=1)
    # A: abandoned at start+10m; its first email goes out, then the worker stops.
    _ingest(world, [f"a{n}" for n in range(10)], sms=False)
    _run_worker(world, start + timedelta(hours=2))
    # While it is down the shop keeps sending checkouts: B a day in, D two days in (texts and
    # emails), C three hours before the restart.
    world.clock.set(start + timedelta(days=1))
    _ingest(world, [f"b{n}" for n in range(5)], sms=False)
    world.clock.set(start + timedelta(days=2))
    _ingest(world, [f"d{n}" for n in range(10)])
    world.clock.set(restart - timedelta(hours=3))
    _ingest(world, [f"c{n}" for n in range(5)], sms=False)

    world.clock.set(restart)
    _run_worker(world, restart + timedelta(days=5))

    messages = _messages(world)
    # No enrollment ever got two messages in one tick (each tick has its own instant).
    per_tick = Counter((token, at) for token, _, at in messages)
    assert max(per_tick.values()) == 1
    # Steps overdue beyond their grace were skipped as late, with a decision, and not sent.
    sent = {(token, step) for token, step, _ in messages}
    late: dict[str, list[str]] = {}
    for token in ("a0", "b0", "c0", "d0"):
        for decision in _decisions(world, token):
            if decision["rule"] == "timer.late":
                assert decision["at"] == restart and "late: due" in decision["reason"]
                assert (token, decision["step_id"]) not in sent
                late.setdefault(token, []).append(decision["step_id"])
    # (The text steps of email-only carts are late too, whatever their condition says.)
    assert late["a0"] == ["sms2", "email2", "sms3"]
    assert late["b0"] == ["sms1", "email1", "sms2", "email2", "sms3"]
    assert late["c0"] == ["sms1"]
    assert late["d0"][:3] == ["sms1", "email1", "sms2"]
    # Later steps still run on schedule: the planned offset from abandonment, or the offset
    # from the last message if that is later.
    queued = {(token, step): at for token, step, at in messages}
    assert queued[("a0", "email1")] == start + timedelta(minutes=70)
    assert queued[("a0", "email3")] == restart  # 50 minutes late: within its 6 h grace
    assert queued[("b0", "email3")] == start + timedelta(days=1, hours=72, minutes=10)
    c_abandoned = restart - timedelta(hours=2, minutes=50)
    assert queued[("c0", "email1")] == restart  # 1h50m late, within grace
    # email2 is planned at abandonment + 21h, but email1 went out late: 20 h after email1.
    assert c_abandoned + timedelta(hours=21) < restart + timedelta(hours=20)
    assert queued[("c0", "email2")] == restart + timedelta(hours=20)
    assert queued[("c0", "email3")] == restart + timedelta(hours=20 + 51)
    # Every enrollment finished, and no step was late once the worker was back.
    e = t.enrollments.c
    with world.app.engine.connect() as conn:
        assert set(conn.execute(select(e.state).distinct()).scalars()) == {"completed"}
        late_after_restart = conn.execute(
            select(func.count())
            .select_from(t.decisions)
            .where(t.decisions.c.rule == "timer.late", t.decisions.c.at > restart)
        ).scalar()
    assert late_after_restart == 0
