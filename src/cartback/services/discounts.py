"""Pooled discount codes: loaded from a file, each given to one cart only."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, func, select, update

from cartback.core.model import Cart
from cartback.store import tables as t
from cartback.store.db import is_sqlite


@dataclass(frozen=True, slots=True)
class PoolLoad:
    added: int
    already_there: int


def clean_codes(lines: Iterable[str]) -> list[str]:
    """One code per line; blank lines and `#` comments are ignored, duplicates kept once."""
    seen: dict[str, None] = {}
    for line in lines:
        code = line.split("#", 1)[0].strip()
        if code:
            seen.setdefault(code, None)
    return list(seen)


def load_pool(
    conn: Connection, store_id: int, pool: str, codes: Iterable[str], now: datetime
) -> PoolLoad:
    wanted = clean_codes(codes)
    d = t.discount_codes.c
    existing = set(
        conn.execute(
            select(d.code).where(d.store_id == store_id, d.pool == pool, d.code.in_(wanted))
        ).scalars()
    )
    fresh = [code for code in wanted if code not in existing]
    if fresh:
        conn.execute(
            t.discount_codes.insert(),
            [{"store_id": store_id, "pool": pool, "code": c, "created_at": now} for c in fresh],
        )
    return PoolLoad(added=len(fresh), already_there=len(existing))


def pool_sizes(conn: Connection, store_id: int) -> dict[str, tuple[int, int]]:
    """pool → (unused, used)."""
    d = t.discount_codes.c
    sizes: dict[str, tuple[int, int]] = {}
    for row in conn.execute(
        select(d.pool, func.count(d.id), func.count(d.assigned_at))
        .where(d.store_id == store_id)
        .group_by(d.pool)
    ):
        total, used = int(row[1]), int(row[2])
        sizes[row.pool] = (total - used, used)
    return sizes


def code_for(conn: Connection, store_id: int, pool: str, cart: Cart, now: datetime) -> str | None:
    """The cart's code from the pool: the one it already has, else the next unused one."""
    d = t.discount_codes.c
    mine = conn.execute(
        select(d.code).where(d.store_id == store_id, d.pool == pool, d.cart_id == cart.id)
    ).scalar()
    if mine is not None:
        return str(mine)
    query = (
        select(d.id, d.code)
        .where(d.store_id == store_id, d.pool == pool, d.assigned_at.is_(None))
        .order_by(d.id)
        .limit(1)
    )
    if not is_sqlite(conn.engine):
        # Two workers never hand out the same code: each takes a different unlocked row.
        query = query.with_for_update(skip_locked=True)
    free = conn.execute(query).first()
    if free is None:
        return None
    conn.execute(
        update(t.discount_codes).where(d.id == free.id).values(cart_id=cart.id, assigned_at=now)
    )
    return str(free.code)
