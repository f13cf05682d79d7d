"""The consent ledger in the database: append events, fold them, keep the contact's flags in step.

The ledger is the truth; `contacts.sms_marketing`, `email_marketing` and `opted_out_at` are a
cache of its fold, rewritten after every append so that flow conditions read the same answer.
The ledger is read in the order cartback received its entries (`received_at`, then id); the
shop's time (`at`) is evidence only. `opted_out_at` is therefore a receive time, comparable with
the enrollments' and the outbox's own times.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select, update

from cartback.core.consent import ConsentEvent, ConsentSource, fold, history_rows, wording_hash
from cartback.core.model import Channel, ConsentView, Purpose
from cartback.services import outbound
from cartback.store import tables as t


def event_from_row(row: Mapping[Any, Any]) -> ConsentEvent:
    evidence = row["evidence"] or {}
    opt_in_at = evidence.get("double_opt_in_at")
    return ConsentEvent(
        id=row["id"],
        contact_id=row["contact_id"],
        channel=Channel(row["channel"]),
        purpose=Purpose(row["purpose"]),
        granted=bool(row["granted"]),
        source=ConsentSource(row["source"]),
        at=row["at"],
        wording=row["wording"],
        wording_hash=row["wording_hash"],
        ip=row["ip"],
        user_agent=row["user_agent"],
        double_opt_in_message_id=evidence.get("double_opt_in_message_id"),
        double_opt_in_at=datetime.fromisoformat(opt_in_at) if opt_in_at else None,
        basis=evidence.get("basis"),
        received_at=row["received_at"],
        shop_time_clamped="clamped_from" in evidence,
    )


def ledger(conn: Connection, contact_ids: Iterable[int]) -> dict[int, list[ConsentEvent]]:
    ids = list(contact_ids)
    events: dict[int, list[ConsentEvent]] = defaultdict(list)
    if not ids:
        return events
    c = t.consent_events.c
    for row in conn.execute(
        select(t.consent_events).where(c.contact_id.in_(ids)).order_by(c.received_at, c.id)
    ).mappings():
        events[row["contact_id"]].append(event_from_row(row))
    return events


def views(events: Iterable[ConsentEvent]) -> dict[Channel, ConsentView]:
    listed = list(events)
    return {channel: fold(listed, channel) for channel in Channel}


class LazyViews(Mapping[Channel, ConsentView]):
    """A contact's consent per channel, folded when a channel is first asked for: the timer
    mostly decides one channel per contact, and the fold is a real part of a step's cost."""

    def __init__(self, events: Iterable[ConsentEvent]) -> None:
        self._events = list(events)
        self._folded: dict[Channel, ConsentView] = {}

    def __getitem__(self, channel: Channel) -> ConsentView:
        view = self._folded.get(channel)
        if view is None:
            view = self._folded[channel] = fold(self._events, Channel(channel))
        return view

    def __iter__(self) -> Iterator[Channel]:
        return iter(Channel)

    def __len__(self) -> int:
        return len(Channel)


def record_consent(
    conn: Connection,
    *,
    store_id: int,
    contact_id: int,
    channel: Channel,
    purpose: Purpose,
    granted: bool,
    source: ConsentSource | str,
    at: datetime,
    wording: str | None = None,
    ip: str | None = None,
    user_agent: str | None = None,
    double_opt_in: bool = False,
    basis: str | None = None,
    received_at: datetime | None = None,
    clamped_from: datetime | None = None,
    evidence: Mapping[str, str] | None = None,
) -> ConsentView:
    """Append one event to the ledger and refresh the contact's cached consent from the fold.

    `at` is the shop's (or provider's) time for the change; `received_at` (default `at`, for a
    change cartback itself observed) is when cartback recorded it, which orders the ledger.
    `clamped_from` is the shop's original time when ingest found it too far ahead and clamped
    `at` to the receive time: kept as evidence.
    """
    received_at = at if received_at is None else received_at
    conn.execute(
        t.consent_events.insert().values(
            **ledger_values(
                store_id=store_id,
                contact_id=contact_id,
                channel=channel,
                purpose=purpose,
                granted=granted,
                source=source,
                at=at,
                wording=wording,
                ip=ip,
                user_agent=user_agent,
                double_opt_in=double_opt_in,
                basis=basis,
                received_at=received_at,
                clamped_from=clamped_from,
                evidence=evidence,
            )
        )
    )
    current = views(ledger(conn, [contact_id])[contact_id])
    refresh_flags(conn, contact_id, current, received_at)
    if not granted:
        withdraw_queued(conn, contact_id, current, received_at)
        outbound.opted_out(
            conn,
            store_id=store_id,
            contact_id=contact_id,
            channel=str(channel),
            purpose=str(purpose),
            source=str(ConsentSource(source)),
            at=received_at,
        )
    return current[channel]


def ledger_values(
    *,
    store_id: int,
    contact_id: int,
    channel: Channel,
    purpose: Purpose,
    granted: bool,
    source: ConsentSource | str,
    at: datetime,
    received_at: datetime,
    wording: str | None = None,
    ip: str | None = None,
    user_agent: str | None = None,
    double_opt_in: bool = False,
    basis: str | None = None,
    clamped_from: datetime | None = None,
    evidence: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """One ledger row's columns (see `record_consent`)."""
    kept: dict[str, Any] = dict(evidence or {})
    if double_opt_in and granted:
        kept["double_opt_in_at"] = at.isoformat()
    if basis is not None:
        kept["basis"] = basis
    if clamped_from is not None:
        kept["clamped_from"] = clamped_from.isoformat()
    return {
        "store_id": store_id,
        "contact_id": contact_id,
        "channel": str(channel),
        "purpose": str(purpose),
        "granted": granted,
        "source": str(ConsentSource(source)),
        "wording": wording,
        "wording_hash": wording_hash(wording) if wording else None,
        "ip": ip,
        "user_agent": user_agent,
        "evidence": kept or None,
        "at": at,
        "received_at": received_at,
    }


def withdraw_queued(
    conn: Connection, contact_id: int, current: Mapping[Channel, ConsentView], at: datetime
) -> None:
    """Messages queued for a shopper who just opted out are withdrawn in the same transaction.
    A row a dispatcher has already claimed then fails its send fence, so nothing goes out after
    the opt-out was received, however long the claim's batch takes."""
    opted_out = any(view.opted_out_at is not None for view in current.values())
    closed = [
        str(kind)
        for kind, view in current.items()
        # An opt-out on any channel ends the recovery, as the dispatcher's own check says.
        if opted_out or not view.marketing or view.suppressed
    ]
    if not closed:
        return
    o, e = t.outbox.c, t.enrollments.c
    queued = conn.execute(
        select(o.id, o.store_id, o.enrollment_id, o.step_id, e.cart_id)
        .join(t.enrollments, e.id == o.enrollment_id)
        .where(
            o.contact_id == contact_id,
            o.status.in_(("pending", "claimed")),
            o.channel.in_(closed),
        )
    ).all()
    if not queued:
        return
    reason = "cancelled: the shopper opted out"
    conn.execute(
        update(t.outbox)
        .where(o.id.in_([row.id for row in queued]), o.status.in_(("pending", "claimed")))
        .values(status="cancelled", error=reason, updated_at=at)
    )
    conn.execute(
        t.decisions.insert(),
        [
            {
                "store_id": row.store_id,
                "enrollment_id": row.enrollment_id,
                "cart_id": row.cart_id,
                "step_id": row.step_id,
                "outcome": "skip",
                "rule": "dispatch.cancelled",
                "reason": reason,
                "at": at,
            }
            for row in queued
        ],
    )


def refresh_flags(
    conn: Connection, contact_id: int, current: Mapping[Channel, ConsentView], at: datetime
) -> None:
    conn.execute(
        update(t.contacts)
        .where(t.contacts.c.id == contact_id)
        .values(**flag_values(current), updated_at=at)
    )


def flag_values(current: Mapping[Channel, ConsentView]) -> dict[str, Any]:
    """The contact's cached consent columns for this fold."""
    sms, email = current[Channel.SMS], current[Channel.EMAIL]
    stamps = [view.opted_out_at for view in (sms, email) if view.opted_out_at is not None]
    return {
        "sms_marketing": sms.marketing and not sms.suppressed,
        "email_marketing": email.marketing and not email.suppressed,
        "opted_out_at": max(stamps) if stamps else None,
    }


def contact_history(conn: Connection, store_id: int, contact_id: int) -> dict[str, Any] | None:
    """A contact's current consent per channel and the full ledger, for people to read."""
    row = conn.execute(
        select(
            t.contacts.c.id, t.contacts.c.phone, t.contacts.c.email, t.contacts.c.erased_at
        ).where(t.contacts.c.id == contact_id, t.contacts.c.store_id == store_id)
    ).first()
    if row is None:
        return None
    events = ledger(conn, [contact_id]).get(contact_id, [])
    current = views(events)
    return {
        "contact_id": row.id,
        "phone": row.phone,
        "email": row.email,
        "erased": row.erased_at is not None,
        "current": {
            str(channel): {
                "marketing": view.marketing and not view.suppressed,
                "cart_reminders": view.cart_reminders and not view.suppressed,
                "transactional": view.transactional,
                "double_opt_in": view.double_opt_in,
                "suppressed": view.suppressed,
                "opted_out_at": view.opted_out_at.isoformat() if view.opted_out_at else None,
            }
            for channel, view in current.items()
        },
        "history": [
            {
                key: (value.isoformat() if isinstance(value, datetime) else value)
                for key, value in entry.items()
            }
            for entry in history_rows(events)
        ],
    }


def find_contact(conn: Connection, phone_or_email: str) -> list[tuple[int, int]]:
    """(store id, contact id) of every contact with this phone or email, across stores."""
    c = t.contacts.c
    rows = conn.execute(
        select(c.store_id, c.id).where((c.phone == phone_or_email) | (c.email == phone_or_email))
    ).all()
    return [(row.store_id, row.id) for row in rows]
