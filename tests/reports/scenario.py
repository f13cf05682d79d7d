"""A seeded store with known numbers: 1,000 carts, a 10 % holdout, variants A and B.

Carts i = 0..999, one shopper each (a Norwegian phone). i % 10 == 0: holdout (100 carts, no
messages); i % 10 in 1..5: variant A (500); 6..9: variant B (400). Every treated cart got sms1
(an hour after abandonment; B's are two segments) and email1 (a day after). Of A's, carts
5, 15, ..., 95 failed. Human SMS clicks: carts i % 10 == 1 (A, 100) and == 6 (B, 100); a bot
click on every i % 10 == 2 counts for nothing.

Orders: A carts i % 10 == 1 below 600 (60 × 100.00 USD, after the click); cart 1's order comes
after an email open too (credited to the SMS click); every clicked B cart (100 × 50.00 EUR);
cart 4 orders 70.00 USD three days on (no touch in any window); shopper 3 orders 80.00 USD
without a cart, five hours after sms1 was delivered (matched by contact); held-out carts
0, 10, ..., 90 (10 × 100.00 USD). Opt-outs: shoppers 7, 17, 27, 37, 47 reply STOP to sms1;
shopper 8 unsubscribes from email1.

The daily report summary is built at the end, as the worker would once the days had ended, so
reports of the scenario read its day from the summary (`seed(..., summarise=False)`: live).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, select

from cartback.services import report_summary
from cartback.services.attribution import attribute_order, store_settings
from cartback.store import tables as t

MEASUREMENT: dict[str, Any] = {
    "rates": {"EUR": "1.10"},
    "prices": {"sms": {"NO": "0.50", "*": "0.60"}, "email": "0.01"},
}


def variant_of(i: int) -> str | None:
    if i % 10 == 0:
        return None
    return "A" if i % 10 <= 5 else "B"


def seed(
    conn: Connection,
    store_id: int,
    base: datetime,
    flow_name: str = "recover",
    *,
    summarise: bool = True,
) -> None:
    conn.execute(t.stores.update().where(t.stores.c.id == store_id).values(measurement=MEASUREMENT))
    common = {"store_id": store_id, "created_at": base, "updated_at": base}
    contacts, carts, enrollments, outbox, links, clicks = [], [], [], [], [], []
    for i in range(1000):
        n = i + 1
        contacts.append(
            {
                **common,
                "id": n,
                "phone": f"+4790{i:06d}",
                "email": f"s{i}@example.com",
                "phone_country": "NO",
                "sms_marketing": True,
                "email_marketing": True,
                "orders_count": 0,
                "tags": [],
            }
        )
        carts.append(
            {
                **common,
                "id": n,
                "token": f"c{i:04d}",
                "contact_id": n,
                "lines": [],
                "value": Decimal("100.00"),
                "currency": "USD",
                "status": "open",
                "tags": [],
                "occurred_at": base,
            }
        )
        enrollments.append(
            {
                **common,
                "id": n,
                "cart_id": n,
                "flow_name": flow_name,
                "flow_version": "1",
                "step_index": 2,
                "state": "completed",
                "abandoned_at": base,
                "variant": variant_of(i),
                "holdout": i % 10 == 0,
            }
        )
        if i % 10 == 0:
            continue
        failed = i % 10 == 5 and i < 100
        sms_sent = base + timedelta(hours=1)
        outbox.append(
            {
                **common,
                "id": 2 * n - 1,
                "enrollment_id": n,
                "contact_id": n,
                "step_id": "sms1",
                "channel": "sms",
                "to_address": "x",
                "body": "x",
                "segments": 2 if variant_of(i) == "B" else 1,
                "status": "failed" if failed else "delivered",
                "attempts": 1,
                "available_at": sms_sent,
                "sent_at": sms_sent,
                "delivered_at": None if failed else sms_sent + timedelta(minutes=1),
                "failed_at": sms_sent if failed else None,
                "clicked_at": (sms_sent + timedelta(minutes=30) if i % 10 in (1, 6) else None),
            }
        )
        email_sent = base + timedelta(days=1)
        outbox.append(
            {
                **common,
                "id": 2 * n,
                "enrollment_id": n,
                "contact_id": n,
                "step_id": "email1",
                "channel": "email",
                "to_address": "x",
                "body": "x",
                "status": "sent",
                "attempts": 1,
                "available_at": email_sent,
                "sent_at": email_sent,
                "opened_at": email_sent + timedelta(minutes=30) if i == 1 else None,
            }
        )
        link = {**common, "enrollment_id": n, "cart_id": n, "contact_id": n}
        del link["updated_at"]
        if i % 10 in (1, 2, 6):
            links.append(
                {
                    **link,
                    "id": n,
                    "token": f"k{i:05d}",
                    "step_id": "sms1",
                    "purpose": "click",
                    "channel": "sms",
                    "destination": "https://shop.example/",
                }
            )
            kind = "bot" if i % 10 == 2 else "human"
            clicks.append({"link_id": n, "kind": kind, "at": sms_sent + timedelta(minutes=30)})
        if i == 1:
            links.append(
                {
                    **link,
                    "id": 5000,
                    "token": "kopen1",
                    "step_id": "email1",
                    "purpose": "open",
                    "channel": "email",
                    "destination": None,
                }
            )
            clicks.append(
                {"link_id": 5000, "kind": "human", "at": email_sent + timedelta(minutes=30)}
            )
    for table, rows in (
        (t.contacts, contacts),
        (t.carts, carts),
        (t.enrollments, enrollments),
        (t.outbox, outbox),
        (t.links, links),
        (t.clicks, clicks),
    ):
        keys = {key for row in rows for key in row}
        conn.execute(table.insert(), [{key: row.get(key) for key in keys} for row in rows])

    orders = []
    for i in range(1000):
        cart = {"cart_id": i + 1, "contact_id": i + 1}
        if variant_of(i) == "A" and i % 10 == 1 and i < 600:
            at = base + (timedelta(days=1, hours=1) if i == 1 else timedelta(hours=3))
            orders.append({**cart, "value": "100.00", "currency": "USD", "at": at})
        elif variant_of(i) == "B" and i % 10 == 6:
            orders.append(
                {**cart, "value": "50.00", "currency": "EUR", "at": base + timedelta(hours=4)}
            )
        elif i == 4:
            orders.append(
                {**cart, "value": "70.00", "currency": "USD", "at": base + timedelta(days=3)}
            )
        elif i % 10 == 0 and i < 100:
            orders.append(
                {**cart, "value": "100.00", "currency": "USD", "at": base + timedelta(hours=5)}
            )
    orders.append(
        {
            "cart_id": None,
            "contact_id": 4,
            "value": "80.00",
            "currency": "USD",
            "at": base + timedelta(hours=5),
        }
    )
    settings = store_settings(conn, store_id)
    for number, order in enumerate(orders):
        order_id = conn.execute(
            t.orders.insert()
            .values(
                store_id=store_id,
                order_ref=f"o{number}",
                cart_id=order["cart_id"],
                contact_id=order["contact_id"],
                value=Decimal(order["value"]),
                currency=order["currency"],
                occurred_at=order["at"],
            )
            .returning(t.orders.c.id)
        ).scalar_one()
        attribute_order(conn, order_id, settings, base + timedelta(days=4))

    optouts = [
        (i + 1, "sms", "keyword_reply", base + timedelta(hours=2)) for i in (7, 17, 27, 37, 47)
    ]
    optouts.append((9, "email", "unsubscribe_link", base + timedelta(days=1, hours=2)))
    conn.execute(
        t.consent_events.insert(),
        [
            {
                "store_id": store_id,
                "contact_id": contact,
                "channel": channel,
                "purpose": "marketing",
                "granted": False,
                "source": source,
                "at": at,
                "received_at": at,
            }
            for contact, channel, source, at in optouts
        ],
    )
    if summarise:
        ended = base + timedelta(days=5)
        for day in report_summary.ended_days(conn, store_id, ended, None):
            report_summary.build_day(conn, store_id, day, ended)


def attribution_rows(conn: Connection) -> list[Any]:
    a = t.attributions.c
    return list(conn.execute(select(t.attributions).order_by(a.order_id)).mappings())
