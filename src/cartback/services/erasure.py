"""Erasure on request (GDPR art. 17) and the data export (art. 15).

Erasing a contact sets `erased_at` (the engine then never sends to it), blanks its PII in
contacts, carts, the outbox, click records and kept raw webhook payloads, and keeps a keyed hash
(HMAC-SHA256 under `CARTBACK_SUPPRESSION_KEY`) of its phone and email in `suppressions`. Ingest
checks that list before it creates a contact: the same person re-imported later is not stored
again, so no flow can reach them (see `suppressed`).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from cartback.core.events import ContactInfo
from cartback.core.model import EnrollmentState
from cartback.services.consent import contact_history
from cartback.store import tables as t


class SuppressionKeyMissing(RuntimeError):
    def __init__(self) -> None:
        super().__init__(
            "CARTBACK_SUPPRESSION_KEY is not set: erasure keeps keyed hashes of the shopper's "
            "phone and email and needs a key of at least 16 characters"
        )


def normal(kind: str, value: str) -> str:
    value = value.strip()
    return value.lower() if kind == "email" else value.replace(" ", "")


def digest(key: str, kind: str, value: str) -> str:
    message = f"{kind}:{normal(kind, value)}".encode()
    return hmac.new(key.encode(), message, hashlib.sha256).hexdigest()


def _pairs(info: ContactInfo) -> list[tuple[str, str]]:
    return [
        (kind, value) for kind, value in (("phone", info.phone), ("email", info.email)) if value
    ]


def suppressed(conn: Connection, store_id: int, key: str | None, info: ContactInfo) -> bool:
    """Was this phone or email erased on request in this store?"""
    pairs = _pairs(info)
    if key is None or not pairs:
        return False
    s = t.suppressions.c
    wanted = [(s.kind == kind) & (s.digest == digest(key, kind, value)) for kind, value in pairs]
    found = conn.execute(select(s.id).where(s.store_id == store_id, or_(*wanted)).limit(1))
    return found.first() is not None


def suppressed_among(
    conn: Connection, store_id: int, key: str | None, infos: Mapping[int, ContactInfo]
) -> set[int]:
    """`suppressed` for many shoppers in one query: the keys of `infos` erased on request."""
    if key is None:
        return set()
    wanted = {
        number: {(kind, digest(key, kind, value)) for kind, value in _pairs(info)}
        for number, info in infos.items()
    }
    digests = sorted({found for pairs in wanted.values() for _, found in pairs})
    if not digests:
        return set()
    s = t.suppressions.c
    query = select(s.kind, s.digest).where(s.store_id == store_id, s.digest.in_(digests))
    erased = {(kind, found) for kind, found in conn.execute(query)}
    return {number for number, pairs in wanted.items() if pairs & erased}


def suppress(
    conn: Connection, store_id: int, key: str, info: ContactInfo, reason: str, now: datetime
) -> None:
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    for kind, value in _pairs(info):
        row = {
            "store_id": store_id,
            "kind": kind,
            "digest": digest(key, kind, value),
            "reason": reason[:40],
            "created_at": now,
        }
        conn.execute(dialect.insert(t.suppressions).values(**row).on_conflict_do_nothing())


def find_contacts(conn: Connection, store_id: int, info: ContactInfo) -> list[int]:
    c = t.contacts.c
    matches = [c.phone == info.phone] if info.phone else []
    matches += [c.email == info.email] if info.email else []
    if not matches:
        return []
    query = select(c.id).where(c.store_id == store_id, or_(*matches)).order_by(c.id)
    return [int(row) for row in conn.execute(query).scalars()]


def erase_shopper(
    conn: Connection,
    store_id: int,
    info: ContactInfo,
    key: str | None,
    now: datetime,
    reason: str,
) -> int:
    """Erase every contact of this store with the phone or email, and suppress both (also
    when no contact is held yet: a later import is blocked all the same). Returns how many
    contacts were erased."""
    if key is None:
        raise SuppressionKeyMissing()
    contact_ids = find_contacts(conn, store_id, info)
    phones_emails = [info]
    for contact_id in contact_ids:
        row = conn.execute(
            select(t.contacts.c.phone, t.contacts.c.email).where(t.contacts.c.id == contact_id)
        ).one()
        phones_emails.append(ContactInfo(phone=row.phone, email=row.email))
    for each in phones_emails:
        suppress(conn, store_id, key, each, reason, now)
    for contact_id in contact_ids:
        erase_contact(conn, store_id, contact_id, now)
    _blank_payloads(conn, store_id, [v for each in phones_emails for _, v in _pairs(each)], now)
    return len(contact_ids)


def erase_store(conn: Connection, store_id: int, key: str | None, now: datetime) -> int:
    """`shop/redact`: every shopper of the store is erased and suppressed, every kept payload
    blanked."""
    if key is None:
        raise SuppressionKeyMissing()
    c = t.contacts.c
    rows = conn.execute(
        select(c.id, c.phone, c.email).where(c.store_id == store_id, c.erased_at.is_(None))
    ).all()
    for row in rows:
        suppress(conn, store_id, key, ContactInfo(phone=row.phone, email=row.email), "shop", now)
        erase_contact(conn, store_id, int(row.id), now)
    conn.execute(
        update(t.shop_deliveries)
        .where(t.shop_deliveries.c.store_id == store_id)
        .values(payload=None)
    )
    _drop_unapplied(conn, t.inbox.c.store_id == store_id, now)
    conn.execute(
        update(t.carts).where(t.carts.c.store_id == store_id).values(restore_url=None, tags=[])
    )
    return len(rows)


def erase_contact(conn: Connection, store_id: int, contact_id: int, now: datetime) -> None:
    c = t.contacts.c
    carts = [
        int(cart_id)
        for cart_id in conn.execute(
            select(t.carts.c.id).where(t.carts.c.contact_id == contact_id)
        ).scalars()
    ]
    tokens = [
        str(token)
        for token in conn.execute(select(t.carts.c.token).where(t.carts.c.id.in_(carts))).scalars()
    ]
    conn.execute(
        update(t.contacts)
        .where(c.id == contact_id)
        .values(
            phone=None,
            email=None,
            first_name=None,
            last_name=None,
            locale=None,
            zone=None,
            country=None,
            region=None,
            phone_country=None,
            phone_region=None,
            phone_zones=None,
            postal_code=None,
            postal_zones=None,
            tags=[],
            sms_marketing=False,
            email_marketing=False,
            erased_at=now,
            updated_at=now,
        )
    )
    # The ledger stays (it is the record that consent existed) but loses what identified the
    # shopper's device.
    conn.execute(
        update(t.consent_events)
        .where(t.consent_events.c.contact_id == contact_id)
        .values(ip=None, user_agent=None)
    )
    if carts:
        # A restore link can carry the shopper's session key.
        conn.execute(
            update(t.carts).where(t.carts.c.id.in_(carts)).values(restore_url=None, tags=[])
        )
        e = t.enrollments.c
        conn.execute(
            update(t.enrollments)
            .where(
                e.cart_id.in_(carts),
                e.state.in_((str(EnrollmentState.ACTIVE), str(EnrollmentState.PARKED))),
            )
            .values(
                state=str(EnrollmentState.EXITED),
                wake_at=None,
                exit_reason="contact_erased",
                updated_at=now,
            )
        )
    o = t.outbox.c
    conn.execute(
        update(t.outbox)
        .where(o.contact_id == contact_id, o.status.in_(("pending", "claimed")))
        .values(status="cancelled", error="the shopper's data was erased", updated_at=now)
    )
    conn.execute(
        update(t.outbox)
        .where(o.contact_id == contact_id)
        .values(to_address="", subject=None, body="", html=None, headers=None, updated_at=now)
    )
    links = select(t.links.c.id).where(t.links.c.contact_id == contact_id)
    conn.execute(update(t.clicks).where(t.clicks.c.link_id.in_(links)).values(user_agent=None))
    # The shopper's own words: replies keep their classification and action, not the text.
    r = t.replies.c
    conn.execute(
        update(t.replies)
        .where(r.contact_id == contact_id)
        .values(sender="", recipient=None, text="", provider_id=None)
    )
    if carts:
        d = t.decisions.c
        conn.execute(
            update(t.decisions)
            .where(d.cart_id.in_(carts), d.outcome == "reply")
            .values(reason="the shopper replied (text erased)")
        )
    _blank_payloads(conn, store_id, tokens, now)


def _blank_payloads(conn: Connection, store_id: int, needles: Iterable[str], now: datetime) -> None:
    """Kept raw payloads that name the shopper (their phone, email or one of their carts), and
    events accepted for them but not applied yet (or kept after failing)."""
    wanted = [needle for needle in needles if needle]
    if not wanted:
        return
    d = t.shop_deliveries.c
    likes = [d.payload.contains(needle, autoescape=True) for needle in wanted]
    conn.execute(
        update(t.shop_deliveries)
        .where(d.store_id == store_id, d.payload.is_not(None), or_(*likes))
        .values(payload=None)
    )
    i = t.inbox.c
    naming = or_(*[i.body.contains(needle, autoescape=True) for needle in wanted])
    _drop_unapplied(conn, (i.store_id == store_id) & naming, now)


def _drop_unapplied(conn: Connection, which: Any, now: datetime) -> None:
    """An erased shopper's events still in the inbox are never applied: their body goes, and
    they are closed as `erased`, so neither the worker nor a retry brings the details back."""
    i = t.inbox.c
    conn.execute(
        update(t.inbox)
        .where(which, i.applied_at.is_(None), i.body.is_not(None))
        .values(
            body=None,
            applied_at=now,
            status="erased",
            detail="the shopper was erased before this event was applied",
            error=None,
        )
    )


def export_shopper(conn: Connection, store_id: int, info: ContactInfo) -> dict[str, Any]:
    """What is held about the shopper: contact, consent history, carts, messages, clicks and
    orders, as JSON-ready data."""
    contacts = []
    for contact_id in find_contacts(conn, store_id, info):
        contacts.append(_export_contact(conn, store_id, contact_id))
    return {"store_id": store_id, "contacts": contacts}


def _export_contact(conn: Connection, store_id: int, contact_id: int) -> dict[str, Any]:
    contact = conn.execute(select(t.contacts).where(t.contacts.c.id == contact_id)).mappings().one()
    keep = ("id", "phone", "email", "first_name", "last_name", "locale", "zone", "country")
    carts = conn.execute(
        select(
            t.carts.c.token,
            t.carts.c.lines,
            t.carts.c.value,
            t.carts.c.currency,
            t.carts.c.status,
            t.carts.c.created_at,
        ).where(t.carts.c.contact_id == contact_id)
    ).mappings()
    o = t.outbox.c
    messages = conn.execute(
        select(o.id, o.channel, o.step_id, o.to_address, o.subject, o.body, o.status)
        .add_columns(o.created_at, o.sent_at, o.delivered_at, o.opened_at, o.clicked_at)
        .where(o.contact_id == contact_id)
        .order_by(o.id)
    ).mappings()
    clicks = conn.execute(
        select(t.links.c.destination, t.links.c.channel, t.clicks.c.kind, t.clicks.c.at)
        .join(t.links, t.links.c.id == t.clicks.c.link_id)
        .where(t.links.c.contact_id == contact_id)
        .order_by(t.clicks.c.id)
    ).mappings()
    orders = conn.execute(
        select(t.orders.c.order_ref, t.orders.c.value, t.orders.c.currency, t.orders.c.occurred_at)
        .where(t.orders.c.contact_id == contact_id)
        .order_by(t.orders.c.id)
    ).mappings()
    history = contact_history(conn, store_id, contact_id) or {}
    exported: dict[str, Any] = _jsonable(
        {
            "contact": {name: contact[name] for name in keep},
            "consent": history.get("history", []),
            "carts": [dict(row) for row in carts],
            "messages": [dict(row) for row in messages],
            "clicks": [dict(row) for row in clicks],
            "orders": [dict(row) for row in orders],
        }
    )
    return exported


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)
