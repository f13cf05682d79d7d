"""A small store history with known figures, written straight to the tables, for the
dashboard's tests (in-process and in Chromium)."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy.engine import Connection

from cartback.store import tables as t

PASSWORD = "correct horse battery"
USER = "owner@shop.example"
TEST_PHONE = "+4790009999"

# What the overview and flow pages must show for the seeded history.
EXPECTED: dict[str, Any] = {
    "sms": {"sent": 8, "delivered": 6, "failed": 0, "clicked": 3},
    "email": {"sent": 4, "delivered": 4, "failed": 1, "clicked": 1},
    "funnel": [
        ("Carts enrolled", 10),
        ("Messages sent", 12),
        ("Carts with a click", 3),
        ("Orders on carts that got a message", 2),
    ],
    # Cart 1 (120.00) and cart 2 (80.50); cart 3 ordered before its message and cart 9 is
    # held out, so neither counts.
    "revenue": Decimal("200.50"),
    "opt_outs": 1,
    "variants": {"a": 4, "b": 4},
    "holdout": 2,
}


def phone(n: int) -> str:
    return f"+479000{n:04d}"


def email(n: int) -> str:
    return f"shopper{n}@example.com"


def token(n: int) -> str:
    return f"cart-{n:02d}"


def seed(conn: Connection, store_id: int, flow_version: str, now: datetime) -> None:
    start = now - timedelta(days=3)
    for n in range(1, 11):
        contact = _insert(
            conn,
            t.contacts,
            store_id=store_id,
            phone=phone(n),
            email=email(n),
            sms_marketing=True,
            email_marketing=True,
            orders_count=0,
            tags=[],
            created_at=start,
            updated_at=start,
        )
        cart = _insert(
            conn,
            t.carts,
            store_id=store_id,
            token=token(n),
            contact_id=contact,
            lines=[],
            value=Decimal("100"),
            currency="USD",
            status="open",
            tags=[],
            occurred_at=start,
            created_at=start,
            updated_at=start,
        )
        held = n > 8
        enrollment = _insert(
            conn,
            t.enrollments,
            store_id=store_id,
            cart_id=cart,
            flow_name="default",
            flow_version=flow_version,
            step_index=1,
            state="active",
            abandoned_at=start,
            variant=None if held else ("a" if n % 2 else "b"),
            holdout=held,
            created_at=start,
            updated_at=start,
        )
        if held:
            _decide(conn, store_id, enrollment, cart, "sms1", "holdout", None, start)
            if n == 9:
                # A held-out cart's order: natural recovery, never credited to a message.
                _order(conn, store_id, "order-9", cart, contact, "50.00", now - timedelta(hours=3))
            continue
        sms_at = start + timedelta(hours=1)
        _message(
            conn, store_id, enrollment, contact, "sms1", "sms", phone(n), sms_at,
            delivered=n <= 6, clicked=n <= 3,
        )  # fmt: skip
        _decide(conn, store_id, enrollment, cart, "sms1", "send", None, sms_at)
        email_at = start + timedelta(days=1)
        if n <= 4:
            _message(
                conn, store_id, enrollment, contact, "email1", "email", email(n), email_at,
                delivered=True, clicked=n == 1,
            )  # fmt: skip
            _decide(conn, store_id, enrollment, cart, "email1", "send", None, email_at)
        elif n == 5:
            _message(
                conn, store_id, enrollment, contact, "email1", "email", email(n), email_at,
                failed=True,
            )  # fmt: skip
        else:
            reason = "the contact has not granted email marketing"
            _decide(conn, store_id, enrollment, cart, "email1", "skip", "consent", email_at, reason)
        if n == 4:
            # Opted out of SMS two hours after sms1: the opt-out is laid on sms1.
            _insert(
                conn,
                t.consent_events,
                store_id=store_id,
                contact_id=contact,
                channel="sms",
                purpose="marketing",
                granted=False,
                source="keyword_reply",
                at=sms_at + timedelta(hours=2),
                received_at=sms_at + timedelta(hours=2),
            )
        orders = {1: ("120.00", now - timedelta(hours=20)), 2: ("80.50", now - timedelta(hours=5))}
        orders[3] = ("70.00", start - timedelta(hours=1))
        if n in orders:
            value, at = orders[n]
            _order(conn, store_id, f"order-{n}", cart, contact, value, at)


def _order(
    conn: Connection,
    store_id: int,
    ref: str,
    cart: int,
    contact: int,
    value: str,
    at: datetime,
) -> None:
    _insert(
        conn,
        t.orders,
        store_id=store_id,
        order_ref=ref,
        cart_id=cart,
        contact_id=contact,
        value=Decimal(value),
        currency="USD",
        occurred_at=at,
    )


def _message(
    conn: Connection,
    store_id: int,
    enrollment: int,
    contact: int,
    step: str,
    channel: str,
    to: str,
    at: datetime,
    *,
    delivered: bool = False,
    clicked: bool = False,
    failed: bool = False,
) -> None:
    status = "failed" if failed else ("delivered" if delivered else "sent")
    _insert(
        conn,
        t.outbox,
        store_id=store_id,
        enrollment_id=enrollment,
        contact_id=contact,
        step_id=step,
        channel=channel,
        to_address=to,
        body="(seeded)",
        status=status,
        attempts=1,
        available_at=at,
        created_at=at,
        updated_at=at,
        sent_at=None if failed else at,
        failed_at=at if failed else None,
        delivered_at=at + timedelta(minutes=1) if delivered else None,
        clicked_at=at + timedelta(minutes=30) if clicked else None,
    )


def _decide(
    conn: Connection,
    store_id: int,
    enrollment: int,
    cart: int,
    step: str,
    outcome: str,
    rule: str | None,
    at: datetime,
    reason: str = "due",
) -> None:
    _insert(
        conn,
        t.decisions,
        store_id=store_id,
        enrollment_id=enrollment,
        cart_id=cart,
        step_id=step,
        outcome=outcome,
        rule=rule,
        reason=reason,
        at=at,
    )


def _insert(conn: Connection, table: Any, **values: Any) -> int:
    result = conn.execute(table.insert().values(**values))
    return int(result.inserted_primary_key[0])
