"""Concurrent updates of one cart end on the newest (issue 12, defect 4). SQLite and PostgreSQL.

Each thread applies one version of the cart through the ingest service in its own transaction,
all released at once. Whatever the interleaving, the stored cart must be the newest version,
every event must be answered (accepted or stale, never an error), and the cart, its contact
and its enrollment must exist once.
"""

from __future__ import annotations

import random
import threading
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from cartback.core.events import ShopEvent
from cartback.services.ingest import EventStatus, ingest
from cartback.store import tables as t
from tests.support.events import checkout, emptied
from tests.support.world import World

VERSIONS = 50
ROUNDS = 4
# Every version is stamped in the past, so none is clamped.
BASE_AGO = -timedelta(hours=1)


def _race(world: World, events: list[ShopEvent]) -> list[Any]:
    flow = world.app.registry.current("default")
    gate = threading.Barrier(len(events))
    outcomes: list[Any] = []
    lock = threading.Lock()

    def apply(event: ShopEvent) -> None:
        gate.wait()
        try:
            with world.app.engine.begin() as conn:
                [result] = ingest(conn, world.store, flow, [event], world.now)
            outcome: Any = result
        except Exception as error:
            outcome = error
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=apply, args=(event,)) for event in events]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    return outcomes


def _stored(world: World, token: str) -> tuple[str, datetime]:
    c = t.carts.c
    with world.app.engine.connect() as conn:
        row = conn.execute(select(c.lines, c.occurred_at).where(c.token == token)).one()
        count = conn.execute(select(func.count()).select_from(t.carts).where(c.token == token))
        assert count.scalar_one() == 1
    return str(row.lines[0]["title"]), row.occurred_at


def _versions(
    world: World, token: str, count: int, *, with_contact: bool, first: int = 0
) -> list[ShopEvent]:
    base = world.now + BASE_AGO
    contact = {"phone": None, "email": None}
    if with_contact:
        contact = {"phone": "+4791000000", "email": f"{token}@example.com"}
    return [
        checkout(
            token,
            base + timedelta(seconds=version),
            event_id=f"{token}-v{version}",
            title=f"v{version}",
            **contact,  # type: ignore[arg-type]
        )
        for version in range(first, first + count)
    ]


def _check_round(world: World, token: str, outcomes: list[Any], newest: int, seed: int) -> None:
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    assert errors == [], f"seed {seed}: {errors[:3]}"
    statuses = {o.status for o in outcomes}
    assert statuses <= {EventStatus.ACCEPTED, EventStatus.STALE}, f"seed {seed}"
    expected = (f"v{newest}", world.now + BASE_AGO + timedelta(seconds=newest))
    assert _stored(world, token) == expected, f"seed {seed}"


@pytest.mark.parametrize("with_contact", [False, True], ids=["anonymous", "with-contact"])
def test_fifty_concurrent_updates_of_a_cart_end_on_the_newest_version(
    world: World, with_contact: bool
) -> None:
    """The issue's case: the cart exists; 50 updates race. The stale check and the write are
    one statement, so no update can overwrite a newer one."""
    seed = random.randrange(1 << 30)
    shuffle = random.Random(seed)
    flow = world.app.registry.current("default")
    for round_ in range(ROUNDS):
        token = f"race-{round_}"
        with world.app.engine.begin() as conn:
            ingest(
                conn,
                world.store,
                flow,
                _versions(world, token, 1, with_contact=with_contact),
                world.now,
            )
        events = _versions(world, token, VERSIONS, with_contact=with_contact, first=1)
        shuffle.shuffle(events)
        _check_round(world, token, _race(world, events), VERSIONS, seed)


@pytest.mark.parametrize("with_contact", [False, True], ids=["anonymous", "with-contact"])
def test_fifty_concurrent_first_checkouts_create_one_cart_on_the_newest_version(
    world: World, with_contact: bool
) -> None:
    """No cart yet: every request may try to create it (and its contact). One creates it; the
    others become updates of it, and none fails."""
    seed = random.randrange(1 << 30)
    shuffle = random.Random(seed)
    for round_ in range(ROUNDS):
        token = f"first-{round_}"
        events = _versions(world, token, VERSIONS, with_contact=with_contact)
        shuffle.shuffle(events)
        _check_round(world, token, _race(world, events), VERSIONS - 1, seed)
    with world.app.engine.connect() as conn:
        enrollments = conn.execute(select(func.count()).select_from(t.enrollments)).scalar_one()
        contacts = conn.execute(select(func.count()).select_from(t.contacts)).scalar_one()
    # One shared phone across rounds, one email per round: each round's e-mail finds the
    # contact by phone first, so there is one shopper.
    assert contacts == (1 if with_contact else 0)
    assert enrollments == (ROUNDS if with_contact else 0)


def test_an_emptied_event_racing_updates_is_applied_only_if_newest(world: World) -> None:
    base = world.now - timedelta(hours=1)
    flow = world.app.registry.current("default")
    with world.app.engine.begin() as conn:
        ingest(conn, world.store, flow, [checkout("c1", base)], world.now)
    # Emptied at the middle of the updates: the newer checkouts win, whatever the order.
    events: list[ShopEvent] = [
        checkout("c1", base + timedelta(seconds=v), event_id=f"v{v}", title=f"v{v}")
        for v in range(1, 21)
    ]
    events.append(emptied("c1", base + timedelta(seconds=10, milliseconds=500)))
    random.Random(7).shuffle(events)
    outcomes = _race(world, events)
    assert [o for o in outcomes if isinstance(o, BaseException)] == []
    assert _stored(world, "c1") == ("v20", base + timedelta(seconds=20))
    with world.app.engine.connect() as conn:
        status = conn.execute(select(t.carts.c.status)).scalar_one()
    assert status == "open"
