"""Ingest: shop events become carts, contacts, consent, orders and enrollments.

A whole batch is one transaction: either every event in it is applied, or none is.

Time: `now` is when cartback received the batch. An event stamped more than `future_skew` ahead
of it is clamped to it (the shop's clock runs ahead, or labels local time as UTC) and marked, in
`event_receipts.clamped_seconds` and in the event's answer. Carts are updated with one
conditional statement, so concurrent requests can never let an older event overwrite a newer
one, and a cart, contact or receipt created by two requests at once is created once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, Table, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from cartback import metrics
from cartback.config import DEFAULT_FUTURE_SKEW_SECONDS
from cartback.core.engine import may_enroll, plan_enrollment
from cartback.core.events import (
    CartEmptied,
    CheckoutUpdated,
    ConsentChanged,
    ContactInfo,
    OrderPlaced,
    ShopEvent,
)
from cartback.core.flows import Flow
from cartback.core.lineup import (
    PRIORITY_RULE,
    SUPPRESSION_RULE,
    Lineup,
    priority_skip_reason,
    suppression_reason,
)
from cartback.core.model import (
    CartStatus,
    Channel,
    EnrollmentState,
    Purpose,
    Store,
)
from cartback.core.storepolicy import store_rates
from cartback.postcodes import normalize_postal_code, postal_zones
from cartback.services import attribution, outbound
from cartback.services.consent import record_consent
from cartback.services.erasure import suppressed
from cartback.services.experiments import promoted_variant
from cartback.services.facts import abandoned_this_year
from cartback.store import tables as t
from cartback.store.rows import (
    cart_from_row,
    contact_from_row,
    lines_to_json,
    phone_fact_columns,
)

DEFAULT_FUTURE_SKEW = timedelta(seconds=DEFAULT_FUTURE_SKEW_SECONDS)


class EventStatus(StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    STALE = "stale"


@dataclass(frozen=True, slots=True)
class EventResult:
    id: str
    status: EventStatus
    detail: str | None = None


def ingest(
    conn: Connection,
    store: Store,
    flow: Flow | Lineup,
    events: Sequence[ShopEvent],
    now: datetime,
    *,
    source: str = "api",
    future_skew: timedelta = DEFAULT_FUTURE_SKEW,
    suppression_key: str | None = None,
    history_before: datetime | None = None,
) -> list[EventResult]:
    """`suppression_key` keys the hashes of erased shoppers (services.erasure): with it, a
    shopper erased on request is never stored again. `history_before` (imports): a checkout
    whose first message would have been due before this time is stored as history, without
    enrolling, so importing old checkouts never sends a recovery message for them. `flow` is the
    store's lineup (services.store_flows.lineup), or one flow run on checkouts."""
    lineup = flow if isinstance(flow, Lineup) else Lineup.single(flow)
    results = []
    latest = now + future_skew
    for event in events:
        shop_time: datetime | None = None
        if event.occurred_at > latest:
            # The shop's clock is ahead: its time would outrank everything received later.
            shop_time, event = event.occurred_at, replace(event, occurred_at=now)
        ahead = None if shop_time is None else int((shop_time - now).total_seconds())
        if not _first_receipt(conn, store.id, source, event.event_id, now, ahead):
            results.append(EventResult(event.event_id, EventStatus.DUPLICATE, "already received"))
            continue
        applied, erased = _unless_erased(conn, store.id, suppression_key, event)
        if applied is None:
            results.append(EventResult(event.event_id, EventStatus.STALE, ERASED))
            continue
        result = _apply(conn, store, lineup, applied, now, shop_time, history_before)
        if erased:
            result = replace(result, detail=ERASED)
        if ahead is not None:
            clamped = f"occurred_at was {ahead} s ahead of the receive time; clamped"
            result = replace(result, detail="; ".join(filter(None, [result.detail, clamped])))
        results.append(result)
    metrics.count_events(events, [result.status for result in results])
    return results


ERASED = "the shopper's data was erased on request; their details were not stored"


def _unless_erased(
    conn: Connection, store_id: int, key: str | None, event: ShopEvent
) -> tuple[ShopEvent | None, bool]:
    """(the event to apply, whether it named a shopper erased on request). A checkout
    or order of an erased shopper is kept without them (an order still ends its cart's
    enrollment); their consent change is not recorded at all."""
    if key is None or isinstance(event, CartEmptied):
        return event, False
    contact = event.contact
    if contact is None or not suppressed(conn, store_id, key, contact):
        return event, False
    if isinstance(event, CheckoutUpdated):
        # A restore link can carry the shopper's session key: it goes too.
        return replace(event, contact=ContactInfo(), consent=None, restore_url=None), True
    if isinstance(event, OrderPlaced):
        return replace(event, contact=None), True
    return None, True


def _insert_or_nothing(conn: Connection, table: Table, values: Mapping[str, Any]) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING RETURNING id: the new row's id, or None when a row with
    the same unique key exists (or a concurrent request's insert of it has just committed)."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(table).values(**values).on_conflict_do_nothing()
    return conn.execute(statement.returning(table.c.id)).scalar()


def _first_receipt(
    conn: Connection,
    store_id: int,
    source: str,
    event_id: str,
    now: datetime,
    clamped_seconds: int | None,
) -> bool:
    # One statement: a repeat, or a concurrent request with the same id, inserts nothing.
    receipt = {
        "store_id": store_id,
        "source": source,
        "event_id": event_id,
        "received_at": now,
        "clamped_seconds": clamped_seconds,
    }
    return _insert_or_nothing(conn, t.event_receipts, receipt) is not None


def _apply(
    conn: Connection,
    store: Store,
    lineup: Lineup,
    event: ShopEvent,
    now: datetime,
    clamped_from: datetime | None,
    history_before: datetime | None = None,
) -> EventResult:
    if isinstance(event, CheckoutUpdated):
        return _checkout_updated(conn, store, lineup, event, now, clamped_from, history_before)
    if isinstance(event, OrderPlaced):
        return _order_placed(conn, store, event, now)
    if isinstance(event, CartEmptied):
        return _cart_emptied(conn, store, event, now)
    return _consent_changed(conn, store, event, now, clamped_from)


def _find_contact(conn: Connection, store_id: int, info: ContactInfo) -> Mapping[Any, Any] | None:
    row = None
    c = t.contacts.c
    if info.phone:
        row = (
            conn.execute(select(t.contacts).where(c.store_id == store_id, c.phone == info.phone))
            .mappings()
            .first()
        )
    if row is None and info.email:
        row = (
            conn.execute(select(t.contacts).where(c.store_id == store_id, c.email == info.email))
            .mappings()
            .first()
        )
    return row


def upsert_contact(conn: Connection, store_id: int, info: ContactInfo, now: datetime) -> int | None:
    """Find the shopper by phone, then by email; fill in what the event newly tells us."""
    if not (info.phone or info.email):
        return None
    c = t.contacts.c
    row = _find_contact(conn, store_id, info)
    if row is None:
        inserted = _insert_or_nothing(conn, t.contacts, new_contact_values(store_id, info, now))
        if inserted is not None:
            return int(inserted)
        # A concurrent request created the shopper first: update theirs.
        row = _find_contact(conn, store_id, info)
        if row is None:
            raise RuntimeError("contact insert conflicted but no contact matches")
    contact_id = int(row["id"])

    def owned_by_other(key: str, value: str) -> bool:
        return _owned_by_other(conn, store_id, key, value, contact_id)

    fields = contact_changes(info, row, owned_by_other)
    if fields:
        conn.execute(update(t.contacts).where(c.id == contact_id).values(updated_at=now, **fields))
    return contact_id


def _told_fields(info: ContactInfo) -> dict[str, Any]:
    return {
        key: value
        for key, value in (
            ("first_name", info.first_name),
            ("last_name", info.last_name),
            ("locale", info.locale),
            ("zone", info.zone),
            ("country", info.country),
            ("region", info.region),
        )
        if value is not None
    }


def new_contact_values(store_id: int, info: ContactInfo, now: datetime) -> dict[str, Any]:
    """The row of a shopper first named by this event."""
    return {
        "store_id": store_id,
        "phone": info.phone,
        **phone_fact_columns(info.phone),
        "email": info.email,
        "sms_marketing": False,
        "email_marketing": False,
        "orders_count": 0,
        "tags": list(info.tags),
        "created_at": now,
        "updated_at": now,
        **_told_fields(info),
        **_postal_columns(info, None),
    }


def contact_changes(
    info: ContactInfo, row: Mapping[Any, Any], owned_by_other: Callable[[str, str], bool]
) -> dict[str, Any]:
    """The columns of a known shopper's row this event newly tells (empty: nothing to write).
    `owned_by_other(column, value)`: does another contact of the store hold that phone/email?"""
    fields = _told_fields(info)
    # A phone or email already owned by another contact stays with that contact.
    for key, value in (("phone", info.phone), ("email", info.email)):
        if value and row[key] != value and not owned_by_other(key, value):
            fields[key] = value
    fields.update(_postal_columns(info, row))
    if "phone" in fields or (row["phone"] and row["phone_zones"] is None):
        # A new number, or one stored before its facts were kept.
        fields.update(phone_fact_columns(fields.get("phone", row["phone"])))
    if info.tags:
        fields["tags"] = sorted(set(row["tags"] or ()) | set(info.tags))
    return fields


def _postal_columns(info: ContactInfo, row: Mapping[Any, Any] | None) -> dict[str, Any]:
    """The postal code and the zones it settles, from an event that carries one.

    An event without a code keeps the stored one while its country and region agree with the
    stored address (a consent change names only the country); one naming another country or
    region is a new address, and the old code's zones must not outlive it."""
    code = normalize_postal_code(info.postal_code)
    if code is None:
        if row is None or row["postal_code"] is None:
            return {}
        moved = (info.country is not None and info.country != row["country"]) or (
            info.region is not None and info.region != row["region"]
        )
        return {"postal_code": None, "postal_zones": None} if moved else {}
    if info.country is not None or row is None:
        country, region = info.country, info.region
    else:
        # A code without a country belongs to the address already stored.
        country, region = row["country"], info.region or row["region"]
    return {"postal_code": code, "postal_zones": " ".join(postal_zones(country, region, code))}


def _owned_by_other(conn: Connection, store_id: int, key: str, value: str, contact_id: int) -> bool:
    column = t.contacts.c[key]
    return (
        conn.execute(
            select(t.contacts.c.id).where(
                t.contacts.c.store_id == store_id, column == value, t.contacts.c.id != contact_id
            )
        ).first()
        is not None
    )


def _checkout_consent(
    conn: Connection,
    store_id: int,
    contact_id: int,
    event: CheckoutUpdated,
    now: datetime,
    clamped_from: datetime | None,
) -> None:
    flags = event.consent
    if flags is None:
        return
    current = conn.execute(
        select(
            t.contacts.c.sms_marketing, t.contacts.c.email_marketing, t.contacts.c.opted_out_at
        ).where(t.contacts.c.id == contact_id)
    ).one()
    wanted = checkout_consent_wanted(
        event,
        clamped_from,
        (current.sms_marketing, current.email_marketing, current.opted_out_at),
        lambda: _has_cart_reminders(conn, contact_id),
    )
    for channel, purpose in wanted:
        grant = checkout_grant(store_id, contact_id, channel, purpose, event, now, clamped_from)
        record_consent(conn, **grant)


def checkout_grant(
    store_id: int,
    contact_id: int,
    channel: Channel,
    purpose: Purpose,
    event: CheckoutUpdated,
    now: datetime,
    clamped_from: datetime | None,
) -> dict[str, Any]:
    """A checkout's grant, as `record_consent` (and `consent.ledger_values`) take it."""
    flags = event.consent
    assert flags is not None
    return {
        "store_id": store_id,
        "contact_id": contact_id,
        "channel": channel,
        "purpose": purpose,
        "granted": True,
        "source": "checkout",
        "at": event.occurred_at,
        "received_at": now,
        "clamped_from": clamped_from,
        "wording": flags.wording,
        "ip": flags.ip,
        "user_agent": flags.user_agent,
        "double_opt_in": flags.double_opt_in,
    }


def checkout_consent_wanted(
    event: CheckoutUpdated,
    clamped_from: datetime | None,
    current: tuple[bool, bool, datetime | None],
    has_cart_reminders: Callable[[], bool],
) -> list[tuple[Channel, Purpose]]:
    """The grants a checkout adds to the ledger, given the contact's cached (sms_marketing,
    email_marketing, opted_out_at); `has_cart_reminders` is asked only when it matters."""
    flags = event.consent
    if flags is None:
        return []
    sms_marketing, email_marketing, opted_out_at = current
    # `opted_out_at` is when the opt-out was received; this checkout is received after it. It
    # re-subscribes only if the shop also stamped it after that: a checkout stamped earlier is
    # a late report of a box ticked before the shopper said stop, and a clamped time (the
    # shop's clock is ahead) is no evidence of order at all. The fold applies the same rule
    # (to grants from every path), so skipping here only keeps ineffective rows out.
    if opted_out_at is not None and (clamped_from is not None or event.occurred_at <= opted_out_at):
        return []
    wanted = [
        (channel, Purpose.MARKETING)
        for channel, asked, have in (
            (Channel.SMS, flags.sms_marketing, sms_marketing),
            (Channel.EMAIL, flags.email_marketing, email_marketing),
        )
        # Record changes only: a checkout repeating the same answer adds nothing to the ledger,
        # and a checkout box left unticked never revokes consent given elsewhere.
        if asked and not have
    ]
    if flags.cart_reminders and flags.sms_marketing and not has_cart_reminders():
        wanted.append((Channel.SMS, Purpose.CART_REMINDERS))
    return wanted


def _has_cart_reminders(conn: Connection, contact_id: int) -> bool:
    c = t.consent_events.c
    latest = conn.execute(
        select(c.granted)
        .where(c.contact_id == contact_id, c.purpose == str(Purpose.CART_REMINDERS))
        .order_by(c.received_at.desc(), c.id.desc())
        .limit(1)
    ).first()
    return latest is not None and bool(latest.granted)


def _checkout_updated(
    conn: Connection,
    store: Store,
    lineup: Lineup,
    event: CheckoutUpdated,
    now: datetime,
    clamped_from: datetime | None,
    history_before: datetime | None = None,
) -> EventResult:
    contact_id = upsert_contact(conn, store.id, event.contact, now)
    status = CartStatus.OPEN if event.lines else CartStatus.EMPTIED
    content = cart_content(event, now, contact_id)
    cart_id = _update_if_newer(conn, store.id, event.cart_token, event.occurred_at, content)
    if cart_id is None:
        new = {"store_id": store.id, "token": event.cart_token, "created_at": now, **content}
        cart_id = _insert_or_nothing(conn, t.carts, new)
        if cart_id is None:
            # A concurrent request created the cart first: this event is now an update of it.
            cart_id = _update_if_newer(conn, store.id, event.cart_token, event.occurred_at, content)
        if cart_id is None:
            return _stale(conn, store.id, event)
    cart_id = int(cart_id)
    # Consent from a stale event is never applied: a retried webhook must not undo a later STOP.
    if contact_id is not None:
        _checkout_consent(conn, store.id, contact_id, event, now, clamped_from)
    if status is CartStatus.EMPTIED:
        _end_enrollments(conn, cart_id, "cart_emptied", "exit: the cart was emptied", now)
    elif not _enroll_or_touch(
        conn, store, lineup, event.trigger, cart_id, event.occurred_at, now, history_before
    ):
        return EventResult(event.event_id, EventStatus.ACCEPTED, HISTORY)
    return EventResult(event.event_id, EventStatus.ACCEPTED)


def cart_content(event: CheckoutUpdated, now: datetime, contact_id: int | None) -> dict[str, Any]:
    """The columns a checkout writes to its cart."""
    status = CartStatus.OPEN if event.lines else CartStatus.EMPTIED
    content: dict[str, Any] = {
        "lines": lines_to_json(event.lines),
        "value": event.value,
        "currency": event.currency,
        "restore_url": event.restore_url,
        "tags": list(event.tags),
        "occurred_at": event.occurred_at,
        "updated_at": now,
        "status": str(status),
    }
    if contact_id is not None:
        content["contact_id"] = contact_id
    return content


def _update_if_newer(
    conn: Connection, store_id: int, token: str, occurred_at: datetime, content: dict[str, Any]
) -> int | None:
    """Apply a checkout to its cart in one conditional statement, or return None (no such cart,
    a newer event already applied, or the cart already ordered). The comparison and the write
    are one statement, so on PostgreSQL a concurrent update waits for the row and compares
    against what the other committed: the newest event always ends up stored."""
    c = t.carts.c
    found = conn.execute(
        update(t.carts)
        .where(
            c.store_id == store_id,
            c.token == token,
            c.occurred_at < occurred_at,
            c.status != str(CartStatus.ORDERED),
        )
        .values(**content)
        .returning(c.id)
    ).scalar()
    return None if found is None else int(found)


def _stale(conn: Connection, store_id: int, event: CheckoutUpdated) -> EventResult:
    c = t.carts.c
    status = conn.execute(
        select(c.status).where(c.store_id == store_id, c.token == event.cart_token)
    ).scalar()
    return EventResult(event.event_id, EventStatus.STALE, stale_detail(status))


def stale_detail(cart_status: str | None) -> str:
    """Why a checkout was not applied to its cart."""
    if cart_status == CartStatus.ORDERED:
        return "the cart was already ordered"
    return "an event as new or newer was applied"


HISTORY = "kept as history: its first message would have been due before the import"


def _enroll_or_touch(
    conn: Connection,
    store: Store,
    lineup: Lineup,
    trigger: str,
    cart_id: int,
    activity: datetime,
    now: datetime,
    history_before: datetime | None = None,
) -> bool:
    """Enroll the cart in the first of the store's flows that this event triggers and that will
    take it, or move a waiting enrollment's abandonment later. A cart is in one live flow at a
    time; the flows that also matched record why they did not start. False only when a new
    enrollment was withheld because its first step falls before `history_before`."""
    e = t.enrollments.c
    rows = conn.execute(
        select(e.id, e.flow_name, e.state, e.step_index, e.abandoned_at).where(e.cart_id == cart_id)
    ).all()
    live = next((row for row in rows if row.state in _LIVE), None)
    candidates = lineup.triggered_by(trigger)
    if live is not None:
        assigned = lineup.get(live.flow_name)
        if assigned is not None and assigned in candidates:
            _touch(conn, live, assigned.flow, activity, now)
        return True
    tried = {row.flow_name for row in rows}  # a flow runs once per cart
    cart_row = conn.execute(select(t.carts).where(t.carts.c.id == cart_id)).mappings().one()
    cart = cart_from_row(cart_row)
    contact = None
    if cart.contact_id is not None:
        contact_row = (
            conn.execute(select(t.contacts).where(t.contacts.c.id == cart.contact_id))
            .mappings()
            .one()
        )
        contact = contact_from_row(contact_row)
        counted = abandoned_this_year(conn, [contact.id], now).get(contact.id, 0)
        contact = replace(contact, abandoned_count=counted)
    willing = [
        assigned
        for assigned in candidates
        if assigned.flow.name not in tried
        and may_enroll(assigned.flow, cart, contact, rates=store_rates(store.policy))
    ]
    if not willing:
        return True
    chosen, *others = willing
    flow = chosen.flow
    # A winner the store promoted goes to new carts only; enrolled carts keep their variant.
    promoted = promoted_variant(conn, store.id, flow.name) if flow.variants else None
    plan = plan_enrollment(flow, cart.token, activity, promoted=promoted)
    if history_before is not None and plan.wake_at < history_before:
        return False
    if cart.contact_id is not None and lineup.suppression > timedelta(0):
        busy = _in_other_flow(conn, cart.contact_id, flow.name, now - lineup.suppression)
        if busy is not None:
            text = suppression_reason(chosen, busy, lineup.suppression)
            _skip_once(conn, store.id, cart_id, SUPPRESSION_RULE, text, now)
            return True
    conn.execute(
        t.enrollments.insert().values(
            store_id=store.id,
            cart_id=cart_id,
            flow_name=flow.name,
            flow_version=flow.version,
            step_index=0,
            state=str(EnrollmentState.ACTIVE),
            abandoned_at=plan.abandoned_at,
            wake_at=plan.wake_at,
            variant=plan.variant,
            holdout=plan.holdout,
            held_channel=plan.held_channel,
            created_at=now,
            updated_at=now,
        )
    )
    for other in others:
        text = priority_skip_reason(other, chosen)
        _skip_once(conn, store.id, cart_id, PRIORITY_RULE, text, now)
    return True


def _touch(conn: Connection, live: Any, flow: Flow, activity: datetime, now: datetime) -> None:
    """While nothing has fired yet the shopper is still shopping: abandonment moves later.
    Once the sequence has started, an update only changes what later messages show."""
    if live.state != EnrollmentState.ACTIVE or live.step_index != 0:
        return
    started = conn.execute(
        select(t.decisions.c.id).where(t.decisions.c.enrollment_id == live.id).limit(1)
    ).first()
    abandoned_at = activity + flow.abandon_after
    if started is None and abandoned_at > live.abandoned_at:
        conn.execute(
            update(t.enrollments)
            .where(t.enrollments.c.id == live.id)
            .values(
                abandoned_at=abandoned_at,
                wake_at=abandoned_at + flow.steps[0].at,
                updated_at=now,
            )
        )


def _in_other_flow(
    conn: Connection, contact_id: int, flow_name: str, since: datetime
) -> str | None:
    """The name of another flow the shopper is live in, started at or after `since`."""
    e = t.enrollments.c
    return conn.execute(
        select(e.flow_name)
        .join(t.carts, t.carts.c.id == e.cart_id)
        .where(
            t.carts.c.contact_id == contact_id,
            e.flow_name != flow_name,
            e.state.in_(_LIVE),
            e.created_at >= since,
        )
        .order_by(e.id)
        .limit(1)
    ).scalar()


def _skip_once(
    conn: Connection,
    store_id: int,
    cart_id: int,
    rule: str,
    text: str,
    now: datetime,
) -> None:
    """Record why a flow did not start; a repeated checkout update does not repeat it."""
    d = t.decisions.c
    seen = conn.execute(
        select(d.id).where(d.cart_id == cart_id, d.rule == rule, d.reason == text).limit(1)
    ).first()
    if seen is None:
        conn.execute(
            t.decisions.insert().values(
                store_id=store_id,
                enrollment_id=None,
                cart_id=cart_id,
                step_id=None,
                outcome="skip",
                rule=rule,
                reason=text,
                at=now,
            )
        )


def _end_enrollments(conn: Connection, cart_id: int, reason: str, text: str, now: datetime) -> None:
    """Exit a cart's live enrollments at once; the worker would also see it when it wakes."""
    e = t.enrollments.c
    live = conn.execute(
        # A parked enrollment ends too: resuming it after the order must not send anything.
        select(e.id, e.store_id, e.cart_id).where(e.cart_id == cart_id, e.state.in_(_LIVE))
    ).all()
    _exit_enrollments(conn, live, reason, text, now)


_LIVE = (str(EnrollmentState.ACTIVE), str(EnrollmentState.PARKED))


def _exit_enrollments(
    conn: Connection, live: Sequence[Any], reason: str, text: str, now: datetime
) -> None:
    """Exit these (id, store_id, cart_id) enrollments, each with its decision."""
    e = t.enrollments.c
    for enrollment_id, store_id, cart_id in live:
        conn.execute(
            update(t.enrollments)
            .where(e.id == enrollment_id)
            .values(
                state=str(EnrollmentState.EXITED), wake_at=None, exit_reason=reason, updated_at=now
            )
        )
        conn.execute(
            t.decisions.insert().values(
                store_id=store_id,
                enrollment_id=enrollment_id,
                cart_id=cart_id,
                step_id=None,
                outcome="exit",
                rule=None,
                reason=text,
                at=now,
            )
        )
    # Messages not yet handed to a provider are withdrawn (a claimed one then fails its send
    # fence); one already sending is past recall.
    if live:
        conn.execute(
            update(t.outbox)
            .where(
                t.outbox.c.enrollment_id.in_([row[0] for row in live]),
                t.outbox.c.status.in_(("pending", "claimed")),
            )
            .values(status="cancelled", error=text, updated_at=now)
        )


def _end_for_shopper(conn: Connection, store_id: int, event: OrderPlaced, now: datetime) -> None:
    """An order without a known cart token (a second device, an order by phone) still ends the
    flows of the shopper it names: every live enrollment of a contact with the order's email or
    phone (both normalised at intake) that started before the order was placed."""
    info = event.contact
    if info is None or not (info.email or info.phone):
        return
    c, e = t.contacts.c, t.enrollments.c
    matches = []
    if info.email:
        matches.append(c.email == info.email)
    if info.phone:
        matches.append(c.phone == info.phone)
    shoppers = select(c.id).where(c.store_id == store_id, or_(*matches))
    live = conn.execute(
        select(e.id, e.store_id, e.cart_id)
        .join(t.carts, t.carts.c.id == e.cart_id)
        .where(
            e.store_id == store_id,
            t.carts.c.contact_id.in_(shoppers),
            e.state.in_(_LIVE),
            e.created_at <= event.occurred_at,
        )
        .order_by(e.id)
    ).all()
    text = "exit: the shopper placed an order (matched by email or phone, not by cart)"
    _exit_enrollments(conn, live, "order_placed", text, now)


def _order_placed(conn: Connection, store: Store, event: OrderPlaced, now: datetime) -> EventResult:
    contact_id = upsert_contact(conn, store.id, event.contact, now) if event.contact else None
    cart_row = None
    if event.cart_token:
        cart_row = conn.execute(
            select(t.carts.c.id, t.carts.c.contact_id).where(
                t.carts.c.store_id == store.id, t.carts.c.token == event.cart_token
            )
        ).first()
    cart_id = cart_row.id if cart_row is not None else None
    contact_id = contact_id or (cart_row.contact_id if cart_row is not None else None)
    exists = conn.execute(
        select(t.orders.c.id).where(
            t.orders.c.store_id == store.id, t.orders.c.order_ref == event.order_id
        )
    ).first()
    if exists is not None:
        return EventResult(event.event_id, EventStatus.DUPLICATE, "order already recorded")
    order_id = conn.execute(
        t.orders.insert()
        .values(
            store_id=store.id,
            order_ref=event.order_id,
            cart_id=cart_id,
            contact_id=contact_id,
            value=event.value,
            currency=event.currency,
            occurred_at=event.occurred_at,
        )
        .returning(t.orders.c.id)
    ).scalar_one()
    # Credited now, in this transaction, so reports only read (core.attribution).
    attribution.attribute_order(conn, order_id, attribution.store_settings(conn, store.id), now)
    if contact_id is not None:
        conn.execute(
            update(t.contacts)
            .where(t.contacts.c.id == contact_id)
            .values(orders_count=t.contacts.c.orders_count + 1, updated_at=now)
        )
    if cart_id is not None:
        conn.execute(
            update(t.carts)
            .where(t.carts.c.id == cart_id)
            .values(status=str(CartStatus.ORDERED), updated_at=now)
        )
        _end_enrollments(conn, cart_id, "order_placed", "exit: the shopper placed an order", now)
    else:
        _end_for_shopper(conn, store.id, event, now)
    outbound.cart_recovered(
        conn, store.id, cart_id, event.order_id, event.value, event.currency, now
    )
    return EventResult(event.event_id, EventStatus.ACCEPTED)


def _cart_emptied(conn: Connection, store: Store, event: CartEmptied, now: datetime) -> EventResult:
    c = t.carts.c
    # One conditional statement, as for checkouts: no concurrent update can slip in between.
    cart_id = conn.execute(
        update(t.carts)
        .where(
            c.store_id == store.id,
            c.token == event.cart_token,
            c.occurred_at <= event.occurred_at,
            c.status != str(CartStatus.ORDERED),
        )
        .values(
            status=str(CartStatus.EMPTIED), lines=[], occurred_at=event.occurred_at, updated_at=now
        )
        .returning(c.id)
    ).scalar()
    if cart_id is None:
        exists = conn.execute(
            select(c.id).where(c.store_id == store.id, c.token == event.cart_token)
        ).first()
        if exists is None:
            return EventResult(event.event_id, EventStatus.STALE, "unknown cart token")
        return EventResult(event.event_id, EventStatus.STALE, "the cart changed after this event")
    _end_enrollments(conn, int(cart_id), "cart_emptied", "exit: the cart was emptied", now)
    return EventResult(event.event_id, EventStatus.ACCEPTED)


def _consent_changed(
    conn: Connection,
    store: Store,
    event: ConsentChanged,
    now: datetime,
    clamped_from: datetime | None,
) -> EventResult:
    contact_id = upsert_contact(conn, store.id, event.contact, now)
    if contact_id is None:
        return EventResult(event.event_id, EventStatus.STALE, "no phone or email to match")
    record_consent(
        conn,
        store_id=store.id,
        contact_id=contact_id,
        channel=event.channel,
        purpose=event.purpose,
        granted=event.granted,
        source=event.source,
        at=event.occurred_at,
        received_at=now,
        clamped_from=clamped_from,
        wording=event.wording,
        ip=event.ip,
        user_agent=event.user_agent,
        double_opt_in=event.double_opt_in,
        evidence=event.evidence,
    )
    return EventResult(event.event_id, EventStatus.ACCEPTED)
