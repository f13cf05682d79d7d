"""The dispatcher: claim outbox rows with a lease, hand them to providers, record each outcome.

A row is marked `sending` before the provider call. If the process dies after that, the lease
expires and the row is reconciled with the provider's records where the channel can look them
up; otherwise it becomes `unknown` and is never sent again: a missed reminder is better than a
duplicate marketing text.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    RowMapping,
    String,
    and_,
    bindparam,
    func,
    select,
    update,
)

from cartback.core.model import CartStatus, Channel
from cartback.ports import (
    LookupStatus,
    MessageChannel,
    OutboundMessage,
    SendResult,
    SendStatus,
)
from cartback.services.ratelimit import TokenBucket
from cartback.store import tables as t
from cartback.store.db import is_sqlite
from cartback.store.tables import Money, UtcDateTime

MAX_ATTEMPTS = 5


@dataclass
class DispatchStats:
    claimed: int = 0
    sent: int = 0
    failed: int = 0
    retried: int = 0
    unknown: int = 0
    cancelled: int = 0
    expired: int = 0
    recovered: int = 0
    send_delays: list[float] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Claimed:
    id: int
    message: OutboundMessage
    attempts: int
    available_at: datetime


class Dispatcher:
    def __init__(
        self,
        engine: Engine,
        channels: Mapping[Channel, MessageChannel],
        *,
        lease: timedelta = timedelta(seconds=60),
        concurrency: int = 8,
        owner: str | None = None,
        rates: Mapping[Channel, float] | None = None,
    ) -> None:
        self.engine = engine
        self.channels = dict(channels)
        # Messages a second per channel, for this dispatcher; a channel not named is unlimited.
        self.buckets = {
            channel: TokenBucket(rate) for channel, rate in (rates or {}).items() if rate > 0
        }
        self.lease = lease
        self.owner = owner or uuid.uuid4().hex[:16]
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="send")

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def run_once(self, now: datetime, limit: int = 200) -> DispatchStats:
        stats = DispatchStats()
        self.recover_expired(now, stats)
        claimed = self._claim(now, limit, stats)
        if not claimed:
            return stats
        results = list(self._pool.map(self._send, claimed))
        self._record(claimed, results, now, stats)
        return stats

    def _send(self, item: _Claimed) -> SendResult:
        channel = self.channels[item.message.channel]
        try:
            return channel.send(item.message)
        except Exception as error:
            # A channel that raises broke its contract; whether the provider took the message
            # cannot be known, so it is never retried blindly.
            return SendResult(SendStatus.UNKNOWN, error=f"{type(error).__name__}: {error}")

    def _claim(self, now: datetime, limit: int, stats: DispatchStats) -> list[_Claimed]:
        allowance = self._allowance(now, limit)
        if not allowance:
            return []
        o = t.outbox.c
        with self.engine.begin() as conn:
            rows: list[RowMapping] = []
            for channels, most in allowance:
                query = (
                    select(t.outbox)
                    .where(
                        o.status == "pending",
                        o.available_at <= now,
                        o.channel.in_([str(kind) for kind in channels]),
                    )
                    .order_by(o.available_at, o.id)
                    .limit(most)
                )
                if not is_sqlite(conn.engine):
                    query = query.with_for_update(skip_locked=True)
                rows.extend(conn.execute(query).mappings())
            if not rows:
                return []
            facts = _enrollment_facts(conn, rows)
            stop = {**_stopped(rows, facts), **_too_late(rows, now)}
            withdrawn = [row for row in rows if row["id"] in stop]
            _record_withdrawals(conn, withdrawn, stop, facts, now)
            for row in withdrawn:
                stats.expired += stop[row["id"]][0] == "expired"
                stats.cancelled += stop[row["id"]][0] == "cancelled"
            live = [row for row in rows if row["id"] not in stop]
            if live:
                conn.execute(
                    update(t.outbox)
                    .where(o.id.in_([row["id"] for row in live]))
                    .values(
                        status="sending",
                        lease_owner=self.owner,
                        lease_until=now + self.lease,
                        attempts=o.attempts + 1,
                        updated_at=now,
                    )
                )
        stats.claimed = len(live)
        for channel, bucket in self.buckets.items():
            bucket.take(sum(1 for row in live if row["channel"] == channel))
        return [
            _Claimed(
                id=row["id"],
                message=_message(row),
                attempts=row["attempts"] + 1,
                available_at=row["available_at"],
            )
            for row in live
        ]

    def _allowance(self, now: datetime, limit: int) -> list[tuple[list[Channel], int]]:
        """How many rows to claim, per group of channels: the unlimited ones together."""
        unlimited = [channel for channel in self.channels if channel not in self.buckets]
        groups = [(unlimited, limit)] if unlimited else []
        for channel, bucket in self.buckets.items():
            if channel in self.channels:
                most = min(limit, bucket.available(now))
                if most > 0:
                    groups.append(([channel], most))
        return groups

    def _record(
        self,
        claimed: list[_Claimed],
        results: list[SendResult],
        now: datetime,
        stats: DispatchStats,
    ) -> None:
        outcomes = []
        for item, result in zip(claimed, results, strict=True):
            outcome: dict[str, Any] = {
                "b_id": item.id,
                "b_owner": self.owner,
                "error": result.error,
                "provider": self.channels[item.message.channel].name,
                "provider_id": None,
                "sent_at": None,
                "cost": None,
                "available_at": None,
                "updated_at": now,
            }
            if result.status is SendStatus.ACCEPTED:
                outcome.update(
                    status="sent", provider_id=result.provider_id, sent_at=now, cost=result.cost
                )
                stats.sent += 1
                stats.send_delays.append((now - item.available_at).total_seconds())
            elif result.status is SendStatus.UNKNOWN:
                outcome["status"] = "unknown"
                stats.unknown += 1
            elif result.retryable and item.attempts < MAX_ATTEMPTS:
                backoff = timedelta(seconds=min(3600, 30 * 2 ** (item.attempts - 1)))
                outcome.update(status="pending", available_at=now + backoff)
                stats.retried += 1
            else:
                outcome["status"] = "failed"
                stats.failed += 1
            outcomes.append(outcome)
        with self.engine.begin() as conn:
            conn.execute(_RECORD_OUTCOME, outcomes)

    def recover_expired(self, now: datetime, stats: DispatchStats) -> None:
        """Rows left `sending` by a dispatcher that died: never resend without proof."""
        o = t.outbox.c
        with self.engine.begin() as conn:
            query = select(o.id, o.channel).where(o.status == "sending", o.lease_until < now)
            if not is_sqlite(conn.engine):
                query = query.with_for_update(skip_locked=True)
            expired = list(conn.execute(query.limit(200)))
            for row in expired:
                channel = self.channels.get(Channel(row.channel))
                found = channel.lookup(message_key(row.id)) if channel else LookupStatus.UNKNOWN
                if found is LookupStatus.SENT:
                    values: dict[str, Any] = {"status": "sent", "sent_at": now}
                elif found is LookupStatus.NOT_SENT:
                    values = {"status": "pending", "available_at": now}
                else:
                    values = {
                        "status": "unknown",
                        "error": "the dispatcher stopped mid-send; not resent to avoid a duplicate",
                    }
                conn.execute(
                    update(t.outbox)
                    .where(o.id == row.id, o.status == "sending")
                    .values(lease_owner=None, lease_until=None, updated_at=now, **values)
                )
                stats.recovered += 1


_o = t.outbox.c
# One statement for a whole batch of outcomes. Fenced by the lease: a dispatcher whose lease was
# taken over writes nothing. Columns an outcome does not set keep their value (COALESCE).
_RECORD_OUTCOME = (
    update(t.outbox)
    .where(
        and_(
            _o.id == bindparam("b_id"),
            _o.lease_owner == bindparam("b_owner"),
            _o.status == "sending",
        )
    )
    .values(
        status=bindparam("status"),
        error=bindparam("error"),
        provider=bindparam("provider"),
        provider_id=func.coalesce(bindparam("provider_id", type_=String), _o.provider_id),
        sent_at=func.coalesce(bindparam("sent_at", type_=UtcDateTime), _o.sent_at),
        cost=func.coalesce(bindparam("cost", type_=Money), _o.cost),
        available_at=func.coalesce(bindparam("available_at", type_=UtcDateTime), _o.available_at),
        lease_owner=None,
        lease_until=None,
        updated_at=bindparam("updated_at"),
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


def _message(row: Mapping[Any, Any]) -> OutboundMessage:
    return OutboundMessage(
        key=message_key(row["id"]),
        channel=Channel(row["channel"]),
        to=row["to_address"],
        body=row["body"],
        subject=row["subject"],
        html=row["html"],
        headers=tuple(sorted((row["headers"] or {}).items())),
    )


def _too_late(rows: Sequence[Mapping[Any, Any]], now: datetime) -> dict[int, tuple[str, str]]:
    """Rows held up (a backlog, retries, a stopped worker) until quiet hours or the rule's
    deadline began: sending now would break the rule the timer checked, so they never go."""
    return {
        row["id"]: (
            "expired",
            f"not sent by {row['send_before']:%Y-%m-%d %H:%M} UTC, when quiet hours or the "
            "rule's deadline began; it is not sent late",
        )
        for row in rows
        if row["send_before"] is not None and row["send_before"] <= now
    }


def _enrollment_facts(conn: Connection, rows: Sequence[Mapping[Any, Any]]) -> dict[int, Any]:
    """What may stop each row's send, read again in the claim, just before the send."""
    enrollment_ids = {row["enrollment_id"] for row in rows}
    e, c, k = t.enrollments.c, t.carts.c, t.contacts.c
    found = conn.execute(
        select(
            e.id,
            e.cart_id,
            e.created_at,
            c.status,
            k.sms_marketing,
            k.email_marketing,
            k.opted_out_at,
        )
        .select_from(
            t.enrollments.join(t.carts, c.id == e.cart_id).outerjoin(
                t.contacts, k.id == c.contact_id
            )
        )
        .where(e.id.in_(enrollment_ids))
    ).all()
    return {r.id: r for r in found}


def _stopped(
    rows: Sequence[Mapping[Any, Any]], facts: Mapping[int, Any]
) -> dict[int, tuple[str, str]]:
    """Rows that must not go out any more: the order, the emptied cart or the opt-out came
    after the timer decided."""
    stop: dict[int, tuple[str, str]] = {}
    for row in rows:
        reason = _stop_reason(row, facts.get(row["enrollment_id"]))
        if reason is not None:
            stop[row["id"]] = ("cancelled", reason)
    return stop


def _record_withdrawals(
    conn: Connection,
    rows: Sequence[Mapping[Any, Any]],
    stop: Mapping[int, tuple[str, str]],
    facts: Mapping[int, Any],
    now: datetime,
) -> None:
    """Mark the withdrawn rows (one statement, however long the morning's backlog), and add
    each to the cart's decision history, so `cartback why` tells the whole story."""
    if not rows:
        return
    conn.execute(
        _WITHDRAW,
        [
            {
                "b_id": row["id"],
                "status": stop[row["id"]][0],
                "error": stop[row["id"]][1],
                "updated_at": now,
            }
            for row in rows
        ],
    )
    decisions = [
        {
            "store_id": row["store_id"],
            "enrollment_id": row["enrollment_id"],
            "cart_id": facts[row["enrollment_id"]].cart_id,
            "step_id": row["step_id"],
            "outcome": "skip",
            "rule": f"dispatch.{stop[row['id']][0]}",
            "reason": stop[row["id"]][1],
            "at": now,
        }
        for row in rows
        if row["enrollment_id"] in facts
    ]
    if decisions:
        conn.execute(t.decisions.insert(), decisions)


def _stop_reason(row: Mapping[Any, Any], info: Any) -> str | None:
    if info is None:
        return "the enrollment is gone"
    if info.status == CartStatus.ORDERED:
        return "cancelled: the shopper placed an order"
    if info.status == CartStatus.EMPTIED:
        return "cancelled: the cart was emptied"
    if info.opted_out_at is not None and info.opted_out_at >= info.created_at:
        return "cancelled: the shopper opted out"
    if row["channel"] == Channel.SMS and not info.sms_marketing:
        return "cancelled: SMS consent was withdrawn"
    if row["channel"] == Channel.EMAIL and not info.email_marketing:
        return "cancelled: email consent was withdrawn"
    return None
