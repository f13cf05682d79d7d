"""Cooldowns and caps across carts and flows, under concurrency: a shopper never gets two SMS
within the cooldown, whichever worker handles which cart."""

from __future__ import annotations

import threading
from collections import defaultdict
from datetime import timedelta

from sqlalchemy import func, select, update

from cartback.services.ingest import ingest
from cartback.services.tick import tick
from cartback.store import tables as t
from cartback.store.db import make_engine
from tests.support.events import checkout
from tests.support.world import World


def _carts(world: World, shoppers: int, carts_each: int) -> None:
    flow = world.app.registry.current("default")
    events = [
        checkout(f"s{s}-c{c}", world.now, phone=f"+47400{s:05d}", email=f"s{s}@example.com")
        for s in range(shoppers)
        for c in range(carts_each)
    ]
    with world.app.engine.begin() as conn:
        ingest(conn, world.store, flow, events, world.now)
    world.clock.advance(timedelta(minutes=25))


def _sms_by_shopper(world: World) -> dict[str, list[object]]:
    with world.app.engine.connect() as conn:
        rows = conn.execute(
            select(t.outbox.c.to_address, t.outbox.c.created_at).where(t.outbox.c.channel == "sms")
        ).all()
    found: dict[str, list[object]] = defaultdict(list)
    for row in rows:
        found[row.to_address].append(row.created_at)
    return found


def _live_worker(world: World, period: timedelta) -> None:
    """Wake the carts at their own times for `period`, as a worker that is never down would."""
    until = world.now + period
    while True:
        with world.app.engine.connect() as conn:
            wake_at = conn.execute(select(func.min(t.enrollments.c.wake_at))).scalar_one()
        if wake_at is None or wake_at > until:
            break
        world.clock.set(max(wake_at, world.now))
        tick(world.app.engine, world.app.registry, world.now)
    world.clock.set(until)


def test_a_second_cart_waits_out_the_cooldown_in_the_same_batch(world: World) -> None:
    _carts(world, shoppers=1, carts_each=2)
    tick(world.app.engine, world.app.registry, world.now)
    assert [len(sent) for sent in _sms_by_shopper(world).values()] == [1]
    with world.app.engine.connect() as conn:
        deferred = conn.execute(
            select(t.decisions.c.rule, t.decisions.c.reason).where(t.decisions.c.outcome == "defer")
        ).one()
    assert deferred.rule == "store.sms_cooldown"
    # The second cart's SMS is held; the emails are not, and go around it.
    _live_worker(world, timedelta(hours=3))
    [sent] = _sms_by_shopper(world).values()
    assert len(sent) == 2
    first, second = sorted(sent)  # type: ignore[type-var]
    assert second - first == timedelta(hours=2)  # type: ignore[operator]


def test_the_store_policy_sets_the_cooldown(world: World) -> None:
    with world.app.engine.begin() as conn:
        conn.execute(update(t.stores).values(policy={"sms_cooldown": "5h"}))
    _carts(world, shoppers=1, carts_each=2)
    tick(world.app.engine, world.app.registry, world.now)
    _live_worker(world, timedelta(hours=3))
    assert [len(sent) for sent in _sms_by_shopper(world).values()] == [1]
    _live_worker(world, timedelta(hours=2))
    [sent] = _sms_by_shopper(world).values()
    assert len(sent) == 2
    first, second = sorted(sent)  # type: ignore[type-var]
    assert second - first == timedelta(hours=5)  # type: ignore[operator]


def test_concurrent_workers_cannot_both_pass_the_cooldown(world: World) -> None:
    _carts(world, shoppers=30, carts_each=3)
    url = world.app.engine.url.render_as_string(hide_password=False)
    engines = [make_engine(url) for _ in range(3)]
    barrier = threading.Barrier(len(engines))
    errors: list[BaseException] = []

    def work(engine: object) -> None:
        barrier.wait()
        try:
            for _ in range(10):
                tick(engine, world.app.registry, world.now, limit=7)  # type: ignore[arg-type]
        except BaseException as error:  # surfaced below, with the thread's own traceback
            errors.append(error)

    threads = [threading.Thread(target=work, args=(engine,)) for engine in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for engine in engines:
        engine.dispose()
    assert errors == []
    sent = _sms_by_shopper(world)
    assert len(sent) == 30
    assert all(len(times) == 1 for times in sent.values()), {k: len(v) for k, v in sent.items()}
