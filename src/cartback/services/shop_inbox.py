"""Shop webhook deliveries through the inbox.

The web server verifies a delivery and parses it once (a payload of the wrong shape is answered
422 there, and nothing is written), then appends it to the inbox as one row: the platform is the
row's source and the platform's delivery id its event id, so a redelivery is a `duplicate` by
the inbox's unique key. The row keeps what the adapter needs to parse it again: a first line of
JSON (delivery id, topic, event id, the headers `parse` reads) and the raw body after it.

The worker applies the row (services/inbox.py) through `apply`: the payload is parsed again and
`services.shops.handle_delivery` records it in `shop_deliveries` (the raw payload kept for
`cartback shops replay` until the retention) and applies its items through ingest, in the apply
transaction. Adapters whose `parse` calls the platform's API (BigCommerce) never come here: an
API call must not run inside that transaction, so they are applied in their request.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Connection

from cartback.core.events import ShopEvent
from cartback.core.lineup import Lineup
from cartback.core.model import Store
from cartback.services import shops
from cartback.services.ingest import EventStatus
from cartback.shops.base import Adapter, DeliveryMeta, ShopItem, ShopLink, header
from cartback.shops.registry import ADAPTERS

log = logging.getLogger("cartback.shops")

# The inbox sources that are shop deliveries: every platform whose parse needs no API call.
SOURCES = frozenset(name for name, adapter in ADAPTERS.items() if not adapter.CALLS_API)
# What a duplicate delivery's row says (the delivery was recorded before it entered the inbox).
ALREADY_RECEIVED = "already received"


@dataclass(frozen=True, slots=True)
class QueuedDelivery:
    """An inbox row of a shop delivery, read back."""

    platform: str
    meta: DeliveryMeta
    headers: dict[str, str]
    body: bytes


def encode(adapter: Adapter, meta: DeliveryMeta, headers: Mapping[str, str], body: bytes) -> str:
    """The inbox row's body: one line of JSON, then the raw body as received (base64 if it is
    not text PostgreSQL can store)."""
    kept = {
        name: value
        for name in adapter.PARSE_HEADERS
        if (value := header(headers, name)) is not None
    }
    head: dict[str, Any] = {
        "delivery_id": meta.delivery_id,
        "topic": meta.topic,
        "event_id": meta.event_id,
        "headers": kept,
    }
    try:
        raw = body.decode("utf-8")
    except UnicodeDecodeError:
        raw = None
    if raw is None or "\x00" in raw:
        head["base64"] = True
        raw = base64.b64encode(body).decode("ascii")
    # json.dumps escapes newlines, so the first line is the head, whatever the body holds.
    return json.dumps(head, separators=(",", ":"), ensure_ascii=False) + "\n" + raw


def read(platform: str, stored: str) -> QueuedDelivery:
    first, _, raw = stored.partition("\n")
    head = json.loads(first)
    body = base64.b64decode(raw) if head.get("base64") else raw.encode("utf-8")
    meta = DeliveryMeta(
        delivery_id=str(head["delivery_id"]), topic=str(head["topic"]), event_id=head["event_id"]
    )
    return QueuedDelivery(platform, meta, dict(head["headers"]), body)


@dataclass(frozen=True, slots=True)
class DeliveryApplied:
    """What applying a queued delivery made of it: the inbox row's status and detail (its
    results as JSON), and its stale events, for their carts' timelines."""

    status: str
    detail: str | None
    stale: list[tuple[ShopEvent, str | None]]


def apply(
    conn: Connection,
    store: Store,
    lineup: Lineup,
    delivery: QueuedDelivery,
    received_at: datetime,
    *,
    future_skew: timedelta,
    suppression_key: str | None,
    export_dir: Path | None,
) -> DeliveryApplied:
    """Parse the delivery again and apply it in the caller's transaction, with its receive
    time as `now`. Raises what parsing raises (the row keeps the error)."""
    adapter = ADAPTERS[delivery.platform]
    link = shops.connection(conn, store.id, delivery.platform)
    if link is None:
        raise LookupError(f"the store has no {delivery.platform} connection any more")
    document = (
        shops.resolve(link.api_token_ref) if adapter.USES_DOCUMENT and link.api_token_ref else None
    )
    items = adapter.parse(
        delivery.headers,
        delivery.body,
        ShopLink(link.shop_domain, store.currency, document, received_at),
    )
    ctx = shops.Context(
        store=store,
        flow=lineup,
        now=received_at,
        future_skew=future_skew,
        suppression_key=suppression_key,
    )
    outcome = shops.handle_delivery(
        conn, ctx, delivery.platform, delivery.meta, delivery.body, items
    )
    if outcome.duplicate:
        return DeliveryApplied(str(EventStatus.DUPLICATE), ALREADY_RECEIVED, [])
    if outcome.exports:
        # Written in the apply transaction: should it roll back, the row is applied again and
        # the same file written again. A failed write never undoes the delivery.
        try:
            shops.write_exports(export_dir, outcome.exports)
        except OSError as error:
            log.error("store %s: cannot write a data-request export: %s", store.id, error.strerror)
    return DeliveryApplied(
        str(EventStatus.ACCEPTED),
        json.dumps(outcome.results, separators=(",", ":"), ensure_ascii=False),
        _stale(items, outcome.results),
    )


def _stale(
    items: list[ShopItem], results: list[dict[str, Any]]
) -> list[tuple[ShopEvent, str | None]]:
    stale = {r["id"]: r.get("detail") for r in results if r.get("status") == EventStatus.STALE}
    if not stale:
        return []
    return [
        (item, stale[item.event_id])
        for item in items
        if isinstance(item, ShopEvent) and item.event_id in stale
    ]
