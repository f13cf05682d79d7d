"""The dispatcher fences a window of rows at once: one conditional update marks as many rows
`sending` as there are free send threads, and only the rows it marked go out. A stall between
that fence and the calls, a takeover by another worker, or both, never cause a second send."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, event, insert, select, update

from cartback.core.model import Channel
from cartback.ports import MessageChannel
from cartback.services.dispatch import message_key
from cartback.services.providers import ChannelResolver
from cartback.store import tables as t
from cartback.store.db import is_sqlite
from tests.store.test_dispatch import _due_messages, _rows
from tests.store.test_dispatch_fencing import LEASE, Provider, _dispatcher, _engines, _statuses
from tests.support.world import World

TIMEOUT = timedelta(seconds=10)


def _ids(world: World) -> list[int]:
    return [int(row["id"]) for row in _rows(world)]  # type: ignore[call-overload]


def test_a_window_is_fenced_together_and_only_the_rows_still_held_go_out(world: World) -> None:
    """Four free threads: the first four rows are fenced in one update. Two of them were taken
    over by another worker just before it; only the other two are handed to the provider."""
    _due_messages(world, carts=12)
    sent: list[str] = []
    dispatcher = _dispatcher(
        world.app.engine, Provider(sent), owner="A", concurrency=4, clock=world.clock.now
    )
    fence = dispatcher._mark_sending
    groups: list[list[int]] = []

    def taken_over_first(row_ids: Sequence[int], at: datetime) -> set[int]:
        groups.append(list(row_ids))
        if len(groups) == 1:
            with world.app.engine.begin() as conn:
                conn.execute(
                    update(t.outbox)
                    .where(t.outbox.c.id.in_(list(row_ids)[:2]))
                    .values(lease_owner="B")
                )
        return fence(row_ids, at)

    dispatcher._mark_sending = taken_over_first  # type: ignore[method-assign]
    try:
        stats = dispatcher.run_once(world.now)
    finally:
        dispatcher.close()
    assert len(groups[0]) == 4
    assert all(1 <= len(group) <= 4 for group in groups)
    assert sorted(row_id for group in groups for row_id in group) == sorted(_ids(world))
    taken = set(groups[0][:2])
    assert sorted(sent) == sorted(message_key(i) for i in _ids(world) if i not in taken)
    assert (stats.sent, stats.lost_lease) == (10, 2)
    for row in _rows(world):
        if row["id"] in taken:
            assert (row["status"], row["lease_owner"], row["attempts"]) == ("claimed", "B", 0)
        else:
            assert row["status"] == "sent"


def test_a_stall_after_a_window_fence_starts_none_of_its_calls(world: World) -> None:
    """The process stops right after fencing a window of four, until less than one provider
    timeout of their lease is left: none of the four calls starts, all go back to the queue
    untouched, and each is sent once later."""
    _due_messages(world, carts=4)
    sent: list[str] = []
    stalled: list[str] = []

    def stall_after_the_fence(conn: object, cursor: object, statement: str, *_: object) -> None:
        fence = statement.startswith("UPDATE outbox") and "outbox.attempts +" in statement
        if fence and not stalled:
            stalled.append(statement)
            world.clock.advance(LEASE - timedelta(seconds=5))

    engine = world.app.engine
    dispatcher = _dispatcher(engine, Provider(sent), concurrency=4, clock=world.clock.now)
    try:
        event.listen(engine, "after_cursor_execute", stall_after_the_fence)
        try:
            stats = dispatcher.run_once(world.now)
        finally:
            event.remove(engine, "after_cursor_execute", stall_after_the_fence)
        assert (sent, stats.lost_lease, len(stalled)) == ([], 4, 1)
        for row in _rows(world):
            assert (row["status"], row["attempts"], row["lease_owner"]) == ("pending", 0, None)
        dispatcher.run_once(world.now)
    finally:
        dispatcher.close()
    assert sorted(Counter(sent).values()) == [1, 1, 1, 1]
    assert _statuses(world) == {"sent": 4}


@pytest.mark.parametrize("knows", [True, False], ids=["provider-knows", "provider-cannot-tell"])
def test_a_stall_past_the_lease_after_a_window_fence_lets_another_worker_take_over(
    world: World, knows: bool
) -> None:
    """A fences a window of three and stops past the whole lease before the calls start. B
    recovers the three (`sending`, lease expired) and takes over A's lapsed claim; A resumes
    and starts none of its calls. Every message goes out at most once: the three are sent by B
    when the provider can say they never arrived, and left `unknown` when it cannot tell."""
    _due_messages(world, carts=6)
    sent: list[str] = []
    with _engines(world, 2) as (a_engine, b_engine):
        a = _dispatcher(
            a_engine, Provider(sent, knows=knows), owner="A", concurrency=3, clock=world.clock.now
        )
        b = _dispatcher(b_engine, Provider(sent, knows=knows), owner="B", clock=world.clock.now)
        fence = a._mark_sending
        windows: list[set[int]] = []

        def stall_after_the_first_window(row_ids: Sequence[int], at: datetime) -> set[int]:
            marked = fence(row_ids, at)
            if not windows:
                windows.append(marked)
                world.clock.advance(LEASE + timedelta(seconds=1))
                b.run_once(world.now)
            return marked

        a._mark_sending = stall_after_the_first_window  # type: ignore[method-assign]
        try:
            stats = a.run_once(world.now)
            b.run_once(world.now)
        finally:
            a.close()
            b.close()
    assert stats.sent == 0 and len(windows[0]) == 3
    counts = Counter(sent)
    assert set(counts.values()) == {1}
    if knows:
        assert len(counts) == 6
        assert _statuses(world) == {"sent": 6}
    else:
        assert set(counts) == {message_key(i) for i in _ids(world) if i not in windows[0]}
        assert _statuses(world) == {"sent": 3, "unknown": 3}


def test_outcomes_written_through_the_driver_read_back_as_core_writes_them(world: World) -> None:
    """The prebuilt statements store times exactly as the schema's types do: a sent row reads
    back with the fence time to the microsecond, and on SQLite in the same text form."""
    _due_messages(world, carts=2)
    world.clock.advance(timedelta(microseconds=123457))
    sent: list[str] = []
    dispatcher = _dispatcher(world.app.engine, Provider(sent), clock=world.clock.now)
    try:
        dispatcher.run_once(world.now)
    finally:
        dispatcher.close()
    for row in _rows(world):
        assert (row["status"], row["sent_at"], row["updated_at"]) == ("sent", world.now, world.now)
        assert (row["lease_owner"], row["lease_until"], row["attempts"]) == (None, None, 1)
        assert row["provider_id"] == f"p-{message_key(int(row['id']))}"  # type: ignore[call-overload]
    if is_sqlite(world.app.engine):
        with world.app.engine.connect() as conn:
            raw = conn.exec_driver_sql("SELECT sent_at, created_at FROM outbox").all()
        for sent_at, created_at in raw:
            assert len(sent_at) == len(created_at) == len("2026-11-23 13:25:00.123457")
            assert sent_at.endswith(".123457")


def test_the_connection_is_kept_between_runs(world: World) -> None:
    _due_messages(world, carts=3)
    checkouts: list[object] = []
    engine = world.app.engine
    listener = lambda *args: checkouts.append(args)  # noqa: E731
    dispatcher = _dispatcher(engine, Provider([]), clock=world.clock.now)
    event.listen(engine, "checkout", listener)
    try:
        for _ in range(5):
            dispatcher.run_once(world.now)
    finally:
        event.remove(engine, "checkout", listener)
        dispatcher.close()
    # One for transactions, and on PostgreSQL one in autocommit for single statements.
    assert len(checkouts) == (1 if is_sqlite(engine) else 2)
    assert _statuses(world) == {"sent": 3}


def test_a_run_tells_when_the_next_row_is_due(world: World) -> None:
    _due_messages(world, carts=1)
    dispatcher = _dispatcher(world.app.engine, Provider([]), clock=world.clock.now)
    try:
        later = world.now + timedelta(seconds=7)
        with world.app.engine.begin() as conn:
            conn.execute(update(t.outbox).values(available_at=later))
        assert dispatcher.run_once(world.now).next_due == later
        world.clock.advance(timedelta(seconds=7))
        stats = dispatcher.run_once(world.now)
        assert (stats.sent, stats.next_due) == (1, None)
    finally:
        dispatcher.close()


# --- a property: any stall at any window, with or without a takeover -------------------------


def _service_rows(world: World, count: int) -> None:
    """`count` due service messages (they need no enrollment), after clearing the outbox."""
    now = world.now
    with world.app.engine.begin() as conn:
        conn.execute(delete(t.outbox))
        conn.execute(
            insert(t.outbox),
            [
                {
                    "store_id": world.store.id,
                    "step_id": "reply",
                    "service_key": f"reply:{now.timestamp()}:{n}",
                    "channel": "sms",
                    "to_address": f"+4740{n:06d}",
                    "body": "Thanks",
                    "status": "pending",
                    "attempts": 0,
                    "available_at": now,
                    "created_at": now,
                    "updated_at": now,
                }
                for n in range(count)
            ],
        )


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    count=st.integers(1, 14),
    concurrency=st.integers(1, 5),
    stall_at=st.integers(0, 4),
    stall=st.sampled_from(["none", "eats-the-timeout", "past-the-lease"]),
    knows=st.booleans(),
)
def test_no_stall_at_any_window_ever_sends_a_message_twice(
    world: World, count: int, concurrency: int, stall_at: int, stall: str, knows: bool
) -> None:
    _service_rows(world, count)
    sent: list[str] = []
    with _engines(world, 2) as (a_engine, b_engine):
        a = _dispatcher(
            a_engine,
            Provider(sent, knows=knows),
            owner="A",
            concurrency=concurrency,
            clock=world.clock.now,
        )
        b = _dispatcher(b_engine, Provider(sent, knows=knows), owner="B", clock=world.clock.now)
        fence = a._mark_sending
        windows: list[set[int]] = []

        def stalling(row_ids: Sequence[int], at: datetime) -> set[int]:
            marked = fence(row_ids, at)
            windows.append(marked)
            if len(windows) - 1 == stall_at and stall == "eats-the-timeout":
                world.clock.advance(LEASE - TIMEOUT + timedelta(seconds=1))
            elif len(windows) - 1 == stall_at and stall == "past-the-lease":
                world.clock.advance(LEASE + timedelta(seconds=1))
                b.run_once(world.now)
            return marked

        a._mark_sending = stalling  # type: ignore[method-assign]
        try:
            a.run_once(world.now)
            for _ in range(3):
                world.clock.advance(LEASE + timedelta(seconds=1))
                b.run_once(world.now)
                a.run_once(world.now)
        finally:
            a.close()
            b.close()
    counts = Counter(sent)
    assert set(counts.values()) <= {1}
    with world.app.engine.connect() as conn:
        rows = conn.execute(select(t.outbox.c.id, t.outbox.c.status)).all()
    assert {row.status for row in rows} <= {"sent", "unknown"}
    recorded_sent = {message_key(row.id) for row in rows if row.status == "sent"}
    unknown = {message_key(row.id) for row in rows if row.status == "unknown"}
    # Every row recorded `sent` went out; what went out is recorded `sent`, or `unknown` when
    # its answer came back after its lease expired and the provider could not say.
    assert recorded_sent <= set(counts) <= recorded_sent | unknown
    if knows:
        assert recorded_sent == set(counts) and len(counts) == count
    elif stall != "past-the-lease":
        assert not unknown
    else:
        # At most the calls in flight when the lease ran out: a window and the calls before
        # it together never exceed the send threads.
        assert len(unknown) <= concurrency


class BrokenResolver(ChannelResolver):
    """Fails inside the send thread, after the fence, with an error nobody planned for."""

    def channel(self, store_id: int, kind: Channel) -> MessageChannel:
        raise RuntimeError("a bug")


def test_a_send_thread_that_fails_leaves_its_row_for_recovery(world: World) -> None:
    """Whether the call started cannot be known: the row is not put back in the queue at once
    but left `sending`, and recovery settles it with the provider after its lease."""
    _due_messages(world, carts=1)
    sent: list[str] = []
    provider = Provider(sent)
    resolver = BrokenResolver({Channel.SMS: provider}, base_url="", timeout=10, per_store=False)  # type: ignore[dict-item]
    broken = _dispatcher(world.app.engine, provider, resolver=resolver, clock=world.clock.now)
    try:
        stats = broken.run_once(world.now)
    finally:
        broken.close()
    assert (stats.sent, stats.lost_lease, sent) == (0, 1, [])
    assert _statuses(world) == {"sending": 1}
    world.clock.advance(LEASE + timedelta(seconds=1))
    healthy = _dispatcher(world.app.engine, provider, clock=world.clock.now)
    try:
        healthy.run_once(world.now)  # the provider never got it: back to pending, sent
    finally:
        healthy.close()
    assert len(sent) == 1
    assert _statuses(world) == {"sent": 1}


class SecondFenceFails:
    """The dispatcher's statements, with the second fence failing as a database blip would."""

    def __init__(self, sql: Any) -> None:
        self.sql = sql
        self.fences = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sql, name)

    def mark_sending(self, *args: Any) -> set[int]:
        self.fences += 1
        if self.fences == 2:
            raise ConnectionError("server closed the connection unexpectedly")
        return self.sql.mark_sending(*args)  # type: ignore[no-any-return]


def test_answers_carried_by_a_fence_that_fails_are_still_written(world: World) -> None:
    """The answers back from one window are written with the next window's fence. When that
    fence fails (the database blips), they are written on their own: the sent message is
    recorded `sent`, the rest of the claim goes back at the next run, and each goes out once."""
    _due_messages(world, carts=3)
    sent: list[str] = []
    dispatcher = _dispatcher(world.app.engine, Provider(sent), concurrency=1, clock=world.clock.now)
    failing = SecondFenceFails(dispatcher._sql)
    dispatcher._sql = failing  # type: ignore[assignment]
    try:
        stats = dispatcher.run_once(world.now)
        assert (failing.fences, stats.sent, len(sent)) == (2, 1, 1)
        assert _statuses(world) == {"sent": 1, "claimed": 2}
        world.clock.advance(timedelta(seconds=1))
        dispatcher.run_once(world.now)
    finally:
        dispatcher.close()
    assert sorted(Counter(sent).values()) == [1, 1, 1]
    assert _statuses(world) == {"sent": 3}
