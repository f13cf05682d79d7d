"""The timer: claim due enrollments in a batch, advance them in memory, write back in one go.

A timer is a row with `wake_at`; nothing sleeps in memory, so a restart loses nothing and memory
does not grow with the number of waiting carts.

One bad enrollment never blocks the batch: a failure while advancing or composing one is caught
for that one, and a failed batch write is redone one enrollment at a time, each under its own
savepoint, so the others commit. A failing enrollment is retried a few times, then parked.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import partial
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, bindparam, func, select, update
from sqlalchemy.exc import SQLAlchemyError

from cartback.core.consent import ConsentEvent, erased_view
from cartback.core.engine import LATE_RULE, Advance, Outcome, advance, hold_step
from cartback.core.flows import Flow, Step, with_exclusions
from cartback.core.model import (
    Cart,
    Channel,
    ConsentView,
    Contact,
    Enrollment,
    EnrollmentState,
    StepOutcome,
    Store,
    format_duration,
)
from cartback.core.policy import SentRecord
from cartback.core.sandbox import timed_out
from cartback.core.storepolicy import store_exclusions, store_policy
from cartback.services import outbound, unique_codes
from cartback.services.compose import PENDING_RULE, UNIQUE_POOL, ComposeError, compose
from cartback.services.consent import LazyViews, event_from_row
from cartback.services.discounts import code_for
from cartback.services.flows import FlowRegistry, UnknownFlow
from cartback.services.gates import policy_gate
from cartback.store import tables as t
from cartback.store.db import is_sqlite
from cartback.store.rows import (
    cart_from_row,
    contact_from_row,
    enrollment_from_row,
    holds_to_json,
    store_from_row,
)
from cartback.store.timer_sql import TimerSql, timer_sql

log = logging.getLogger("cartback.timer")

RECENT = timedelta(days=7)
# SQLite: how long a claimed batch is kept from other claims while it is computed outside the
# write lock. Longer than any batch takes; a worker that dies mid-batch delays it this long.
LEASE = timedelta(seconds=60)
# A failing enrollment is tried again after each of these waits, then parked for an operator.
RETRY_AFTER = (timedelta(minutes=1), timedelta(minutes=5))
RETRY_RULE = "timer.retry"
PARKED_RULE = "timer.parked"
RESUMED_RULE = "timer.resumed"

_T = TypeVar("_T")


@dataclass
class TickStats:
    claimed: int = 0
    sent: int = 0
    skipped: int = 0
    deferred: int = 0
    exited: int = 0
    completed: int = 0
    # Steps skipped because they were more than their grace past due (also in `skipped`).
    late: int = 0
    # Enrollments that failed in this tick: to be retried, or parked.
    failed: int = 0
    parked: int = 0
    lateness: list[float] = field(default_factory=list)

    def add(self, other: TickStats) -> None:
        self.sent += other.sent
        self.skipped += other.skipped
        self.deferred += other.deferred
        self.exited += other.exited
        self.completed += other.completed
        self.late += other.late


def tick(
    engine: Engine,
    registry: FlowRegistry,
    now: datetime,
    *,
    limit: int = 500,
    base_url: str = "",
) -> TickStats:
    """Advance up to `limit` due enrollments. PostgreSQL: one transaction, the claimed rows and
    their contacts locked (other workers skip or wait for them). SQLite has one write lock for
    the whole database, so the batch is claimed and leased in one short transaction, computed
    outside any, and written in another (`_tick_leased`)."""
    sql = timer_sql(engine.dialect)
    if is_sqlite(engine):
        return _tick_leased(engine, sql, registry, now, limit, base_url)
    stats = TickStats()
    with engine.begin() as conn:
        rows = sql.claim(conn, now, limit)
        if not rows:
            return stats
        outbound.carts_abandoned(conn, rows, now)
        context = _load_context(conn, sql, rows, now)
        planned, failures = _plan_batch(conn, registry, context, rows, now, base_url, stats)
        _write_batch(conn, registry, planned, failures, now, stats)
    return stats


def _tick_leased(
    engine: Engine,
    sql: TimerSql,
    registry: FlowRegistry,
    now: datetime,
    limit: int,
    base_url: str,
) -> TickStats:
    """The claim moves the batch's wake times to a lease (`now + LEASE`), which keeps other
    claims off them while this worker computes. The write goes through only for enrollments
    whose wake time is still that lease (an order, a cart update or an erasure since then has
    changed it), and not for a shopper another worker queued a message to meanwhile: those go
    back to their wake time, to be decided again with that send counted."""
    stats = TickStats()
    lease = now + LEASE
    with engine.connect() as conn:
        with conn.begin():
            rows = sql.claim(conn, now, limit)
            if not rows:
                return stats
            sql.lease(conn, [row["id"] for row in rows], lease)
            context = _load_context(conn, sql, rows, now)
            seen = sql.max_outbox_id(conn)
        try:
            # A step that asks the database (a pooled code) takes the write lock from here on.
            planned, failures = _plan_batch(conn, registry, context, rows, now, base_url, stats)
            held = sql.still_held(conn, [row["id"] for row in rows], lease)
            crowded = sql.sent_since(conn, seen, sorted(context.contacts))
            again = [
                row for row in rows if row["id"] in held and _contact_id(context, row) in crowded
            ]
            mine = held - {row["id"] for row in again}
            sql.release(conn, again)
            outbound.carts_abandoned(conn, [row for row in rows if row["id"] in mine], now)
            _write_batch(
                conn,
                registry,
                [item for item in planned if item.row["id"] in mine],
                [failure for failure in failures if failure.row["id"] in mine],
                now,
                stats,
            )
            conn.commit()
        except BaseException:
            conn.rollback()
            _release_after_failure(engine, sql, rows, lease)
            raise
    return stats


def _contact_id(context: _Context, row: Mapping[Any, Any]) -> int | None:
    cart = context.carts.get(row["cart_id"])
    return None if cart is None else cart.contact_id


def _release_after_failure(
    engine: Engine, sql: TimerSql, rows: list[dict[str, Any]], lease: datetime
) -> None:
    """After a failed write the batch is due again at once, not when its lease runs out."""
    try:
        with engine.begin() as conn:
            held = sql.still_held(conn, [row["id"] for row in rows], lease)
            sql.release(conn, [row for row in rows if row["id"] in held])
    except SQLAlchemyError as error:
        log.warning("timer could not release its lease (%s)", type(error).__name__)


def _plan_batch(
    conn: Connection,
    registry: FlowRegistry,
    context: _Context,
    rows: list[dict[str, Any]],
    now: datetime,
    base_url: str,
    stats: TickStats,
) -> tuple[list[_Planned], list[_Failure]]:
    stats.claimed = len(rows)
    planned: list[_Planned] = []
    failures: list[_Failure] = []
    for row in rows:
        stats.lateness.append((now - row["wake_at"]).total_seconds())
        try:
            item = _plan(conn, registry, context, row, now, base_url)
        except SQLAlchemyError:
            # The database failed, not this enrollment; the transaction may be gone.
            raise
        except _StageFailed as failed:
            failures.append(_Failure(row, failed.stage, failed.error, failed.step_id))
            continue
        except Exception as error:
            failures.append(_Failure(row, "advance", error))
            continue
        planned.append(item)
    return planned, failures


def _write_batch(
    conn: Connection,
    registry: FlowRegistry,
    planned: list[_Planned],
    failures: list[_Failure],
    now: datetime,
    stats: TickStats,
) -> None:
    written, write_failures = _write_isolating(conn, planned)
    for item in written:
        stats.add(item.stats)
    failures = failures + write_failures
    if failures:
        _retry_or_park(conn, registry, failures, now, stats)


@dataclass
class _Planned:
    """One enrollment's rows, kept apart so that it can be written, or dropped, on its own."""

    row: Mapping[Any, Any]
    decisions: list[dict[str, Any]] = field(default_factory=list)
    outbox: list[dict[str, Any]] = field(default_factory=list)
    links: list[dict[str, Any]] = field(default_factory=list)
    updates: list[dict[str, Any]] = field(default_factory=list)
    stats: TickStats = field(default_factory=TickStats)


@dataclass(frozen=True, slots=True)
class _Failure:
    row: Mapping[Any, Any]
    stage: str
    error: BaseException
    # The step that failed, when known; else the one the enrollment waits on.
    step_id: str | None = None


class _StageFailed(Exception):
    def __init__(self, stage: str, error: BaseException, step_id: str) -> None:
        super().__init__(stage)
        self.stage = stage
        self.error = error
        self.step_id = step_id


def _plan(
    conn: Connection,
    registry: FlowRegistry,
    context: _Context,
    row: Mapping[Any, Any],
    now: datetime,
    base_url: str,
) -> _Planned:
    enrollment = enrollment_from_row(row, context.history.get(row["id"]))
    advanced, flow = _advance_one(conn, registry, context, enrollment, now)
    item = _Planned(row)
    _collect(conn, advanced, flow, context, now, base_url, item)
    return item


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
    # Rows that could not be read, by (table, id): only their own enrollments fail.
    unreadable: dict[tuple[str, int], Exception] = field(default_factory=dict)

    def cart(self, cart_id: int) -> Cart:
        self._check("carts", cart_id)
        return self.carts[cart_id]

    def store(self, store_id: int) -> Store:
        self._check("stores", store_id)
        return self.stores[store_id]

    def contact(self, contact_id: int | None) -> Contact | None:
        if contact_id is None:
            return None
        self._check("contacts", contact_id)
        return self.contacts.get(contact_id)

    def _check(self, table: str, row_id: int) -> None:
        error = self.unreadable.get((table, row_id))
        if error is not None:
            raise error


def _read_each(
    rows: Iterable[Mapping[Any, Any]],
    read: Callable[[Mapping[Any, Any]], _T],
    table: str,
    unreadable: dict[tuple[str, int], Exception],
) -> dict[int, _T]:
    done: dict[int, _T] = {}
    for row in rows:
        try:
            done[row["id"]] = read(row)
        except Exception as error:
            unreadable[(table, row["id"])] = error
    return done


def _load_context(
    conn: Connection, sql: TimerSql, rows: list[dict[str, Any]], now: datetime
) -> _Context:
    unreadable: dict[tuple[str, int], Exception] = {}
    carts = _read_each(
        sql.carts(conn, list({row["cart_id"] for row in rows})), cart_from_row, "carts", unreadable
    )
    contact_ids = sorted({c.contact_id for c in carts.values() if c.contact_id is not None})
    opted_out_at: dict[int, datetime | None] = {}
    erased: set[int] = set()
    contact_rows = sql.contacts(conn, contact_ids)
    contacts = _read_each(contact_rows, contact_from_row, "contacts", unreadable)
    year_start = now.replace(month=1, day=1, hour=0, minute=0, second=0, microsecond=0)
    for contact_id, count in sql.abandoned_since(conn, contact_ids, year_start).items():
        if contact_id in contacts:
            contacts[contact_id] = replace(contacts[contact_id], abandoned_count=count)
    for r in contact_rows:
        opted_out_at[r["id"]] = r["opted_out_at"]
        if r["erased_at"] is not None:
            erased.add(r["id"])
    events: dict[int, list[ConsentEvent]] = defaultdict(list)
    for event_row in sql.consent_events(conn, contact_ids):
        events[event_row["contact_id"]].append(event_from_row(event_row))
    consent: dict[int, Mapping[Channel, ConsentView]] = {
        contact_id: (
            {channel: erased_view(channel) for channel in Channel}
            if contact_id in erased
            else LazyViews(events.get(contact_id, ()))
        )
        for contact_id in contact_ids
    }
    recent = _recent_sends(conn, sql, contact_ids, now)
    stores = _read_each(
        sql.stores(conn, list({row["store_id"] for row in rows})),
        store_from_row,
        "stores",
        unreadable,
    )
    history: dict[int, dict[str, StepOutcome]] = defaultdict(dict)
    for sent in sql.history(conn, [row["id"] for row in rows]):
        status = sent["status"]
        history[sent["enrollment_id"]][sent["step_id"]] = StepOutcome(
            sent=status in ("claimed", "sending", "sent", "delivered", "unknown"),
            delivered=sent["delivered_at"] is not None or status == "delivered",
            opened=sent["opened_at"] is not None,
            clicked=sent["clicked_at"] is not None,
            queued_at=sent["created_at"],
        )
    created_at = {row["id"]: row["created_at"] for row in rows}
    return _Context(
        carts, contacts, stores, opted_out_at, created_at, history, consent, recent, unreadable
    )


def _recent_sends(
    conn: Connection, sql: TimerSql, contact_ids: list[int], now: datetime
) -> dict[int, list[SentRecord]]:
    recent: dict[int, list[SentRecord]] = defaultdict(list)
    for row in sql.recent(conn, contact_ids, now - RECENT):
        recent[row["contact_id"]].append(
            SentRecord(
                channel=Channel(row["channel"]),
                at=row["sent_at"] or row["created_at"],
                cart_id=row["cart_id"],
            )
        )
    return recent


def _advance_one(
    conn: Connection,
    registry: FlowRegistry,
    context: _Context,
    enrollment: Enrollment,
    now: datetime,
) -> tuple[Advance, Flow]:
    # An unknown flow version (UnknownFlow) fails this enrollment alone: retried, then parked.
    flow = registry.get(enrollment.flow_name, enrollment.flow_version, conn)
    # Earlier steps with no message, and not held, were skipped; conditions may ask about that.
    earlier = [s for s in flow.steps[: enrollment.step_index] if s.id not in enrollment.holds]
    if any(step.id not in enrollment.history for step in earlier):
        history = dict(enrollment.history)
        for step in earlier:
            history.setdefault(step.id, StepOutcome(skipped=True))
        enrollment = replace(enrollment, history=history)
    cart = context.cart(enrollment.cart_id)
    contact = context.contact(cart.contact_id)
    opted_out = False
    if contact is not None:
        stamp = context.opted_out_at.get(contact.id)
        opted_out = stamp is not None and stamp >= context.created_at[enrollment.id]
    if contact is None:
        return advance(flow, enrollment, cart, contact, now, opted_out=opted_out), flow
    store = context.store(enrollment.store_id)
    policy = store_policy(store.policy, store.default_zone)
    flow = with_exclusions(flow, store_exclusions(store.policy))
    gate = policy_gate(
        cart,
        contact,
        enrollment,
        consent=context.consent[contact.id],
        recent=context.recent[contact.id],
        store_policy=policy,
        now=now,
        spacing=flow.spacing,
    )
    decided = advance(
        flow, enrollment, cart, contact, now, opted_out=opted_out, gate=gate, rates=policy.rates
    )
    return decided, flow


def _pooled_code(
    conn: Connection, store_id: int, pool: str, cart: Cart, *, now: datetime
) -> str | None:
    return code_for(conn, store_id, pool, cart, now)


def _codes(conn: Connection, store_id: int, pool: str, cart: Cart, *, now: datetime) -> str | None:
    if pool == UNIQUE_POOL:
        return unique_codes.stored_code(conn, store_id, cart.id)
    return code_for(conn, store_id, pool, cart, now)


def _pending(
    conn: Connection, flow: Flow, enrollment: Enrollment, step: Step, reason: str
) -> tuple[Outcome, str, str]:
    """A due step whose unique code is not issued yet: deferred a few times while the worker's
    issuer loop tries, then skipped. Stores that cannot issue codes skip at once."""
    if not unique_codes.can_issue(conn, enrollment.store_id):
        return (
            Outcome.SKIP,
            unique_codes.UNIQUE_RULE,
            f"step {step.id} asks for a unique code per cart, which needs a shop integration "
            "that issues codes (Shopify or WooCommerce with an API token); none is configured for "
            "this store",
        )
    waited = unique_codes.pending_count(conn, enrollment.id, step.id)
    if waited >= unique_codes.PENDING_LIMIT:
        return (
            Outcome.SKIP,
            unique_codes.UNIQUE_RULE,
            f"step {step.id}: no unique code was issued after {waited} waits of "
            f"{format_duration(unique_codes.PENDING_WAIT)}; the shop's API may be failing "
            "(see the worker's log)",
        )
    return (
        Outcome.DEFER,
        PENDING_RULE,
        f"{reason}; waiting {format_duration(unique_codes.PENDING_WAIT)} "
        f"({waited + 1} of {unique_codes.PENDING_LIMIT})",
    )


def _collect(
    conn: Connection,
    result: Advance,
    flow: Flow,
    context: _Context,
    now: datetime,
    base_url: str,
    item: _Planned,
) -> None:
    enrollment = result.enrollment
    cart = context.cart(enrollment.cart_id)
    store = context.store(enrollment.store_id)
    contact = context.contact(cart.contact_id)
    stats = item.stats
    sends = {step.id: step for step in result.sends}
    # Set when a step waits for its unique code: what advance decided after it (the flow's
    # completion) has not happened, so it is not recorded.
    waiting = False
    for decision in result.decisions:
        if waiting:
            break
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
                    codes=partial(_codes, conn, store.id, now=now),
                )
            except ComposeError as error:
                if timed_out(error):
                    # The render ran out of wall-clock time (a long garbage collection, a busy
                    # CPU), not the template's fault: tried again later, never skipped for good.
                    raise _StageFailed("compose", error, step.id) from error
                outcome, rule, reason = Outcome.SKIP, error.rule, str(error)
                if rule == PENDING_RULE:
                    outcome, rule, reason = _pending(conn, flow, enrollment, step, reason)
                if outcome is Outcome.DEFER:
                    # The step is held again, tried once the issuer loop has had its turn.
                    enrollment = hold_step(enrollment, step.id, now + unique_codes.PENDING_WAIT)
                    stats.deferred += 1
                    waiting = True
                else:
                    stats.skipped += 1
            except SQLAlchemyError:
                raise
            except Exception as error:
                raise _StageFailed("compose", error, step.id) from error
            else:
                # The dispatcher drops the message rather than send it after this instant.
                item.outbox.append(
                    {**composed.outbox, "send_before": result.send_before.get(step.id)}
                )
                item.links.extend(composed.links)
                stats.sent += 1
        elif outcome is Outcome.SKIP or outcome is Outcome.HOLDOUT:
            stats.skipped += 1
            stats.late += rule == LATE_RULE
        elif outcome is Outcome.DEFER:
            stats.deferred += 1
        elif outcome is Outcome.EXIT:
            stats.exited += 1
        elif outcome is Outcome.COMPLETE:
            stats.completed += 1
        item.decisions.append(
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
    item.updates.append(
        {
            "b_id": enrollment.id,
            "step_index": enrollment.step_index,
            "state": str(enrollment.state),
            "wake_at": enrollment.wake_at,
            "exit_reason": enrollment.exit_reason,
            "holds": holds_to_json(enrollment),
            "updated_at": now,
        }
    )


def _write_isolating(
    conn: Connection, planned: list[_Planned]
) -> tuple[list[_Planned], list[_Failure]]:
    """Write the batch in one go; if that fails, write each enrollment under its own savepoint,
    so the good ones commit and the bad one is named. The happy path costs one savepoint."""
    if not planned:
        return [], []
    try:
        with conn.begin_nested():
            _write(
                conn,
                (row for item in planned for row in item.decisions),
                [row for item in planned for row in item.outbox],
                [row for item in planned for row in item.links],
                [row for item in planned for row in item.updates],
            )
    except Exception as error:
        if len(planned) == 1:
            return [], [_Failure(planned[0].row, "write", error, _failed_step(planned[0]))]
        log.warning(
            "timer batch write failed (%s); writing its %d enrollments one by one",
            type(error).__name__,
            len(planned),
        )
    else:
        return planned, []
    written: list[_Planned] = []
    failures: list[_Failure] = []
    for item in planned:
        try:
            with conn.begin_nested():
                _write(conn, item.decisions, item.outbox, item.links, item.updates)
        except Exception as error:
            failures.append(_Failure(item.row, "write", error, _failed_step(item)))
        else:
            written.append(item)
    return written, failures


def _failed_step(item: _Planned) -> str | None:
    return next((row["step_id"] for row in item.outbox), None)


def _retry_or_park(
    conn: Connection,
    registry: FlowRegistry,
    failures: list[_Failure],
    now: datetime,
    stats: TickStats,
) -> None:
    """Record each failure as a decision and wake the enrollment again after a short wait; after
    len(RETRY_AFTER) retries it is parked. Attempts are counted from the enrollment's decisions
    since it last moved on (`updated_at`), so no counter column is needed."""
    d, e = t.decisions.c, t.enrollments.c
    ids = [failure.row["id"] for failure in failures]
    earlier: dict[int, int] = {
        row.enrollment_id: int(row.failures)
        for row in conn.execute(
            select(d.enrollment_id, func.count().label("failures"))
            .join(t.enrollments, e.id == d.enrollment_id)
            .where(d.enrollment_id.in_(ids), d.rule == RETRY_RULE, d.at >= e.updated_at)
            .group_by(d.enrollment_id)
        )
    }
    decisions: list[dict[str, Any]] = []
    updates: list[dict[str, Any]] = []
    for failure in failures:
        row = failure.row
        attempt = earlier.get(row["id"], 0) + 1
        cause = _cause(failure)
        stats.failed += 1
        if attempt > len(RETRY_AFTER):
            state, wake_at, rule = str(EnrollmentState.PARKED), None, PARKED_RULE
            reason = (
                f"parked after {attempt} failed attempts: {cause}; "
                f"`cartback enrollments resume {row['id']}` tries again"
            )
            stats.parked += 1
            log.error(
                "enrollment %d parked after %d failed attempts: %s", row["id"], attempt, cause
            )
        else:
            wait = RETRY_AFTER[attempt - 1]
            state, wake_at, rule = row["state"], now + wait, RETRY_RULE
            reason = f"attempt {attempt} failed: {cause}; retrying in {format_duration(wait)}"
            log.warning("enrollment %d failed (%s); retrying in %s", row["id"], cause, wait)
        decisions.append(
            {
                "store_id": row["store_id"],
                "enrollment_id": row["id"],
                "cart_id": row["cart_id"],
                "step_id": failure.step_id or _step_id(conn, registry, row),
                "outcome": str(Outcome.ERROR),
                "rule": rule,
                "reason": reason,
                "at": now,
            }
        )
        # `updated_at` stays: it marks the last time the enrollment moved on.
        updates.append({"b_id": row["id"], "state": state, "wake_at": wake_at})
    conn.execute(t.decisions.insert(), decisions)
    conn.execute(
        update(t.enrollments)
        .where(e.id == bindparam("b_id"))
        .values(state=bindparam("state"), wake_at=bindparam("wake_at")),
        updates,
    )


def _cause(failure: _Failure) -> str:
    """The stage and the exception's class, never its message: messages and SQL parameters can
    carry phone numbers, addresses and bodies."""
    error = failure.error
    name = type(error).__name__
    driver_error = getattr(error, "orig", None)
    if driver_error is not None:
        name = f"{name} ({type(driver_error).__module__}.{type(driver_error).__name__})"
    return f"{failure.stage} failed: {name}"


def _step_id(conn: Connection, registry: FlowRegistry, row: Mapping[Any, Any]) -> str | None:
    try:
        steps = registry.get(row["flow_name"], row["flow_version"], conn).steps
    except UnknownFlow:
        return None
    index = row["step_index"]
    return steps[index].id if 0 <= index < len(steps) else None


def resume(conn: Connection, enrollment_id: int, now: datetime) -> bool:
    """Wake a parked enrollment now, with its failure count starting over. False if there is
    no parked enrollment with this id."""
    e = t.enrollments.c
    row = conn.execute(select(t.enrollments).where(e.id == enrollment_id)).mappings().first()
    if row is None or row["state"] != EnrollmentState.PARKED:
        return False
    conn.execute(
        update(t.enrollments)
        .where(e.id == enrollment_id)
        .values(state=str(EnrollmentState.ACTIVE), wake_at=now, updated_at=now)
    )
    conn.execute(
        t.decisions.insert().values(
            store_id=row["store_id"],
            enrollment_id=enrollment_id,
            cart_id=row["cart_id"],
            step_id=None,
            outcome="resume",
            rule=RESUMED_RULE,
            reason="resumed by an operator",
            at=now,
        )
    )
    return True


def _write(
    conn: Connection,
    decision_rows: Iterable[dict[str, Any]],
    outbox_rows: list[dict[str, Any]],
    link_rows: list[dict[str, Any]],
    updates: list[dict[str, Any]],
) -> None:
    sql = timer_sql(conn.dialect)
    sql.insert(conn, t.links, link_rows)
    sql.insert(conn, t.decisions, list(decision_rows))
    # The unique (enrollment, step) key makes a second write of the same step a no-op.
    sql.insert(conn, t.outbox, outbox_rows, " ON CONFLICT (enrollment_id, step_id) DO NOTHING")
    sql.update_enrollments(conn, updates)
