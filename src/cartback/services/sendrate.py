"""A send rate that holds across every worker: one token bucket per provider account and
sender, kept in a `send_rates` row.

A provider throttles per account and per sender (a long code, a short code, an alphanumeric
id), whatever the number of cartback workers. So the bucket lives in the database: a worker
about to claim rows reserves tokens in a tiny transaction of its own (PostgreSQL: the row is
locked with SELECT ... FOR UPDATE for the few statements it takes; SQLite: every transaction
already takes the one write lock), claims at most what it was granted, then settles: unused
tokens go back, and a long SMS that costs more segments than reserved is charged as debt that
the refill pays off. Two workers therefore share one rate instead of each sending it.

Tokens refill at `rate` a second up to `capacity` (one second's worth, at least one message),
counted from the time the row was last written; a worker whose clock is behind adds nothing and
never moves that time back. No provider call runs inside these transactions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol, TypeVar

from sqlalchemy import ColumnElement, Connection, Engine, case, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from cartback.config import Settings
from cartback.core.model import Channel
from cartback.ports import MessageChannel
from cartback.store import tables as t
from cartback.store.db import is_sqlite

_Row = TypeVar("_Row")


class RateUnit(StrEnum):
    MESSAGES = "messages"
    # An SMS of three segments costs three tokens: what carriers and most providers count.
    SEGMENTS = "segments"


class RateBucket(Protocol):
    """What the dispatcher asks of a rate limit."""

    def reserve(self, now: datetime, most: int) -> int:
        """Take up to `most` whole tokens at `now`; answer how many were taken."""
        ...

    def settle(self, reserved: int, used: int) -> None:
        """Give back `reserved - used` tokens (or charge them, when negative)."""
        ...


def bucket_key(channel: MessageChannel) -> tuple[str, str]:
    """The provider account and sender a channel sends as. An adapter names them with optional
    `account` and `sender` attributes (a Twilio account SID and its number); otherwise the
    channel's kind and name stand for the account, and its one default sender for the sender."""
    account = getattr(channel, "account", None) or f"{channel.kind}:{channel.name}"
    sender = getattr(channel, "sender", None) or "default"
    return str(account)[:128], str(sender)[:64]


class SharedBucket:
    """A token bucket in the `send_rates` row for (`account`, `sender`), shared by every worker
    on the same database."""

    def __init__(
        self,
        engine: Engine,
        account: str,
        sender: str,
        rate: float,
        *,
        unit: RateUnit = RateUnit.MESSAGES,
    ) -> None:
        if rate <= 0:
            raise ValueError(f"a rate must be positive, got {rate}")
        self.engine = engine
        self.account = account
        self.sender = sender
        self.rate = rate
        self.unit = unit
        self.capacity = max(1.0, rate)

    def reserve(self, now: datetime, most: int) -> int:
        if most <= 0:
            return 0
        with self.engine.begin() as conn:
            tokens, counted_at = self._locked_row(conn, now)
            elapsed = max(0.0, (now - counted_at).total_seconds())
            tokens = min(self.capacity, tokens + elapsed * self.rate)
            granted = max(0, min(most, math.floor(tokens + 1e-9)))
            conn.execute(
                update(t.send_rates)
                .where(self._this_row())
                .values(tokens=tokens - granted, updated_at=max(counted_at, now))
            )
        return granted

    def settle(self, reserved: int, used: int) -> None:
        if reserved == used:
            return
        tokens = t.send_rates.c.tokens
        refilled = tokens + (reserved - used)
        with self.engine.begin() as conn:
            conn.execute(
                update(t.send_rates)
                .where(self._this_row())
                .values(tokens=case((refilled > self.capacity, self.capacity), else_=refilled))
            )

    def _this_row(self) -> ColumnElement[bool]:
        c = t.send_rates.c
        return (c.account == self.account) & (c.sender == self.sender)

    def _locked_row(self, conn: Connection, now: datetime) -> tuple[float, datetime]:
        c = t.send_rates.c
        query = select(c.tokens, c.updated_at).where(self._this_row())
        if not is_sqlite(conn.engine):
            query = query.with_for_update()
        row = conn.execute(query).first()
        if row is None:
            # The first reservation for this sender starts with a full bucket. Two workers
            # starting together both insert; the loser's insert does nothing.
            insert = sqlite_insert if is_sqlite(conn.engine) else pg_insert
            conn.execute(
                insert(t.send_rates)
                .values(
                    account=self.account, sender=self.sender, tokens=self.capacity, updated_at=now
                )
                .on_conflict_do_nothing()
            )
            row = conn.execute(query).one()
        return float(row.tokens), row.updated_at


def within_grant(
    rows: Sequence[_Row],
    granted: Mapping[Channel, int],
    units: Mapping[Channel, RateUnit],
    used: dict[Channel, int],
    *,
    fields: Callable[[_Row], tuple[str, int | None]] | None = None,
) -> list[_Row]:
    """The claimed rows that fit their channel's grant, in claim order; `used` is filled with
    the tokens they cost. A rate in segments charges a row its SMS segments; the first row of
    a channel always fits (a long SMS must not wait forever for a burst it exceeds), and what
    it costs beyond the grant is settled as debt. Channels without a grant are not limited.
    `fields` reads a row's channel and segments (default: the "channel" and "segments" keys)."""
    if not granted:
        return list(rows)
    read = fields or _mapping_fields
    kept = []
    for row in rows:
        kind, segments = read(row)
        channel = Channel(kind)
        if channel not in granted:
            kept.append(row)
            continue
        cost = (segments or 1) if units.get(channel) is RateUnit.SEGMENTS else 1
        spent = used.get(channel, 0)
        if spent and spent + cost > granted[channel]:
            continue
        used[channel] = spent + cost
        kept.append(row)
    return kept


def _mapping_fields(row: Any) -> tuple[str, int | None]:
    return row["channel"], row["segments"]


def shared_rates(
    engine: Engine, channels: Mapping[Channel, MessageChannel], settings: Settings
) -> dict[Channel, RateBucket]:
    """The configured rates, as buckets shared by every worker, keyed by each channel's
    provider account and sender."""
    configured = {
        Channel.SMS: (settings.sms_rate, RateUnit(settings.sms_rate_unit)),
        Channel.EMAIL: (settings.email_rate, RateUnit.MESSAGES),
    }
    buckets: dict[Channel, RateBucket] = {}
    for kind, channel in channels.items():
        rate, unit = configured[kind]
        if rate > 0:
            account, sender = bucket_key(channel)
            buckets[kind] = SharedBucket(engine, account, sender, rate, unit=unit)
    return buckets
