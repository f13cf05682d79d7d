"""The timer: claim due enrollments in a batch, advance them in memory, write back in one go.

A timer is a row with `wake_at`; nothing sleeps in memory, so a restart loses nothing and memory
does not grow with the number of waiting carts.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, select, update
from sqlalchemy.dialects import postgresql, sqlite

from cartback.core.consent import erased_view
from cartback.core.engine import Advance, Outcome, advance
from cartback.core.flows import Flow
from cartback.core.model import Cart, Channel, ConsentView, Contact, Enrollment, StepOutcome, Store
from cartback.core.policy import SentRecord
from cartback.core.storepolicy import store_policy
from cartback.services.compose import ComposeError, compose
from cartback.services.consent import LazyViews
from cartback.services.consent import ledger as consent_ledger
from cartback.services.discounts import code_for
from cartback.services.flows import FlowRegistry, UnknownFlow
from cartback.services.gates import policy_gate
from cartback.store import tables as t
from cartback.store.db import is_sqlite
from cartback.store.rows import cart_from_row, contact_from_row, enrollment_from_row, store_from_row

# Sends that count for cooldowns and caps: everything claimed or out, not what was withdrawn.
COUNTED = ("pending", "claimed", "sending", "sent", "delivered", "unknown")
RECENT = timedelta(days=7)


@dataclass
class TickStats:
    claimed: int = 0
    sent: int = 0
    skipped: int = 0
    deferred: int = 0
    exited: int = 0
    completed: int = 0
    lateness: list[float] = field(default_factory=list)


def claim_due(conn: Connection, now: datetime, limit: int) -> list[Mapping[Any, Any]]:
    e = t.enrollments.c
    query = select(t.enrollments).where(e.wake_at <= now).order_by(e.wake_at).limit(limit)
    if not is_sqlite(conn.engine):
        # Rows another worker holds are passed over, not waited for.
        query = query.with_for_update(skip_locked=True)
    return list(conn.execute(query).mappings())


def tick(
    engine: Engine,
    registry: FlowRegistry,
    now: datetime,
    *,
    limit: int = 500,
    base_url: str = "",
) -> TickStats:
    stats = TickStats()
    with engine.begin() as conn:
        rows = claim_due(conn, now, limit)
        if not rows:
            return stats
        stats.claimed = len(rows)
        context = _load_context(conn, rows, now)
        decision_rows: list[dict[str, Any]] = []
        outbox_rows: list[dict[str, Any]] = []
        link_rows: list[dict[str, Any]] = []
        updates: list[dict[str, Any]] = []
        for row in rows:
            stats.lateness.append((now - row["wake_at"]).total_seconds())
            enrollment = enrollment_from_row(row, context.history.get(row["id"]))
            result = _advance_one(conn, registry, context, enrollment, now)
            if result is None:
                continue
            advanced, flow = result
            _collect(
                conn,
                advanced,
                flow,
                context,
                now,
                base_url,
                decision_rows,
                outbox_rows,
                link_rows,
                updates,
                stats,
            )
        _write(conn, decision_rows, outbox_rows, link_rows, updates)
    return stats


@dataclass
class _Context:
    carts: dict[int, Cart]
    contacts: dict[int, Contact]
    stores: dict[int, Store]
    opted_out_at: dict[int, datetime | None]
    created_at: dict[int, datetime]
    history: dict[int, dict[str, StepOutcome]]
    consent: dict[int, Mapping[Channel, ConsentView]]
    recent: dict[int, list[SentRecord]]


def _load_context(conn: Connection, rows: list[Mapping[Any, Any]], now: datetime) -> _Context:
    cart_ids = {row["cart_id"] for row in rows}
    enrollment_ids = [row["id"] for row in rows]
    carts = {
        r["id"]: cart_from_row(r)
        for r in conn.execute(select(t.carts).where(t.carts.c.id.in_(cart_ids))).mappings()
    }
    contact_ids = sorted({c.contact_id for c in carts.values() if c.contact_id is not None})
    contacts: dict[int, Contact] = {}
    opted_out_at: dict[int, datetime | None] = {}
    erased: set[int] = set()
    query = select(t.contacts).where(t.contacts.c.id.in_(contact_ids)).order_by(t.contacts.c.id)
    if not is_sqlite(conn.engine):
        # The per-contact lock: two workers cannot both pass a cap or a cooldown for one shopper.
        # Taken in id order, so two batches can never wait on each other in a cycle.
        query = query.with_for_update()
    for r in conn.execute(query).mappings():
        contacts[r["id"]] = contact_from_row(r)
        opted_out_at[r["id"]] = r["opted_out_at"]
        if r["erased_at"] is not None:
            erased.add(r["id"])
    events = consent_ledger(conn, contact_ids)
    consent: dict[int, Mapping[Channel, ConsentView]] = {
        contact_id: (
            {channel: erased_view(channel) for channel in Channel}
            if contact_id in erased
            else LazyViews(events.get(contact_id, ()))
        )
        for contact_id in contact_ids
    }
    recent = _recent_sends(conn, contact_ids, now)
    store_ids = {row["store_id"] for row in rows}
    stores = {
        r["id"]: store_from_row(r)
        for r in conn.execute(select(t.stores).where(t.stores.c.id.in_(store_ids))).mappings()
    }
    history: dict[int, dict[str, StepOutcome]] = defaultdict(dict)
    o = t.outbox.c
    for sent in conn.execute(
        select(
            o.enrollment_id, o.step_id, o.status, o.delivered_at, o.opened_at, o.clicked_at
        ).where(o.enrollment_id.in_(enrollment_ids))
    ):
        history[sent.enrollment_id][sent.step_id] = StepOutcome(
            sent=sent.status in ("claimed", "sending", "sent", "delivered", "unknown"),
            delivered=sent.delivered_at is not None or sent.status == "delivered",
            opened=sent.opened_at is not None,
            clicked=sent.clicked_at is not None,
        )
    created_at = {row["id"]: row["created_at"] for row in rows}
    return _Context(carts, contacts, stores, opted_out_at, created_at, history, consent, recent)


def _recent_sends(
    conn: Connection, contact_ids: list[int], now: datetime
) -> dict[int, list[SentRecord]]:
    o, e = t.outbox.c, t.enrollments.c
    recent: dict[int, list[SentRecord]] = defaultdict(list)
    for row in conn.execute(
        select(o.contact_id, o.channel, o.created_at, o.sent_at, e.cart_id)
        .join(t.enrollments, e.id == o.enrollment_id)
        .where(
            o.contact_id.in_(contact_ids),
            o.created_at >= now - RECENT,
            o.status.in_(COUNTED),
        )
    ):
        recent[row.contact_id].append(
            SentRecord(
                channel=Channel(row.channel), at=row.sent_at or row.created_at, cart_id=row.cart_id
            )
        )
    return recent


def _advance_one(
    conn: Connection,
    registry: FlowRegistry,
    context: _Context,
    enrollment: Enrollment,
    now: datetime,
) -> tuple[Advance, Flow] | None:
    try:
        flow = registry.get(enrollment.flow_name, enrollment.flow_version, conn)
    except UnknownFlow:
        return None
    # Earlier steps with no message were skipped; conditions may ask about that.
    earlier = flow.steps[: enrollment.step_index]
    if any(step.id not in enrollment.history for step in earlier):
        history = dict(enrollment.history)
        for step in earlier:
            history.setdefault(step.id, StepOutcome(skipped=True))
        enrollment = replace(enrollment, history=history)
    cart = context.carts[enrollment.cart_id]
    contact = context.contacts.get(cart.contact_id) if cart.contact_id is not None else None
    opted_out = False
    if contact is not None:
        stamp = context.opted_out_at.get(contact.id)
        opted_out = stamp is not None and stamp >= context.created_at[enrollment.id]
    if contact is None:
        return advance(flow, enrollment, cart, contact, now, opted_out=opted_out), flow
    store = context.stores[enrollment.store_id]
    gate = policy_gate(
        cart,
        contact,
        enrollment,
        consent=context.consent[contact.id],
        recent=context.recent[contact.id],
        store_policy=store_policy(store.policy, store.default_zone),
        now=now,
    )
    return advance(flow, enrollment, cart, contact, now, opted_out=opted_out, gate=gate), flow


def _pooled_code(
    conn: Connection, store_id: int, pool: str, cart: Cart, *, now: datetime
) -> str | None:
    return code_for(conn, store_id, pool, cart, now)


def _collect(
    conn: Connection,
    result: Advance,
    flow: Flow,
    context: _Context,
    now: datetime,
    base_url: str,
    decision_rows: list[dict[str, Any]],
    outbox_rows: list[dict[str, Any]],
    link_rows: list[dict[str, Any]],
    updates: list[dict[str, Any]],
    stats: TickStats,
) -> None:
    enrollment = result.enrollment
    cart = context.carts[enrollment.cart_id]
    store = context.stores[enrollment.store_id]
    contact = context.contacts.get(cart.contact_id) if cart.contact_id is not None else None
    sends = {step.id: step for step in result.sends}
    for decision in result.decisions:
        outcome, rule, reason = decision.outcome, decision.rule, decision.reason
        step = sends.get(decision.step_id or "")
        if outcome is Outcome.SEND and step is not None and contact is not None:
            try:
                composed = compose(
                    store,
                    cart,
                    contact,
                    enrollment,
                    step,
                    now,
                    base_url,
                    codes=partial(code_for, conn, store.id, now=now),
                )
                # The dispatcher drops the message rather than send it after this instant.
                outbox_rows.append(
                    {**composed.outbox, "send_before": result.send_before.get(step.id)}
                )
                link_rows.extend(composed.links)
                stats.sent += 1
            except ComposeError as error:
                outcome, rule, reason = Outcome.SKIP, error.rule, str(error)
                stats.skipped += 1
        elif outcome is Outcome.SKIP or outcome is Outcome.HOLDOUT:
            stats.skipped += 1
        elif outcome is Outcome.DEFER:
            stats.deferred += 1
        elif outcome is Outcome.EXIT:
            stats.exited += 1
        elif outcome is Outcome.COMPLETE:
            stats.completed += 1
        decision_rows.append(
            {
                "store_id": enrollment.store_id,
                "enrollment_id": enrollment.id,
                "cart_id": enrollment.cart_id,
                "step_id": decision.step_id,
                "outcome": str(outcome),
                "rule": rule,
                "reason": reason,
                "at": now,
            }
        )
    updates.append(
        {
            "b_id": enrollment.id,
            "step_index": enrollment.step_index,
            "state": str(enrollment.state),
            "wake_at": enrollment.wake_at,
            "exit_reason": enrollment.exit_reason,
            "updated_at": now,
        }
    )


def _write(
    conn: Connection,
    decision_rows: Iterable[dict[str, Any]],
    outbox_rows: list[dict[str, Any]],
    link_rows: list[dict[str, Any]],
    updates: list[dict[str, Any]],
) -> None:
    decision_rows = list(decision_rows)
    if link_rows:
        conn.execute(t.links.insert(), link_rows)
    if decision_rows:
        conn.execute(t.decisions.insert(), decision_rows)
    if outbox_rows:
        # The unique (enrollment, step) key makes a second write of the same step a no-op.
        insert = (
            sqlite.insert(t.outbox) if is_sqlite(conn.engine) else postgresql.insert(t.outbox)
        ).on_conflict_do_nothing(index_elements=["enrollment_id", "step_id"])
        conn.execute(insert, outbox_rows)
    if updates:
        e = t.enrollments.c
        conn.execute(
            update(t.enrollments)
            .where(e.id == bindparam("b_id"))
            .values(
                step_index=bindparam("step_index"),
                state=bindparam("state"),
                wake_at=bindparam("wake_at"),
                exit_reason=bindparam("exit_reason"),
                updated_at=bindparam("updated_at"),
            ),
            updates,
        )
