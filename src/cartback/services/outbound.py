"""Outbound webhooks: signed events a store's own systems (Zapier, Make, a warehouse) receive.

Producers are one call each, made inside the transaction of the change that caused the event:
each writes one `webhook_deliveries` row per subscribed endpoint, keyed so that a producer run
twice (a retried timer batch) writes it once. Nothing is sent there. The worker's webhook thread
(`WebhookSender`) claims due rows, POSTs them with no transaction open, and records the outcome:
delivered, retried with exponential backoff and jitter, or failed after `max_attempts` with the
reason. Delivery is at least once: a worker that dies mid-send sends again after the lease, with
the same `Cartback-Delivery` id, by which a receiver drops repeats.

Signature: `Cartback-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`, with the
Unix time in `Cartback-Timestamp` (docs/api.md shows how to verify).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import Connection, Engine, and_, delete, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from cartback import metrics
from cartback.core.consent import OPT_OUT_SOURCES
from cartback.services.providers import ProviderSettingsError, check_secret_ref, resolve_secret
from cartback.services.retry import RetryPolicy, gave_up_reason
from cartback.store import tables as t
from cartback.store.db import is_sqlite

log = logging.getLogger("cartback.webhooks")

CART_ABANDONED = "cart.abandoned"
CART_RECOVERED = "cart.recovered"
MESSAGE_SENT = "message.sent"
CONTACT_OPTED_OUT = "contact.opted_out"
EVENTS = (CART_ABANDONED, CART_RECOVERED, MESSAGE_SENT, CONTACT_OPTED_OUT)
SIGNATURE_HEADER = "Cartback-Signature"
TIMESTAMP_HEADER = "Cartback-Timestamp"
# Sent messages: what counts as "the cart had a message" for cart.recovered.
SENT_STATUSES = ("sent", "delivered")
DEFAULT_RETRY = RetryPolicy(
    max_attempts=8, base=timedelta(seconds=30), cap=timedelta(hours=6), jitter=0.5
)


class WebhookSettingsError(ValueError):
    """An endpoint that cannot be stored; the message starts with the option it names."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    id: int
    store_id: int
    store_slug: str
    url: str
    events: tuple[str, ...]
    secret_ref: str


# --- endpoints ---------------------------------------------------------------------------------


def add_endpoint(
    conn: Connection,
    store_id: int,
    url: str,
    events: Sequence[str],
    secret_ref: str,
    now: datetime,
) -> int:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise WebhookSettingsError(f"URL: must be an http(s) URL, got {url!r}")
    unknown = sorted(set(events) - set(EVENTS))
    if unknown or not events:
        raise WebhookSettingsError(
            f"--events: unknown {', '.join(unknown) or 'nothing given'}; one or more of "
            f"{', '.join(EVENTS)}"
        )
    try:
        check_secret_ref("webhook", secret_ref)
    except ProviderSettingsError:
        raise WebhookSettingsError(
            "--secret: give env:NAME or file:/path, not the secret itself"
        ) from None
    return int(
        conn.execute(
            t.webhook_endpoints.insert()
            .values(
                store_id=store_id,
                url=url,
                events=sorted(set(events), key=EVENTS.index),
                secret_ref=secret_ref,
                created_at=now,
            )
            .returning(t.webhook_endpoints.c.id)
        ).scalar_one()
    )


def remove_endpoint(conn: Connection, endpoint_id: int) -> bool:
    removed = conn.execute(
        delete(t.webhook_endpoints).where(t.webhook_endpoints.c.id == endpoint_id)
    )
    return bool(removed.rowcount)


def endpoints(conn: Connection, store_ids: Iterable[int] | None = None) -> list[Endpoint]:
    w, s = t.webhook_endpoints.c, t.stores.c
    query = (
        select(w.id, w.store_id, s.slug, w.url, w.events, w.secret_ref)
        .select_from(t.webhook_endpoints.join(t.stores, s.id == w.store_id))
        .order_by(w.id)
    )
    if store_ids is not None:
        query = query.where(w.store_id.in_(list(store_ids)))
    return [
        Endpoint(row.id, row.store_id, row.slug, row.url, tuple(row.events), row.secret_ref)
        for row in conn.execute(query)
    ]


# --- producers: one call each, in the caller's transaction --------------------------------------


def carts_abandoned(conn: Connection, due: Sequence[Mapping[Any, Any]], now: datetime) -> None:
    """Enrollments the timer claimed: those at their first step are carts just abandoned (the
    first step's delay passed without an order). Called again for the same enrollment (a
    deferral, a retry), it writes nothing new."""
    first = [row for row in due if row["step_index"] == 0]
    if not first or not _subscribed(conn, {row["store_id"] for row in first}):
        return
    c = t.carts.c
    carts = {
        row.id: row
        for row in conn.execute(
            select(c.id, c.token, c.value, c.currency).where(
                c.id.in_([row["cart_id"] for row in first])
            )
        )
    }
    for row in first:
        cart = carts.get(row["cart_id"])
        if cart is None:
            continue
        _enqueue(
            conn,
            row["store_id"],
            CART_ABANDONED,
            f"enrollment:{row['id']}",
            {
                "cart_token": cart.token,
                "value": _money(cart.value),
                "currency": cart.currency,
                "flow": row["flow_name"],
                "abandoned_at": row["abandoned_at"].isoformat(),
                "holdout": bool(row["holdout"]),
                "variant": row["variant"],
            },
            now,
        )


def cart_recovered(
    conn: Connection,
    store_id: int,
    cart_id: int | None,
    order_ref: str,
    value: Decimal,
    currency: str,
    now: datetime,
) -> None:
    """An order that ended an enrollment of its cart after a message of it was sent."""
    if cart_id is None or not _subscribed(conn, {store_id}):
        return
    e, o = t.enrollments.c, t.outbox.c
    touched = conn.execute(
        select(e.flow_name, t.carts.c.token)
        .select_from(t.enrollments.join(t.carts, t.carts.c.id == e.cart_id))
        .where(
            e.cart_id == cart_id,
            e.exit_reason == "order_placed",
            select(o.id).where(o.enrollment_id == e.id, o.status.in_(SENT_STATUSES)).exists(),
        )
        .limit(1)
    ).first()
    if touched is None:
        return
    _enqueue(
        conn,
        store_id,
        CART_RECOVERED,
        f"order:{order_ref}",
        {
            "cart_token": touched.token,
            "flow": touched.flow_name,
            "order_id": order_ref,
            "value": _money(value),
            "currency": currency,
        },
        now,
    )


def messages_sent(conn: Connection, outbox_ids: Sequence[int], now: datetime) -> None:
    """Messages the dispatcher has just recorded `sent` (only rows that really are)."""
    if not outbox_ids or not _any_endpoint(conn):
        return
    o, c = t.outbox.c, t.carts.c
    rows = conn.execute(
        select(o.id, o.store_id, o.step_id, o.channel, o.provider, o.segments, o.sent_at, c.token)
        .select_from(
            t.outbox.outerjoin(t.enrollments, t.enrollments.c.id == o.enrollment_id).outerjoin(
                t.carts, c.id == t.enrollments.c.cart_id
            )
        )
        .where(o.id.in_(list(outbox_ids)), o.status == "sent")
    ).all()
    if not rows or not _subscribed(conn, {row.store_id for row in rows}):
        return
    for row in rows:
        _enqueue(
            conn,
            row.store_id,
            MESSAGE_SENT,
            f"message:{row.id}",
            {
                "message_id": row.id,
                "cart_token": row.token,
                "step": row.step_id,
                "channel": row.channel,
                "provider": row.provider,
                "segments": row.segments,
                "sent_at": row.sent_at.isoformat() if row.sent_at else None,
            },
            now,
        )


def opted_out(
    conn: Connection,
    *,
    store_id: int,
    contact_id: int,
    channel: str,
    purpose: str,
    source: str,
    at: datetime,
) -> None:
    """The consent ledger recorded a withdrawal. One the shopper made (a STOP reply, an
    unsubscribe link, their carrier for them: `OPT_OUT_SOURCES`) is an opt-out: counted, and
    told to subscribed endpoints. The payload names the shopper's phone or email: the endpoint
    is the store's own system, which must suppress them too."""
    if source not in OPT_OUT_SOURCES:
        return
    metrics.OPT_OUTS.labels(channel, source).inc()
    if not _subscribed(conn, {store_id}):
        return
    c = t.contacts.c
    contact = conn.execute(select(c.phone, c.email).where(c.id == contact_id)).first()
    _enqueue(
        conn,
        store_id,
        CONTACT_OPTED_OUT,
        f"consent:{contact_id}:{channel}:{purpose}:{at.isoformat()}",
        {
            "contact_id": contact_id,
            "phone": contact.phone if contact is not None and channel == "sms" else None,
            "email": contact.email if contact is not None and channel == "email" else None,
            "channel": channel,
            "purpose": purpose,
            "source": source,
            "at": at.isoformat(),
        },
        at,
    )


def _money(value: Decimal | None) -> str | None:
    return None if value is None else f"{Decimal(value):.2f}"


def _any_endpoint(conn: Connection) -> bool:
    return conn.execute(select(t.webhook_endpoints.c.id).limit(1)).first() is not None


def prune(conn: Connection, before: datetime) -> int:
    """Delivered and given-up deliveries older than `before` go; waiting ones stay."""
    d = t.webhook_deliveries.c
    done = conn.execute(
        delete(t.webhook_deliveries).where(
            d.status.in_(("delivered", "failed")), d.updated_at < before
        )
    )
    return int(done.rowcount or 0)


def _subscribed(conn: Connection, store_ids: set[int]) -> bool:
    # Most stores have no endpoint: one indexed read, before any payload is built.
    w = t.webhook_endpoints.c
    return (
        conn.execute(select(w.id).where(w.store_id.in_(list(store_ids))).limit(1)).first()
        is not None
    )


def _enqueue(
    conn: Connection,
    store_id: int,
    event: str,
    key: str,
    data: Mapping[str, Any],
    now: datetime,
) -> None:
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    for endpoint in endpoints(conn, [store_id]):
        if event not in endpoint.events:
            continue
        event_id = f"evt_{uuid.uuid4().hex}"
        payload = {
            "id": event_id,
            "type": event,
            "created_at": now.isoformat(),
            "store": endpoint.store_slug,
            "data": dict(data),
        }
        conn.execute(
            dialect.insert(t.webhook_deliveries)
            .values(
                endpoint_id=endpoint.id,
                event_id=event_id,
                event_key=f"{event}:{key}"[:200],
                event_type=event,
                payload=json.dumps(payload, separators=(",", ":"), sort_keys=True),
                status="pending",
                attempts=0,
                available_at=now,
                created_at=now,
                updated_at=now,
            )
            .on_conflict_do_nothing()
        )


# --- signing --------------------------------------------------------------------------------


def signature(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"v1={mac.hexdigest()}"


def verify(secret: str, timestamp: str, body: bytes, header: str) -> bool:
    """What a receiver does (docs/api.md); used by the tests."""
    try:
        expected = signature(secret, int(timestamp), body)
    except ValueError:
        return False
    return hmac.compare_digest(expected, header)


# --- the sender -------------------------------------------------------------------------------


@dataclass
class _Claimed:
    id: int
    event_id: str
    event_type: str
    url: str
    secret_ref: str
    payload: str
    attempts: int


@dataclass
class WebhookSender:
    """Sends due deliveries: claim in one short transaction, POST with none open, record."""

    engine: Engine
    clock: Callable[[], datetime]
    timeout: float = 5.0
    retry: RetryPolicy = DEFAULT_RETRY
    concurrency: int = 4
    lease: timedelta = timedelta(seconds=60)
    environ: Mapping[str, str] | None = None
    client: httpx.Client | None = None

    def __post_init__(self) -> None:
        self._client = self.client or httpx.Client(timeout=self.timeout, follow_redirects=False)
        self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="webhook")

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        if self.client is None:
            self._client.close()

    def run_once(self, limit: int = 100) -> int:
        claimed = self._claim(self.clock(), limit)
        if not claimed:
            return 0
        outcomes = list(self._pool.map(self._send, claimed))
        self._record(claimed, outcomes)
        return len(claimed)

    def _claim(self, now: datetime, limit: int) -> list[_Claimed]:
        d, w = t.webhook_deliveries.c, t.webhook_endpoints.c
        due = or_(
            and_(d.status == "pending", d.available_at <= now),
            # A sender that died mid-send: sent again (at least once; same delivery id).
            and_(d.status == "sending", d.lease_until < now),
        )
        query = select(d.id).where(due).order_by(d.available_at).limit(limit)
        with self.engine.begin() as conn:
            if not is_sqlite(conn.engine):
                query = query.with_for_update(skip_locked=True)
            ids = list(conn.execute(query).scalars())
            if not ids:
                return []
            conn.execute(
                update(t.webhook_deliveries)
                .where(d.id.in_(ids))
                .values(
                    status="sending",
                    attempts=d.attempts + 1,
                    lease_until=now + self.lease,
                    updated_at=now,
                )
            )
            rows = conn.execute(
                select(d.id, d.event_id, d.event_type, w.url, w.secret_ref, d.payload, d.attempts)
                .select_from(t.webhook_deliveries.join(t.webhook_endpoints, w.id == d.endpoint_id))
                .where(d.id.in_(ids))
            ).all()
        return [_Claimed(*row) for row in rows]

    def _send(self, item: _Claimed) -> str | None:
        """None when the endpoint answered 2xx; otherwise why not."""
        environ = os.environ if self.environ is None else self.environ
        try:
            secret = resolve_secret("webhook", item.secret_ref, environ)
        except ProviderSettingsError as error:
            return str(error)
        body = item.payload.encode()
        timestamp = int(self.clock().timestamp())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "cartback-webhooks",
            "Cartback-Event": item.event_type,
            "Cartback-Delivery": item.event_id,
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: signature(secret, timestamp, body),
        }
        try:
            answer = self._client.post(item.url, content=body, headers=headers)
        except httpx.HTTPError as error:
            return f"{type(error).__name__}"
        if 200 <= answer.status_code < 300:
            return None
        return f"HTTP {answer.status_code}"

    def _record(self, claimed: list[_Claimed], outcomes: list[str | None]) -> None:
        now = self.clock()
        d = t.webhook_deliveries.c
        with self.engine.begin() as conn:
            for item, error in zip(claimed, outcomes, strict=True):
                values: dict[str, Any] = {"lease_until": None, "updated_at": now, "error": error}
                if error is None:
                    values.update(status="delivered", delivered_at=now)
                    outcome = "delivered"
                elif self.retry.gives_up(item.attempts):
                    values.update(status="failed", error=gave_up_reason(item.attempts, error))
                    outcome = "failed"
                else:
                    wait = self.retry.backoff(item.id, item.attempts)
                    values.update(status="pending", available_at=now + wait)
                    outcome = "retried"
                conn.execute(
                    update(t.webhook_deliveries)
                    .where(d.id == item.id, d.status == "sending")
                    .values(**values)
                )
                metrics.WEBHOOKS.labels(item.event_type, outcome).inc()
                if outcome == "failed":
                    log.warning("webhook delivery %d given up: %s", item.id, values["error"])
