"""Wakeups across processes: a NOTIFY reaches another worker's listener when its transaction
commits, never when it rolls back, and a worker does not wake itself twice."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from cartback.services.wakeups import Topic, Wakeups, notify
from tests.support.procs import wait_for
from tests.support.world import World


@pytest.fixture
def listening(world: World) -> Iterator[Wakeups]:
    stop = threading.Event()
    wakeups = Wakeups(world.app.engine, [Topic.OUTBOX, Topic.DUE], stop)
    wakeups.start()
    yield wakeups
    stop.set()
    wakeups.join(timeout=5)


def test_sqlite_has_no_listener_and_notifying_is_harmless(world: World) -> None:
    if world.app.engine.dialect.name != "sqlite":
        pytest.skip("SQLite only")
    wakeups = Wakeups(world.app.engine, list(Topic), threading.Event())
    wakeups.start()
    assert not wakeups.cross_process and not wakeups.listening.is_set()
    with world.app.engine.begin() as conn:
        notify(conn, Topic.OUTBOX)
    assert not wakeups.events[Topic.OUTBOX].is_set()


@pytest.mark.postgres
def test_a_committed_notify_wakes_the_topic_and_a_rolled_back_one_does_not(
    world: World, listening: Wakeups
) -> None:
    if world.app.engine.dialect.name != "postgresql":
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's")
    wait_for(listening.listening.is_set, 20, "the listener")
    with world.app.engine.connect() as conn:
        with conn.begin() as transaction:
            notify(conn, Topic.OUTBOX, "another worker")
            transaction.rollback()
        # Its own sender's notification is skipped: that worker set its event itself.
        with conn.begin():
            notify(conn, Topic.OUTBOX, listening.sender)
        with conn.begin():
            notify(conn, Topic.DUE, "another worker")
    wait_for(listening.events[Topic.DUE].is_set, 10, "the committed notification")
    assert not listening.events[Topic.OUTBOX].is_set()
    # Topics this worker does not listen on never wake it.
    with world.app.engine.begin() as conn:
        notify(conn, Topic.INBOX, "another worker")
        notify(conn, Topic.OUTBOX, "another worker")
    wait_for(listening.events[Topic.OUTBOX].is_set, 10, "the second notification")
    assert not listening.events[Topic.INBOX].is_set()
