"""The outbox dispatcher: leases, outcomes, crash reconciliation, never a second send."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import select, update

from cartback.channels.dev import ConsoleChannel, JsonlChannel
from cartback.core.model import Channel
from cartback.ports import LookupStatus, OutboundMessage, SendResult, SendStatus
from cartback.services.dispatch import MAX_ATTEMPTS, Dispatcher, message_key
from cartback.services.ingest import ingest
from cartback.services.tick import tick
from cartback.store import tables as t
from cartback.store.db import make_engine
from tests.support.events import checkout
from tests.support.world import World


class Recorder:
    """A provider that remembers every message it was asked to send."""

    name = "recorder"

    def __init__(self, kind: Channel, result: SendResult | None = None) -> None:
        self.kind = kind
        self.result = result or SendResult(SendStatus.ACCEPTED, provider_id="p-1")
        self.sent: list[OutboundMessage] = []
        self.lock = threading.Lock()

    def send(self, message: OutboundMessage) -> SendResult:
        with self.lock:
            self.sent.append(message)
        return self.result

    def lookup(self, key: str) -> LookupStatus:
        return LookupStatus.UNKNOWN

    def close(self) -> None:
        return None


class Exploding(Recorder):
    def send(self, message: OutboundMessage) -> SendResult:
        super().send(message)
        raise ConnectionResetError("peer went away mid-request")


def _due_messages(world: World, carts: int = 1) -> None:
    flow = world.app.registry.current("default")
    events = [
        checkout(f"c{i}", world.now, phone=f"+47400{i:05d}", email=f"s{i}@example.com")
        for i in range(carts)
    ]
    with world.app.engine.begin() as conn:
        ingest(conn, world.store, flow, events, world.now)
    world.clock.advance(timedelta(minutes=25))
    tick(world.app.engine, world.app.registry, world.now)


def _rows(world: World) -> list[dict[str, object]]:
    with world.app.engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(t.outbox).order_by(t.outbox.c.id)).mappings()]


def _run(world: World, channel: object, **options: object) -> object:
    options.setdefault("clock", world.clock.now)
    dispatcher = Dispatcher(world.app.engine, {Channel.SMS: channel}, **options)  # type: ignore[dict-item,arg-type]
    try:
        return dispatcher.run_once(world.now)
    finally:
        dispatcher.close()


def _crash_mid_send(world: World) -> None:
    """What a dispatcher that died after claiming leaves behind: `sending` with a lease."""
    with world.app.engine.begin() as conn:
        conn.execute(
            update(t.outbox).values(
                status="sending", lease_owner="dead", lease_until=world.now + timedelta(seconds=60)
            )
        )


def test_a_message_is_sent_once_and_recorded(world: World) -> None:
    _due_messages(world)
    provider = Recorder(Channel.SMS)
    _run(world, provider)
    _run(world, provider)
    assert len(provider.sent) == 1
    row = _rows(world)[0]
    assert (row["status"], row["provider_id"], row["attempts"]) == ("sent", "p-1", 1)
    assert provider.sent[0].key == message_key(int(row["id"]))  # type: ignore[call-overload]


def test_a_crash_with_a_provider_that_cannot_tell_is_never_resent(world: World) -> None:
    _due_messages(world)
    _crash_mid_send(world)
    provider = Recorder(Channel.SMS)
    _run(world, provider)
    assert _rows(world)[0]["status"] == "sending"  # the lease still holds
    world.clock.advance(timedelta(seconds=61))
    _run(world, provider)
    world.clock.advance(timedelta(hours=1))
    _run(world, provider)
    assert provider.sent == []
    row = _rows(world)[0]
    assert row["status"] == "unknown"
    assert "not resent" in str(row["error"])


def test_a_crash_after_the_provider_took_it_is_reconciled_as_sent(
    world: World, tmp_path: Path
) -> None:
    _due_messages(world)
    channel = JsonlChannel(Channel.SMS, tmp_path / "out.jsonl")
    row_id = int(_rows(world)[0]["id"])  # type: ignore[call-overload]
    channel.send(OutboundMessage(key=message_key(row_id), channel=Channel.SMS, to="+47", body="x"))
    _crash_mid_send(world)
    world.clock.advance(timedelta(seconds=61))
    _run(world, channel)
    row = _rows(world)[0]
    assert (row["status"], row["provider"], row["provider_id"]) == (
        "sent",
        "jsonl",
        f"jsonl-{message_key(row_id)}",
    )
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 1


def test_a_crash_before_the_provider_saw_it_sends_exactly_once(
    world: World, tmp_path: Path
) -> None:
    _due_messages(world)
    channel = JsonlChannel(Channel.SMS, tmp_path / "out.jsonl")
    _crash_mid_send(world)
    world.clock.advance(timedelta(seconds=61))
    _run(world, channel)  # reconciles back to pending
    _run(world, channel)  # sends it
    _run(world, channel)
    assert _rows(world)[0]["status"] == "sent"
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 1


def test_a_transient_refusal_is_retried_with_backoff_then_fails(world: World) -> None:
    _due_messages(world)
    provider = Recorder(
        Channel.SMS, SendResult(SendStatus.REJECTED, error="rate limited", retryable=True)
    )
    _run(world, provider)
    row = _rows(world)[0]
    assert row["status"] == "pending"
    # 30 s for the first retry, less up to half of it by jitter.
    wait = row["available_at"] - world.now  # type: ignore[operator]
    assert timedelta(seconds=15) <= wait <= timedelta(seconds=30)
    _run(world, provider)
    assert len(provider.sent) == 1  # not yet due again
    for _ in range(MAX_ATTEMPTS):
        world.clock.advance(timedelta(hours=1))
        _run(world, provider)
    assert len(provider.sent) == MAX_ATTEMPTS
    assert _rows(world)[0]["status"] == "failed"


def test_a_permanent_refusal_fails_at_once(world: World) -> None:
    _due_messages(world)
    provider = Recorder(Channel.SMS, SendResult(SendStatus.REJECTED, error="unsubscribed"))
    _run(world, provider)
    assert _rows(world)[0]["status"] == "failed"


def test_a_channel_that_raises_leaves_the_outcome_unknown(world: World) -> None:
    _due_messages(world)
    provider = Exploding(Channel.SMS)
    _run(world, provider)
    world.clock.advance(timedelta(hours=2))
    _run(world, provider)
    assert len(provider.sent) == 1
    row = _rows(world)[0]
    assert row["status"] == "unknown"
    assert "ConnectionResetError" in str(row["error"])


def test_consent_withdrawn_after_the_timer_cancels_the_send(world: World) -> None:
    _due_messages(world)
    with world.app.engine.begin() as conn:
        conn.execute(update(t.contacts).values(sms_marketing=False))
    provider = Recorder(Channel.SMS)
    _run(world, provider)
    assert provider.sent == []
    assert _rows(world)[0]["status"] == "cancelled"
    with world.app.engine.connect() as conn:
        reasons = conn.execute(
            select(t.decisions.c.reason).where(t.decisions.c.rule == "dispatch.cancelled")
        ).scalars()
        assert list(reasons) == ["cancelled: SMS consent was withdrawn"]


def test_two_dispatchers_at_once_send_each_message_once(world: World) -> None:
    _due_messages(world, carts=60)
    provider = Recorder(Channel.SMS)
    url = world.app.engine.url.render_as_string(hide_password=False)
    engines = [make_engine(url) for _ in range(2)]
    dispatchers = [
        Dispatcher(engine, {Channel.SMS: provider}, owner=f"d{i}")
        for i, engine in enumerate(engines)
    ]
    barrier = threading.Barrier(2)

    def drain(dispatcher: Dispatcher) -> None:
        barrier.wait()
        for _ in range(20):
            dispatcher.run_once(world.now, limit=7)

    threads = [threading.Thread(target=drain, args=(d,)) for d in dispatchers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for dispatcher, engine in zip(dispatchers, engines, strict=True):
        dispatcher.close()
        engine.dispose()
    counts = Counter(message.key for message in provider.sent)
    assert len(counts) == 60
    assert set(counts.values()) == {1}
    assert {row["status"] for row in _rows(world)} == {"sent"}


def test_the_console_channel_prints_the_message() -> None:
    printed: list[str] = []
    channel = ConsoleChannel(Channel.EMAIL, write=printed.append)
    result = channel.send(
        OutboundMessage(
            key="k", channel=Channel.EMAIL, to="a@b.c", body="Hello\nthere", subject="Hi"
        )
    )
    assert result.status is SendStatus.ACCEPTED
    assert "EMAIL to a@b.c" in printed[0]
    assert "Subject: Hi" in printed[0] and "  there" in printed[0]


def test_the_timer_stores_when_the_message_must_be_out_by(world: World) -> None:
    _due_messages(world)
    # A Norwegian shopper at 13:25 Oslo time: quiet hours begin at 20:00 Oslo, 19:00 UTC.
    assert _rows(world)[0]["send_before"] == datetime(2026, 11, 23, 19, 0, tzinfo=UTC)


def test_a_message_held_up_into_quiet_hours_expires_unsent(world: World) -> None:
    _due_messages(world)
    world.clock.advance(timedelta(hours=7, minutes=10))  # the dispatcher was down until 19:35 UTC
    provider = Recorder(Channel.SMS)
    stats = _run(world, provider)
    assert provider.sent == []
    row = _rows(world)[0]
    assert row["status"] == "expired"
    assert "not sent by 2026-11-23 19:00 UTC" in str(row["error"])
    with world.app.engine.connect() as conn:
        told = conn.execute(
            select(t.decisions.c.step_id, t.decisions.c.rule).where(
                t.decisions.c.rule.like("dispatch.%")
            )
        ).all()
    assert [(d.step_id, d.rule) for d in told] == [("sms1", "dispatch.expired")]
    assert stats.expired == 1 and stats.sent == 0


def test_a_retry_that_would_land_in_quiet_hours_expires(world: World) -> None:
    _due_messages(world)
    refusing = Recorder(
        Channel.SMS, SendResult(SendStatus.REJECTED, error="rate limited", retryable=True)
    )
    world.clock.advance(timedelta(hours=6, minutes=34))  # 18:59:xx UTC, a minute before 20:00 Oslo
    _run(world, refusing)
    assert _rows(world)[0]["status"] == "pending"  # retry in 30 s
    world.clock.advance(timedelta(minutes=1))
    _run(world, refusing)
    assert len(refusing.sent) == 1
    assert _rows(world)[0]["status"] == "expired"


def test_a_channel_rate_paces_the_sends_and_leaves_other_channels_alone(world: World) -> None:
    _due_messages(world, carts=5)
    world.clock.advance(timedelta(minutes=50))  # the first email is due too
    tick(world.app.engine, world.app.registry, world.now)
    texts, mails = Recorder(Channel.SMS), Recorder(Channel.EMAIL)
    dispatcher = Dispatcher(
        world.app.engine,
        {Channel.SMS: texts, Channel.EMAIL: mails},  # type: ignore[dict-item]
        rates={Channel.SMS: 2},
    )
    try:
        dispatcher.run_once(world.now)
        assert (len(texts.sent), len(mails.sent)) == (2, 5)
        dispatcher.run_once(world.now)
        assert len(texts.sent) == 2  # the bucket is empty until time passes
        world.clock.advance(timedelta(milliseconds=500))
        dispatcher.run_once(world.now)
        assert len(texts.sent) == 3
        world.clock.advance(timedelta(seconds=10))
        dispatcher.run_once(world.now)
        assert len(texts.sent) == 5
    finally:
        dispatcher.close()
    assert sorted(row["status"] for row in _rows(world)) == ["sent"] * 10
