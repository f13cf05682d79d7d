"""Wakeups between the worker's loops, within a process and across processes.

A loop that has nothing to do waits on an event of its topic, with a capped timeout: the timer
until the next `wake_at`, the dispatcher until the next row is available, the inbox applier a
short poll. Whatever gives a loop work sets that event: in-process, the loop that made the work
(after its commit); across processes on PostgreSQL, a NOTIFY on the topic's channel, which
PostgreSQL delivers at commit to a LISTEN connection that every worker process keeps open. SQLite
has no such thing: there another process's work is found by the capped poll.

The capped timeouts stay: a row made due by a path that announces nothing (an import, a
restart) is still found within the poll.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterable
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, Engine, func, select

from cartback.store import tables as t

log = logging.getLogger("cartback.wakeups")

# How long the listener waits for notifications before it looks at its stop flag.
LISTEN_SLICE_SECONDS = 0.5
# After a lost LISTEN connection: how long before connecting again.
RECONNECT_SECONDS = 2.0


class Topic(StrEnum):
    # Inbox rows were appended: the applier has work.
    INBOX = "inbox"
    # Enrollments were written that may be due sooner than the timer's next wake.
    DUE = "due"
    # Outbox rows were queued: the dispatcher has work.
    OUTBOX = "outbox"

    @property
    def channel(self) -> str:
        return f"cartback_{self.value}"


def notify(conn: Connection, topic: Topic, sender: str = "") -> None:
    """Tell the workers of other processes, when this transaction commits (PostgreSQL only:
    NOTIFY is delivered at commit and never if it rolls back). Not a network call to anyone
    outside the database."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SELECT pg_notify(%s, %s)", (topic.channel, sender))


def next_wake(engine: Engine) -> datetime | None:
    """The earliest `wake_at` of any enrollment (an index's first entry), None when none waits."""
    with engine.connect() as conn:
        found: datetime | None = conn.execute(select(func.min(t.enrollments.c.wake_at))).scalar()
    return found


class Wakeups:
    """One event per topic for the loops of one worker; on PostgreSQL, also a thread that
    LISTENs and sets them when another process notifies."""

    def __init__(self, engine: Engine, topics: Iterable[Topic], stop: threading.Event) -> None:
        self.engine = engine
        self.topics = frozenset(topics)
        self.stop = stop
        self.events = {topic: threading.Event() for topic in Topic}
        # What this worker sends as payload, so that its listener skips its own notifications:
        # the loop that made the work has already set the event in-process.
        self.sender = uuid.uuid4().hex
        self._thread: threading.Thread | None = None
        self.listening = threading.Event()

    @property
    def cross_process(self) -> bool:
        """Whether other processes' work is notified (PostgreSQL), not only found by polling."""
        return self.engine.dialect.name == "postgresql"

    def start(self) -> None:
        if self.cross_process and self.topics and self._thread is None:
            self._thread = threading.Thread(target=self._listen, name="wakeups", daemon=True)
            self._thread.start()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def set(self, topic: Topic) -> None:
        self.events[topic].set()

    def set_all(self) -> None:
        for event in self.events.values():
            event.set()

    def wait(self, topic: Topic, timeout: float) -> None:
        """Wait up to `timeout` seconds or until `topic` is set, then clear it: the loop's next
        run sees whatever was committed before it was set."""
        event = self.events[topic]
        event.wait(max(0.0, timeout))
        event.clear()

    def announce(self, topic: Topic) -> None:
        """Set `topic` here and notify the other processes (after the caller's commit). A
        failure is logged: the others find the work by their poll."""
        self.set(topic)
        if not self.cross_process:
            return
        try:
            with self.engine.begin() as conn:
                notify(conn, topic, self.sender)
        except Exception as error:
            log.warning("could not notify %s: %s", topic.channel, type(error).__name__)

    def _listen(self) -> None:
        while not self.stop.is_set():
            try:
                self._listen_once()
            except Exception as error:
                log.warning("LISTEN connection lost (%s); polling meanwhile", type(error).__name__)
            self.listening.clear()
            # Whatever was notified while disconnected is looked for at once.
            self.set_all()
            self.stop.wait(RECONNECT_SECONDS)

    def _listen_once(self) -> None:
        connection = _dbapi_connection(self.engine)
        try:
            for topic in self.topics:
                connection.execute(f"LISTEN {topic.channel}")
            self.listening.set()
            by_channel = {topic.channel: topic for topic in self.topics}
            while not self.stop.is_set():
                for note in connection.notifies(timeout=LISTEN_SLICE_SECONDS):
                    woken = by_channel.get(note.channel)
                    if woken is not None and note.payload != self.sender:
                        self.set(woken)
        finally:
            connection.close()


def _dbapi_connection(engine: Engine) -> Any:
    """A psycopg connection of its own, outside the pool: it stays in LISTEN for the worker's
    life, in autocommit (a notification is delivered between transactions)."""
    cargs, cparams = engine.dialect.create_connect_args(engine.url)
    cparams.setdefault("connect_timeout", 5)
    connection = engine.dialect.loaded_dbapi.connect(*cargs, **cparams)
    connection.autocommit = True
    return connection
