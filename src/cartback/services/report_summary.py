"""The flow report's daily summary: build a store's days, rebuild stale ones, read them back.

A day's summary is `report_facts.gather` for the carts the store abandoned on that UTC day,
stored as rows of `report_daily`; the report adds the rows of the days it covers whole and
reads the rest live (the window's partial first and last days, days not built yet, and stale
days). Triggers mark a built day stale in the transaction that changes one of its facts
(store/report_triggers.py), so a day read from the summary always equals its live figures.

The worker calls `refresh` every minute: it rebuilds stale days and builds days that have
ended. A build is one transaction per day, which first takes the day's lock (PostgreSQL: an
exclusive advisory lock; SQLite: the write lock every transaction takes).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, and_, delete, func, insert, select

from cartback.services.report_facts import Facts, Sends, gather
from cartback.store import tables as t
from cartback.store.report_triggers import PG_EPOCH

DAY = timedelta(days=1)
_EPOCH = date.fromisoformat(PG_EPOCH)
_COUNTS = ("enrolled", "converted", "sent", "delivered", "failed", "clicked", "segments")


def day_start(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


def day_of(at: datetime) -> date:
    return at.astimezone(UTC).date()


def days_between(first: date, end: date) -> Iterator[date]:
    """first, first + 1, ... up to and excluding end."""
    day = first
    while day < end:
        yield day
        day += DAY


def _lock_day(conn: Connection, store_id: int, day: date) -> None:
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(
            "SELECT pg_advisory_xact_lock(%s, %s)", (int(store_id), (day - _EPOCH).days)
        )


def build_day(conn: Connection, store_id: int, day: date, now: datetime) -> int:
    """Replace one day's summary with its live figures; returns the rows written. Run it in a
    transaction of its own: the day's lock is held until that transaction ends."""
    _lock_day(conn, store_id, day)
    r, s = t.report_days.c, t.report_stale.c
    stale = [
        row[0] for row in conn.execute(select(s.id).where(s.store_id == store_id, s.day == day))
    ]
    e = t.enrollments.c
    facts = gather(
        conn,
        and_(
            e.store_id == store_id,
            e.abandoned_at >= day_start(day),
            e.abandoned_at < day_start(day + DAY),
        ),
    )
    conn.execute(
        delete(t.report_daily).where(
            t.report_daily.c.store_id == store_id, t.report_daily.c.day == day
        )
    )
    rows = list(_rows(facts, store_id, day))
    if rows:
        conn.execute(insert(t.report_daily), rows)
    conn.execute(delete(t.report_days).where(r.store_id == store_id, r.day == day))
    conn.execute(insert(t.report_days).values(store_id=store_id, day=day, built_at=now))
    # Only the marks this build has answered: one written since marks the day again.
    if stale:
        conn.execute(delete(t.report_stale).where(s.id.in_(stale)))
    return len(rows)


def _row(store_id: int, day: date, kind: str, flow: str, **values: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "store_id": store_id,
        "day": day,
        "kind": kind,
        "flow_name": flow,
        "step_id": None,
        "variant": None,
        "channel": None,
        "holdout": None,
        "held_channel": None,
        "country": None,
        "currency": None,
        "recovered": 0,
        "revenue": 0,
        "squares": 0,
    }
    row.update(dict.fromkeys(_COUNTS, 0))
    row.update(values)
    return row


def _rows(facts: Facts, store_id: int, day: date) -> Iterator[dict[str, Any]]:
    for (flow, variant, holdout, held), carts in facts.carts.items():
        yield _row(
            store_id,
            day,
            "cohort",
            flow,
            variant=variant,
            holdout=holdout,
            held_channel=held,
            enrolled=carts,
        )
    for (flow, variant, holdout, held, currency), sums in facts.orders.items():
        yield _row(
            store_id,
            day,
            "orders",
            flow,
            variant=variant,
            holdout=holdout,
            held_channel=held,
            currency=currency,
            converted=sums.count,
            revenue=sums.value,
            squares=sums.squares,
        )
    for (flow, step, variant, channel, country), sends in facts.messages.items():
        yield _row(
            store_id,
            day,
            "messages",
            flow,
            step_id=step,
            variant=variant,
            channel=channel,
            country=country,
            sent=sends.sent,
            delivered=sends.delivered,
            failed=sends.failed,
            clicked=sends.clicked,
            segments=sends.segments,
        )
    for (flow, step, variant, channel, currency), sums in facts.credits.items():
        yield _row(
            store_id,
            day,
            "credits",
            flow,
            step_id=step,
            variant=variant,
            channel=channel,
            currency=currency,
            recovered=sums.count,
            revenue=sums.value,
            squares=sums.squares,
        )


@dataclass(frozen=True)
class Coverage:
    """What the summary can answer for a store's window: built days that are not stale."""

    fresh: frozenset[date]


def coverage(conn: Connection, store_id: int, first: date, end: date) -> Coverage:
    r, s = t.report_days.c, t.report_stale.c
    built = {
        row[0]
        for row in conn.execute(
            select(r.day).where(r.store_id == store_id, r.day >= first, r.day < end)
        )
    }
    stale = {
        row[0]
        for row in conn.execute(
            select(s.day).where(s.store_id == store_id, s.day >= first, s.day < end).group_by(s.day)
        )
    }
    return Coverage(fresh=frozenset(built - stale))


def read(conn: Connection, store_id: int, days: Iterable[date], flow: str | None) -> Facts:
    """The summed summary of these (fresh) days."""
    wanted = set(days)
    facts = Facts()
    if not wanted:
        return facts
    d = t.report_daily.c
    query = select(t.report_daily).where(
        d.store_id == store_id, d.day >= min(wanted), d.day <= max(wanted)
    )
    if flow is not None:
        query = query.where(d.flow_name == flow)
    for row in conn.execute(query):
        if row.day not in wanted:
            continue
        if row.kind == "cohort":
            facts.carts[(row.flow_name, row.variant, bool(row.holdout), row.held_channel)] += (
                row.enrolled
            )
        elif row.kind == "orders":
            key = (row.flow_name, row.variant, bool(row.holdout), row.held_channel, row.currency)
            facts.orders[key].add(row.converted, row.revenue, row.squares)
        elif row.kind == "messages":
            mkey = (row.flow_name, row.step_id, row.variant, row.channel, row.country)
            facts.messages[mkey].add(
                Sends(row.sent, row.delivered, row.failed, row.clicked, row.segments)
            )
        elif row.kind == "credits":
            ckey = (row.flow_name, row.step_id, row.variant, row.channel, row.currency)
            facts.credits[ckey].add(row.recovered, row.revenue, row.squares)
    return facts


@dataclass
class Refreshed:
    built: int = 0
    rebuilt: int = 0


def due_days(conn: Connection, store_id: int, now: datetime) -> tuple[list[date], list[date]]:
    """(days that ended and were never built, built days marked stale), oldest first."""
    e, r, s = t.enrollments.c, t.report_days.c, t.report_stale.c
    today = day_of(now)
    first = conn.execute(
        select(func.min(e.abandoned_at)).where(e.store_id == store_id)
    ).scalar_one()
    built = {row[0] for row in conn.execute(select(r.day).where(r.store_id == store_id))}
    unbuilt = []
    if first is not None:
        unbuilt = [day for day in days_between(day_of(first), today) if day not in built]
    stale_days = {
        row[0] for row in conn.execute(select(s.day).where(s.store_id == store_id).group_by(s.day))
    }
    return unbuilt, sorted(stale_days & built)


def refresh(engine: Engine, now: datetime, *, limit: int = 100) -> Refreshed:
    """Build every store's ended days and rebuild its stale ones, `limit` days at most, one
    transaction per day; stale marks for days never built are dropped (nothing reads them)."""
    done = Refreshed()
    with engine.connect() as conn:
        stores = [row[0] for row in conn.execute(select(t.stores.c.id).order_by(t.stores.c.id))]
    for store_id in stores:
        with engine.connect() as conn:
            unbuilt, stale = due_days(conn, store_id, now)
        for day in stale + unbuilt:
            if done.built + done.rebuilt >= limit:
                return done
            with engine.begin() as conn:
                build_day(conn, store_id, day, now)
            if day in stale:
                done.rebuilt += 1
            else:
                done.built += 1
    with engine.begin() as conn:
        s, r = t.report_stale.c, t.report_days.c
        unbuilt_marks = select(r.day).where(r.store_id == s.store_id, r.day == s.day).exists()
        conn.execute(delete(t.report_stale).where(~unbuilt_marks))
    return done


def ended_days(conn: Connection, store_id: int, now: datetime, since: date | None) -> list[date]:
    """Every day of a store's carts that has ended, from `since` (default: its first cart)."""
    e = t.enrollments.c
    first = conn.execute(
        select(func.min(e.abandoned_at)).where(e.store_id == store_id)
    ).scalar_one()
    if first is None:
        return []
    start = max(day_of(first), since) if since is not None else day_of(first)
    return list(days_between(start, day_of(now)))


def rebuild(engine: Engine, store_id: int, now: datetime, *, since: date | None = None) -> int:
    """Build every ended day of a store (from `since`), built or not, one transaction per day;
    returns the number of days. For a backfill or a repair: `refresh` keeps the summary fresh."""
    with engine.connect() as conn:
        days = ended_days(conn, store_id, now, since)
    for day in days:
        with engine.begin() as conn:
            build_day(conn, store_id, day, now)
    return len(days)
