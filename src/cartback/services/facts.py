"""Facts for conditions that come from a store's own history, loaded in bulk."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from sqlalchemy import Connection, func, select

from cartback.store import tables as t


def abandoned_this_year(
    conn: Connection, contact_ids: Collection[int], now: datetime
) -> dict[int, int]:
    """Per shopper, the carts that entered a recovery flow since 1 January (UTC): one query
    for the whole batch (`contact.abandoned_count`)."""
    if not contact_ids:
        return {}
    e, c = t.enrollments.c, t.carts.c
    year_start = now.replace(month=1, day=1, hour=0, minute=0, second=0, microsecond=0)
    rows = conn.execute(
        select(c.contact_id, func.count(func.distinct(e.cart_id)))
        .join(t.carts, c.id == e.cart_id)
        .where(c.contact_id.in_(list(contact_ids)), e.created_at >= year_start)
        .group_by(c.contact_id)
    ).all()
    return {int(contact_id): int(count) for contact_id, count in rows}
