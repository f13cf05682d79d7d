"""Polling Magento 2: fetch the carts and orders changed since the high-water mark, outside any
transaction, then apply them through the same shop path as webhooks.

The high-water mark is what the database already holds: the newest Magento cart's and order's
time for the store. Each poll asks again from that moment on (`updated_at >= mark`), so the
edge is fetched twice and de-duplicated by ingest's receipts rather than risk a cart updated
in the same second being skipped. A quote or order that cannot be mapped is reported and
skipped; it never blocks the others.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import httpx
from sqlalchemy import Connection, Engine, func, select

from cartback.core.events import CheckoutUpdated
from cartback.services import shops as shop_service
from cartback.shops import magento
from cartback.shops.base import ForCart, PayloadError
from cartback.store import tables as t

CART_PREFIX = "mg-"


@dataclass(frozen=True, slots=True)
class Marks:
    carts: datetime | None
    orders: datetime | None


@dataclass
class PollReport:
    since_carts: datetime
    since_orders: datetime
    fetched: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    rejected: list[str] = field(default_factory=list)


def marks(conn: Connection, store_id: int) -> Marks:
    carts = t.carts.c
    orders = t.orders.c
    newest_cart = conn.execute(
        select(func.max(carts.occurred_at)).where(
            carts.store_id == store_id, carts.token.like(f"{CART_PREFIX}%")
        )
    ).scalar()
    newest_order = conn.execute(
        select(func.max(orders.occurred_at)).where(
            orders.store_id == store_id, orders.order_ref.like(f"{CART_PREFIX}%")
        )
    ).scalar()
    return Marks(newest_cart, newest_order)


def poll(
    engine: Engine,
    context: Callable[[], shop_service.Context],
    http: httpx.Client,
    *,
    first_window: timedelta,
) -> PollReport:
    """One poll. `context` is built per applied item (its `now` is the apply time)."""
    ctx = context()
    with engine.connect() as conn:
        found = marks(conn, ctx.store.id)
    start = ctx.now - first_window
    report = PollReport(since_carts=found.carts or start, since_orders=found.orders or start)
    # Every request is made before any transaction opens.
    quotes = list(magento.search(http, "/V1/carts/search", report.since_carts, active_only=True))
    orders = list(magento.search(http, "/V1/orders", report.since_orders))
    report.fetched = len(quotes) + len(orders)
    items: list[CheckoutUpdated | ForCart] = []
    currency = ctx.store.currency
    for kind, rows, convert in (
        ("cart", quotes, magento.quote_event),
        ("order", orders, magento.order_item),
    ):
        for row in rows:
            try:
                items.append(convert(row, currency))
            except PayloadError as error:
                name = row.get("id") or row.get("entity_id") or "?"
                report.rejected.append(f"{kind} {name}: {error.field}: {error.message}")
    for item in items:
        # One short transaction per cart or order; if the database fails midway, the next
        # poll starts again from the mark and what was applied is a duplicate.
        with engine.begin() as conn:
            outcome = shop_service.apply_items(conn, context(), magento.PLATFORM, [item])
        report.statuses.update(str(result["status"]) for result in outcome.results)
    return report


def api_root(shop_domain: str) -> str:
    """The connection's REST root; a bare host means its default store view."""
    return shop_domain if "://" in shop_domain else f"https://{shop_domain}/rest/default"


def poll_connection(
    engine: Engine,
    context: Callable[[], shop_service.Context],
    link: shop_service.ShopConnection,
    *,
    first_window: timedelta,
) -> PollReport:
    """Poll one store's Magento once. SecretError when the token cannot be read, MagentoError
    when the API fails."""
    token = shop_service.resolve(link.api_token_ref or link.secret_ref)
    with magento.client(api_root(link.shop_domain), token) as http:
        return poll(engine, context, http, first_window=first_window)
