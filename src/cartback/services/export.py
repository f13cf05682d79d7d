"""Exports of a store's messages and orders, as CSV or JSON, a row at a time.

Rows are read with a server-side cursor (`stream_results`, `yield_per`) and written as they
come, so an export of millions of rows holds a batch in memory, never the table. Phone numbers
and email addresses are masked (`+47******78`, `a***@shop.example`) unless asked for.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any, TextIO

from sqlalchemy import Connection, Select, and_, select

from cartback.store import tables as t

KINDS = ("messages", "orders")
FORMATS = ("csv", "json")
BATCH = 1000


def mask_address(address: str | None) -> str | None:
    if not address:
        return address
    if "@" in address:
        local, _, domain = address.rpartition("@")
        return f"{local[:1]}***@{domain}"
    keep = 3 if address.startswith("+") else 1
    return address[:keep] + "*" * max(len(address) - keep - 2, 0) + address[-2:]


def _messages(store_id: int, since: datetime) -> Select[Any]:
    o, e, c = t.outbox.c, t.enrollments.c, t.carts.c
    return (
        select(
            o.id.label("message_id"),
            c.token.label("cart_token"),
            e.flow_name.label("flow"),
            e.variant,
            o.step_id.label("step"),
            o.channel,
            o.to_address.label("to"),
            o.status,
            o.provider,
            o.segments,
            o.cost,
            o.error,
            o.created_at,
            o.sent_at,
            o.delivered_at,
            o.failed_at,
            o.clicked_at,
        )
        .select_from(
            t.outbox.outerjoin(t.enrollments, e.id == o.enrollment_id).outerjoin(
                t.carts, c.id == e.cart_id
            )
        )
        .where(o.store_id == store_id, o.created_at >= since)
        .order_by(o.id)
    )


def _orders(store_id: int, since: datetime) -> Select[Any]:
    r, c, k, o, e = t.orders.c, t.carts.c, t.contacts.c, t.outbox.c, t.enrollments.c
    # Whether a recovery message of the cart went out before the order; the credit for it (which
    # message, which channel) is attribution's, in the reports.
    messaged = (
        select(o.id)
        .select_from(t.outbox.join(t.enrollments, e.id == o.enrollment_id))
        .where(
            e.cart_id == r.cart_id,
            o.status.in_(("sent", "delivered")),
            o.sent_at <= r.occurred_at,
        )
        .exists()
    )
    return (
        select(
            r.order_ref.label("order_id"),
            c.token.label("cart_token"),
            r.value,
            r.currency,
            r.occurred_at,
            k.phone,
            k.email,
            and_(r.cart_id.is_not(None), messaged).label("after_message"),
        )
        .select_from(
            t.orders.outerjoin(t.carts, c.id == r.cart_id).outerjoin(
                t.contacts, k.id == r.contact_id
            )
        )
        .where(r.store_id == store_id, r.occurred_at >= since)
        .order_by(r.occurred_at, r.id)
    )


def _query(kind: str, store_id: int, since: datetime) -> Select[Any]:
    return _messages(store_id, since) if kind == "messages" else _orders(store_id, since)


def columns(kind: str) -> list[str]:
    return list(_query(kind, 0, datetime.min).selected_columns.keys())


def rows(
    conn: Connection, kind: str, store_id: int, since: datetime, *, with_addresses: bool = False
) -> Iterator[dict[str, Any]]:
    query = _query(kind, store_id, since)
    result = conn.execution_options(stream_results=True, yield_per=BATCH).execute(query)
    for row in result.mappings():
        yield _plain(row, with_addresses)


_ADDRESSES = ("to", "phone", "email")


def _plain(row: Mapping[Any, Any], with_addresses: bool) -> dict[str, Any]:
    plain: dict[str, Any] = {}
    for name, value in row.items():
        if name in _ADDRESSES and not with_addresses:
            value = mask_address(value)
        if isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, Decimal):
            value = str(value)
        elif name == "after_message":
            value = bool(value)
        plain[name] = value
    return plain


def write(records: Iterator[dict[str, Any]], fields: list[str], fmt: str, out: TextIO) -> int:
    """Write `records` as CSV (a header, then a line each) or a JSON array; the count."""
    count = 0
    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=fields)
        writer.writeheader()
        for record in records:
            writer.writerow(record)
            count += 1
        return count
    out.write("[")
    for record in records:
        out.write(",\n" if count else "\n")
        out.write(json.dumps(record, ensure_ascii=False))
        count += 1
    out.write("\n]\n" if count else "]\n")
    return count
