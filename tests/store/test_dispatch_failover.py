"""Failover through the real dispatcher: the row records the provider that took the message,
and a send whose outcome is unknown is never handed to the secondary, then or later."""

from __future__ import annotations

from datetime import timedelta

from cartback.channels.failover import CircuitBreaker, FailoverChannel
from cartback.core.model import Channel
from cartback.ports import SendResult, SendStatus
from cartback.services.dispatch import Dispatcher
from tests.store.test_dispatch import Recorder, _due_messages, _rows
from tests.support.world import World


class Named(Recorder):
    def __init__(self, name: str, result: SendResult | None = None) -> None:
        super().__init__(Channel.SMS, result)
        self.name = name  # type: ignore[misc]


def _drain(world: World, channel: FailoverChannel, runs: int = 1) -> None:
    dispatcher = Dispatcher(world.app.engine, {Channel.SMS: channel}, clock=world.clock.now)  # type: ignore[dict-item]
    try:
        for _ in range(runs):
            dispatcher.run_once(world.now)
            world.clock.advance(timedelta(hours=1))
    finally:
        dispatcher.close()


def test_a_primary_that_is_down_sends_through_the_secondary(world: World) -> None:
    _due_messages(world, carts=4)
    down = SendResult(SendStatus.REJECTED, error="connect error", retryable=True)
    primary = Named("alpha", down)
    secondary = Named("beta", SendResult(SendStatus.ACCEPTED, provider_id="beta-1"))
    _drain(world, FailoverChannel(primary, secondary, CircuitBreaker(failures=2)))  # type: ignore[arg-type]
    rows = _rows(world)
    assert [(r["status"], r["provider"], r["provider_id"]) for r in rows] == [
        ("sent", "beta", "beta-1")
    ] * 4
    assert len(secondary.sent) == 4
    assert len(primary.sent) == 2  # the circuit opened after two refusals


def test_an_unknown_outcome_never_reaches_the_secondary(world: World) -> None:
    _due_messages(world, carts=3)
    primary = Named("alpha", SendResult(SendStatus.UNKNOWN, error="read timeout"))
    secondary = Named("beta")
    _drain(world, FailoverChannel(primary, secondary, CircuitBreaker(failures=1)), runs=3)  # type: ignore[arg-type]
    assert secondary.sent == []
    assert len(primary.sent) == 3  # each once, never again
    assert [(r["status"], r["provider"]) for r in _rows(world)] == [("unknown", "alpha")] * 3
