"""Shop connections and webhook deliveries.

A delivery is verified by its adapter, parsed into normalised events, and applied in ONE
transaction with its delivery record: the record's unique key (store, platform, delivery id)
makes a redelivery change nothing, and the events go through `services.ingest` like the event
API's (receipts, stale checks, clamping, the consent ledger). Privacy requests (erasure, data
export) are applied in the same transaction.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from cartback.core.events import (
    ContactErasureRequested,
    DataRequested,
    OrderPlaced,
    ShopEvent,
    StoreErasureRequested,
)
from cartback.core.flows import Flow
from cartback.core.lineup import Lineup
from cartback.core.model import CartStatus, Store
from cartback.services import erasure
from cartback.services.ingest import ERASED, EventResult, ingest
from cartback.shops.base import (
    Adapter,
    CartRef,
    CheckoutAlias,
    DeliveryMeta,
    ForCart,
    ShopItem,
    ShopLink,
)
from cartback.store import tables as t

SECRET_SCHEMES = ("env:", "file:")


class SecretError(ValueError):
    """A secret reference that is malformed, or names nothing readable."""


def check_reference(reference: str, option: str) -> str:
    """`env:NAME` or `file:PATH`: the secret itself is never stored."""
    if not reference.startswith(SECRET_SCHEMES) or len(reference.split(":", 1)[1]) == 0:
        raise SecretError(f"{option}: give env:NAME or file:PATH, not the secret itself")
    return reference


def resolve(reference: str, environ: Mapping[str, str] | None = None) -> bytes:
    environ = os.environ if environ is None else environ
    scheme, name = reference.split(":", 1)
    if scheme == "env":
        value = environ.get(name)
        if not value:
            raise SecretError(f"environment variable {name} is not set")
        return value.encode()
    try:
        data = Path(name).read_bytes().strip()
    except OSError as error:
        raise SecretError(f"cannot read secret file {name}: {error.strerror}") from None
    if not data:
        raise SecretError(f"secret file {name} is empty")
    return data


def mask(reference: str | None) -> str:
    """What `shops list` shows: where the secret comes from, never the secret."""
    if reference is None:
        return "-"
    scheme, name = reference.split(":", 1)
    return f"{scheme}:{name}" if scheme == "env" else f"file:…/{Path(name).name}"


@dataclass(frozen=True, slots=True)
class ShopConnection:
    store_id: int
    platform: str
    shop_domain: str
    secret_ref: str
    previous_secret_ref: str | None
    api_token_ref: str | None


def connect(
    conn: Connection,
    store_id: int,
    platform: str,
    shop_domain: str,
    secret_ref: str,
    previous_secret_ref: str | None,
    api_token_ref: str | None,
    now: datetime,
) -> bool:
    """Create or replace the store's connection to the platform; True when it was new."""
    values = {
        "shop_domain": shop_domain.strip().lower(),
        "secret_ref": secret_ref,
        "previous_secret_ref": previous_secret_ref,
        "api_token_ref": api_token_ref,
        "updated_at": now,
    }
    c = t.shop_connections.c
    changed = conn.execute(
        update(t.shop_connections)
        .where(c.store_id == store_id, c.platform == platform)
        .values(**values)
    ).rowcount
    if changed:
        return False
    conn.execute(
        t.shop_connections.insert().values(
            store_id=store_id, platform=platform, created_at=now, **values
        )
    )
    return True


def connection(conn: Connection, store_id: int, platform: str) -> ShopConnection | None:
    c = t.shop_connections.c
    row = conn.execute(
        select(t.shop_connections).where(c.store_id == store_id, c.platform == platform)
    ).first()
    if row is None:
        return None
    return ShopConnection(
        store_id=row.store_id,
        platform=row.platform,
        shop_domain=row.shop_domain,
        secret_ref=row.secret_ref,
        previous_secret_ref=row.previous_secret_ref,
        api_token_ref=row.api_token_ref,
    )


def connections(conn: Connection) -> list[dict[str, Any]]:
    c = t.shop_connections.c
    rows = conn.execute(
        select(t.stores.c.slug, c.platform, c.shop_domain, c.secret_ref)
        .add_columns(c.previous_secret_ref, c.api_token_ref, c.updated_at)
        .join(t.stores, t.stores.c.id == c.store_id)
        .order_by(t.stores.c.slug, c.platform)
    ).mappings()
    return [dict(row) for row in rows]


def secrets_for(link: ShopConnection, environ: Mapping[str, str] | None = None) -> list[bytes]:
    """The current secret and, during a rotation, the previous one. A previous secret that can
    no longer be read is skipped; the current one must be readable."""
    found = [resolve(link.secret_ref, environ)]
    if link.previous_secret_ref:
        with contextlib.suppress(SecretError):
            found.append(resolve(link.previous_secret_ref, environ))
    return found


@dataclass(frozen=True, slots=True)
class Outcome:
    duplicate: bool
    delivery_pk: int | None
    results: list[dict[str, Any]] = field(default_factory=list)
    # Data requests answered by this delivery, to be written out after the commit.
    exports: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Context:
    store: Store
    flow: Flow | Lineup
    now: datetime
    future_skew: timedelta
    suppression_key: str | None


def record_delivery(
    conn: Connection, ctx: Context, platform: str, meta: DeliveryMeta, raw_body: bytes
) -> int | None:
    """The delivery's row, or None when this delivery id was already received."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    row = {
        "store_id": ctx.store.id,
        "platform": platform,
        "delivery_id": meta.delivery_id,
        "event_id": meta.event_id,
        "topic": meta.topic[:100],
        "payload": raw_body.decode("utf-8", errors="replace"),
        "received_at": ctx.now,
    }
    statement = dialect.insert(t.shop_deliveries).values(**row).on_conflict_do_nothing()
    found = conn.execute(statement.returning(t.shop_deliveries.c.id)).scalar()
    return None if found is None else int(found)


def handle_delivery(
    conn: Connection,
    ctx: Context,
    platform: str,
    meta: DeliveryMeta,
    raw_body: bytes,
    items: Sequence[ShopItem],
) -> Outcome:
    """Record the delivery and apply what it says, in the caller's transaction."""
    delivery_pk = record_delivery(conn, ctx, platform, meta, raw_body)
    if delivery_pk is None:
        return Outcome(duplicate=True, delivery_pk=None)
    outcome = apply_items(conn, ctx, platform, items)
    values: dict[str, Any] = {"results": outcome.results}
    if any(str(result.get("detail") or "").startswith(ERASED) for result in outcome.results):
        # It names a shopper erased on request: the raw body is not kept either.
        values["payload"] = None
    conn.execute(
        update(t.shop_deliveries).where(t.shop_deliveries.c.id == delivery_pk).values(**values)
    )
    return replace(outcome, delivery_pk=delivery_pk)


def apply_items(
    conn: Connection, ctx: Context, platform: str, items: Sequence[ShopItem]
) -> Outcome:
    events: list[ShopEvent] = []
    results: list[dict[str, Any]] = []
    exports: list[tuple[str, dict[str, Any]]] = []
    for item in items:
        if isinstance(item, CheckoutAlias):
            remember(conn, ctx.store.id, platform, item.ref)
        elif isinstance(item, ForCart):
            events.append(_with_cart(conn, ctx.store.id, platform, item))
        elif isinstance(item, ContactErasureRequested):
            count = erasure.erase_shopper(
                conn, ctx.store.id, item.contact, ctx.suppression_key, ctx.now, "redact"
            )
            results.append({"id": item.event_id, "status": "erased", "contacts": count})
        elif isinstance(item, StoreErasureRequested):
            count = erasure.erase_store(conn, ctx.store.id, ctx.suppression_key, ctx.now)
            results.append({"id": item.event_id, "status": "erased", "contacts": count})
        elif isinstance(item, DataRequested):
            export = erasure.export_shopper(conn, ctx.store.id, item.contact)
            export["request_id"] = item.request_id
            name = f"{ctx.store.id}-{item.request_id or item.event_id}".replace("/", "_")
            exports.append((name, export))
            results.append({"id": item.event_id, "status": "exported"})
        else:
            events.append(item)
    if events:
        applied = ingest(
            conn,
            ctx.store,
            ctx.flow,
            events,
            ctx.now,
            source=platform,
            future_skew=ctx.future_skew,
            suppression_key=ctx.suppression_key,
        )
        results.extend(_result(result) for result in applied)
    return Outcome(duplicate=False, delivery_pk=None, results=results, exports=exports)


def _result(result: EventResult) -> dict[str, Any]:
    return {"id": result.id, "status": str(result.status), "detail": result.detail}


def remember(conn: Connection, store_id: int, platform: str, ref: CartRef) -> None:
    if not ref.token or not (ref.checkout_id or ref.cart_token):
        return
    c = t.shop_checkouts.c
    changed = conn.execute(
        update(t.shop_checkouts)
        .where(c.store_id == store_id, c.platform == platform, c.token == ref.token)
        .values(checkout_id=ref.checkout_id, cart_token=ref.cart_token)
    ).rowcount
    if changed:
        return
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    row = {
        "store_id": store_id,
        "platform": platform,
        "token": ref.token,
        "checkout_id": ref.checkout_id,
        "cart_token": ref.cart_token,
    }
    conn.execute(dialect.insert(t.shop_checkouts).values(**row).on_conflict_do_nothing())


def cart_token_for(conn: Connection, store_id: int, platform: str, ref: CartRef) -> str | None:
    """Our cart token for a platform's reference: the checkout token when a cart has it, else
    the token remembered for the checkout id or the cart token, else what the payload gave."""
    if ref.token and _cart_exists(conn, store_id, ref.token):
        return ref.token
    c = t.shop_checkouts.c
    for column, value in ((c.checkout_id, ref.checkout_id), (c.cart_token, ref.cart_token)):
        if value:
            token = conn.execute(
                select(c.token)
                .where(c.store_id == store_id, c.platform == platform, column == value)
                .order_by(c.id.desc())
                .limit(1)
            ).scalar()
            if token is not None:
                return str(token)
    return ref.token or ref.cart_token


def open_cart_of(
    conn: Connection, store_id: int, phone: str | None, email: str | None
) -> str | None:
    """The newest open cart of the shopper with this phone or email: an order that names no
    cart ends the recovery of the one the shopper left."""
    c = t.contacts.c
    matches = [c.phone == phone] if phone else []
    matches += [c.email == email] if email else []
    if not matches:
        return None
    contacts = select(c.id).where(c.store_id == store_id, or_(*matches))
    carts = t.carts.c
    token = conn.execute(
        select(carts.token)
        .where(
            carts.store_id == store_id,
            carts.contact_id.in_(contacts),
            carts.status == str(CartStatus.OPEN),
        )
        .order_by(carts.occurred_at.desc(), carts.id.desc())
        .limit(1)
    ).scalar()
    return None if token is None else str(token)


def _cart_exists(conn: Connection, store_id: int, token: str) -> bool:
    query = select(t.carts.c.id).where(t.carts.c.store_id == store_id, t.carts.c.token == token)
    return conn.execute(query).first() is not None


def _with_cart(conn: Connection, store_id: int, platform: str, item: ForCart) -> ShopEvent:
    event = item.event
    token = cart_token_for(conn, store_id, platform, item.ref)
    if token is None and item.by_contact and isinstance(event, OrderPlaced) and event.contact:
        token = open_cart_of(conn, store_id, event.contact.phone, event.contact.email)
    if isinstance(event, OrderPlaced):
        return replace(event, cart_token=token)
    return replace(event, cart_token=token or "")


def write_exports(directory: Path | None, exports: Sequence[tuple[str, dict[str, Any]]]) -> None:
    if directory is None:
        return
    directory.mkdir(parents=True, exist_ok=True)
    for name, export in exports:
        path = directory / f"data-request-{name}.json"
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(export, indent=2, sort_keys=True), encoding="utf-8")
        temporary.replace(path)


def kept_deliveries(conn: Connection, delivery_id: str) -> list[Any]:
    d = t.shop_deliveries.c
    return list(conn.execute(select(t.shop_deliveries).where(d.delivery_id == delivery_id)).all())


def parse_kept(adapter: Adapter, delivery: Any, link: ShopLink) -> list[ShopItem]:
    """A kept payload through its adapter again; outside any transaction, since an adapter
    may call its platform's API."""
    headers = adapter.replay_headers(delivery.topic, delivery.received_at)
    return adapter.parse(headers, delivery.payload.encode("utf-8"), link)


def replay(
    conn: Connection,
    ctx: Context,
    adapter: Adapter,
    delivery: Any,
    items: Sequence[ShopItem] | None = None,
) -> Outcome:
    """Run a kept payload (parsed by `parse_kept`, or here when the adapter needs no API)
    through ingest again. Ingest's receipts make it idempotent: what was applied the first
    time is a duplicate now."""
    if items is None:
        link = ShopLink("", ctx.store.currency, received_at=delivery.received_at)
        items = parse_kept(adapter, delivery, link)
    outcome = apply_items(conn, ctx, delivery.platform, items)
    conn.execute(
        update(t.shop_deliveries)
        .where(t.shop_deliveries.c.id == delivery.id)
        .values(replayed_at=ctx.now)
    )
    return replace(outcome, delivery_pk=int(delivery.id))


def prune(conn: Connection, now: datetime, keep_days: int) -> int:
    """Blank raw payloads older than the retention; the delivery ids stay, so a late retry of
    an old delivery is still a duplicate."""
    d = t.shop_deliveries.c
    return int(
        conn.execute(
            update(t.shop_deliveries)
            .where(d.received_at < now - timedelta(days=keep_days), d.payload.is_not(None))
            .values(payload=None)
        ).rowcount
    )
