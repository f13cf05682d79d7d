"""The flow report's grouped counts for a set of carts, before rates, prices and ratios.

`gather` reads them live for the carts one condition selects; services/report_summary.py
stores them per store and day and reads them back. Every count and sum here adds up across
disjoint sets of carts (a cart is abandoned on one day), so a report over many days is the sum
of its days: the summary and the live queries give the same figures.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, case, func, select

from cartback.store import tables as t

# (flow, variant, holdout, held channel)
CohortKey = tuple[str, str | None, bool, str | None]
# (flow, variant, holdout, held channel, order currency)
OrdersKey = tuple[str, str | None, bool, str | None, str]
# (flow, step, variant, channel, destination country)
MessagesKey = tuple[str, str, str | None, str, str | None]
# (flow, step, variant, channel, revenue currency)
CreditsKey = tuple[str, str, str | None, str, str]


@dataclass
class Sums:
    """Orders or credits: how many, their value and the sum of its squares (for intervals)."""

    count: int = 0
    value: Decimal = Decimal(0)
    squares: Decimal = Decimal(0)

    def add(self, count: int, value: Decimal, squares: Decimal) -> None:
        self.count += count
        self.value += value
        self.squares += squares


@dataclass
class Sends:
    sent: int = 0
    delivered: int = 0
    failed: int = 0
    clicked: int = 0
    segments: int = 0

    def add(self, other: Sends) -> None:
        self.sent += other.sent
        self.delivered += other.delivered
        self.failed += other.failed
        self.clicked += other.clicked
        self.segments += other.segments


@dataclass
class Facts:
    carts: dict[CohortKey, int] = field(default_factory=lambda: defaultdict(int))
    # Carts with an order after their abandonment (counted once per currency they ordered in).
    orders: dict[OrdersKey, Sums] = field(default_factory=lambda: defaultdict(Sums))
    messages: dict[MessagesKey, Sends] = field(default_factory=lambda: defaultdict(Sends))
    credits: dict[CreditsKey, Sums] = field(default_factory=lambda: defaultdict(Sums))

    def add(self, other: Facts) -> None:
        for key, carts in other.carts.items():
            self.carts[key] += carts
        for okey, sums in other.orders.items():
            self.orders[okey].add(sums.count, sums.value, sums.squares)
        for mkey, sends in other.messages.items():
            self.messages[mkey].add(sends)
        for ckey, sums in other.credits.items():
            self.credits[ckey].add(sums.count, sums.value, sums.squares)


def _decimal(value: Any) -> Decimal:
    return Decimal(0) if value is None else Decimal(value)


def gather(conn: Connection, cohort: Any) -> Facts:
    """The grouped counts for the enrollments `cohort` (a condition on enrollments) selects."""
    facts = Facts()
    _cohorts(conn, cohort, facts)
    _messages(conn, cohort, facts)
    _credits(conn, cohort, facts)
    return facts


def _cohorts(conn: Connection, cohort: Any, facts: Facts) -> None:
    e, od = t.enrollments.c, t.orders.c
    keys = (e.flow_name, e.variant, e.holdout, e.held_channel)
    for row in conn.execute(select(*keys, func.count()).where(cohort).group_by(*keys)):
        facts.carts[(row[0], row[1], bool(row[2]), row[3])] += int(row[4])
    # A cart converted when an order names it after it was abandoned: the experiment's measure,
    # attribution or not (so treated and held-out carts are counted alike).
    ordered = (
        select(
            *keys,
            od.currency,
            func.count(func.distinct(e.id)),
            func.sum(od.value),
            func.sum(od.value * od.value),
        )
        .select_from(t.enrollments.join(t.orders, od.cart_id == e.cart_id))
        .where(cohort, od.occurred_at >= e.abandoned_at)
        .group_by(*keys, od.currency)
    )
    for row in conn.execute(ordered):
        key = (row[0], row[1], bool(row[2]), row[3], row[4])
        facts.orders[key].add(int(row[5]), _decimal(row[6]), _decimal(row[7]))


def _messages(conn: Connection, cohort: Any, facts: Facts) -> None:
    e, o, ct = t.enrollments.c, t.outbox.c, t.contacts.c
    sent = o.sent_at.is_not(None)
    query = (
        select(
            e.flow_name,
            o.step_id,
            e.variant,
            o.channel,
            ct.phone_country,
            func.sum(case((sent, 1), else_=0)),
            func.sum(case((o.delivered_at.is_not(None), 1), else_=0)),
            func.sum(case((o.status == "failed", 1), else_=0)),
            func.sum(case((o.clicked_at.is_not(None), 1), else_=0)),
            func.sum(case((sent, func.coalesce(o.segments, 1)), else_=0)),
        )
        .select_from(
            t.enrollments.join(t.outbox, o.enrollment_id == e.id).outerjoin(
                t.contacts, ct.id == o.contact_id
            )
        )
        .where(cohort)
        .group_by(e.flow_name, o.step_id, e.variant, o.channel, ct.phone_country)
    )
    for row in conn.execute(query):
        counts = [int(v or 0) for v in row[5:10]]
        facts.messages[(row[0], row[1], row[2], row[3], row[4])].add(Sends(*counts))


def _credits(conn: Connection, cohort: Any, facts: Facts) -> None:
    e, a = t.enrollments.c, t.attributions.c
    query = (
        select(
            a.flow_name,
            a.step_id,
            a.variant,
            a.channel,
            a.currency,
            func.count(),
            func.sum(a.revenue),
            func.sum(a.revenue * a.revenue),
        )
        .select_from(t.enrollments.join(t.attributions, a.enrollment_id == e.id))
        .where(cohort)
        .group_by(a.flow_name, a.step_id, a.variant, a.channel, a.currency)
    )
    for row in conn.execute(query):
        key = (row[0], row[1], row[2], row[3], row[4])
        facts.credits[key].add(int(row[5]), _decimal(row[6]), _decimal(row[7]))
