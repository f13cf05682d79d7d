"""Reconciling with Shopify: the abandoned checkouts and orders updated in a recent window,
read through the Admin API and applied through the same path as webhooks, to fill in what a
lost or refused delivery missed.

Every page is fetched before any transaction opens. Then each checkout and order is applied
in its own short transaction by `services.shops.apply_items`, mapped by the webhook adapter
(`shops/shopify.py`) into the same items with the same event ids, under the same receipt
source (`shopify`). So a checkout state a webhook already delivered is a duplicate, an older
one is stale, an order already received is a duplicate, and running it twice changes nothing.
Checkouts are applied before orders, oldest first, so a missed order finds its missed cart.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import Connection, Engine, select
from sqlalchemy.exc import IntegrityError

from cartback.core.events import CheckoutUpdated, OrderPlaced
from cartback.core.model import Store
from cartback.services import admin, store_flows
from cartback.services import shops as shop_service
from cartback.services.flows import FlowRegistry
from cartback.services.ingest import EventStatus
from cartback.shops import shopify, shopify_admin
from cartback.shops.base import ForCart, PayloadError, ShopItem
from cartback.store import tables as t

log = logging.getLogger("cartback.shopify_reconcile")
PLATFORM = shopify.PLATFORM
EARLIEST = datetime.min.replace(tzinfo=UTC)
RACE_ATTEMPTS = 3


@dataclass
class ReconcileReport:
    since: datetime
    checkouts: int = 0
    # Checkouts cartback had no cart for, carts they moved on, and states already held.
    new: int = 0
    updated: int = 0
    unchanged: int = 0
    orders: int = 0
    # New orders that ended a known cart's recovery, new orders of no known cart, and orders
    # already received.
    orders_matched: int = 0
    orders_unmatched: int = 0
    orders_known: int = 0
    rejected: list[str] = field(default_factory=list)

    @property
    def fetched(self) -> int:
        return self.checkouts + self.orders


def reconcile(
    engine: Engine,
    context: Callable[[], shop_service.Context],
    http: httpx.Client,
    since: datetime,
    *,
    api_version: str = shopify_admin.API_VERSION,
) -> ReconcileReport:
    """One reconciliation of one shop. AdminError (before anything is applied) when a page
    cannot be read; `context` is built per applied item, its `now` the apply time."""
    checkouts = list(shopify_admin.abandoned_checkouts(http, since, api_version))
    orders = list(shopify_admin.orders(http, since, api_version))
    report = ReconcileReport(since=since, checkouts=len(checkouts), orders=len(orders))
    for payload in sorted(checkouts, key=_updated_at):
        try:
            items = shopify.checkout_items(payload)
        except PayloadError as error:
            report.rejected.append(_rejection("checkout", payload, error))
            continue
        _apply_checkout(engine, context(), items, report)
    for payload in sorted(orders, key=_updated_at):
        ctx = context()
        try:
            item = shopify.order_item(payload, ctx.now)
        except PayloadError as error:
            report.rejected.append(_rejection("order", payload, error))
            continue
        _apply_order(engine, ctx, item, report)
    return report


def _apply_checkout(
    engine: Engine, ctx: shop_service.Context, items: Sequence[ShopItem], report: ReconcileReport
) -> None:
    token = next(item.cart_token for item in items if isinstance(item, CheckoutUpdated))

    def apply(conn: Connection) -> tuple[bool, shop_service.Outcome]:
        existed = _cart_exists(conn, ctx.store.id, token)
        return existed, shop_service.apply_items(conn, ctx, PLATFORM, items)

    existed, outcome = _retrying(engine, apply)
    status = _status(outcome)
    if status is not EventStatus.ACCEPTED:
        report.unchanged += 1
    elif existed:
        report.updated += 1
    else:
        report.new += 1


def _apply_order(
    engine: Engine, ctx: shop_service.Context, item: ForCart, report: ReconcileReport
) -> None:
    assert isinstance(item.event, OrderPlaced)

    def apply(conn: Connection) -> tuple[bool, shop_service.Outcome]:
        token = shop_service.cart_token_for(conn, ctx.store.id, PLATFORM, item.ref)
        matched = token is not None and _cart_exists(conn, ctx.store.id, token)
        return matched, shop_service.apply_items(conn, ctx, PLATFORM, [item])

    matched, outcome = _retrying(engine, apply)
    if _status(outcome) is not EventStatus.ACCEPTED:
        report.orders_known += 1
    elif matched:
        report.orders_matched += 1
    else:
        report.orders_unmatched += 1


def _retrying(
    engine: Engine, apply: Callable[[Connection], tuple[bool, shop_service.Outcome]]
) -> tuple[bool, shop_service.Outcome]:
    """One short transaction; run again when a webhook for the same cart or shopper raced it
    (a unique key taken meanwhile): the second run sees what the webhook committed."""
    for attempt in range(1, RACE_ATTEMPTS + 1):
        try:
            with engine.begin() as conn:
                return apply(conn)
        except IntegrityError:
            if attempt == RACE_ATTEMPTS:
                raise
    raise AssertionError("unreachable: the last attempt returns or raises")


def _status(outcome: shop_service.Outcome) -> EventStatus:
    """The status of the one event an item applied (aliases add no result)."""
    [result] = outcome.results
    return EventStatus(str(result["status"]))


def _cart_exists(conn: Connection, store_id: int, token: str) -> bool:
    c = t.carts.c
    return (
        conn.execute(select(c.id).where(c.store_id == store_id, c.token == token)).first()
        is not None
    )


def _updated_at(payload: Mapping[str, Any]) -> datetime:
    """For ordering only: a missing or malformed time sorts first, and the mapping rejects it."""
    value = payload.get("updated_at")
    try:
        moment = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        moment = None
    # The offset changes with daylight saving, so times are compared as instants.
    return moment if moment is not None and moment.tzinfo is not None else EARLIEST


def _rejection(kind: str, payload: Mapping[str, Any], error: PayloadError) -> str:
    name = payload.get("id") or payload.get("token") or "?"
    return f"{kind} {str(name)[:40]}: {error.field}: {error.message}"


class NotConnected(LookupError):
    """The store named is not connected to Shopify with an API token."""


@dataclass(frozen=True, slots=True)
class StoreRun:
    slug: str
    report: ReconcileReport | None = None
    # Why this store could not be reconciled (the API's answer, an unreadable token).
    error: str | None = None


ContextFor = Callable[[Store], Callable[[], shop_service.Context]]


def contexts(
    engine: Engine,
    registry: FlowRegistry,
    clock: Callable[[], datetime],
    future_skew: timedelta,
    suppression_key: str | None,
) -> ContextFor:
    """Per store, the ingest context of each applied item: the store's flows read once per
    run, the time read per item."""

    def for_store(store: Store) -> Callable[[], shop_service.Context]:
        lineup = store_flows.lineup_for(engine, registry, store)
        return lambda: shop_service.Context(
            store=store,
            flow=lineup,
            now=clock(),
            future_skew=future_skew,
            suppression_key=suppression_key,
        )

    return for_store


def connected(
    engine: Engine, slug: str | None = None
) -> list[tuple[str, Store, shop_service.ShopConnection]]:
    """The stores connected to Shopify with an API token (or the one named)."""
    with engine.connect() as conn:
        slugs = [
            row["slug"]
            for row in shop_service.connections(conn)
            if row["platform"] == PLATFORM and row["api_token_ref"] and slug in (None, row["slug"])
        ]
        found = []
        for name in slugs:
            store = admin.store_by_slug(conn, name)
            link = shop_service.connection(conn, store.id, PLATFORM) if store else None
            if store is not None and link is not None:
                found.append((name, store, link))
    if slug is not None and not found:
        raise NotConnected(slug)
    return found


def reconcile_stores(
    engine: Engine,
    context_for: ContextFor,
    since: datetime,
    *,
    slug: str | None = None,
    api_base: str | None = None,
    stop: threading.Event | None = None,
) -> list[StoreRun]:
    """Reconcile each store connected to Shopify (or the one named); a store that fails is
    reported and the others still run."""
    runs = []
    for name, store, link in connected(engine, slug):
        if stop is not None and stop.is_set():
            break
        try:
            assert link.api_token_ref is not None
            token = shop_service.resolve(link.api_token_ref)
            with shopify_admin.client(api_base or f"https://{link.shop_domain}", token) as http:
                report = reconcile(engine, context_for(store), http, since)
        except shop_service.SecretError as error:
            runs.append(StoreRun(name, error=f"--api-token: {error}"))
            continue
        except shopify_admin.AdminError as error:
            runs.append(StoreRun(name, error=f"Shopify Admin API: {error}"))
            continue
        except Exception as error:
            # A database outage midway: what was applied stays; the next run fills the rest.
            log.exception("store %s: Shopify reconciliation failed", name)
            runs.append(StoreRun(name, error=f"{type(error).__name__}: {error}"))
            continue
        runs.append(StoreRun(name, report=report))
    return runs
