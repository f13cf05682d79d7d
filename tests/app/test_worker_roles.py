"""`cartback worker --role`: each role runs its own loops only, and wakeups reach the roles of
another worker (another process) at once on PostgreSQL, not at the end of its poll."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from cartback.cli import cli
from cartback.services import admin, inbox
from cartback.services.inbox import Entry
from cartback.services.inbox_writer import InboxWriter
from cartback.services.ingest import ingest
from cartback.store import tables as t
from cartback.worker import ALL_ROLES, Role, Worker, parse_roles
from tests.support.events import checkout, checkout_payload
from tests.support.procs import wait_for
from tests.support.world import World, make_world

# One email, due as soon as the cart is abandoned: what a role does shows at once.
QUICK = """\
name: quick
abandon_after: 0s
grace: 2h
steps:
  - id: email1
    at: 0s
    channel: email
    subject: Your cart
    body: "{{ first_name }}, your {{ product }} is waiting: {{ link }}"
"""


def test_roles_are_read_from_repeats_and_comma_lists() -> None:
    assert parse_roles([]) == ALL_ROLES
    assert parse_roles(["all"]) == ALL_ROLES
    assert parse_roles(["timer"]) == {Role.TIMER}
    assert parse_roles(["timer,inbox", "dispatcher"]) == {Role.TIMER, Role.INBOX, Role.DISPATCHER}
    assert parse_roles([" jobs , timer "]) == {Role.JOBS, Role.TIMER}
    with pytest.raises(ValueError, match="unknown role 'sender'"):
        parse_roles(["timer,sender"])


def test_an_unknown_role_exits_2_naming_it() -> None:
    result = CliRunner().invoke(cli, ["worker", "--role", "timer,sender"])
    assert result.exit_code == 2
    assert "--role: unknown role 'sender'" in result.stderr
    assert "Traceback" not in result.output


def test_each_role_starts_its_own_threads(world: World) -> None:
    def names(*roles: Role) -> set[str]:
        return {name for name, _ in Worker(world.app, roles=frozenset(roles))._loops()}

    assert names(Role.TIMER) == {"timer"}
    assert names(Role.INBOX) == {"inbox"}
    assert names(Role.DISPATCHER) == {"dispatch", "smpp-drain", "pull", "webhooks"}
    assert names(Role.JOBS) == {"prune", "unique-codes", "report-summary"}
    assert names(*Role) == names(Role.TIMER) | names(Role.INBOX) | names(Role.DISPATCHER) | names(
        Role.JOBS
    )


@contextmanager
def _quick_world(database_url: str, **settings: Any) -> Iterator[World]:
    with make_world(database_url, **settings) as made:
        made.app.registry.register_text(QUICK, "quick.yaml", made.now)
        with made.app.engine.begin() as conn:
            conn.execute(t.stores.update().values(flow_name="quick"))
        yield made


@pytest.fixture
def quick(database_url: str) -> Iterator[World]:
    with _quick_world(database_url, worker_poll_seconds=0.05) as made:
        yield made


def _abandoned_cart(world: World) -> None:
    with world.app.engine.begin() as conn:
        store = admin.get_store(conn, world.store.id)
        event = checkout("cart-1", world.now - timedelta(hours=1))
        ingest(conn, store, world.app.registry.current("quick"), [event], world.now)


def _outbox(world: World) -> list[Any]:
    with world.app.engine.connect() as conn:
        return list(conn.execute(select(t.outbox.c.status)).scalars())


def _enrollments(world: World) -> list[Any]:
    e = t.enrollments.c
    with world.app.engine.connect() as conn:
        return list(conn.execute(select(e.step_index, e.state)).all())


@contextmanager
def _running(world: World, *roles: Role) -> Iterator[Worker]:
    worker = Worker(world.app, roles=frozenset(roles))
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive()


def test_a_dispatcher_only_worker_advances_no_enrollment(quick: World) -> None:
    _abandoned_cart(quick)
    before = _enrollments(quick)
    with _running(quick, Role.DISPATCHER):
        time.sleep(1.0)  # twenty of its polls
    assert _enrollments(quick) == before
    assert _outbox(quick) == []


def test_a_timer_only_worker_queues_but_sends_nothing(quick: World) -> None:
    _abandoned_cart(quick)
    with _running(quick, Role.TIMER):
        wait_for(lambda: bool(_outbox(quick)), 20, "the step's message to be queued")
        time.sleep(0.5)
    assert _outbox(quick) == ["pending"]


def test_an_inbox_only_worker_applies_events_but_fires_no_step(quick: World) -> None:
    payload = checkout_payload("cart-1", quick.now - timedelta(hours=1), id="evt-1")
    with quick.app.engine.begin() as conn:
        inbox.append(conn, quick.store.id, "api", [Entry("evt-1", json.dumps(payload))], quick.now)
    with _running(quick, Role.INBOX):
        wait_for(lambda: bool(_enrollments(quick)), 20, "the event to be applied")
        time.sleep(0.5)
    assert _enrollments(quick) == [(0, "active")]
    assert _outbox(quick) == []


# Polls this long: whatever happens much sooner was woken.
LONG_POLL = 10.0


def _slow_polling(database_url: str) -> Any:
    return _quick_world(database_url, worker_poll_seconds=LONG_POLL, inbox_apply_inline=False)


def _seconds_to_send(world: World, *workers: Worker) -> float:
    """From an event's acceptance (as the web server appends it) to its message sent."""
    for worker in workers:
        if worker.wakeups.cross_process:
            wait_for(worker.wakeups.listening.is_set, 20, "the worker to listen")
    time.sleep(0.5)  # every loop has had its first run and waits on its poll
    writer = InboxWriter(world.app.engine)
    payload = checkout_payload("cart-1", world.now - timedelta(hours=1), id="evt-1")
    began = time.monotonic()
    entries = [Entry("evt-1", json.dumps(payload))]
    writer.submit(world.store.id, "api", entries, world.now).result(timeout=10)
    writer.close()
    wait_for(lambda: _outbox(world) == ["sent"], LONG_POLL - 1, "the message to be sent")
    return time.monotonic() - began


def test_one_workers_loops_wake_each_other(database_url: str) -> None:
    """In one process, an applied event wakes the timer and a queued message the dispatcher,
    well before their polls would (the inbox's own idle wait is short on SQLite and notified
    on PostgreSQL)."""
    with (
        _quick_world(
            database_url, worker_poll_seconds=LONG_POLL, inbox_apply_inline=False
        ) as world,
        _running(world, *Role) as worker,
    ):
        took = _seconds_to_send(world, worker)
    assert took < LONG_POLL / 2, took


@pytest.mark.postgres
def test_work_reaches_another_workers_roles_by_notification(database_url: str) -> None:
    """An appended event, applied and fired by one worker, is sent by another well before
    their polls would find it: inbox → timer in-process, timer → dispatcher by NOTIFY."""
    if not database_url.startswith("postgresql"):
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's; SQLite's workers poll")
    with (
        _quick_world(
            database_url, worker_poll_seconds=LONG_POLL, inbox_apply_inline=False
        ) as world,
        _running(world, Role.INBOX, Role.TIMER) as firing,
        _running(world, Role.DISPATCHER) as sending,
    ):
        took = _seconds_to_send(world, firing, sending)
    assert took < LONG_POLL / 2, took
