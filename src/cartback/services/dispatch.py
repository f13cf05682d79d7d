"""The dispatcher: claim outbox rows with a lease, hand them to providers under a lease per
message, record each outcome.

A batch is claimed (`claimed`, with this dispatcher's lease) in one short transaction. Then it
is handed over a window at a time: whenever send threads are free, one conditional update (the
fence) marks as many rows `sending`, each with a fresh lease of its own, and only those this
dispatcher still holds `claimed`; the rows it marked, and only those, are handed to the free
threads at once. A row another worker took over, or whose claim lapsed while this one stalled,
is never handed to the provider. Right before each call the thread checks that the whole
provider timeout is still left inside the row's lease (counted from its group's fence), so a
stall between the fence and the call (a slow commit, a paused process) means the call does not
start and the row goes back to the queue. A row's lease covers one message and is longer than
the provider timeout, so recovery never takes over a row whose call may still be running.

If the process dies, `claimed` rows (never handed over) simply go back to `pending` once
their lease expires; if only the database failed around a claim or a fence, the dispatcher
returns its own stranded `claimed` rows at its next run. `sending` rows (at most the calls in
flight) are reconciled with the provider's records where the channel can look them up;
otherwise they become `unknown` and are never sent again: a missed reminder is better than a
duplicate marketing text. No provider call is ever made inside a database transaction, and the
send threads never touch the database: the claim, the fences and the outcome writes all run on
the thread that called `run_once`, on one connection it keeps between runs, with prebuilt
statements (store.hot).

Each message goes out on its store's own provider where the store has one, else on the global
channel of its kind (`ChannelResolver`, settings read in the claim's transaction). A provider
that says the recipient opted out with it (Twilio 21610) fails the message for good and
suppresses the address for marketing in the consent ledger.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum
from typing import Any, NamedTuple

from sqlalchemy import Connection, Engine, String, bindparam, case, func, select, update

from cartback import metrics
from cartback.core.consent import ConsentSource
from cartback.core.model import CartStatus, Channel, Purpose
from cartback.ports import (
    LookupResult,
    LookupStatus,
    MessageChannel,
    OutboundMessage,
    SendResult,
    SendStatus,
)
from cartback.services import outbound
from cartback.services.consent import record_consent
from cartback.services.providers import ChannelResolver, ProviderUnavailable
from cartback.services.ratelimit import TokenBucket
from cartback.services.retry import RetryPolicy, gave_up_reason, record_gave_up
from cartback.services.sendrate import RateBucket, RateUnit, within_grant
from cartback.store import tables as t
from cartback.store.hot import DispatchSql, dispatch_sql
from cartback.store.tables import UtcDateTime

log = logging.getLogger("cartback.dispatch")

MAX_ATTEMPTS = RetryPolicy().max_attempts
# Expired `sending` rows looked up per run: one committed step, so a slow provider's lookups
# never hold up new work for long and what was reconciled survives a crash.
RECOVERY_STEP = 20

_NONE_4 = (None, None, None, None)

UNKNOWN_AFTER_CRASH = "the dispatcher stopped mid-send; not resent to avoid a duplicate"


@dataclass
class DispatchStats:
    claimed: int = 0
    sent: int = 0
    failed: int = 0
    retried: int = 0
    unknown: int = 0
    cancelled: int = 0
    expired: int = 0
    # Rows from expired leases: `sending` ones reconciled with the provider, `claimed` ones
    # (never handed over) returned to `pending`.
    recovered: int = 0
    released: int = 0
    # Claimed rows not sent because the claim was no longer this dispatcher's at send time.
    lost_lease: int = 0
    send_delays: list[float] = field(default_factory=list)
    # The earliest `available_at` still `pending` after a claim that took less than asked
    # (None: nothing pending, or the claim was full): when the worker need look again.
    next_due: datetime | None = None


class _Claimed(NamedTuple):
    id: int
    message: OutboundMessage
    attempts: int
    available_at: datetime
    claim_until: datetime
    store_id: int = 0
    contact_id: int | None = None


class _Unsent(Enum):
    # The call was not made: the row goes back to the queue.
    NOT_STARTED = "not started"
    # The send thread failed, maybe mid-call: the row is left `sending` for recovery.
    BROKEN = "broken"


@dataclass(frozen=True, slots=True)
class _Handed:
    """A provider's answer for a row this dispatcher marked `sending` at `at`."""

    result: SendResult
    at: datetime
    # The name of the channel that sent it; None when no channel could be built.
    provider: str | None = None


_Answer = tuple[_Claimed, _Handed | _Unsent]


@dataclass
class _Group:
    """A group of answers on their way to one outcome write, and what else they need."""

    now: datetime
    outcomes: list[tuple[Any, ...]] = field(default_factory=list)
    # Rows whose call did not start: back to the queue.
    not_started: list[tuple[Any, ...]] = field(default_factory=list)
    sent: list[int] = field(default_factory=list)
    gave_up: list[int] = field(default_factory=list)
    opted_out: list[tuple[_Claimed, _Handed]] = field(default_factory=list)
    counts: Counter[tuple[str, str | None, str]] = field(default_factory=Counter)
    _fenced: tuple[datetime, Any] | None = None

    def plain(self, webhooks: bool) -> bool:
        """Only outcome rows to write: no release, no event, no ledger or history entry."""
        return not (self.not_started or self.gave_up or self.opted_out or (webhooks and self.sent))

    def stamp(self, at: datetime, time: Callable[[Any], Any]) -> Any:
        """A fence time as stored; a window's rows share theirs, so it is converted once."""
        if self._fenced is None or self._fenced[0] is not at:
            self._fenced = (at, time(at))
        return self._fenced[1]


class Dispatcher:
    def __init__(
        self,
        engine: Engine,
        channels: Mapping[Channel, MessageChannel],
        *,
        lease: timedelta = timedelta(seconds=60),
        send_timeout: timedelta = timedelta(seconds=10),
        concurrency: int = 8,
        owner: str | None = None,
        rates: Mapping[Channel, float | RateBucket] | None = None,
        clock: Callable[[], datetime] | None = None,
        stopping: threading.Event | None = None,
        resolver: ChannelResolver | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        if lease <= send_timeout:
            raise ValueError("the lease must be longer than the provider timeout")
        self.engine = engine
        self.channels = dict(channels)
        # Per (store, kind): the store's own provider, else the channel of that kind above.
        self.resolver = resolver or ChannelResolver(
            self.channels, base_url="", timeout=send_timeout.total_seconds(), per_store=False
        )
        # A rate per channel: a number is messages a second for this dispatcher alone, a
        # bucket (services.sendrate.SharedBucket) is shared by every worker. A channel not
        # named is unlimited.
        self.buckets: dict[Channel, RateBucket] = {
            channel: TokenBucket(rate) if isinstance(rate, int | float) else rate
            for channel, rate in (rates or {}).items()
            if not isinstance(rate, int | float) or rate > 0
        }
        self.retry = retry or RetryPolicy()
        self.lease = lease
        self.send_timeout = send_timeout
        self.owner = owner or uuid.uuid4().hex[:16]
        # The clock the lease checks read. Without one, it is the `now` given to `run_once`
        # moved on by the real time elapsed since, so a stall inside a run is seen.
        self._clock = clock
        self._now: Callable[[], datetime] = clock or _since(datetime.min)
        self.concurrency = concurrency
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="send")
        self._sql = dispatch_sql(engine.dialect)
        # The connections kept between runs: one for transactions and, on PostgreSQL, one in
        # autocommit for the single-statement writes (a fence, a group's outcomes), which then
        # cost one round trip instead of three.
        self._conn: Connection | None = None
        self._auto: Connection | None = None
        # Whether any webhook endpoint exists, read in each claim: a batch's `message.sent`
        # events are queued with its outcomes only then, without a look-up per group.
        self._webhooks = True
        # A group of outcomes waiting to be written with the next fence (see `_send_all`).
        self._carry: _Group | None = None
        # Once set, no new provider call starts: the rest of the claim goes back to the queue,
        # so a shutdown waits only for the calls already in flight.
        self._stopping = stopping or threading.Event()
        # Set when the database failed around a claim or a fence: rows this dispatcher claimed
        # may be stranded `claimed`, never handed over, and go back to the queue at the next
        # run rather than waiting out the lease (minutes in production) after a blip.
        self._stranded = False

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._drop_connection()
        self.resolver.close()

    def run_once(self, now: datetime, limit: int = 200) -> DispatchStats:
        stats = DispatchStats()
        if self._clock is None:
            self._now = _since(now)
        try:
            if self._stranded:
                self._unclaim_mine()
            self.recover_expired(now, stats)
            try:
                claimed = self._claim(now, limit, stats)
            except Exception:
                # The claim may have committed even though its answer was lost.
                self._stranded = True
                raise
            if claimed:
                self._send_all(claimed, stats)
        except BaseException:
            self._drop_connection()
            raise
        return stats

    def _connection(self) -> Connection:
        """The connection this dispatcher keeps between runs; only the thread running
        `run_once` uses it, never the send threads."""
        if self._conn is None or self._conn.closed or self._conn.invalidated:
            if self._conn is not None:
                self._drop_connection()
            self._conn = self.engine.connect()
        return self._conn

    def _writer(self) -> Connection:
        """The connection for one write statement: on PostgreSQL in autocommit (the statement
        is its own transaction), on SQLite the one connection (BEGIN IMMEDIATE is cheap)."""
        if self._sql.sqlite:
            return self._connection()
        if self._auto is None or self._auto.closed or self._auto.invalidated:
            if self._auto is not None:
                self._drop_connection()
            self._auto = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        return self._auto

    def _drop_connection(self) -> None:
        conns, self._conn, self._auto = (self._conn, self._auto), None, None
        for conn in conns:
            if conn is None:
                continue
            try:
                conn.close()
            except Exception:
                log.debug("closing a failed database connection failed too", exc_info=True)

    def _send_all(self, claimed: list[_Claimed], stats: DispatchStats) -> None:
        """Hand the claim over a window at a time: each free send thread gets one row, fenced
        in a group with the others handed over at the same moment, and each answer is
        written as soon as it is back, together with the others already waiting, before
        the next window is fenced."""
        waiting = deque(claimed)
        answers: queue.SimpleQueue[_Answer] = queue.SimpleQueue()
        in_flight = 0
        try:
            while waiting or in_flight:
                in_flight += self._hand_over(waiting, answers, in_flight, stats)
                if not in_flight:
                    continue
                ready = [answers.get()]
                while len(ready) < in_flight:
                    try:
                        ready.append(answers.get_nowait())
                    except queue.Empty:
                        break
                in_flight -= len(ready)
                # Written before their threads get new rows: at most `concurrency` rows are
                # ever `sending` with no outcome written, which is all a crash can leave.
                group = self._answers(ready, stats)
                if waiting and group.plain(self._webhooks):
                    # In the next window's fence, together: one statement on PostgreSQL, one
                    # transaction on SQLite. `_mark_sending` takes it; a fence that did not
                    # run, or failed, leaves it here to be written on its own.
                    self._carry = group
                    in_flight += self._hand_over(waiting, answers, in_flight, stats)
                    carried, self._carry = self._carry, None
                    if carried is None:
                        continue
                self._record(group)
        except BaseException:
            # What was never fenced is still `claimed`: returned at the next run. Outcomes not
            # written are left `sending`, for recovery.
            self._stranded = self._stranded or bool(waiting)
            self._carry = None
            raise

    def _hand_over(
        self,
        waiting: deque[_Claimed],
        answers: queue.SimpleQueue[_Answer],
        in_flight: int,
        stats: DispatchStats,
    ) -> int:
        """Fence as many waiting rows as there are free send threads and start their calls;
        answers how many calls started."""
        free = min(self.concurrency - in_flight, len(waiting))
        if free <= 0:
            return 0
        if self._stopping.is_set():
            self._unclaim([item.id for item in waiting])
            stats.lost_lease += len(waiting)
            waiting.clear()
            return 0
        group = [waiting.popleft() for _ in range(free)]
        at = self._now()
        live = [item for item in group if at < item.claim_until]
        try:
            fenced = self._mark_sending([item.id for item in live], at) if live else set()
        except Exception:
            # The database failed around the fence: these rows and the rest of the claim stay
            # `claimed` (returned at the next run), or `sending` if the fence committed after
            # all (settled by recovery once the lease expires). Nothing was handed over.
            log.exception("could not mark %d outbox rows sending", len(live))
            self._stranded = True
            self._drop_connection()
            stats.lost_lease += len(group) + len(waiting)
            waiting.clear()
            return 0
        started = 0
        for item in group:
            if item.id in fenced:
                self._pool.submit(self._send_into, item, at, answers)
                started += 1
        stats.lost_lease += len(group) - started
        return started

    def _send_into(self, item: _Claimed, at: datetime, answers: queue.SimpleQueue[_Answer]) -> None:
        handed: _Handed | _Unsent = _Unsent.BROKEN
        try:
            handed = self._send(item, at)
        except Exception:
            # The call may have started: the row stays `sending`, for recovery to settle.
            log.exception("outbox row %s: the send thread failed", item.id)
        finally:
            answers.put((item, handed))

    def _send(self, item: _Claimed, at: datetime) -> _Handed | _Unsent:
        """One provider call for a row fenced `sending` at `at`, or NOT_STARTED when it must
        not start: the worker is stopping, or a stall since the fence (a slow commit, a paused
        process, a wait for this thread) left less than one provider timeout of the lease."""
        if self._stopping.is_set() or self._now() + self.send_timeout >= at + self.lease:
            return _Unsent.NOT_STARTED
        try:
            channel = self.resolver.channel(item.store_id, item.message.channel)
        except ProviderUnavailable as error:
            # Nothing went out: retried later, when the secret or setting may be fixed.
            return _Handed(SendResult(SendStatus.REJECTED, error=str(error), retryable=True), at)
        try:
            return _Handed(channel.send(item.message), at, channel.name)
        except Exception as error:
            # A channel that raises broke its contract; whether the provider took the message
            # cannot be known, so it is never retried blindly.
            result = SendResult(SendStatus.UNKNOWN, error=f"{type(error).__name__}: {error}")
            return _Handed(result, at, channel.name)

    def _mark_sending(self, row_ids: Sequence[int], at: datetime) -> set[int]:
        """The fence, for a group of rows about to be handed over together: each becomes
        `sending`, with a lease of its own from `at`, only while this dispatcher still holds
        its claim. Answers the rows it marked; only those are handed to a provider. The
        outcomes of the answers just back (`_carry`, if any) are written with it."""
        carry, self._carry = self._carry, None
        outcomes = carry.outcomes if carry is not None else ()
        conn = self._writer()
        try:
            with conn.begin():
                return self._sql.mark_sending(
                    conn, row_ids, self.owner, at, at + self.lease, outcomes
                )
        except BaseException:
            self._carry = carry
            raise

    def _unclaim(self, row_ids: Sequence[int]) -> None:
        now = self._sql.time(self._now())
        conn = self._writer()
        with conn.begin():
            conn.exec_driver_sql(
                self._sql.unclaim, [(now, row_id, self.owner) for row_id in row_ids]
            )

    def _unclaim_mine(self) -> None:
        """Every row still `claimed` by this dispatcher back to the queue. Safe even for a row
        whose fence is still to come: the fence then fails, and the row is sent once, by
        whoever claims it next."""
        conn = self._connection()
        with conn.begin():
            conn.execute(_UNCLAIM_MINE, {"b_owner": self.owner, "b_now": self._now()})
        self._stranded = False

    def _claim(self, now: datetime, limit: int, stats: DispatchStats) -> list[_Claimed]:
        # Tokens are reserved before the claim's transaction and settled after it, whatever
        # happens: the claim takes at most what the rate granted.
        granted = self._reserve(now, limit)
        used: dict[Channel, int] = {}
        try:
            return self._claim_within(now, limit, granted, used, stats)
        finally:
            for channel, reserved in granted.items():
                self.buckets[channel].settle(reserved, used.get(channel, 0))

    def _claim_within(
        self,
        now: datetime,
        limit: int,
        granted: Mapping[Channel, int],
        used: dict[Channel, int],
        stats: DispatchStats,
    ) -> list[_Claimed]:
        allowance = self._allowance(limit, granted)
        if not allowance:
            return []
        sql = self._sql
        claim_until = now + self.lease
        conn = self._connection()
        with conn.begin():
            rows: list[_Row] = []
            for channels, most in allowance:
                found = sql.claim_rows(conn, now, [str(kind) for kind in channels], most)
                rows.extend(map(_Row._make, found))
            if not rows:
                stats.next_due = sql.earliest_pending(conn)
                return []
            self._webhooks = sql.has_endpoint(conn)
            facts = _enrollment_facts(conn, sql, rows)
            stop = {**_stopped(rows, facts), **_too_late(rows, now)}
            if stop:
                withdrawn = [row for row in rows if row.id in stop]
                _record_withdrawals(conn, withdrawn, stop, facts, now)
                for row in withdrawn:
                    stats.expired += stop[row.id][0] == "expired"
                    stats.cancelled += stop[row.id][0] == "cancelled"
                rows = [row for row in rows if row.id not in stop]
            live = within_grant(rows, granted, self._units, used, fields=_grant_fields)
            self.resolver.refresh(conn, {row.store_id for row in live})
            if live:
                sql.mark_claimed(conn, [row.id for row in live], self.owner, claim_until, now)
            if len(live) < limit:
                # Nothing more is due now: the worker may sleep until this (capped).
                stats.next_due = sql.earliest_pending(conn)
        stats.claimed = len(live)
        return [_claimed(row, claim_until) for row in live]

    def _reserve(self, now: datetime, limit: int) -> dict[Channel, int]:
        return {
            channel: bucket.reserve(now, limit)
            for channel, bucket in self.buckets.items()
            if channel in self.channels
        }

    def _allowance(
        self, limit: int, granted: Mapping[Channel, int]
    ) -> list[tuple[list[Channel], int]]:
        """How many rows to claim, per group of channels: the unlimited ones together."""
        unlimited = [channel for channel in self.channels if channel not in self.buckets]
        groups = [(unlimited, limit)] if unlimited else []
        groups.extend(([channel], most) for channel, most in granted.items() if most > 0)
        return groups

    @property
    def _units(self) -> dict[Channel, RateUnit]:
        return {
            channel: getattr(bucket, "unit", RateUnit.MESSAGES)
            for channel, bucket in self.buckets.items()
        }

    def _answers(self, ready: list[_Answer], stats: DispatchStats) -> _Group:
        """A group of answers as their outcome write needs them."""
        now = self._now()
        stamp = self._sql.time(now)
        group = _Group(now)
        for item, handed in ready:
            if handed is _Unsent.NOT_STARTED:
                group.not_started.append((stamp, item.id, self.owner))
            elif handed is _Unsent.BROKEN:
                stats.lost_lease += 1
            else:
                group.outcomes.append(self._outcome(item, handed, now, stamp, group, stats))
        stats.lost_lease += len(group.not_started)
        for (channel, provider, status), count in group.counts.items():
            metrics.count_send(str(channel), provider, status, count)
        return group

    def _record(self, group: _Group) -> None:
        """Write a group's outcomes; rows whose call did not start go back to the queue."""
        queue_sent = bool(group.sent) and self._webhooks
        now = group.now
        # The outcome statement alone needs no transaction around it.
        conn = self._writer() if group.plain(self._webhooks) else self._connection()
        with conn.begin():
            if group.outcomes:
                self._sql.record(conn, group.outcomes)
            if group.not_started:
                conn.exec_driver_sql(self._sql.release, group.not_started)
            if queue_sent:
                outbound.messages_sent(conn, group.sent, now)
            for item, handed in group.opted_out:
                _suppress_opted_out(conn, item, handed, now)
            if group.gave_up:
                record_gave_up(conn, group.gave_up, now)

    def _outcome(
        self,
        item: _Claimed,
        handed: _Handed,
        now: datetime,
        stamp: Any,
        group: _Group,
        stats: DispatchStats,
    ) -> tuple[Any, ...]:
        """One answer as the outcome statement writes it (store.hot.RECORD_COLUMNS)."""
        result, time = handed.result, self._sql.time
        error, provider_id, sent_at, failed_at, available_at = result.error, *_NONE_4
        if result.status is SendStatus.ACCEPTED:
            status, provider_id, sent_at = "sent", result.provider_id, group.stamp(handed.at, time)
            group.sent.append(item.id)
            stats.sent += 1
            stats.send_delays.append((handed.at - item.available_at).total_seconds())
        elif result.status is SendStatus.UNKNOWN:
            status = "unknown"
            stats.unknown += 1
        elif result.retryable and not result.opted_out and not self.retry.gives_up(item.attempts):
            status = "pending"
            available_at = time(now + self.retry.backoff(item.id, item.attempts))
            stats.retried += 1
        elif result.retryable and not result.opted_out:
            status, failed_at = "failed", stamp
            error = gave_up_reason(item.attempts, result.error)
            group.gave_up.append(item.id)
            stats.failed += 1
        else:
            status, failed_at = "failed", stamp
            stats.failed += 1
        if result.opted_out and item.contact_id is not None:
            group.opted_out.append((item, handed))
        provider = result.provider or handed.provider
        cost = None if result.cost is None else self._sql.cost(result.cost)
        group.counts[(item.message.channel, provider, status)] += 1
        return (
            status,
            error,
            result.error_code,
            provider,
            provider_id,
            sent_at,
            failed_at,
            cost,
            result.segments,
            available_at,
            stamp,
            item.id,
            self.owner,
        )

    def recover_expired(self, now: datetime, stats: DispatchStats) -> None:
        """Rows whose lease expired: a dispatcher died or stalled. Never resend without proof.

        `claimed` rows were never handed to a provider and go back to `pending` at once. One
        step of expired `sending` rows is looked up with the provider, with no transaction
        open, and each answer is written only if no one else has moved the row since."""
        conn = self._connection()
        with conn.begin():
            stats.released += conn.execute(_RELEASE_EXPIRED, {"b_now": now}).rowcount
            expired = conn.execute(_EXPIRED_SENDING, {"b_now": now}).all()
            if expired:
                self.resolver.refresh(conn, {row.store_id for row in expired})
        if not expired:
            return
        answers = list(self._pool.map(self._lookup, [row.channel for row in expired], expired))
        writes = []
        for row, (provider, found) in zip(expired, answers, strict=True):
            values: dict[str, Any] = {
                "b_id": row.id,
                "b_owner": row.lease_owner,
                "b_now": now,
                "provider": provider,
                "provider_id": None,
                "error": None,
                "available_at": None,
            }
            if found.status is LookupStatus.SENT:
                values.update(b_status="sent", provider_id=found.provider_id)
            elif found.status is LookupStatus.NOT_SENT:
                values.update(b_status="pending", available_at=now, provider=None)
            else:
                values.update(b_status="unknown", error=UNKNOWN_AFTER_CRASH)
            writes.append(values)
        conn = self._connection()
        with conn.begin():
            stats.recovered += conn.execute(_RECONCILE, writes).rowcount

    def _lookup(self, kind: str, row: Any) -> tuple[str | None, LookupResult]:
        try:
            channel = self.resolver.channel(row.store_id, Channel(kind))
        except ProviderUnavailable:
            return None, LookupResult(LookupStatus.UNKNOWN)
        try:
            found = channel.lookup(message_key(row.id))
        except Exception:
            # A lookup that fails cannot prove the message never went out.
            return channel.name, LookupResult(LookupStatus.UNKNOWN)
        if isinstance(found, LookupStatus):
            found = LookupResult(found)
        return channel.name, found


def _since(start: datetime) -> Callable[[], datetime]:
    """A clock that starts at `start` and moves with real (monotonic) time."""
    began = time.monotonic()
    return lambda: start + timedelta(seconds=time.monotonic() - began)


_o = t.outbox.c

_UNCLAIM_MINE = (
    update(t.outbox)
    .where(_o.lease_owner == bindparam("b_owner"), _o.status == "claimed")
    .values(
        status="pending",
        lease_owner=None,
        lease_until=None,
        updated_at=bindparam("b_now", type_=UtcDateTime),
    )
)

_RELEASE_EXPIRED = (
    update(t.outbox)
    .where(_o.status == "claimed", _o.lease_until < bindparam("b_now", type_=UtcDateTime))
    .values(
        status="pending",
        lease_owner=None,
        lease_until=None,
        updated_at=bindparam("b_now", type_=UtcDateTime),
    )
)

_EXPIRED_SENDING = (
    select(_o.id, _o.store_id, _o.channel, _o.lease_owner)
    .where(_o.status == "sending", _o.lease_until < bindparam("b_now", type_=UtcDateTime))
    .order_by(_o.lease_until, _o.id)
    .limit(RECOVERY_STEP)
)

# A lookup's answer, written only if the row is still the expired one it looked up: a second
# recovering worker, or a row sent again since, is left alone. `updated_at` was set when the
# row was marked `sending`, just before the call: the closest record of when it went out.
_RECONCILE = (
    update(t.outbox)
    .where(
        _o.id == bindparam("b_id"),
        _o.status == "sending",
        _o.lease_owner == bindparam("b_owner"),
        _o.lease_until < bindparam("b_now", type_=UtcDateTime),
    )
    .values(
        status=bindparam("b_status", type_=String),
        error=bindparam("error"),
        provider=func.coalesce(bindparam("provider", type_=String), _o.provider),
        provider_id=func.coalesce(bindparam("provider_id", type_=String), _o.provider_id),
        sent_at=case(
            (bindparam("b_status", type_=String) == "sent", _o.updated_at), else_=_o.sent_at
        ),
        available_at=func.coalesce(bindparam("available_at", type_=UtcDateTime), _o.available_at),
        lease_owner=None,
        lease_until=None,
        updated_at=bindparam("b_now", type_=UtcDateTime),
    )
)

_WITHDRAW = (
    update(t.outbox)
    .where(_o.id == bindparam("b_id"))
    .values(
        status=bindparam("status"), error=bindparam("error"), updated_at=bindparam("updated_at")
    )
)


def message_key(outbox_id: int) -> str:
    return f"cb-{outbox_id}"


class _Row(NamedTuple):
    """A due outbox row as the claim reads it (store.hot.CLAIM_COLUMNS)."""

    id: int
    store_id: int
    enrollment_id: int | None
    contact_id: int | None
    step_id: str
    service_key: str | None
    channel: str
    to_address: str
    subject: str | None
    body: str
    html: str | None
    headers: dict[str, str] | None
    segments: int | None
    attempts: int
    available_at: datetime
    send_before: datetime | None


class _Facts(NamedTuple):
    """What may stop a row's send (store.hot.FACTS_COLUMNS)."""

    id: int
    cart_id: int
    created_at: datetime
    status: str
    sms_marketing: bool | None
    email_marketing: bool | None
    opted_out_at: datetime | None


def _grant_fields(row: _Row) -> tuple[str, int | None]:
    return row.channel, row.segments


def _claimed(row: _Row, claim_until: datetime) -> _Claimed:
    message = OutboundMessage(
        key=message_key(row.id),
        channel=Channel(row.channel),
        to=row.to_address,
        body=row.body,
        subject=row.subject,
        html=row.html,
        headers=tuple(sorted(row.headers.items())) if row.headers else (),
        send_before=row.send_before,
    )
    return _Claimed(
        id=row.id,
        message=message,
        attempts=row.attempts + 1,
        available_at=row.available_at,
        claim_until=claim_until,
        store_id=row.store_id,
        contact_id=row.contact_id,
    )


def _suppress_opted_out(conn: Connection, item: _Claimed, handed: _Handed, now: datetime) -> None:
    """The provider refused because the recipient opted out with it: the ledger records it,
    so no later marketing message is even composed for that address."""
    assert item.contact_id is not None
    record_consent(
        conn,
        store_id=item.store_id,
        contact_id=item.contact_id,
        channel=item.message.channel,
        purpose=Purpose.MARKETING,
        granted=False,
        source=ConsentSource.PROVIDER,
        at=now,
        wording=f"delivery.opted_out: {handed.provider} refused the message "
        f"({handed.result.error_code or 'opted out'}): the recipient opted out with the provider",
    )


def _too_late(rows: Sequence[_Row], now: datetime) -> dict[int, tuple[str, str]]:
    """Rows held up (a backlog, retries, a stopped worker) until quiet hours or the rule's
    deadline began: sending now would break the rule the timer checked, so they never go."""
    return {
        row.id: (
            "expired",
            f"not sent by {row.send_before:%Y-%m-%d %H:%M} UTC, when quiet hours or the "
            "rule's deadline began; it is not sent late",
        )
        for row in rows
        if row.send_before is not None and row.send_before <= now
    }


def _enrollment_facts(
    conn: Connection, sql: DispatchSql, rows: Sequence[_Row]
) -> dict[int, _Facts]:
    """What may stop each row's send, read again in the claim, just before the send."""
    enrollment_ids = {row.enrollment_id for row in rows if row.enrollment_id is not None}
    return {facts[0]: _Facts._make(facts) for facts in sql.facts(conn, sorted(enrollment_ids))}


def _stopped(rows: Sequence[_Row], facts: Mapping[int, _Facts]) -> dict[int, tuple[str, str]]:
    """Rows that must not go out any more: the order, the emptied cart or the opt-out came
    after the timer decided."""
    stop: dict[int, tuple[str, str]] = {}
    for row in rows:
        if row.service_key is not None:
            # A service message (a STOP confirmation, a HELP answer) is transactional: it goes
            # to a shopper who opted out too, and belongs to no enrollment.
            continue
        reason = _stop_reason(row, facts.get(row.enrollment_id) if row.enrollment_id else None)
        if reason is not None:
            stop[row.id] = ("cancelled", reason)
    return stop


def _record_withdrawals(
    conn: Connection,
    rows: Sequence[_Row],
    stop: Mapping[int, tuple[str, str]],
    facts: Mapping[int, _Facts],
    now: datetime,
) -> None:
    """Mark the withdrawn rows (one statement, however long the morning's backlog), and add
    each to the cart's decision history, so `cartback why` tells the whole story."""
    if not rows:
        return
    conn.execute(
        _WITHDRAW,
        [
            {"b_id": row.id, "status": stop[row.id][0], "error": stop[row.id][1], "updated_at": now}
            for row in rows
        ],
    )
    decisions = [
        {
            "store_id": row.store_id,
            "enrollment_id": row.enrollment_id,
            "cart_id": facts[row.enrollment_id].cart_id,
            "step_id": row.step_id,
            "outcome": "skip",
            "rule": f"dispatch.{stop[row.id][0]}",
            "reason": stop[row.id][1],
            "at": now,
        }
        for row in rows
        if row.enrollment_id is not None and row.enrollment_id in facts
    ]
    if decisions:
        conn.execute(t.decisions.insert(), decisions)


def _stop_reason(row: _Row, info: _Facts | None) -> str | None:
    if info is None:
        return "the enrollment is gone"
    if info.status == CartStatus.ORDERED:
        return "cancelled: the shopper placed an order"
    if info.status == CartStatus.EMPTIED:
        return "cancelled: the cart was emptied"
    if info.opted_out_at is not None and info.opted_out_at >= info.created_at:
        return "cancelled: the shopper opted out"
    if row.channel == Channel.SMS and not info.sms_marketing:
        return "cancelled: SMS consent was withdrawn"
    if row.channel == Channel.EMAIL and not info.email_marketing:
        return "cancelled: email consent was withdrawn"
    return None
