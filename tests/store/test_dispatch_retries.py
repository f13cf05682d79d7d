"""Temporary refusals: retried with jittered backoff, given up on after N tries (the dead
letter), visible in the cart's history, and never in the way of other messages."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from cartback.core.model import Channel
from cartback.ports import OutboundMessage, SendResult, SendStatus
from cartback.services.dispatch import Dispatcher
from cartback.services.retry import GAVE_UP_RULE, RetryPolicy
from cartback.store import tables as t
from tests.store.test_dispatch import Recorder, _due_messages, _rows
from tests.support.world import World


class RefusesOne(Recorder):
    """Takes every message but one, which it always refuses as temporarily unavailable."""

    def __init__(self, poison: str) -> None:
        super().__init__(Channel.SMS)
        self.poison = poison

    def send(self, message: OutboundMessage) -> SendResult:
        super().send(message)
        if message.key == self.poison:
            return SendResult(SendStatus.REJECTED, error="try later", retryable=True)
        return SendResult(SendStatus.ACCEPTED, provider_id=f"p-{message.key}")


def test_a_poison_message_is_given_up_after_n_tries_and_blocks_nothing(world: World) -> None:
    _due_messages(world, carts=4)
    first = int(_rows(world)[0]["id"])  # type: ignore[call-overload]
    provider = RefusesOne(f"cb-{first}")
    policy = RetryPolicy(max_attempts=3)
    dispatcher = Dispatcher(
        world.app.engine, {Channel.SMS: provider}, clock=world.clock.now, retry=policy
    )
    try:
        waits = []
        for attempt in (1, 2, 3):
            dispatcher.run_once(world.now)
            rows = _rows(world)
            # The others went out in the first run, beside the refused one.
            assert [r["status"] for r in rows[1:]] == ["sent"] * 3
            if attempt < 3:
                assert rows[0]["status"] == "pending"
                waits.append(rows[0]["available_at"] - world.now)  # type: ignore[operator]
            world.clock.advance(policy.cap)
        dispatcher.run_once(world.now)
    finally:
        dispatcher.close()
    assert timedelta(seconds=15) <= waits[0] <= timedelta(seconds=30)
    assert timedelta(seconds=30) <= waits[1] <= timedelta(seconds=60)
    rows = _rows(world)
    assert [r["status"] for r in rows] == ["failed", "sent", "sent", "sent"]
    assert rows[0]["attempts"] == 3
    assert rows[0]["error"] == "gave up after 3 attempts: try later"
    assert [m.key for m in provider.sent].count(f"cb-{first}") == 3
    with world.app.engine.connect() as conn:
        told = conn.execute(
            select(t.decisions.c.step_id, t.decisions.c.outcome, t.decisions.c.reason).where(
                t.decisions.c.rule == GAVE_UP_RULE
            )
        ).all()
    assert [tuple(d) for d in told] == [("sms1", "error", "gave up after 3 attempts: try later")]


def test_a_permanent_refusal_is_not_a_dead_letter(world: World) -> None:
    _due_messages(world)
    provider = Recorder(Channel.SMS, SendResult(SendStatus.REJECTED, error="invalid number"))
    dispatcher = Dispatcher(world.app.engine, {Channel.SMS: provider}, clock=world.clock.now)
    try:
        dispatcher.run_once(world.now)
    finally:
        dispatcher.close()
    row = _rows(world)[0]
    assert (row["status"], row["error"]) == ("failed", "invalid number")
    with world.app.engine.connect() as conn:
        rules = conn.execute(select(t.decisions.c.rule)).scalars().all()
    assert GAVE_UP_RULE not in rules
