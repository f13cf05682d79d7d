"""Credit orders to messages (core.attribution) and keep the credit in `attributions`.

Called by ingest in the order's own transaction, and by `cartback report attribute` for history.
Only the database is touched: no network.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, delete, select

from cartback.core.attribution import (
    AttributionSettings,
    Credit,
    SettingsError,
    Touch,
    attribute,
    settings_from,
)
from cartback.store import tables as t

log = logging.getLogger("cartback.attribution")


def store_settings(conn: Connection, store_id: int) -> AttributionSettings:
    raw = conn.execute(select(t.stores.c.measurement).where(t.stores.c.id == store_id)).scalar()
    try:
        return settings_from(raw)
    except SettingsError as error:
        # Settings are checked when saved; one edited by hand must not stop orders arriving.
        log.warning("store %s: measurement settings ignored: %s", store_id, error)
        return AttributionSettings()


def _touches(conn: Connection, where: Any, order_at: datetime) -> list[Touch]:
    o, e = t.outbox.c, t.enrollments.c
    rows = conn.execute(
        select(o.id, o.enrollment_id, o.step_id, o.channel, o.delivered_at, e.flow_name, e.variant)
        .select_from(t.outbox.join(t.enrollments, e.id == o.enrollment_id))
        .where(where, o.sent_at.is_not(None), o.sent_at <= order_at)
    ).all()
    if not rows:
        return []
    # Every human click and open of these messages up to the order, by (enrollment, step).
    lk, ck = t.links.c, t.clicks.c
    reactions: dict[tuple[int, str, str], list[datetime]] = defaultdict(list)
    enrollment_ids = sorted({row.enrollment_id for row in rows})
    for link in conn.execute(
        select(lk.enrollment_id, lk.step_id, lk.purpose, ck.at)
        .select_from(t.links.join(t.clicks, ck.link_id == lk.id))
        .where(
            lk.enrollment_id.in_(enrollment_ids),
            lk.purpose.in_(("click", "open")),
            ck.kind == "human",
            ck.at <= order_at,
        )
    ):
        reactions[(link.enrollment_id, link.step_id, link.purpose)].append(link.at)
    return [
        Touch(
            message_id=row.id,
            enrollment_id=row.enrollment_id,
            flow=row.flow_name,
            step_id=row.step_id,
            variant=row.variant,
            channel=row.channel,
            delivered_at=row.delivered_at,
            opens=tuple(reactions[(row.enrollment_id, row.step_id, "open")]),
            clicks=tuple(reactions[(row.enrollment_id, row.step_id, "click")]),
        )
        for row in rows
    ]


def credit_for(
    conn: Connection, order: Mapping[Any, Any], settings: AttributionSettings
) -> Credit | None:
    o, e = t.outbox.c, t.enrollments.c
    order_at = order["occurred_at"]
    by_cart: Sequence[Touch] = []
    if order["cart_id"] is not None:
        by_cart = _touches(
            conn, and_(e.cart_id == order["cart_id"], o.store_id == order["store_id"]), order_at
        )
    by_contact: Sequence[Touch] = []
    if order["contact_id"] is not None:
        longest = max(settings.windows.values(), default=None)
        if longest is not None:
            by_contact = _touches(
                conn,
                and_(
                    o.contact_id == order["contact_id"],
                    o.store_id == order["store_id"],
                    o.sent_at >= order_at - longest,
                ),
                order_at,
            )
    return attribute(order_at, by_cart, by_contact, settings)


def attribute_order(
    conn: Connection, order_id: int, settings: AttributionSettings, now: datetime
) -> Credit | None:
    """Credit one order (if any message earned it) and record the credit; an order already
    credited keeps its credit."""
    order = conn.execute(select(t.orders).where(t.orders.c.id == order_id)).mappings().one()
    exists = conn.execute(
        select(t.attributions.c.id).where(t.attributions.c.order_id == order_id)
    ).first()
    if exists is not None:
        return None
    credit = credit_for(conn, order, settings)
    if credit is None:
        return None
    touch = credit.touch
    conn.execute(
        t.attributions.insert().values(
            store_id=order["store_id"],
            order_id=order_id,
            outbox_id=touch.message_id,
            enrollment_id=touch.enrollment_id,
            flow_name=touch.flow,
            step_id=touch.step_id,
            variant=touch.variant,
            channel=touch.channel,
            touch=str(credit.kind),
            matched_by=str(credit.matched_by),
            model=str(settings.model),
            touch_at=credit.at,
            order_at=order["occurred_at"],
            revenue=order["value"],
            currency=order["currency"],
            created_at=now,
        )
    )
    return credit


def recompute(conn: Connection, store_id: int, since: datetime, now: datetime) -> tuple[int, int]:
    """Credit again every order of the store placed since `since`, with today's settings.

    Returns (orders seen, orders credited).
    """
    settings = store_settings(conn, store_id)
    a, od = t.attributions.c, t.orders.c
    order_ids = conn.execute(
        select(od.id).where(od.store_id == store_id, od.occurred_at >= since).order_by(od.id)
    ).scalars()
    ids = list(order_ids)
    conn.execute(delete(t.attributions).where(a.store_id == store_id, a.order_at >= since))
    credited = sum(1 for order_id in ids if attribute_order(conn, order_id, settings, now))
    return len(ids), credited
