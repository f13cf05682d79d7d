"""The timer's driver-level SQL (store/timer_sql.py) reads and writes exactly what SQLAlchemy Core
reads and writes, on SQLite and PostgreSQL: for random contacts, carts, consent and sends."""

from __future__ import annotations

import random
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select

from cartback.services.facts import abandoned_this_year
from cartback.store import tables as t
from cartback.store.timer_sql import UPDATE_COLUMNS, timer_sql
from tests.store.test_timer_faults import _ingest
from tests.support.world import World

SEEDS = range(3)


def _core(world: World, table: Any, column: Any, ids: list[int]) -> list[dict[str, Any]]:
    with world.app.engine.connect() as conn:
        rows = conn.execute(select(table).where(column.in_(ids)).order_by(table.c.id)).mappings()
        return [dict(row) for row in rows]


def _by_id(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda row: row["id"])


@pytest.mark.parametrize("seed", SEEDS)
def test_reads_equal_core_reads(world: World, seed: int) -> None:
    rng = random.Random(seed)
    tokens = [f"r{seed}-{n}" for n in range(rng.randint(3, 12))]
    _ingest(world, tokens, sms=rng.random() < 0.7)
    sql = timer_sql(world.app.engine.dialect)
    with world.app.engine.begin() as conn:
        carts = [row[0] for row in conn.execute(select(t.carts.c.id))]
        contacts = [row[0] for row in conn.execute(select(t.contacts.c.id))]
        picked_carts = rng.sample(carts, rng.randint(1, len(carts)))
        picked_contacts = rng.sample(contacts, rng.randint(1, len(contacts)))
        # A cart with odd money and lines, and a contact that opted out: values through the
        # columns' processors both ways.
        conn.execute(
            t.carts.update()
            .where(t.carts.c.id == picked_carts[0])
            .values(value=Decimal("1234.5678"), tags=["vip", "æøå"])
        )
        conn.execute(
            t.contacts.update()
            .where(t.contacts.c.id == picked_contacts[0])
            .values(opted_out_at=world.now + timedelta(microseconds=rng.randint(0, 10**6)))
        )
        enrollments = [row[0] for row in conn.execute(select(t.enrollments.c.id))]
    with world.app.engine.connect() as conn:
        fast = {
            "carts": _by_id(sql.carts(conn, picked_carts)),
            "contacts": sql.contacts(conn, picked_contacts),
            "stores": sql.stores(conn, [world.store.id]),
            "consent": sql.consent_events(conn, picked_contacts),
            "claimed": sql.claim(conn, world.now + timedelta(days=30), 1000),
            "abandoned": sql.abandoned_since(
                conn,
                picked_contacts,
                world.now.replace(month=1, day=1, hour=0, minute=0, second=0, microsecond=0),
            ),
        }
        slow_abandoned = abandoned_this_year(conn, picked_contacts, world.now)
    c, e = t.consent_events.c, t.enrollments.c
    with world.app.engine.connect() as conn:
        consent = conn.execute(
            select(t.consent_events)
            .where(c.contact_id.in_(picked_contacts))
            .order_by(c.received_at, c.id)
        ).mappings()
        claimed = conn.execute(
            select(t.enrollments)
            .where(e.wake_at <= world.now + timedelta(days=30))
            .order_by(e.wake_at)
        ).mappings()
        core_consent = [dict(row) for row in consent]
        core_claimed = [dict(row) for row in claimed]
    core = {
        "carts": _core(world, t.carts, t.carts.c.id, picked_carts),
        "contacts": _core(world, t.contacts, t.contacts.c.id, picked_contacts),
        "stores": _core(world, t.stores, t.stores.c.id, [world.store.id]),
        "consent": core_consent,
        "claimed": core_claimed,
        "abandoned": slow_abandoned,
    }
    assert fast == core
    assert {row["id"] for row in fast["claimed"]} == set(enrollments)


@pytest.mark.parametrize("seed", SEEDS)
def test_writes_equal_core_writes(world: World, seed: int) -> None:
    """Rows written through the driver read back, through Core, as the values given."""
    rng = random.Random(seed)
    _ingest(world, [f"w{seed}-{n}" for n in range(4)])
    sql = timer_sql(world.app.engine.dialect)
    enrollments = _core(world, t.enrollments, t.enrollments.c.store_id, [world.store.id])
    with world.app.engine.connect() as conn:
        now = world.now + timedelta(microseconds=rng.randint(0, 10**6))
        decisions = [
            {
                "store_id": row["store_id"],
                "enrollment_id": row["id"],
                "cart_id": row["cart_id"],
                "step_id": rng.choice(["sms1", None]),
                "outcome": "send",
                "rule": rng.choice([None, "quiet_hours"]),
                "reason": "a reason with 'quotes' and æøå",
                "at": now,
            }
            for row in enrollments
        ]
        updates = [
            {
                "b_id": row["id"],
                "step_index": rng.randint(0, 5),
                "state": rng.choice(["active", "completed"]),
                "wake_at": rng.choice([None, now + timedelta(hours=rng.randint(1, 99))]),
                "exit_reason": rng.choice([None, "order_placed"]),
                "holds": rng.choice([None, {"held": {}, "released": ["sms1"]}]),
                "updated_at": now,
            }
            for row in enrollments
        ]
        sql.insert(conn, t.decisions, decisions)
        sql.update_enrollments(conn, updates)
        conn.commit()
    written = _core(world, t.decisions, t.decisions.c.store_id, [world.store.id])
    assert [{k: v for k, v in row.items() if k != "id"} for row in written] == decisions
    after = {
        row["id"]: row
        for row in _core(
            world, t.enrollments, t.enrollments.c.id, [row["id"] for row in enrollments]
        )
    }
    for update in updates:
        assert {name: after[update["b_id"]][name] for name in UPDATE_COLUMNS} == {
            name: update[name] for name in UPDATE_COLUMNS
        }
