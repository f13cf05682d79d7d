"""SQLite: the timer computes a batch outside the write lock, between a claim that leases it and
a write fenced by that lease. What other writers do meanwhile wins."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from cartback.services import tick as tick_module
from cartback.services.ingest import ingest
from cartback.store import tables as t
from tests.store.test_timer_faults import _enrollment, _ingest, _messages, _tick
from tests.support.events import order
from tests.support.world import World, make_world

TOKENS = ["a1", "a2", "a3"]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with make_world(f"sqlite:///{tmp_path / 'cartback.db'}") as made:
        yield made


def _meanwhile(monkeypatch: pytest.MonkeyPatch, action: Any) -> None:
    """Run `action` once the batch is computed and before it is written."""
    real = tick_module._plan_batch

    def plan_then_act(*args: Any, **kwargs: Any) -> Any:
        planned = real(*args, **kwargs)
        action()
        return planned

    monkeypatch.setattr(tick_module, "_plan_batch", plan_then_act)


def test_an_order_placed_while_the_batch_computes_wins(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    _ingest(world, TOKENS)
    world.clock.advance(timedelta(minutes=25))

    def order_first_cart() -> None:
        # Another writer gets the lock (it would wait out the busy timeout, and fail, if the
        # timer held it through the computation).
        with world.app.engine.begin() as conn:
            flow = world.app.registry.current("default")
            ingest(conn, world.store, flow, [order(TOKENS[0], world.now)], world.now)

    _meanwhile(monkeypatch, order_first_cart)
    stats = _tick(world)
    assert stats.claimed == 3
    ended = _enrollment(world, TOKENS[0])
    assert (ended["state"], ended["exit_reason"], ended["wake_at"]) == (
        "exited",
        "order_placed",
        None,
    )
    assert sorted(token for token, _, _ in _messages(world)) == TOKENS[1:]
    assert all(_enrollment(world, token)["step_index"] == 1 for token in TOKENS[1:])


def test_a_send_to_the_shopper_meanwhile_puts_the_step_back_undecided(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another worker queued a message to this shopper: the step is decided again, with that
    message counted, not written from a decision that did not see it."""
    _ingest(world, TOKENS)
    world.clock.advance(timedelta(minutes=25))
    due = _enrollment(world, TOKENS[0])

    def another_send() -> None:
        with world.app.engine.begin() as conn:
            contact_id = conn.execute(
                select(t.carts.c.contact_id).where(t.carts.c.id == due["cart_id"])
            ).scalar_one()
            conn.execute(
                t.outbox.insert().values(
                    store_id=world.store.id,
                    contact_id=contact_id,
                    step_id="elsewhere",
                    channel="sms",
                    to_address="+4740000000",
                    body="hello",
                    status="pending",
                    attempts=0,
                    available_at=world.now,
                    created_at=world.now,
                    updated_at=world.now,
                )
            )

    _meanwhile(monkeypatch, another_send)
    _tick(world)
    back = _enrollment(world, TOKENS[0])
    assert (back["step_index"], back["wake_at"]) == (0, due["wake_at"])
    assert sorted(token for token, _, _ in _messages(world) if token) == TOKENS[1:]
    monkeypatch.undo()
    again = _tick(world)
    assert again.claimed == 1
    assert _enrollment(world, TOKENS[0])["wake_at"] != due["wake_at"]


def test_a_leased_batch_is_not_claimed_twice(world: World) -> None:
    """While one worker computes, a second claim finds none of its enrollments due."""
    _ingest(world, TOKENS)
    world.clock.advance(timedelta(minutes=25))
    seen: list[int] = []
    real = tick_module._plan_batch

    def plan_and_tick_again(*args: Any, **kwargs: Any) -> Any:
        planned = real(*args, **kwargs)
        seen.append(_tick(world).claimed)
        return planned

    tick_module._plan_batch = plan_and_tick_again  # type: ignore[assignment]
    try:
        first = _tick(world)
    finally:
        tick_module._plan_batch = real  # type: ignore[assignment]
    assert (first.claimed, first.sent, seen) == (3, 3, [0])
    assert len(_messages(world)) == 3
