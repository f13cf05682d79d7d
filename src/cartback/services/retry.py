"""When to try a temporarily refused message again, and when to give up on it.

Backoff doubles per attempt from `base` up to `cap`, with "equal jitter": the wait is between
half and all of that, so messages refused together (a provider outage, a 429 burst) do not all
come back in the same second. The jitter is a hash of (outbox id, attempt), not a random draw:
the same row's same attempt always waits the same, which makes every retry reproducible and
lets tests assert the bounds.

After `max_attempts` provider calls that were all refused temporarily, the message is given up
on: it becomes `failed` with an error saying so (the dead letter), a `dispatch.gave_up`
decision tells `cartback why`, and it never blocks another row.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, select

from cartback.store import tables as t

GAVE_UP_RULE = "dispatch.gave_up"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 5
    base: timedelta = timedelta(seconds=30)
    cap: timedelta = timedelta(hours=1)
    # The share of the backoff that is jittered away: 0.5 waits between half and all of it.
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be between 0 and 1, got {self.jitter}")

    def gives_up(self, attempts: int) -> bool:
        """True once `attempts` provider calls have been made and none may follow."""
        return attempts >= self.max_attempts

    def ceiling(self, attempt: int) -> timedelta:
        """The backoff after the `attempt`-th call (1-based), before jitter."""
        doubled = self.base.total_seconds() * 2 ** min(max(attempt - 1, 0), 40)
        return timedelta(seconds=min(self.cap.total_seconds(), doubled))

    def backoff(self, outbox_id: int, attempt: int) -> timedelta:
        """The wait before the next call, in [ceiling * (1 - jitter), ceiling]."""
        ceiling = self.ceiling(attempt)
        return ceiling * (1 - self.jitter * jitter_fraction(outbox_id, attempt))


def jitter_fraction(outbox_id: int, attempt: int) -> float:
    """A fraction in [0, 1), the same for the same (outbox id, attempt) in every process."""
    digest = hashlib.blake2b(f"{outbox_id}:{attempt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def gave_up_reason(attempts: int, error: str | None) -> str:
    return f"gave up after {attempts} attempts: {error or 'refused temporarily'}"


def record_gave_up(conn: Connection, outbox_ids: Sequence[int], now: datetime) -> None:
    """Tell each given-up message's cart history why it stopped, so `cartback why` shows it.
    Only rows the outcome write actually moved (still `failed` with the reason) are told."""
    o, e = t.outbox.c, t.enrollments.c
    rows = conn.execute(
        select(o.store_id, o.enrollment_id, o.step_id, o.error, e.cart_id)
        .select_from(t.outbox.join(t.enrollments, e.id == o.enrollment_id))
        .where(o.id.in_(outbox_ids), o.status == "failed", o.error.like("gave up after %"))
    ).all()
    if rows:
        conn.execute(
            t.decisions.insert(),
            [
                {
                    "store_id": row.store_id,
                    "enrollment_id": row.enrollment_id,
                    "cart_id": row.cart_id,
                    "step_id": row.step_id,
                    "outcome": "error",
                    "rule": GAVE_UP_RULE,
                    "reason": row.error,
                    "at": now,
                }
                for row in rows
            ],
        )
