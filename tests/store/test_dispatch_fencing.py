"""A send is fenced per message: stalls, slow providers and crashes never cause a second send,
recovery makes no provider call inside a transaction and works in small committed steps."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

import pytest
from sqlalchemy import Engine, event, select, text, update

from cartback.core.consent import ConsentSource
from cartback.core.model import Channel, Purpose
from cartback.ports import LookupResult, LookupStatus, OutboundMessage, SendResult, SendStatus
from cartback.services.consent import record_consent
from cartback.services.dispatch import Dispatcher, message_key
from cartback.store import tables as t
from cartback.store.db import is_sqlite, make_engine
from tests.store.test_dispatch import _due_messages, _rows
from tests.support.world import World

LEASE = timedelta(seconds=60)


class Provider:
    """Records each message key it took in a list it may share with other channel objects.
    With `knows`, its lookup is exact (like a provider's message log); without, it cannot tell."""

    name = "recorder"

    def __init__(
        self,
        sent: list[str],
        *,
        knows: bool = True,
        before: Callable[[OutboundMessage], bool] | None = None,
        after: Callable[[OutboundMessage], None] | None = None,
    ) -> None:
        self.kind = Channel.SMS
        self.sent = sent
        self.knows = knows
        # Run on each send: `before` the provider gets the request (False: it never does),
        # `after` it took the message, before the answer gets back.
        self.before = before
        self.after = after
        self.lock = threading.Lock()

    def send(self, message: OutboundMessage) -> SendResult:
        if self.before is not None and not self.before(message):
            return SendResult(SendStatus.UNKNOWN, error="the process died")
        with self.lock:
            self.sent.append(message.key)
        if self.after is not None:
            self.after(message)
        return SendResult(SendStatus.ACCEPTED, provider_id=f"p-{message.key}")

    def lookup(self, key: str) -> LookupStatus | LookupResult:
        if not self.knows:
            return LookupStatus.UNKNOWN
        with self.lock:
            if key in self.sent:
                return LookupResult(LookupStatus.SENT, provider_id=f"p-{key}")
        return LookupStatus.NOT_SENT

    def close(self) -> None:
        return None


@contextmanager
def _engines(world: World, count: int) -> Iterator[list[Engine]]:
    """One engine per dispatcher, as separate worker processes would have."""
    url = world.app.engine.url.render_as_string(hide_password=False)
    engines = [make_engine(url) for _ in range(count)]
    try:
        yield engines
    finally:
        for engine in engines:
            engine.dispose()


def _dispatcher(engine: Engine, channel: Provider, **options: object) -> Dispatcher:
    return Dispatcher(engine, {Channel.SMS: channel}, **options)  # type: ignore[dict-item,arg-type]


def _statuses(world: World) -> Counter[str]:
    return Counter(str(row["status"]) for row in _rows(world))


def _wait_for(condition: Callable[[], bool], seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _crash_mid_send(world: World, owner: str = "dead") -> None:
    """What a dispatcher that died with calls in flight leaves: `sending` under its lease."""
    with world.app.engine.begin() as conn:
        conn.execute(
            update(t.outbox).values(
                status="sending", lease_owner=owner, lease_until=world.now + LEASE
            )
        )


@pytest.mark.parametrize("skewed", [False, True], ids=["stalled", "stalled-and-skewed"])
def test_a_dispatcher_stalled_past_its_lease_never_sends_what_another_took_over(
    world: World, skewed: bool
) -> None:
    """Defect 1: A claims 40 rows, sends one and stops past its lease; B takes over and sends
    the rest; A resumes. With `skewed`, A's clock has not moved (another machine's clock), so
    only the database fence can stop it."""
    _due_messages(world, carts=40)
    sent: list[str] = []
    stalled, resume = threading.Event(), threading.Event()

    def stall_once(message: OutboundMessage) -> None:
        if not stalled.is_set():
            stalled.set()
            assert resume.wait(30)

    start = world.now
    a_clock = (lambda: start) if skewed else world.clock.now
    with _engines(world, 2) as (a_engine, b_engine):
        a = _dispatcher(
            a_engine, Provider(sent, after=stall_once), owner="A", concurrency=1, clock=a_clock
        )
        b = _dispatcher(b_engine, Provider(sent), owner="B", clock=world.clock.now)
        runner = threading.Thread(target=a.run_once, args=(start,))
        runner.start()
        try:
            assert stalled.wait(30)
            world.clock.advance(LEASE + timedelta(seconds=1))
            b.run_once(world.now)
        finally:
            resume.set()
            runner.join(30)
        b.run_once(world.now)
        a.run_once(a_clock())
        a.close()
        b.close()
    counts = Counter(sent)
    assert len(counts) == 40
    assert max(counts.values()) == 1
    assert _statuses(world) == {"sent": 40}


def test_a_provider_slower_than_the_batch_allows_causes_no_duplicate(world: World) -> None:
    """A provider answering just inside its timeout, a batch that takes longer than one lease,
    and a second dispatcher waiting to recover: each message still goes out once."""
    _due_messages(world, carts=12)
    sent: list[str] = []
    # 12 calls of 0.9 s, two at a time: 5.4 s for a batch claimed for 4 s.
    lease, timeout = timedelta(seconds=4), timedelta(seconds=1)

    def slow(message: OutboundMessage) -> bool:
        time.sleep(0.9)
        return True

    base, began = world.now, time.monotonic()

    def shared_clock() -> datetime:
        return base + timedelta(seconds=time.monotonic() - began)

    def finished() -> bool:
        return _statuses(world).get("sent", 0) == 12

    def drain(dispatcher: Dispatcher, deadline: float) -> None:
        while not finished() and time.monotonic() < deadline:
            dispatcher.run_once(shared_clock())
            time.sleep(0.05)

    with _engines(world, 2) as engines:
        dispatchers = [
            _dispatcher(
                engine,
                Provider(sent, before=slow),
                owner=f"d{i}",
                lease=lease,
                send_timeout=timeout,
                concurrency=2,
                clock=shared_clock,
            )
            for i, engine in enumerate(engines)
        ]
        deadline = time.monotonic() + 30

        def first_claims_all() -> None:
            dispatchers[0].run_once(shared_clock(), limit=12)  # outlives its claim's lease
            drain(dispatchers[0], deadline)

        threads = [
            threading.Thread(target=first_claims_all),
            threading.Thread(target=drain, args=(dispatchers[1], deadline)),
        ]
        threads[0].start()
        time.sleep(0.2)
        threads[1].start()
        for thread in threads:
            thread.join()
        for dispatcher in dispatchers:
            dispatcher.close()
    counts = Counter(sent)
    assert max(counts.values()) == 1
    assert len(counts) == 12
    assert _statuses(world) == {"sent": 12}


class WriteProbe:
    """During a lookup, writes the very row being looked up from another connection, with a
    short lock timeout: it succeeds only if the dispatcher holds no transaction (SQLite's write
    lock) and no lock on the row (PostgreSQL)."""

    def __init__(self, world: World) -> None:
        self.url = world.app.engine.url
        self.sqlite = is_sqlite(world.app.engine)
        self.answers: list[bool] = []
        # Lookups run in parallel; one probe at a time, so that probes never wait on each other.
        self.lock = threading.Lock()

    def write(self, key: str) -> None:
        row_id = int(key.removeprefix("cb-"))
        with self.lock:
            try:
                if self.sqlite:
                    self._sqlite(row_id)
                else:
                    self._postgres(row_id)
            except Exception:
                self.answers.append(False)
            else:
                self.answers.append(True)

    def _sqlite(self, row_id: int) -> None:
        conn = sqlite3.connect(str(self.url.database), timeout=1, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("UPDATE outbox SET updated_at = updated_at WHERE id = ?", (row_id,))
            conn.execute("COMMIT")
        finally:
            conn.close()

    def _postgres(self, row_id: int) -> None:
        engine = make_engine(self.url.render_as_string(hide_password=False))
        try:
            with engine.begin() as conn:
                conn.execute(text("SET LOCAL lock_timeout = '1s'"))
                conn.execute(
                    text("UPDATE outbox SET updated_at = updated_at WHERE id = :id"),
                    {"id": row_id},
                )
        finally:
            engine.dispose()


class ProbingProvider(Provider):
    def __init__(self, probe: WriteProbe) -> None:
        super().__init__([])
        self.probe = probe

    def lookup(self, key: str) -> LookupStatus | LookupResult:
        self.probe.write(key)
        return LookupStatus.NOT_SENT


def test_recovery_looks_up_with_no_transaction_open(world: World) -> None:
    """Defect 5: lookups are network calls; none may run inside a transaction."""
    _due_messages(world, carts=3)
    _crash_mid_send(world)
    world.clock.advance(LEASE + timedelta(seconds=1))
    probe = WriteProbe(world)
    dispatcher = _dispatcher(world.app.engine, ProbingProvider(probe), clock=world.clock.now)
    try:
        dispatcher.run_once(world.now)
    finally:
        dispatcher.close()
    assert probe.answers == [True, True, True]


class Crash(BaseException):
    """The process dying: not an error any code may catch and carry on from."""


def test_recovery_commits_in_small_steps_that_survive_a_crash(world: World) -> None:
    """Defect 5: a dispatcher that dies in the middle of recovery keeps what it reconciled."""
    _due_messages(world, carts=45)
    _crash_mid_send(world)
    world.clock.advance(LEASE + timedelta(seconds=1))
    looked_up: list[str] = []

    class Dying(Provider):
        def lookup(self, key: str) -> LookupStatus | LookupResult:
            if len(looked_up) == 25:
                raise Crash()
            looked_up.append(key)
            return LookupStatus.NOT_SENT

    dispatcher = _dispatcher(world.app.engine, Dying([]), clock=world.clock.now)
    try:
        with pytest.raises(Crash):
            for _ in range(3):
                dispatcher.run_once(world.now, limit=0)
    finally:
        dispatcher.close()
    statuses = _statuses(world)
    assert statuses["pending"] >= 20
    assert statuses["sending"] == 45 - statuses["pending"]


def test_recovery_is_bounded_and_new_work_still_goes_out(world: World) -> None:
    """Many rows to reconcile never keep a run from claiming and sending new work."""
    _due_messages(world, carts=50)
    with world.app.engine.begin() as conn:
        ids = list(conn.execute(select(t.outbox.c.id).order_by(t.outbox.c.id)).scalars())
        conn.execute(
            update(t.outbox)
            .where(t.outbox.c.id.in_(ids[:45]))
            .values(status="sending", lease_owner="dead", lease_until=world.now + LEASE)
        )
    world.clock.advance(LEASE + timedelta(seconds=1))
    sent: list[str] = []
    dispatcher = _dispatcher(world.app.engine, Provider(sent, knows=False), clock=world.clock.now)
    try:
        stats = dispatcher.run_once(world.now)
    finally:
        dispatcher.close()
    assert stats.recovered == 20
    assert sorted(sent) == sorted(message_key(row_id) for row_id in ids[45:])
    assert _statuses(world) == {"sending": 25, "unknown": 20, "sent": 5}


def test_rows_recovered_as_sent_record_the_provider_and_its_id(world: World) -> None:
    """Defect 11: a row reconciled as sent says which provider took it, under which id."""
    _due_messages(world, carts=2)
    rows = _rows(world)
    sent = [message_key(int(rows[0]["id"]))]  # type: ignore[call-overload]
    _crash_mid_send(world)
    world.clock.advance(LEASE + timedelta(seconds=1))
    dispatcher = _dispatcher(world.app.engine, Provider(sent), clock=world.clock.now)
    try:
        dispatcher.run_once(world.now, limit=0)
    finally:
        dispatcher.close()
    first, second = _rows(world)
    assert (first["status"], first["provider"], first["provider_id"]) == (
        "sent",
        "recorder",
        f"p-{sent[0]}",
    )
    assert first["sent_at"] is not None
    assert (second["status"], second["provider"], second["sent_at"]) == ("pending", None, None)


def test_a_crash_leaves_at_most_the_messages_in_flight_unknown(world: World) -> None:
    """Defect 5: a dispatcher dies with 200 rows claimed, 20 sent and 8 calls in flight, on a
    channel that cannot look messages up. Only those 8 become `unknown`; the rest go out once."""
    concurrency, before_crash = 8, 20
    _due_messages(world, carts=200)
    sent: list[str] = []
    calls = 0
    calls_lock = threading.Lock()
    in_flight = threading.Semaphore(0)
    dead = threading.Event()

    def die_after_some(message: OutboundMessage) -> bool:
        nonlocal calls
        with calls_lock:
            calls += 1
            number = calls
        if number <= before_crash:
            return True
        in_flight.release()
        dead.wait(60)  # the process is gone: this call never reaches the provider
        return False

    with _engines(world, 2) as (a_engine, b_engine):
        a = _dispatcher(
            a_engine,
            Provider(sent, knows=False, before=die_after_some),
            owner="A",
            concurrency=concurrency,
            clock=world.clock.now,
        )
        b = _dispatcher(b_engine, Provider(sent, knows=False), owner="B", clock=world.clock.now)
        runner = threading.Thread(target=a.run_once, args=(world.now,), daemon=True)
        runner.start()
        try:
            for _ in range(concurrency):
                assert in_flight.acquire(timeout=30)
            _wait_for(lambda: _statuses(world)["sent"] == before_crash)
            world.clock.advance(LEASE + timedelta(seconds=1))
            for _ in range(3):
                b.run_once(world.now)
            statuses = _statuses(world)
        finally:
            dead.set()
            runner.join(30)
        a.close()
        b.close()
    assert statuses == {"sent": 200 - concurrency, "unknown": concurrency}
    assert len(sent) == len(set(sent)) == 200 - concurrency
    assert _statuses(world) == statuses


def test_a_call_is_not_started_when_a_stall_after_the_fence_ate_the_lease(world: World) -> None:
    """The process stops right after marking the row `sending`, until less than one provider
    timeout of the row's lease is left: the call could outlive the lease, so it is not made and
    the row goes back to the queue, to be sent once later."""
    _due_messages(world)
    sent: list[str] = []

    def stall_after_the_fence(conn: object, cursor: object, statement: str, *_: object) -> None:
        if statement.startswith("UPDATE outbox") and "outbox.attempts +" in statement:
            world.clock.advance(LEASE - timedelta(seconds=5))

    engine = world.app.engine
    dispatcher = _dispatcher(engine, Provider(sent), clock=world.clock.now)
    try:
        event.listen(engine, "after_cursor_execute", stall_after_the_fence)
        try:
            stats = dispatcher.run_once(world.now)
        finally:
            event.remove(engine, "after_cursor_execute", stall_after_the_fence)
        assert (sent, stats.lost_lease) == ([], 1)
        row = _rows(world)[0]
        assert (row["status"], row["attempts"], row["lease_owner"]) == ("pending", 0, None)
        dispatcher.run_once(world.now)
    finally:
        dispatcher.close()
    assert len(sent) == 1
    assert _statuses(world) == {"sent": 1}


def test_an_opt_out_received_during_a_claim_stops_the_claimed_sends(world: World) -> None:
    """The first send of a claimed batch is followed by every shopper's STOP: the rest of the
    claim must not go out, although each row was claimed before the opt-out arrived."""
    _due_messages(world, carts=5)
    sent: list[str] = []

    def everyone_replies_stop(message: OutboundMessage) -> bool:
        if not sent:
            with world.app.engine.begin() as conn:
                for contact_id in conn.execute(select(t.contacts.c.id)).scalars().all():
                    record_consent(
                        conn,
                        store_id=world.store.id,
                        contact_id=contact_id,
                        channel=Channel.SMS,
                        purpose=Purpose.MARKETING,
                        granted=False,
                        source=ConsentSource.KEYWORD_REPLY,
                        at=world.now,
                    )
        return True

    channel = Provider(sent, before=everyone_replies_stop)
    dispatcher = _dispatcher(world.app.engine, channel, concurrency=1, clock=world.clock.now)
    try:
        stats = dispatcher.run_once(world.now)
    finally:
        dispatcher.close()
    assert (len(sent), stats.claimed, stats.sent) == (1, 5, 1)
    assert _statuses(world) == Counter({"sent": 1, "cancelled": 4})
    with world.app.engine.connect() as conn:
        rules = conn.execute(
            select(t.decisions.c.rule).where(t.decisions.c.rule == "dispatch.cancelled")
        ).all()
    assert len(rules) == 4


def test_a_stopping_dispatcher_starts_no_new_call_and_returns_its_claim(world: World) -> None:
    """Shutdown: once the stop is set, the calls in flight finish and the rest of the claim goes
    back to the queue at once, for the next worker, instead of waiting out its lease."""
    _due_messages(world, carts=6)
    sent: list[str] = []
    stopping = threading.Event()

    def stop_after_first(message: OutboundMessage) -> None:
        stopping.set()

    channel = Provider(sent, after=stop_after_first)
    dispatcher = _dispatcher(
        world.app.engine, channel, concurrency=1, clock=world.clock.now, stopping=stopping
    )
    try:
        dispatcher.run_once(world.now)
    finally:
        dispatcher.close()
    assert len(sent) == 1
    assert _statuses(world) == Counter({"sent": 1, "pending": 5})
    rows = [row for row in _rows(world) if row["status"] == "pending"]
    assert all(row["lease_owner"] is None and row["attempts"] == 0 for row in rows)


def test_claims_stranded_by_a_database_blip_go_back_at_the_next_run(world: World) -> None:
    """The database fails on the fences of a claimed batch (a restart, a dropped connection):
    the rows were never handed over, so the dispatcher's next run returns them to the queue at
    once instead of leaving them `claimed` for the whole lease, and each is sent exactly once."""
    _due_messages(world, carts=4)
    sent: list[str] = []
    channel = Provider(sent)
    dispatcher = _dispatcher(world.app.engine, channel, concurrency=1, clock=world.clock.now)
    fence = dispatcher._mark_sending
    failing = {"on": True}

    def blip(row_id: int, at: datetime) -> bool:
        if failing["on"]:
            raise ConnectionError("server closed the connection unexpectedly")
        return fence(row_id, at)

    dispatcher._mark_sending = blip  # type: ignore[method-assign]
    try:
        dispatcher.run_once(world.now)
        assert sent == []
        assert _statuses(world) == Counter({"claimed": 4})
        failing["on"] = False
        # Well inside the lease: without the fix nothing would move for another minute.
        world.clock.advance(timedelta(seconds=1))
        dispatcher.run_once(world.clock.now())
    finally:
        dispatcher.close()
    assert sorted(Counter(sent).values()) == [1, 1, 1, 1]
    assert _statuses(world) == Counter({"sent": 4})


def test_a_stranded_claim_returned_while_its_fence_waits_is_still_sent_once(
    world: World,
) -> None:
    """Returning this dispatcher's own `claimed` rows is safe even for a row whose fence has not
    run yet: the fence then fails, and whoever claims the row next sends it, once."""
    _due_messages(world, carts=3)
    sent: list[str] = []
    other_sent: list[str] = []
    first = _dispatcher(world.app.engine, Provider(sent), concurrency=1, clock=world.clock.now)
    other = _dispatcher(
        world.app.engine, Provider(other_sent), concurrency=1, clock=world.clock.now
    )
    fence = first._mark_sending

    def return_then_fence(row_id: int, at: datetime) -> bool:
        first._unclaim_mine()
        other.run_once(world.clock.now())
        return fence(row_id, at)

    first._mark_sending = return_then_fence  # type: ignore[method-assign]
    try:
        first.run_once(world.now)
    finally:
        first.close()
        other.close()
    assert sent == []
    assert sorted(Counter(other_sent).values()) == [1, 1, 1]
    assert _statuses(world) == Counter({"sent": 3})
