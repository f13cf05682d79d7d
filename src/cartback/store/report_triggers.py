"""Triggers that mark a day of the report summary stale when one of its facts changes.

The flow report's daily summary (`report_daily`, built by services/report_summary.py) holds the
grouped counts of the carts abandoned on one day. Anything that changes them (a message sent,
delivered, failed or clicked; an order or a credit; a cart enrolled; a contact's destination
country) may arrive days later. Each such write inserts a `report_stale` row for the day of the
carts it concerns, when that day is built, in the same transaction: the database does it, so no
code path that writes a fact (and none added later) can forget it.

A change to a day being built must either be seen by the build or mark the day. SQLite has one
writer at a time, and the build takes the write lock before it reads. On PostgreSQL each marking
takes a shared advisory lock on (store, day) until its transaction ends; the build takes the
exclusive one first, so it waits for writers already under way (and then sees their rows), and
writers that come later wait for the build's commit (and then see the day built and mark it).
"""

from __future__ import annotations

from dataclasses import dataclass

# The advisory lock's first key: the store id. The second: the day's number since this epoch.
PG_EPOCH = "2000-01-01"


# The concerned enrollments' store and abandonment time, as the marking below reads them.
_ENROLLMENT = "SELECT e.store_id AS store_id, e.abandoned_at AS abandoned_at "


@dataclass(frozen=True)
class Watch:
    """Which rows of a table concern which enrollments, and which columns the report reads."""

    table: str
    columns: tuple[str, ...]
    # SQL selecting (store_id, abandoned_at) of the concerned enrollments; {row} is NEW or OLD.
    enrollments: str


WATCHES = (
    Watch(
        "outbox",
        (
            "enrollment_id",
            "contact_id",
            "step_id",
            "channel",
            "segments",
            "status",
            "sent_at",
            "delivered_at",
            "clicked_at",
        ),
        _ENROLLMENT + "FROM enrollments e WHERE e.id = {row}.enrollment_id",
    ),
    Watch(
        "enrollments",
        ("store_id", "cart_id", "flow_name", "variant", "holdout", "held_channel", "abandoned_at"),
        "SELECT {row}.store_id AS store_id, {row}.abandoned_at AS abandoned_at",
    ),
    Watch(
        "orders",
        ("cart_id", "value", "currency", "occurred_at"),
        _ENROLLMENT + "FROM enrollments e WHERE e.cart_id = {row}.cart_id",
    ),
    Watch(
        "attributions",
        (
            "enrollment_id",
            "flow_name",
            "step_id",
            "variant",
            "channel",
            "revenue",
            "currency",
        ),
        _ENROLLMENT + "FROM enrollments e WHERE e.id = {row}.enrollment_id",
    ),
    # Cost is priced by the destination country the report finds on the contact.
    Watch(
        "contacts",
        ("phone_country",),
        _ENROLLMENT
        + "FROM outbox o JOIN enrollments e ON e.id = o.enrollment_id "
        + "WHERE o.contact_id = {row}.id",
    ),
)


def _sqlite_mark(watch: Watch, row: str) -> str:
    return (
        "INSERT INTO report_stale (store_id, day) SELECT d.store_id, d.day "
        f"FROM ({watch.enrollments.format(row=row)}) AS x "
        "JOIN report_days d ON d.store_id = x.store_id AND d.day = date(x.abandoned_at);"
    )


def sqlite_create() -> list[str]:
    statements = []
    for watch in WATCHES:
        changed = " OR ".join(f"OLD.{c} IS NOT NEW.{c}" for c in watch.columns)
        # Contacts change for many reasons; only a new destination country matters here.
        if watch.table != "contacts":
            for event, row in (("INSERT", "NEW"), ("DELETE", "OLD")):
                statements.append(
                    f"CREATE TRIGGER report_stale_{watch.table}_{event.lower()} "
                    f"AFTER {event} ON {watch.table} "
                    f"BEGIN {_sqlite_mark(watch, row)} END"
                )
        statements.append(
            f"CREATE TRIGGER report_stale_{watch.table}_update AFTER UPDATE ON {watch.table} "
            f"WHEN {changed} "
            f"BEGIN {_sqlite_mark(watch, 'OLD')} {_sqlite_mark(watch, 'NEW')} END"
        )
    return statements


def sqlite_drop() -> list[str]:
    names = []
    for watch in WATCHES:
        events = ("update",) if watch.table == "contacts" else ("insert", "delete", "update")
        names += [f"report_stale_{watch.table}_{event}" for event in events]
    return [f"DROP TRIGGER IF EXISTS {name}" for name in names]


PG_MARK = f"""
CREATE FUNCTION report_mark_stale(p_store bigint, p_at timestamptz) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_day date := (p_at AT TIME ZONE 'UTC')::date;
BEGIN
    PERFORM pg_advisory_xact_lock_shared(p_store::int, v_day - date '{PG_EPOCH}');
    INSERT INTO report_stale (store_id, day)
    SELECT d.store_id, d.day FROM report_days d WHERE d.store_id = p_store AND d.day = v_day;
END $$
"""


def _pg_function(watch: Watch) -> str:
    def mark(row: str) -> str:
        return (
            f"PERFORM report_mark_stale(x.store_id, x.abandoned_at) "
            f"FROM ({watch.enrollments.format(row=row)}) AS x;"
        )

    return f"""
CREATE FUNCTION report_stale_{watch.table}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        {mark("OLD")}
    END IF;
    IF TG_OP <> 'DELETE' THEN
        {mark("NEW")}
    END IF;
    RETURN NULL;
END $$
"""


def pg_create() -> list[str]:
    statements = [PG_MARK]
    for watch in WATCHES:
        name = f"report_stale_{watch.table}"
        statements.append(_pg_function(watch))
        changed = " OR ".join(f"OLD.{c} IS DISTINCT FROM NEW.{c}" for c in watch.columns)
        if watch.table != "contacts":
            statements.append(
                f"CREATE TRIGGER {name}_write AFTER INSERT OR DELETE ON {watch.table} "
                f"FOR EACH ROW EXECUTE PROCEDURE {name}()"
            )
        statements.append(
            f"CREATE TRIGGER {name}_update AFTER UPDATE ON {watch.table} "
            f"FOR EACH ROW WHEN ({changed}) EXECUTE PROCEDURE {name}()"
        )
    return statements


def pg_drop() -> list[str]:
    statements = []
    for watch in WATCHES:
        name = f"report_stale_{watch.table}"
        statements.append(f"DROP TRIGGER IF EXISTS {name}_write ON {watch.table}")
        statements.append(f"DROP TRIGGER IF EXISTS {name}_update ON {watch.table}")
        statements.append(f"DROP FUNCTION IF EXISTS {name}()")
    statements.append("DROP FUNCTION IF EXISTS report_mark_stale(bigint, timestamptz)")
    return statements


def create(dialect: str) -> list[str]:
    return pg_create() if dialect == "postgresql" else sqlite_create()


def drop(dialect: str) -> list[str]:
    return pg_drop() if dialect == "postgresql" else sqlite_drop()
