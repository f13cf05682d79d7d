"""Checkouts applied many at a time: the inbox's fast path for its commonest event.

Each checkout has exactly the effects `ingest.ingest` gives it (receipt, erased shoppers,
contact upsert, stale check, the consent ledger, enrollment or a waiting enrollment moved
later), but a run of them is read with a few set-based SELECTs and written with multi-row
statements. The run is applied in waves of independent events: an event joins the current wave
unless it shares a cart, a phone, an email or a known shopper with an event taken before it, or
with one already put off to a later wave. Events of one wave touch disjoint rows, so applying
the wave at once equals applying it one by one, and every cart and shopper still sees its
events in arrival order. Anything else (orders, consent changes, emptied carts, clamped times)
goes through `ingest` itself; `batchable` says which.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from sqlalchemy import Connection, bindparam, select, update

from cartback import metrics
from cartback.core.engine import may_enroll, plan_enrollment
from cartback.core.events import CheckoutUpdated, ContactInfo, ShopEvent
from cartback.core.lineup import (
    PRIORITY_RULE,
    SUPPRESSION_RULE,
    Lineup,
    priority_skip_reason,
    suppression_reason,
)
from cartback.core.model import CartStatus, EnrollmentState, Purpose, Store
from cartback.core.storepolicy import store_rates
from cartback.services import consent as ledger
from cartback.services.erasure import suppressed_among
from cartback.services.experiments import promoted_variant
from cartback.services.facts import abandoned_this_year
from cartback.services.ingest import (
    ERASED,
    EventResult,
    EventStatus,
    cart_content,
    checkout_consent_wanted,
    checkout_grant,
    contact_changes,
    new_contact_values,
    stale_detail,
)
from cartback.store import tables as t
from cartback.store.hot import ingest_sql
from cartback.store.rows import cart_from_row, contact_from_row

_LIVE = (str(EnrollmentState.ACTIVE), str(EnrollmentState.PARKED))
_SKIP_RULES = (PRIORITY_RULE, SUPPRESSION_RULE)
_CONTACT = tuple(column.name for column in t.contacts.columns)
_CART = tuple(column.name for column in t.carts.columns)
# What deciding a checkout reads of its cart before writing it.
_CART_STATE = ("id", "token", "occurred_at", "status", "contact_id")


@dataclass(frozen=True, slots=True)
class Item:
    """One checkout to apply, received at `now` from `source`."""

    event: CheckoutUpdated
    now: datetime
    source: str


@dataclass(frozen=True, slots=True)
class Outcome:
    result: EventResult
    # A stale checkout's cart (its timeline notes it), else None.
    stale_cart_id: int | None = None


def batchable(event: ShopEvent, now: datetime, future_skew: timedelta) -> bool:
    """Whether `apply_checkouts` takes this event: a checkout with lines whose time needs no
    clamping."""
    return (
        isinstance(event, CheckoutUpdated)
        and bool(event.lines)
        and event.occurred_at <= now + future_skew
    )


def apply_checkouts(
    conn: Connection,
    store: Store,
    lineup: Lineup,
    items: Sequence[Item],
    *,
    suppression_key: str | None = None,
) -> list[Outcome]:
    """Apply these checkouts (all `batchable`) as `ingest` would one by one, in this order."""
    outcomes: dict[int, Outcome] = {}
    fresh = _first_receipts(conn, store.id, items)
    for index, item in enumerate(items):
        if index not in fresh:
            result = EventResult(item.event.event_id, EventStatus.DUPLICATE, "already received")
            outcomes[index] = Outcome(result)
    erased = suppressed_among(
        conn, store.id, suppression_key, {i: items[i].event.contact for i in fresh}
    )
    pending = [
        _Entry(index, _without_shopper(items[index]) if index in erased else items[index])
        for index in sorted(fresh)
    ]
    while pending:
        wave, owners, pending = _next_wave(conn, store.id, pending)
        for index, outcome in _Wave(conn, store, lineup, wave, owners).apply().items():
            if index in erased:
                outcome = replace(outcome, result=replace(outcome.result, detail=ERASED))
            outcomes[index] = outcome
    ordered = [outcomes[index] for index in range(len(items))]
    metrics.count_events(
        [item.event for item in items], [outcome.result.status for outcome in ordered]
    )
    return ordered


def _without_shopper(item: Item) -> Item:
    # As `ingest`: a checkout of a shopper erased on request is kept without them.
    event = replace(item.event, contact=ContactInfo(), consent=None, restore_url=None)
    return replace(item, event=event)


@dataclass(frozen=True, slots=True)
class _Entry:
    index: int
    item: Item


@dataclass(slots=True)
class _Taken:
    """An event of the wave, with the rows it found."""

    index: int
    item: Item
    contact: Mapping[Any, Any] | None
    cart: Mapping[Any, Any] | None
    contact_id: int | None = None
    cart_id: int | None = None
    stale: str | None = None


def _first_receipts(conn: Connection, store_id: int, items: Sequence[Item]) -> set[int]:
    """Record every event's receipt in one statement; the indexes of those not seen before."""
    receipts = [(item.source, item.event.event_id, item.now) for item in items]
    inserted = ingest_sql(conn.dialect).first_receipts(conn, store_id, receipts)
    return {
        index for index, item in enumerate(items) if (item.source, item.event.event_id) in inserted
    }


def _next_wave(
    conn: Connection, store_id: int, pending: list[_Entry]
) -> tuple[list[_Taken], dict[tuple[str, str], int], list[_Entry]]:
    """The events of `pending` that can be applied together now, who holds each of their phones
    and emails, and the events put off."""
    infos = [entry.item.event.contact for entry in pending]
    phones = sorted({info.phone for info in infos if info.phone})
    emails = sorted({info.email for info in infos if info.email})
    sql = ingest_sql(conn.dialect)
    by_phone: dict[str, Mapping[Any, Any]] = {}
    by_email: dict[str, Mapping[Any, Any]] = {}
    matches = [("phone", phones), ("email", emails)]
    # Locked on PostgreSQL: rows read to decide a write stay as read until the commit.
    for row in sql.rows_where(conn, t.contacts, _CONTACT, matches, store_id=store_id, lock=True):
        if row["phone"] is not None:
            by_phone[row["phone"]] = row
        if row["email"] is not None:
            by_email[row["email"]] = row
    tokens = sorted({entry.item.event.cart_token for entry in pending})
    carts = {
        row["token"]: row
        for row in sql.rows_where(
            conn, t.carts, _CART_STATE, [("token", tokens)], store_id=store_id, lock=True
        )
    }
    taken: list[_Taken] = []
    later: list[_Entry] = []
    used: set[tuple[str, Any]] = set()
    blocked: set[tuple[str, Any]] = set()
    for entry in pending:
        event = entry.item.event
        info = event.contact
        contact = by_phone.get(info.phone) if info.phone else None
        if contact is None and info.email:
            contact = by_email.get(info.email)
        cart = carts.get(event.cart_token)
        keys = _keys(event, contact, cart)
        if keys & used or keys & blocked:
            later.append(entry)
            blocked |= keys
            continue
        used |= keys
        taken.append(_Taken(entry.index, entry.item, contact, cart))
    owners = {("phone", phone): int(row["id"]) for phone, row in by_phone.items()}
    owners.update({("email", email): int(row["id"]) for email, row in by_email.items()})
    return taken, owners, later


def _keys(
    event: CheckoutUpdated, contact: Mapping[Any, Any] | None, cart: Mapping[Any, Any] | None
) -> set[tuple[str, Any]]:
    """What applying this event reads or writes beyond its own rows: two events sharing any of
    it are applied in different waves."""
    info = event.contact
    keys: set[tuple[str, Any]] = {("cart", event.cart_token)}
    for kind, value in (("phone", info.phone), ("email", info.email)):
        if value:
            keys.add((kind, value))
    if contact is not None:
        keys.add(("contact", contact["id"]))
        for kind in ("phone", "email"):
            if contact[kind]:
                keys.add((kind, contact[kind]))
    if cart is not None and cart["contact_id"] is not None:
        keys.add(("contact", cart["contact_id"]))
    return keys


def _held_by_other(
    owners: Mapping[tuple[str, str], int], contact_id: int, kind: str, value: str
) -> bool:
    return owners.get((kind, value), contact_id) != contact_id


class _Wave:
    """One wave's reads, decisions and writes."""

    def __init__(
        self,
        conn: Connection,
        store: Store,
        lineup: Lineup,
        taken: list[_Taken],
        owners: Mapping[tuple[str, str], int],
    ) -> None:
        self.conn = conn
        self.store = store
        self.lineup = lineup
        self.taken = taken
        self.owners = owners
        self.decisions: list[dict[str, Any]] = []

    def apply(self) -> dict[int, Outcome]:
        self._contacts()
        self._carts()
        applied = [entry for entry in self.taken if entry.stale is None]
        self._consent([entry for entry in applied if entry.contact_id is not None])
        self._enroll_or_touch(applied)
        if self.decisions:
            self.conn.execute(t.decisions.insert(), self.decisions)
        outcomes = {}
        for entry in self.taken:
            event_id = entry.item.event.event_id
            if entry.stale is not None:
                result = EventResult(event_id, EventStatus.STALE, entry.stale)
                outcomes[entry.index] = Outcome(result, entry.cart_id)
            else:
                outcomes[entry.index] = Outcome(EventResult(event_id, EventStatus.ACCEPTED))
        return outcomes

    def _contacts(self) -> None:
        """`ingest.upsert_contact` for each event: new shoppers in one insert, known ones'
        changes in one statement per set of columns."""
        fresh: list[tuple[_Taken, dict[str, Any]]] = []
        changes: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
        owners = self.owners
        for entry in self.taken:
            info = entry.item.event.contact
            if not (info.phone or info.email):
                continue
            if entry.contact is None:
                fresh.append((entry, new_contact_values(self.store.id, info, entry.item.now)))
                continue
            contact_id = entry.contact_id = int(entry.contact["id"])
            fields = contact_changes(
                info,
                entry.contact,
                partial(_held_by_other, owners, contact_id),
            )
            if fields:
                fields["updated_at"] = entry.item.now
                changes[tuple(sorted(fields))].append({"b_id": contact_id, **fields})
        k = t.contacts.c
        for rows in changes.values():
            self.conn.execute(update(t.contacts).where(k.id == bindparam("b_id")), rows)
        if fresh:
            ids = self.conn.execute(
                t.contacts.insert().returning(k.id, sort_by_parameter_order=True),
                [values for _, values in fresh],
            ).scalars()
            for (entry, _), contact_id in zip(fresh, ids, strict=True):
                entry.contact_id = int(contact_id)

    def _carts(self) -> None:
        """`ingest._update_if_newer`, or a new cart, or stale."""
        changes: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
        fresh: list[tuple[_Taken, dict[str, Any]]] = []
        for entry in self.taken:
            event, now = entry.item.event, entry.item.now
            content = cart_content(event, now, entry.contact_id)
            cart = entry.cart
            if cart is None:
                fresh.append(
                    (
                        entry,
                        {
                            "store_id": self.store.id,
                            "token": event.cart_token,
                            "created_at": now,
                            **content,
                        },
                    )
                )
                continue
            entry.cart_id = int(cart["id"])
            if cart["occurred_at"] < event.occurred_at and cart["status"] != CartStatus.ORDERED:
                changes[tuple(sorted(content))].append({"b_id": entry.cart_id, **content})
            else:
                entry.stale = stale_detail(cart["status"])
        c = t.carts.c
        for rows in changes.values():
            self.conn.execute(update(t.carts).where(c.id == bindparam("b_id")), rows)
        if fresh:
            ids = self.conn.execute(
                t.carts.insert().returning(c.id, sort_by_parameter_order=True),
                [values for _, values in fresh],
            ).scalars()
            for (entry, _), cart_id in zip(fresh, ids, strict=True):
                entry.cart_id = int(cart_id)

    def _consent(self, entries: list[_Taken]) -> None:
        """`ingest._checkout_consent`: grants appended to the ledger in one statement, then
        each shopper's cached flags refreshed from the fold of their whole ledger."""
        asked = [entry for entry in entries if entry.item.event.consent is not None]
        if not asked:
            return
        reminded = self._has_cart_reminders(
            [
                int(entry.contact["id"])
                for entry in asked
                if entry.contact is not None
                and entry.item.event.consent is not None
                and entry.item.event.consent.cart_reminders
                and entry.item.event.consent.sms_marketing
            ]
        )
        grants: list[dict[str, Any]] = []
        refreshed: dict[int, datetime] = {}
        for entry in asked:
            event, now = entry.item.event, entry.item.now
            flags = event.consent
            assert flags is not None and entry.contact_id is not None
            row = entry.contact
            current = (
                (bool(row["sms_marketing"]), bool(row["email_marketing"]), row["opted_out_at"])
                if row is not None
                else (False, False, None)
            )
            contact_id = entry.contact_id
            wanted = checkout_consent_wanted(
                event, None, current, partial(set.__contains__, reminded, contact_id)
            )
            for channel, purpose in wanted:
                grant = checkout_grant(
                    self.store.id, contact_id, channel, purpose, event, now, None
                )
                grants.append(ledger.ledger_values(**grant))
                refreshed[contact_id] = now
        if not grants:
            return
        self.conn.execute(t.consent_events.insert(), grants)
        folded = ledger.ledger(self.conn, refreshed)
        k = t.contacts.c
        self.conn.execute(
            update(t.contacts).where(k.id == bindparam("b_id")),
            [
                {
                    "b_id": contact_id,
                    **ledger.flag_values(ledger.views(folded[contact_id])),
                    "updated_at": at,
                }
                for contact_id, at in refreshed.items()
            ],
        )

    def _has_cart_reminders(self, contact_ids: list[int]) -> set[int]:
        """Of these shoppers, those whose latest cart-reminder entry is a grant."""
        if not contact_ids:
            return set()
        e = t.consent_events.c
        latest: dict[int, tuple[Any, ...]] = {}
        for contact_id, granted, received_at, entry_id in self.conn.execute(
            select(e.contact_id, e.granted, e.received_at, e.id).where(
                e.contact_id.in_(contact_ids), e.purpose == str(Purpose.CART_REMINDERS)
            )
        ):
            known = latest.get(contact_id)
            if known is None or (received_at, entry_id) > known[1:]:
                latest[contact_id] = (bool(granted), received_at, entry_id)
        return {contact_id for contact_id, found in latest.items() if found[0]}

    def _enroll_or_touch(self, entries: list[_Taken]) -> None:
        """`ingest._enroll_or_touch` for each applied checkout."""
        if not entries:
            return
        conn, lineup = self.conn, self.lineup
        e = t.enrollments.c
        enrollments: dict[int, list[Any]] = defaultdict(list)
        known = [entry.cart_id for entry in entries if entry.cart is not None]
        if known:
            for row in conn.execute(
                select(e.id, e.cart_id, e.flow_name, e.state, e.step_index, e.abandoned_at).where(
                    e.cart_id.in_(known)
                )
            ):
                enrollments[row.cart_id].append(row)
        touches: list[tuple[_Taken, Any, Any]] = []
        choosing: list[_Taken] = []
        for entry in entries:
            assert entry.cart_id is not None
            rows = enrollments.get(entry.cart_id, [])
            live = next((row for row in rows if row.state in _LIVE), None)
            if live is None:
                choosing.append(entry)
                continue
            assigned = lineup.get(live.flow_name)
            # While nothing has fired yet, abandonment moves later (`ingest._touch`).
            waiting = live.state == EnrollmentState.ACTIVE and live.step_index == 0
            triggered = lineup.triggered_by(entry.item.event.trigger)
            if assigned is not None and assigned in triggered and waiting:
                touches.append((entry, live, assigned.flow))
        self._touch(touches)
        self._enroll(choosing, enrollments)

    def _touch(self, touches: list[tuple[_Taken, Any, Any]]) -> None:
        if not touches:
            return
        d = t.decisions.c
        started = set(
            self.conn.execute(
                select(d.enrollment_id)
                .where(d.enrollment_id.in_([live.id for _, live, _ in touches]))
                .distinct()
            ).scalars()
        )
        moved = []
        for entry, live, flow in touches:
            abandoned_at = entry.item.event.occurred_at + flow.abandon_after
            if live.id not in started and abandoned_at > live.abandoned_at:
                moved.append(
                    {
                        "b_id": live.id,
                        "abandoned_at": abandoned_at,
                        "wake_at": abandoned_at + flow.steps[0].at,
                        "updated_at": entry.item.now,
                    }
                )
        if moved:
            e = t.enrollments.c
            self.conn.execute(update(t.enrollments).where(e.id == bindparam("b_id")), moved)

    def _enroll(self, entries: list[_Taken], enrollments: Mapping[int, list[Any]]) -> None:
        if not entries:
            return
        conn, store, lineup = self.conn, self.store, self.lineup
        cart_ids = [entry.cart_id for entry in entries]
        sql = ingest_sql(conn.dialect)
        carts = {
            row["id"]: cart_from_row(row)
            for row in sql.rows_where(conn, t.carts, _CART, [("id", cart_ids)])
        }
        contact_ids = {cart.contact_id for cart in carts.values() if cart.contact_id is not None}
        contacts = {
            row["id"]: contact_from_row(row)
            for row in sql.rows_where(conn, t.contacts, _CONTACT, [("id", sorted(contact_ids))])
        }
        counted = self._abandoned_counts(entries, carts)
        live_elsewhere = self._live_by_contact(contact_ids)
        skips_seen = self._skips_seen(cart_ids)
        rates = store_rates(store.policy)
        promoted: dict[str, str | None] = {}
        new: list[dict[str, Any]] = []
        for entry in entries:
            assert entry.cart_id is not None
            now = entry.item.now
            cart = carts[entry.cart_id]
            contact = None
            if cart.contact_id is not None:
                contact = replace(
                    contacts[cart.contact_id], abandoned_count=counted.get(cart.contact_id, 0)
                )
            tried = {row.flow_name for row in enrollments.get(entry.cart_id, [])}
            willing = [
                assigned
                for assigned in lineup.triggered_by(entry.item.event.trigger)
                if assigned.flow.name not in tried
                and may_enroll(assigned.flow, cart, contact, rates=rates)
            ]
            if not willing:
                continue
            chosen, *others = willing
            flow = chosen.flow
            if flow.variants and flow.name not in promoted:
                promoted[flow.name] = promoted_variant(conn, store.id, flow.name)
            plan = plan_enrollment(
                flow, cart.token, entry.item.event.occurred_at, promoted=promoted.get(flow.name)
            )
            if cart.contact_id is not None and lineup.suppression > timedelta(0):
                since = now - lineup.suppression
                busy = next(
                    (
                        name
                        for name, created_at in live_elsewhere.get(cart.contact_id, [])
                        if name != flow.name and created_at >= since
                    ),
                    None,
                )
                if busy is not None:
                    text = suppression_reason(chosen, busy, lineup.suppression)
                    self._skip_once(skips_seen, entry.cart_id, SUPPRESSION_RULE, text, now)
                    continue
            new.append(
                {
                    "store_id": store.id,
                    "cart_id": entry.cart_id,
                    "flow_name": flow.name,
                    "flow_version": flow.version,
                    "step_index": 0,
                    "state": str(EnrollmentState.ACTIVE),
                    "abandoned_at": plan.abandoned_at,
                    "wake_at": plan.wake_at,
                    "variant": plan.variant,
                    "holdout": plan.holdout,
                    "held_channel": plan.held_channel,
                    "created_at": now,
                    "updated_at": now,
                }
            )
            for other in others:
                text = priority_skip_reason(other, chosen)
                self._skip_once(skips_seen, entry.cart_id, PRIORITY_RULE, text, now)
        if new:
            conn.execute(t.enrollments.insert(), new)

    def _abandoned_counts(self, entries: list[_Taken], carts: Mapping[int, Any]) -> dict[int, int]:
        """`contact.abandoned_count` as of each event's receipt (one query per calendar year)."""
        by_year: dict[int, set[int]] = defaultdict(set)
        nows: dict[int, datetime] = {}
        for entry in entries:
            assert entry.cart_id is not None
            contact_id = carts[entry.cart_id].contact_id
            if contact_id is not None:
                by_year[entry.item.now.year].add(contact_id)
                nows[entry.item.now.year] = entry.item.now
        counted: dict[int, int] = {}
        for year, contact_ids in by_year.items():
            counted.update(abandoned_this_year(self.conn, contact_ids, nows[year]))
        return counted

    def _live_by_contact(self, contact_ids: Collection[int]) -> dict[int, list[tuple[str, Any]]]:
        """Per shopper, (flow name, started) of their live enrollments, oldest first."""
        if not contact_ids or self.lineup.suppression <= timedelta(0):
            return {}
        e, c = t.enrollments.c, t.carts.c
        found: dict[int, list[tuple[str, Any]]] = defaultdict(list)
        for contact_id, flow_name, created_at in self.conn.execute(
            select(c.contact_id, e.flow_name, e.created_at)
            .join(t.carts, c.id == e.cart_id)
            .where(c.contact_id.in_(list(contact_ids)), e.state.in_(_LIVE))
            .order_by(e.id)
        ):
            found[contact_id].append((flow_name, created_at))
        return found

    def _skips_seen(self, cart_ids: Sequence[int | None]) -> set[tuple[int, str, str]]:
        d = t.decisions.c
        return {
            (row.cart_id, row.rule, row.reason)
            for row in self.conn.execute(
                select(d.cart_id, d.rule, d.reason).where(
                    d.cart_id.in_(cart_ids), d.rule.in_(_SKIP_RULES)
                )
            )
        }

    def _skip_once(
        self, seen: set[tuple[int, str, str]], cart_id: int, rule: str, text: str, now: datetime
    ) -> None:
        """`ingest._skip_once`: why a flow did not start, recorded once per cart."""
        if (cart_id, rule, text) in seen:
            return
        seen.add((cart_id, rule, text))
        self.decisions.append(
            {
                "store_id": self.store.id,
                "enrollment_id": None,
                "cart_id": cart_id,
                "step_id": None,
                "outcome": "skip",
                "rule": rule,
                "reason": text,
                "at": now,
            }
        )
