"""Inbound replies: record each one, act on STOP / START / HELP, forward the rest.

`on_reply` runs in the caller's transaction, so an opt-out is committed together with the
reply's record, and the confirmation is queued in the same commit as an outbox service message
(`service_key = reply:<reply id>`, no enrollment). A webhook delivered twice finds its reply
already recorded (by the provider's message id) and does nothing more: one confirmation.

- STOP (any reading `core.replies` gives, confident or not; unsure ones are flagged for
  review): an opt-out from the shopper (`keyword_reply`), queued marketing withdrawn, and one
  opt-out confirmation when this reply changed the state (a second STOP gets none).
- START / YES / UNSTOP, alone: a grant from the shopper's own message, and the opt-in
  confirmation. Nobody else can re-subscribe a shopper.
- HELP / INFO: the brand's help text, once per reply.
- Anything else: recorded, shown in the cart's timeline, and forwarded to the store's support
  webhook by `forward_reply`, after the commit (never inside a transaction).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
from sqlalchemy import Connection, Engine, select, update
from sqlalchemy.exc import IntegrityError

from cartback.core.consent import ConsentSource
from cartback.core.events import ContactInfo, InboundReply
from cartback.core.model import Channel, Purpose, Store
from cartback.core.render import help_reply, opt_in_confirmation, opt_out_confirmation
from cartback.core.replies import ReplyClassification, ReplyKind, classify_reply
from cartback.core.sms import count_segments
from cartback.services import admin
from cartback.services.consent import ledger, record_consent, views
from cartback.services.ingest import upsert_contact
from cartback.store import tables as t

log = logging.getLogger("cartback.replies")

TEXT_IN_TIMELINE = 300
# Attempts at one inbound reply when two deliveries of it race on its unique key.
_RACE_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class ReplyOutcome:
    reply_id: int
    classification: ReplyClassification
    action: str
    duplicate: bool = False
    # The outbox id of the answer queued (confirmation, help text), if any.
    answer_id: int | None = None
    # What to POST to the store's support webhook after the commit, if anything.
    forward_url: str | None = None
    forward: dict[str, Any] = field(default_factory=dict)


def dedup_key(reply: InboundReply) -> str:
    if reply.provider_id:
        return reply.provider_id[:128]
    stamp = reply.at.isoformat() if reply.at else ""
    digest = hashlib.sha256(f"{reply.sender}\n{reply.to}\n{stamp}\n{reply.text}".encode())
    return "h:" + digest.hexdigest()


def on_reply(conn: Connection, store: Store, reply: InboundReply, now: datetime) -> ReplyOutcome:
    r = t.replies.c
    key = dedup_key(reply)
    seen = conn.execute(
        select(r.id, r.action).where(
            r.store_id == store.id, r.provider == reply.provider, r.dedup_key == key
        )
    ).first()
    classification = classify_reply(reply.text)
    if seen is not None:
        return ReplyOutcome(seen.id, classification, seen.action, duplicate=True)
    contact = _contact(conn, store.id, reply)
    if contact is None and classification.kind is ReplyKind.STOP and reply.channel is Channel.SMS:
        # An opt-out from a number we never stored still binds every later import.
        contact_id = upsert_contact(conn, store.id, ContactInfo(phone=reply.sender), now)
        contact = _contact_by_id(conn, contact_id) if contact_id is not None else None
    cart_id, enrollment_id, cart_token = _latest_cart(conn, contact.id if contact else None)
    reply_id = int(
        conn.execute(
            t.replies.insert().values(
                store_id=store.id,
                contact_id=contact.id if contact else None,
                cart_id=cart_id,
                enrollment_id=enrollment_id,
                provider=reply.provider,
                channel=str(reply.channel),
                dedup_key=key,
                provider_id=reply.provider_id,
                sender=reply.sender,
                recipient=reply.to,
                text=reply.text,
                kind=str(classification.kind),
                keyword=(classification.keyword or "")[:64] or None,
                needs_review=not classification.confident,
                action="recorded",
                at=reply.at,
                received_at=now,
            )
        ).inserted_primary_key[0]  # type: ignore[index]
    )
    locale = (contact.locale if contact else None) or store.default_locale
    action, answer, step = "recorded", None, None
    forward_url: str | None = None
    if classification.kind is ReplyKind.STOP:
        action, answer, step = "already_opted_out", None, "reply.stop"
        if contact is not None:
            was_out = _suppressed(conn, contact.id, reply.channel)
            record_consent(
                conn,
                store_id=store.id,
                contact_id=contact.id,
                channel=reply.channel,
                purpose=Purpose.MARKETING,
                granted=False,
                source=ConsentSource.KEYWORD_REPLY,
                at=now,
                wording=f"reply {classification.keyword or 'STOP'} ({classification.reason})",
            )
            if not was_out:
                action, answer = "opted_out", opt_out_confirmation(store.brand, locale)
    elif classification.kind is ReplyKind.START and classification.confident:
        action, step = "ignored", "reply.start"
        if contact is not None:
            was_out = _suppressed(conn, contact.id, reply.channel)
            view = record_consent(
                conn,
                store_id=store.id,
                contact_id=contact.id,
                channel=reply.channel,
                purpose=Purpose.MARKETING,
                granted=True,
                source=ConsentSource.KEYWORD_REPLY,
                at=now,
                wording=f"reply {classification.keyword or 'START'}",
            )
            action = "resubscribed" if view.marketing and not view.suppressed else "ignored"
            if action == "resubscribed" and was_out:
                answer = opt_in_confirmation(store.brand, locale)
    elif classification.kind is ReplyKind.HELP:
        action, step = "help_sent", "reply.help"
        answer = help_reply(store.brand, locale, store.support_contact)
    else:
        forward_url = conn.execute(
            select(t.stores.c.support_webhook_url).where(t.stores.c.id == store.id)
        ).scalar()
        action = "forwarding" if forward_url else "recorded"
    answer_id = None
    if answer is not None and step is not None and reply.channel is Channel.SMS:
        answer_id = _queue_answer(
            conn, store.id, contact.id if contact else None, reply, reply_id, step, answer, now
        )
    conn.execute(update(t.replies).where(r.id == reply_id).values(action=action))
    _decide(conn, store.id, cart_id, enrollment_id, reply, classification, action, now)
    forward = (
        _forward_payload(store, reply, reply_id, classification, cart_token, contact, now)
        if forward_url
        else {}
    )
    return ReplyOutcome(
        reply_id,
        classification,
        action,
        answer_id=answer_id,
        forward_url=forward_url,
        forward=forward,
    )


def _contact(conn: Connection, store_id: int, reply: InboundReply) -> Any:
    c = t.contacts.c
    if reply.channel is Channel.EMAIL:
        match = c.email == reply.sender.strip().lower()
    else:
        sender = reply.sender.strip()
        # Some gateways (Kannel, Vonage) drop the "+" of an E.164 number.
        candidates = {sender, "+" + sender} if sender.isdigit() else {sender}
        match = c.phone.in_(candidates)
    return conn.execute(
        select(c.id, c.locale).where(c.store_id == store_id, match).order_by(c.id).limit(1)
    ).first()


def _contact_by_id(conn: Connection, contact_id: int) -> Any:
    c = t.contacts.c
    return conn.execute(select(c.id, c.locale).where(c.id == contact_id)).first()


def _latest_cart(
    conn: Connection, contact_id: int | None
) -> tuple[int | None, int | None, str | None]:
    if contact_id is None:
        return None, None, None
    c, e = t.carts.c, t.enrollments.c
    cart = conn.execute(
        select(c.id, c.token)
        .where(c.contact_id == contact_id)
        .order_by(c.updated_at.desc(), c.id.desc())
        .limit(1)
    ).first()
    if cart is None:
        return None, None, None
    enrollment_id = conn.execute(
        select(e.id).where(e.cart_id == cart.id).order_by(e.id.desc()).limit(1)
    ).scalar()
    return cart.id, enrollment_id, cart.token


def _suppressed(conn: Connection, contact_id: int, channel: Channel) -> bool:
    return views(ledger(conn, [contact_id]).get(contact_id, []))[channel].suppressed


def _queue_answer(
    conn: Connection,
    store_id: int,
    contact_id: int | None,
    reply: InboundReply,
    reply_id: int,
    step: str,
    body: str,
    now: datetime,
) -> int:
    """A service message: no enrollment, sent even after an opt-out, at most one per reply."""
    info = count_segments(body)
    result = conn.execute(
        t.outbox.insert().values(
            store_id=store_id,
            enrollment_id=None,
            contact_id=contact_id,
            step_id=step,
            service_key=f"reply:{reply_id}",
            channel=str(reply.channel),
            to_address=reply.sender,
            body=body,
            encoding=info.encoding,
            segments=info.segments,
            status="pending",
            attempts=0,
            available_at=now,
            created_at=now,
            updated_at=now,
        )
    )
    return int(result.inserted_primary_key[0])  # type: ignore[index]


_SAID = {
    "opted_out": "opted out; one confirmation queued",
    "already_opted_out": "already opted out; no second confirmation",
    "resubscribed": "subscribed again",
    "ignored": "no change",
    "help_sent": "the help text is queued",
    "forwarding": "forwarded to the store's support webhook",
    "recorded": "recorded (the store has no support webhook)",
}


def _decide(
    conn: Connection,
    store_id: int,
    cart_id: int | None,
    enrollment_id: int | None,
    reply: InboundReply,
    classification: ReplyClassification,
    action: str,
    now: datetime,
) -> None:
    """The reply in the cart's timeline (`cartback why`, GET /v1/carts/{token}/decisions)."""
    if cart_id is None:
        return
    text = " ".join(reply.text.split())
    if len(text) > TEXT_IN_TIMELINE:
        text = text[: TEXT_IN_TIMELINE - 1] + "…"
    review = "; flagged for review" if not classification.confident else ""
    conn.execute(
        t.decisions.insert().values(
            store_id=store_id,
            enrollment_id=enrollment_id,
            cart_id=cart_id,
            step_id=None,
            outcome="reply",
            rule=f"reply.{classification.kind}",
            reason=f"the shopper replied {text!r}: {_SAID.get(action, action)}{review}",
            at=now,
        )
    )


def _forward_payload(
    store: Store,
    reply: InboundReply,
    reply_id: int,
    classification: ReplyClassification,
    cart_token: str | None,
    contact: Any,
    now: datetime,
) -> dict[str, Any]:
    return {
        "type": "reply",
        "reply_id": reply_id,
        "store": store.name,
        "provider": reply.provider,
        "channel": str(reply.channel),
        "from": reply.sender,
        "to": reply.to,
        "text": reply.text,
        "received_at": now.isoformat(),
        "contact_id": contact.id if contact else None,
        "cart_token": cart_token,
        "classification": {
            "kind": str(classification.kind),
            "keyword": classification.keyword,
            "needs_review": not classification.confident,
        },
    }


def forward_reply(
    outcome: ReplyOutcome, *, timeout: float, transport: httpx.BaseTransport | None = None
) -> str | None:
    """POST the reply to the store's support webhook; the error, or None when it took it.
    Called after the commit: no network call inside a transaction."""
    if not outcome.forward_url:
        return None
    try:
        with httpx.Client(timeout=httpx.Timeout(timeout), transport=transport) as client:
            response = client.post(
                outcome.forward_url,
                json=outcome.forward,
                headers={"Idempotency-Key": f"reply-{outcome.reply_id}"},
            )
    except httpx.HTTPError as error:
        return f"{type(error).__name__}"
    if 200 <= response.status_code < 300:
        return None
    return f"HTTP {response.status_code}"


def mark_forwarded(conn: Connection, reply_id: int, error: str | None, now: datetime) -> None:
    r = t.replies.c
    if error is None:
        values: dict[str, Any] = {"action": "forwarded", "forwarded_at": now, "forward_error": None}
    else:
        log.warning("reply %s: the support webhook did not take it (%s)", reply_id, error)
        values = {"action": "forward_failed", "forward_error": error}
    conn.execute(update(t.replies).where(r.id == reply_id).values(**values))


def receive_reply(
    engine: Engine,
    store_id: int,
    reply: InboundReply,
    now: Callable[[], datetime],
    *,
    timeout: float,
) -> ReplyOutcome:
    """One reply, whatever carried it (a callback route, an SMPP bind, an inMobile pull): recorded
    and acted on in its own transaction, then forwarded to the support webhook after the commit.
    """
    for attempt in range(_RACE_ATTEMPTS):
        try:
            with engine.begin() as conn:
                outcome = on_reply(conn, admin.get_store(conn, store_id), reply, now())
            break
        except IntegrityError:
            # The same reply delivered twice at once: the other one recorded it; this attempt
            # then finds it and does nothing more.
            if attempt == _RACE_ATTEMPTS - 1:
                raise
    if outcome.forward_url and not outcome.duplicate:
        refused = forward_reply(outcome, timeout=timeout)
        with engine.begin() as conn:
            mark_forwarded(conn, outcome.reply_id, refused, now())
    return outcome
