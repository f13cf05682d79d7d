"""The inbox: ingest as a durable append, applied later in batches.

A request's events are validated, then appended to `inbox` in one statement whose unique key
(store, source, event id) answers `duplicate` for a repeat; the request is answered once that
row is committed (services/inbox_writer.py groups the commits of concurrent requests). The
worker applies pending rows in arrival order: runs of checkouts as sets (services.ingest_batch),
anything else through `services.ingest`; stale checks, the consent ledger, enrollments and
orders ending flows are exactly those of a synchronous ingest, with the row's receive time as
ingest's `now`. One savepoint covers a batch; after a failure each row gets its own. A row
that cannot be applied keeps its error and waits for `cartback inbox retry`; the others go on.

Shop webhook deliveries are rows too (source: the platform, event id: its delivery id); they are
parsed again and applied with their delivery record by services/shop_inbox.py.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Dialect, Engine, bindparam, func, select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from cartback import metrics
from cartback.core.events import CheckoutUpdated, ShopEvent
from cartback.core.lineup import Lineup
from cartback.core.model import Store
from cartback.services import admin, shop_inbox, store_flows
from cartback.services.flows import FlowRegistry
from cartback.services.ingest import DEFAULT_FUTURE_SKEW, EventStatus, ingest
from cartback.services.ingest_batch import Item, apply_checkouts, batchable
from cartback.store import tables as t

log = logging.getLogger("cartback.inbox")

# PostgreSQL's serialization failure and deadlock: the row raced another writer; it is tried again.
_RACES = frozenset({"40001", "40P01"})
# A row that raced this many times is kept as failed rather than tried for ever.
MAX_ATTEMPTS = 3
# The PostgreSQL advisory lock that one applier holds while it applies ("inbox" in ASCII).
APPLY_LOCK = 0x696E626F78
# On SQLite, the longest one apply transaction runs before it commits what it has: it holds the
# write lock, which the web server's appends wait for. PostgreSQL's appends never wait on it, so
# there a transaction takes the whole batch and its fixed costs are shared by more rows.
SQLITE_APPLY_BUDGET_SECONDS = 0.05
# The most checkouts applied as one set (services.ingest_batch): enough to share its dozen
# statements, few enough that a run stays inside SQLite's budget.
CHECKOUT_RUN = 200


@dataclass(frozen=True, slots=True)
class Entry:
    """One event to append: its id and its JSON, as received."""

    event_id: str
    body: str


def append(
    conn: Connection,
    store_id: int,
    source: str,
    entries: Sequence[Entry],
    received_at: datetime,
) -> list[int | None]:
    """Append in one statement; per entry, its new row's id (`accepted`), or None when its
    event id was already in the inbox, or earlier in `entries` (`duplicate`).

    The hot path of ingest: a prebuilt statement, in the caller's transaction."""
    if not entries:
        return []
    dialect = conn.dialect
    at = _time_binder(dialect)(received_at)
    params = [
        value
        for entry in entries
        for value in (store_id, source, entry.event_id, entry.body, at, 0)
    ]
    # Driver SQL: no statement is built per call, and the driver's errors still arrive as
    # SQLAlchemy's (a timeout is an OperationalError, a lost connection is invalidated).
    rows = conn.exec_driver_sql(_append_sql(dialect.name, len(entries)), tuple(params))
    inserted: dict[str, int] = {str(key): int(row_id) for key, row_id in rows}
    # A repeat later in the same request is a duplicate of the first.
    return [inserted.pop(entry.event_id, None) for entry in entries]


@functools.cache
def _append_sql(dialect_name: str, rows: int) -> str:
    mark = "?" if dialect_name == "sqlite" else "%s"
    row = "(" + ", ".join([mark] * 6) + ")"
    return (
        "INSERT INTO inbox (store_id, source, event_id, body, received_at, attempts) VALUES "
        + ", ".join([row] * rows)
        + " ON CONFLICT (store_id, source, event_id) DO NOTHING RETURNING event_id, id"
    )


def _time_binder(dialect: Dialect) -> Callable[[datetime], Any]:
    """How the table's UtcDateTime binds a value on this dialect (SQLite: text)."""
    column_type = t.inbox.c.received_at.type
    process = column_type.dialect_impl(dialect).bind_processor(dialect)
    return process if process is not None else (lambda value: value)


@dataclass(frozen=True, slots=True)
class Applied:
    """What one `apply_pending` run did: rows applied, rows kept as failed, rows left for a
    retry after a race."""

    applied: int = 0
    failed: int = 0
    retried: int = 0


class InboxApplier:
    """Applies pending inbox rows. `decode` turns a row's body into its event (the web layer's
    validation, injected so services do not import the web layer)."""

    def __init__(
        self,
        engine: Engine,
        registry: FlowRegistry,
        decode: Callable[[str], ShopEvent],
        clock: Callable[[], datetime],
        *,
        future_skew: timedelta = DEFAULT_FUTURE_SKEW,
        suppression_key: str | None = None,
        batch: int = 500,
        budget_seconds: float | None = None,
        export_dir: Path | None = None,
        batched: bool = True,
    ) -> None:
        self.engine = engine
        self.registry = registry
        self.decode = decode
        self.clock = clock
        self.future_skew = future_skew
        self.suppression_key = suppression_key
        self.batch = batch
        # False: every row through `ingest` on its own, the reference the batched path is held
        # to (tests/store/test_inbox_batches.py).
        self.batched = batched
        if budget_seconds is None:
            sqlite_db = engine.dialect.name == "sqlite"
            budget_seconds = SQLITE_APPLY_BUDGET_SECONDS if sqlite_db else float("inf")
        self.budget_seconds = budget_seconds
        # Where a shop's data requests are written (services/shop_inbox.py).
        self.export_dir = export_dir

    def apply_pending(self, ids: Iterable[int] | None = None) -> Applied:
        """Apply up to `batch` pending rows (only `ids`, when given), oldest first."""
        peeked = self._peek(None if ids is None else list(ids))
        if not peeked:
            return Applied()
        contexts = self._contexts({row.store_id for row in peeked})
        with self.engine.begin() as conn:
            return self._apply(conn, [row.id for row in peeked], contexts)

    def drain(self, ids: Sequence[int], timeout: float = 5.0) -> None:
        """Apply these rows now (the web server's inline mode). While another applier holds
        the inbox it is waited for, up to `timeout` seconds; what is left then is its work."""
        deadline = time.monotonic() + timeout
        remaining = list(ids)
        while remaining:
            if self.apply_pending(remaining) == Applied():
                if time.monotonic() > deadline:
                    return
                time.sleep(0.01)
            remaining = self._still_pending(remaining)

    def _still_pending(self, ids: Sequence[int]) -> list[int]:
        i = t.inbox.c
        with self.engine.connect() as conn:
            return list(
                conn.execute(
                    select(i.id).where(i.id.in_(ids), i.applied_at.is_(None), i.error.is_(None))
                ).scalars()
            )

    def _peek(self, ids: list[int] | None) -> list[Any]:
        i = t.inbox.c
        query = select(i.id, i.store_id).where(i.applied_at.is_(None), i.error.is_(None))
        if ids is not None:
            query = query.where(i.id.in_(ids))
        with self.engine.connect() as conn:
            return list(conn.execute(query.order_by(i.id).limit(self.batch)).all())

    def _contexts(self, store_ids: set[int]) -> dict[int, tuple[Store, Lineup]]:
        # Read before the apply transaction: the lineup is read on a connection of its own.
        contexts = {}
        for store_id in store_ids:
            with self.engine.connect() as conn:
                store = admin.get_store(conn, store_id)
            contexts[store_id] = (store, store_flows.lineup_for(self.engine, self.registry, store))
        return contexts

    def _apply(
        self, conn: Connection, ids: list[int], contexts: dict[int, tuple[Store, Lineup]]
    ) -> Applied:
        i = t.inbox.c
        claim = (
            select(i.id, i.store_id, i.source, i.body, i.received_at, i.attempts)
            .where(i.id.in_(ids), i.applied_at.is_(None), i.error.is_(None))
            .order_by(i.id)
        )
        if conn.dialect.name == "postgresql":
            # One applier at a time, so a cart's events are applied in arrival order even with
            # several workers (SQLite's write lock does the same); the others find it taken.
            if not conn.execute(text(f"SELECT pg_try_advisory_xact_lock({APPLY_LOCK})")).scalar():
                return Applied()
            claim = claim.with_for_update()
        claimed = conn.execute(claim).all()
        try:
            # The happy path: the whole batch under one savepoint, none per row.
            with conn.begin_nested():
                outcomes = self._run(conn, claimed, contexts, isolated=False)
        except OperationalError as error:
            if getattr(error.orig, "sqlstate", None) not in _RACES:
                raise  # the database timed out or went away: the batch is tried again
            outcomes = self._run(conn, claimed, contexts, isolated=True)
        except Exception as error:
            # A row failed: the batch again, each row under a savepoint of its own, so the
            # others are applied and the bad one is named. (Counters of the first pass stay.)
            log.info("inbox batch applied row by row after %s", type(error).__name__)
            outcomes = self._run(conn, claimed, contexts, isolated=True)
        done: list[dict[str, Any]] = []
        lags: list[float] = []
        failed = retried = 0
        for row, outcome in outcomes:
            if isinstance(outcome, tuple):
                status, detail = outcome
                applied_at = self.clock()
                done.append(
                    {"row_id": row.id, "at": applied_at, "status": status, "detail": detail}
                )
                lags.append((applied_at - row.received_at).total_seconds())
            elif outcome.raced and row.attempts + 1 < MAX_ATTEMPTS:
                retried += 1
                self._mark(conn, row.id, error=None, attempts=row.attempts + 1)
            else:
                failed += 1
                self._mark(conn, row.id, error=outcome.message, attempts=row.attempts + 1)
        if done:
            conn.execute(
                update(t.inbox)
                .where(i.id == bindparam("row_id"))
                .values(
                    applied_at=bindparam("at"),
                    status=bindparam("status"),
                    detail=bindparam("detail"),
                    # Its job is done: the shopper's details live in their rows now, or, for
                    # a shopper erased on request, nowhere.
                    body=None,
                ),
                done,
            )
        metrics.observe_apply_lag(lags)
        return Applied(applied=len(done), failed=failed, retried=retried)

    def _run(
        self,
        conn: Connection,
        claimed: Sequence[Any],
        contexts: dict[int, tuple[Store, Lineup]],
        *,
        isolated: bool,
    ) -> list[tuple[Any, tuple[str, str | None] | _Failure]]:
        """Apply rows in order until the time budget is spent (the rest wait for the next
        run). Not `isolated`, a row's database error propagates to the caller."""
        started = time.monotonic()
        outcomes: list[tuple[Any, tuple[str, str | None] | _Failure]] = []
        checkouts: list[tuple[Any, CheckoutUpdated]] = []
        for row in claimed:
            if (outcomes or checkouts) and time.monotonic() - started > self.budget_seconds:
                break
            context = contexts[row.store_id]
            if isolated:
                outcomes.append((row, self._apply_row(conn, row, context)))
                continue
            event = self._decode(row)
            if isinstance(event, _Failure):
                outcomes.append((row, event))  # it changed nothing: the others go on
                continue
            if checkouts and (
                checkouts[0][0].store_id != row.store_id or len(checkouts) >= CHECKOUT_RUN
            ):
                outcomes += self._apply_checkouts(conn, checkouts, contexts)
            if (
                self.batched
                and isinstance(event, CheckoutUpdated)
                and batchable(event, row.received_at, self.future_skew)
            ):
                checkouts.append((row, event))
                continue
            # Anything else waits for the checkouts before it, so each cart keeps its order.
            outcomes += self._apply_checkouts(conn, checkouts, contexts)
            outcomes.append((row, self._ingest(conn, row, event, context)))
        outcomes += self._apply_checkouts(conn, checkouts, contexts)
        return outcomes

    def _apply_checkouts(
        self,
        conn: Connection,
        checkouts: list[tuple[Any, CheckoutUpdated]],
        contexts: dict[int, tuple[Store, Lineup]],
    ) -> list[tuple[Any, tuple[str, str | None] | _Failure]]:
        """A run of checkouts of one store at once (services.ingest_batch); empties `checkouts`."""
        if not checkouts:
            return []
        rows = [row for row, _ in checkouts]
        store, lineup = contexts[rows[0].store_id]
        items = [Item(event, row.received_at, row.source) for row, event in checkouts]
        checkouts.clear()
        outcomes = apply_checkouts(conn, store, lineup, items, suppression_key=self.suppression_key)
        notes = [
            (outcome.stale_cart_id, item.event.event_id, outcome.result.detail, item.now)
            for item, outcome in zip(items, outcomes, strict=True)
            if outcome.stale_cart_id is not None
        ]
        _note_stale_many(conn, store.id, notes)
        return [
            (row, (str(outcome.result.status), outcome.result.detail))
            for row, outcome in zip(rows, outcomes, strict=True)
        ]

    def _decode(self, row: Any) -> ShopEvent | shop_inbox.QueuedDelivery | _Failure:
        try:
            if row.source in shop_inbox.SOURCES:
                return shop_inbox.read(row.source, row.body)
            return self.decode(row.body)
        except Exception as error:  # a body that no longer validates is this row's problem only
            return _Failure(f"cannot read the event: {_describe(error)}", raced=False)

    def _ingest(
        self,
        conn: Connection,
        row: Any,
        event: ShopEvent | shop_inbox.QueuedDelivery,
        context: tuple[Store, Lineup],
    ) -> tuple[str, str | None]:
        store, lineup = context
        if isinstance(event, shop_inbox.QueuedDelivery):
            return self._deliver(conn, row, event, context)
        (result,) = ingest(
            conn,
            store,
            lineup,
            [event],
            row.received_at,
            source=row.source,
            future_skew=self.future_skew,
            suppression_key=self.suppression_key,
        )
        if result.status is EventStatus.STALE:
            _note_stale(conn, store.id, event, result.detail, row.received_at)
        return str(result.status), result.detail

    def _deliver(
        self,
        conn: Connection,
        row: Any,
        delivery: shop_inbox.QueuedDelivery,
        context: tuple[Store, Lineup],
    ) -> tuple[str, str | None]:
        """A shop webhook delivery: parsed again and applied with its delivery record."""
        store, lineup = context
        done = shop_inbox.apply(
            conn,
            store,
            lineup,
            delivery,
            row.received_at,
            future_skew=self.future_skew,
            suppression_key=self.suppression_key,
            export_dir=self.export_dir,
        )
        for event, detail in done.stale:
            _note_stale(conn, store.id, event, detail, row.received_at)
        return done.status, done.detail

    def _apply_row(
        self, conn: Connection, row: Any, context: tuple[Store, Lineup]
    ) -> tuple[str, str | None] | _Failure:
        event = self._decode(row)
        if isinstance(event, _Failure):
            return event
        try:
            with conn.begin_nested():
                return self._ingest(conn, row, event, context)
        except DBAPIError as error:
            sqlstate = getattr(error.orig, "sqlstate", None)
            if error.connection_invalidated or (
                isinstance(error, OperationalError) and sqlstate not in _RACES
            ):
                # The database went away or timed out (a lock, the statement timeout): not this
                # row's fault. The whole batch is tried again.
                raise
            raced = isinstance(error, IntegrityError) or sqlstate in _RACES
            log.warning("inbox row %s not applied: %s", row.id, type(error.orig).__name__)
            return _Failure(f"database refused it: {type(error.orig).__name__}", raced=raced)
        except Exception as error:  # one bad row never blocks the others
            log.exception("inbox row %s not applied", row.id)
            return _Failure(_describe(error), raced=False)

    @staticmethod
    def _mark(conn: Connection, row_id: int, *, error: str | None, attempts: int) -> None:
        conn.execute(
            update(t.inbox).where(t.inbox.c.id == row_id).values(error=error, attempts=attempts)
        )


# The rule a stale event's line in its cart's timeline carries.
STALE_RULE = "ingest.stale"


def _note_stale(
    conn: Connection, store_id: int, event: ShopEvent, detail: str | None, at: datetime
) -> None:
    """A stale event changes nothing, and the answer came before it was applied: its cart's
    timeline (`cartback why`, GET /v1/carts/{token}/decisions) is where it shows."""
    token = getattr(event, "cart_token", None)
    if not token:
        return
    c = t.carts.c
    cart_id = conn.execute(select(c.id).where(c.store_id == store_id, c.token == token)).scalar()
    if cart_id is None:
        return
    conn.execute(
        t.decisions.insert().values(
            store_id=store_id,
            enrollment_id=None,
            cart_id=cart_id,
            step_id=None,
            outcome="skip",
            rule=STALE_RULE,
            reason=f"event {event.event_id} not applied: {detail or 'stale'}",
            at=at,
        )
    )


def _note_stale_many(
    conn: Connection,
    store_id: int,
    notes: Sequence[tuple[int, str, str | None, datetime]],
) -> None:
    """`_note_stale` for stale checkouts whose carts are known: (cart id, event id, detail,
    receive time) each."""
    if not notes:
        return
    conn.execute(
        t.decisions.insert(),
        [
            {
                "store_id": store_id,
                "enrollment_id": None,
                "cart_id": cart_id,
                "step_id": None,
                "outcome": "skip",
                "rule": STALE_RULE,
                "reason": f"event {event_id} not applied: {detail or 'stale'}",
                "at": at,
            }
            for cart_id, event_id, detail, at in notes
        ],
    )


@dataclass(frozen=True, slots=True)
class _Failure:
    message: str
    raced: bool


def _describe(error: Exception) -> str:
    # The type and message only: bodies and bound values (phones, emails) stay out of it.
    return f"{type(error).__name__}: {error}"[:500]


def failed(conn: Connection, limit: int = 100) -> list[Any]:
    """Rows kept with an error, oldest first."""
    i = t.inbox.c
    return list(
        conn.execute(
            select(i.id, i.store_id, i.source, i.event_id, i.received_at, i.attempts, i.error)
            .where(i.applied_at.is_(None), i.error.is_not(None))
            .order_by(i.id)
            .limit(limit)
        ).all()
    )


def retry(conn: Connection, ids: Sequence[int] | None = None) -> int:
    """Put failed rows (all, or `ids`) back in the queue; returns how many."""
    i = t.inbox.c
    statement = update(t.inbox).where(i.applied_at.is_(None), i.error.is_not(None))
    if ids is not None:
        statement = statement.where(i.id.in_(ids))
    return int(conn.execute(statement.values(error=None, attempts=0)).rowcount)


def backlog(conn: Connection) -> tuple[int, int]:
    """(rows waiting to be applied, rows kept as failed)."""
    i = t.inbox.c
    pending = conn.execute(
        select(func.count()).where(i.applied_at.is_(None), i.error.is_(None))
    ).scalar_one()
    kept = conn.execute(
        select(func.count()).where(i.applied_at.is_(None), i.error.is_not(None))
    ).scalar_one()
    return int(pending), int(kept)
