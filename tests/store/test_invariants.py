"""A stateful property test: shop events, duplicates, orders, opt-outs, crashes and time jumps
in any order. After every step: nothing sent twice, nothing sent after an order or an opt-out,
and every enrollment either waits, or ended with a reason."""

from __future__ import annotations

import tempfile
from datetime import timedelta
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from sqlalchemy import func, select, update

from cartback.core.consent import ConsentSource
from cartback.core.model import Channel, Purpose
from cartback.ports import LookupStatus, OutboundMessage, SendResult, SendStatus
from cartback.services.consent import record_consent
from cartback.services.dispatch import Dispatcher
from cartback.services.ingest import ingest
from cartback.services.tick import tick
from cartback.store import tables as t
from tests.support.events import checkout, order
from tests.support.world import make_world

CARTS = ["c0", "c1"]


class Provider:
    """Remembers each message key it accepted, with the time it was sent."""

    name = "memory"

    def __init__(self, kind: Channel, sent: list[tuple[str, str, object]]) -> None:
        self.kind = kind
        self.sent = sent
        self.now: object = None

    def send(self, message: OutboundMessage) -> SendResult:
        self.sent.append((message.key, message.to, self.now))
        return SendResult(SendStatus.ACCEPTED, provider_id=message.key)

    def lookup(self, key: str) -> LookupStatus:
        return (
            LookupStatus.SENT if any(k == key for k, _, _ in self.sent) else LookupStatus.NOT_SENT
        )

    def close(self) -> None:
        return None


class Recovery(RuleBasedStateMachine):
    @initialize()
    def start(self) -> None:
        self._tmp = tempfile.TemporaryDirectory()
        self._world_cm = make_world(f"sqlite:///{Path(self._tmp.name) / 'db.sqlite'}")
        self.world = self._world_cm.__enter__()
        self.sent: list[tuple[str, str, object]] = []
        self.providers = {kind: Provider(kind, self.sent) for kind in Channel}
        # Rule invocations are numbered: "after" means a later invocation, even at the same time.
        self.step = 0
        self.ordered_at: dict[str, int] = {}
        self.opted_out_at: dict[str, int] = {}

    def teardown(self) -> None:
        if hasattr(self, "_world_cm"):
            self._world_cm.__exit__(None, None, None)
            self._tmp.cleanup()

    def _phone(self, cart: str) -> str:
        return f"+47400000{CARTS.index(cart):02d}"

    def _ingest(self, *events: object) -> None:
        flow = self.world.app.registry.current("default")
        with self.world.app.engine.begin() as conn:
            ingest(conn, self.world.store, flow, list(events), self.world.now)  # type: ignore[arg-type]

    @rule(cart=st.sampled_from(CARTS), duplicate=st.booleans())
    def checkout(self, cart: str, duplicate: bool) -> None:
        event = checkout(cart, self.world.now, phone=self._phone(cart), email=f"{cart}@example.com")
        self._ingest(event, event) if duplicate else self._ingest(event)

    @rule(cart=st.sampled_from(CARTS))
    def place_order(self, cart: str) -> None:
        self._ingest(order(cart, self.world.now))
        self.step += 1
        self.ordered_at.setdefault(cart, self.step)

    @rule(cart=st.sampled_from(CARTS))
    def reply_stop(self, cart: str) -> None:
        with self.world.app.engine.begin() as conn:
            contact = conn.execute(
                select(t.contacts.c.id).where(t.contacts.c.phone == self._phone(cart))
            ).scalar()
            if contact is None:
                return
            record_consent(
                conn,
                store_id=self.world.store.id,
                contact_id=contact,
                channel=Channel.SMS,
                purpose=Purpose.MARKETING,
                granted=False,
                source=ConsentSource.KEYWORD_REPLY,
                at=self.world.now,
            )
        self.step += 1
        self.opted_out_at.setdefault(self._phone(cart), self.step)

    @rule(minutes=st.sampled_from([20, 70, 8 * 60, 24 * 60]))
    def time_passes(self, minutes: int) -> None:
        self.world.clock.advance(timedelta(minutes=minutes))

    @rule()
    def timer_fires(self) -> None:
        tick(self.world.app.engine, self.world.app.registry, self.world.now)

    @rule(crash=st.booleans())
    def dispatcher_runs(self, crash: bool) -> None:
        self.step += 1
        for provider in self.providers.values():
            provider.now = self.step
        dispatcher = Dispatcher(self.world.app.engine, self.providers)  # type: ignore[arg-type]
        try:
            if crash:
                # Died after claiming: rows stay `sending` until the lease expires.
                with self.world.app.engine.begin() as conn:
                    conn.execute(
                        update(t.outbox)
                        .where(t.outbox.c.status == "pending")
                        .values(
                            status="sending",
                            lease_owner="dead",
                            lease_until=self.world.now + timedelta(seconds=60),
                        )
                    )
            else:
                dispatcher.run_once(self.world.now)
        finally:
            dispatcher.close()

    @invariant()
    def nothing_is_sent_twice(self) -> None:
        keys = [key for key, _, _ in self.sent]
        assert len(keys) == len(set(keys))
        with self.world.app.engine.connect() as conn:
            rows = conn.execute(
                select(t.outbox.c.enrollment_id, t.outbox.c.step_id, func.count())
                .group_by(t.outbox.c.enrollment_id, t.outbox.c.step_id)
                .having(func.count() > 1)
            ).all()
        assert rows == []

    @invariant()
    def nothing_is_sent_after_an_order_or_an_opt_out(self) -> None:
        for _key, to, at in self.sent:
            for cart, ordered in self.ordered_at.items():
                if to in (self._phone(cart), f"{cart}@example.com"):
                    assert at < ordered  # type: ignore[operator]
            stopped = self.opted_out_at.get(to)
            if stopped is not None:
                assert at < stopped  # type: ignore[operator]

    @invariant()
    def every_enrollment_waits_or_ended_with_a_reason(self) -> None:
        with self.world.app.engine.connect() as conn:
            for row in conn.execute(select(t.enrollments)).mappings():
                if row["state"] == "active":
                    assert row["wake_at"] is not None
                else:
                    assert row["wake_at"] is None
                if row["state"] == "exited":
                    assert row["exit_reason"] in ("order_placed", "cart_emptied", "opted_out")


TestRecovery = Recovery.TestCase
TestRecovery.settings = settings(max_examples=100, stateful_step_count=20, deadline=None)


def _replay(steps: list[tuple[str, tuple[object, ...]]]) -> Recovery:
    machine = Recovery()
    machine.start()
    try:
        for name, args in steps:
            getattr(machine, name)(*args)
            machine.nothing_is_sent_twice()
            machine.nothing_is_sent_after_an_order_or_an_opt_out()
            machine.every_enrollment_waits_or_ended_with_a_reason()
    finally:
        machine.teardown()
    return machine


def test_an_order_between_the_timer_and_the_dispatcher_stops_the_message() -> None:
    machine = _replay(
        [
            ("checkout", ("c0", False)),
            ("time_passes", (70,)),
            ("timer_fires", ()),
            ("place_order", ("c0",)),
            ("dispatcher_runs", (False,)),
        ]
    )
    assert machine.sent == []


def test_a_stop_between_the_timer_and_the_dispatcher_stops_the_text() -> None:
    machine = _replay(
        [
            ("checkout", ("c0", True)),
            ("time_passes", (70,)),
            ("timer_fires", ()),
            ("reply_stop", ("c0",)),
            ("dispatcher_runs", (False,)),
        ]
    )
    assert machine.sent == []


def test_a_crash_mid_send_then_recovery_sends_each_message_once() -> None:
    machine = _replay(
        [
            ("checkout", ("c0", False)),
            ("time_passes", (20,)),
            ("time_passes", (20,)),
            ("timer_fires", ()),
            ("time_passes", (70,)),
            ("timer_fires", ()),
            ("dispatcher_runs", (True,)),
            ("time_passes", (20,)),
            ("dispatcher_runs", (False,)),
            ("dispatcher_runs", (False,)),
        ]
    )
    # The provider's records show it never took them, so each goes out now, once.
    assert sorted(key for key, _, _ in machine.sent) == ["cb-1", "cb-2"]
