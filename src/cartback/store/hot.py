"""The hot paths' SQL, prebuilt once per dialect and run through the driver with tuple rows.

SQLAlchemy builds, caches and type-processes a Core statement on every call, which costs more
than the database's own work for the dispatcher's small per-group statements. These statements
are plain SQL strings run with `exec_driver_sql`, so engine events, the connection's
transaction and its error handling still apply; bulk writes are one `executemany` on SQLite
(in process, no round trips) and one statement over arrays on PostgreSQL. Values go in and out
through the very bind and result processors of the table's column types (`Codec`), so what is
written here is stored exactly as Core would store it (SQLite keeps datetimes as text,
compared as text).

Variable-length id lists are `IN (?, ...)` on SQLite (one text per length, cached) and
`= ANY(array)` on PostgreSQL (one text).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import Column, Connection, Dialect, Numeric

from cartback.store import tables as t

_Process = Callable[[Any], Any]
_NUMERIC_OID = 1700


def _same(value: Any) -> Any:
    return value


class Codec:
    """Bind and result processors of some columns, for one dialect."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect

    def bind(self, column: Column[Any]) -> _Process:
        processor = column.type.dialect_impl(self.dialect).bind_processor(self.dialect)
        return processor or _same

    def result(self, column: Column[Any]) -> _Process:
        impl = column.type.dialect_impl(self.dialect)
        # PostgreSQL's numeric processors ask for the column's type oid; NUMERIC is 1700.
        coltype = _NUMERIC_OID if isinstance(column.type, Numeric) else None
        processor = impl.result_processor(self.dialect, coltype)
        return processor or _same

    def encoders(self, columns: Sequence[Column[Any]]) -> list[tuple[int, _Process]]:
        """(position, processor) for the values of a row to write that need one."""
        found = [(i, self.bind(column)) for i, column in enumerate(columns)]
        return [(i, process) for i, process in found if process is not _same]

    def decoders(self, columns: Sequence[Column[Any]]) -> list[tuple[int, _Process]]:
        """(position, processor) for the columns of a row that need one."""
        found = [(i, self.result(column)) for i, column in enumerate(columns)]
        return [(i, process) for i, process in found if process is not _same]


# The columns of an outbox row the dispatcher reads when it claims, in this order.
CLAIM_COLUMNS = (
    "id",
    "store_id",
    "enrollment_id",
    "contact_id",
    "step_id",
    "service_key",
    "channel",
    "to_address",
    "subject",
    "body",
    "html",
    "headers",
    "segments",
    "attempts",
    "available_at",
    "send_before",
)

# What may stop a claimed row's send, read in the claim (see services.dispatch).
FACTS_COLUMNS = (
    "id",
    "cart_id",
    "created_at",
    "status",
    "sms_marketing",
    "email_marketing",
    "opted_out_at",
)


# An outcome, as `DispatchSql.record` takes it.
RECORD_COLUMNS = (
    "status",
    "error",
    "error_code",
    "provider",
    "provider_id",
    "sent_at",
    "failed_at",
    "cost",
    "segments",
    "available_at",
    "updated_at",
    "id",
    "owner",
)
_RECORD_TYPES = (
    "text",
    "text",
    "text",
    "text",
    "text",
    "timestamptz",
    "timestamptz",
    "numeric",
    "int",
    "timestamptz",
    "timestamptz",
    "bigint",
    "text",
)


class DispatchSql:
    """The dispatcher's per-batch and per-group statements for one dialect."""

    def __init__(self, dialect: Dialect) -> None:
        self.sqlite = dialect.name == "sqlite"
        self.codec = codec = Codec(dialect)
        o, e, c, k = t.outbox.c, t.enrollments.c, t.carts.c, t.contacts.c
        self.time = codec.bind(o.lease_until)
        self.cost = codec.bind(o.cost)
        self._time_out = codec.result(o.available_at)
        self._claim_out = codec.decoders([o[name] for name in CLAIM_COLUMNS])
        facts = [e.id, e.cart_id, e.created_at, c.status, k.sms_marketing, k.email_marketing]
        self._facts_out = codec.decoders([*facts, k.opted_out_at])
        self._columns = ", ".join(CLAIM_COLUMNS)
        self.any_endpoint = "SELECT 1 FROM webhook_endpoints LIMIT 1"
        self.next_due = self._q("SELECT MIN(available_at) FROM outbox WHERE status = 'pending'")
        # A group's outcomes (RECORD_COLUMNS). Fenced by the lease: a dispatcher whose row was
        # taken over writes nothing. Columns an outcome leaves NULL keep their value. SQLite:
        # one statement per outcome in one executemany (no round trips in process);
        # PostgreSQL: one statement for the group, its values passed as arrays.
        sets = (
            "status = {v}status, error = {v}error, error_code = {v}error_code, "
            "provider = {v}provider, "
            "provider_id = COALESCE({v}provider_id, outbox.provider_id), "
            "sent_at = COALESCE({v}sent_at, outbox.sent_at), "
            "failed_at = COALESCE({v}failed_at, outbox.failed_at), "
            "cost = COALESCE({v}cost, outbox.cost), "
            "segments = COALESCE({v}segments, outbox.segments), "
            "available_at = COALESCE({v}available_at, outbox.available_at), "
            "lease_owner = NULL, lease_until = NULL, updated_at = {v}updated_at"
        )
        if self.sqlite:
            self._record = (
                "UPDATE outbox SET "
                + re.sub(r"\{v\}\w+", "?", sets)
                + " WHERE id = ? AND lease_owner = ? AND status = 'sending'"
            )
        else:
            arrays = ", ".join(f"%s::{kind}[]" for kind in _RECORD_TYPES)
            self._record = (
                "UPDATE outbox SET "
                + sets.format(v="v.")
                + f" FROM unnest({arrays}) AS v({', '.join(RECORD_COLUMNS)})"
                " WHERE outbox.id = v.id AND outbox.lease_owner = v.owner"
                " AND outbox.status = 'sending'"
            )
        # A row marked `sending` whose call was not started after all goes back to the queue.
        self.release = self._q(
            "UPDATE outbox SET status = 'pending', attempts = outbox.attempts - 1, "
            "lease_owner = NULL, lease_until = NULL, updated_at = ? "
            "WHERE id = ? AND lease_owner = ? AND status = 'sending'"
        )
        # A claimed row this dispatcher will not send (it is stopping) goes back at once.
        self.unclaim = self._q(
            "UPDATE outbox SET status = 'pending', lease_owner = NULL, lease_until = NULL, "
            "updated_at = ? WHERE id = ? AND lease_owner = ? AND status = 'claimed'"
        )

    def _q(self, sql: str) -> str:
        """Write statements with `?`; psycopg takes `%s`."""
        return sql if self.sqlite else sql.replace("?", "%s")

    def _ids(self, ids: Sequence[int]) -> tuple[str, list[Any]]:
        """`IN (...)` for these ids, and the parameters it takes."""
        if self.sqlite:
            return _qmarks(len(ids)), list(ids)
        return "= ANY(%s::bigint[])", [list(ids)]

    def _texts(self, values: Sequence[str]) -> tuple[str, list[Any]]:
        if self.sqlite:
            return _qmarks(len(values)), list(values)
        return "= ANY(%s::text[])", [list(values)]

    def claim_rows(
        self, conn: Connection, now: datetime, channels: Sequence[str], most: int
    ) -> list[tuple[Any, ...]]:
        """Up to `most` due `pending` rows of these channels, oldest first (CLAIM_COLUMNS);
        on PostgreSQL locked, skipping rows another worker is claiming."""
        match, params = self._texts(channels)
        sql = (
            f"SELECT {self._columns} FROM outbox WHERE status = 'pending' AND available_at <= ? "
            f"AND channel {match} ORDER BY available_at, id LIMIT ?"
        )
        if not self.sqlite:
            sql += " FOR UPDATE SKIP LOCKED"
        rows = conn.exec_driver_sql(self._q(sql), (self.time(now), *params, most)).fetchall()
        return [self._decode(row, self._claim_out) for row in rows]

    def facts(self, conn: Connection, enrollment_ids: Sequence[int]) -> list[tuple[Any, ...]]:
        """FACTS_COLUMNS of these enrollments, their carts and contacts."""
        if not enrollment_ids:
            return []
        match, params = self._ids(enrollment_ids)
        sql = (
            "SELECT e.id, e.cart_id, e.created_at, c.status, k.sms_marketing, "
            "k.email_marketing, k.opted_out_at FROM enrollments e "
            "JOIN carts c ON c.id = e.cart_id LEFT JOIN contacts k ON k.id = c.contact_id "
            f"WHERE e.id {match}"
        )
        rows = conn.exec_driver_sql(self._q(sql), tuple(params)).fetchall()
        return [self._decode(row, self._facts_out) for row in rows]

    def mark_claimed(
        self, conn: Connection, ids: Sequence[int], owner: str, until: datetime, now: datetime
    ) -> None:
        match, params = self._ids(ids)
        sql = (
            "UPDATE outbox SET status = 'claimed', lease_owner = ?, lease_until = ?, "
            f"updated_at = ? WHERE id {match}"
        )
        conn.exec_driver_sql(self._q(sql), (owner, self.time(until), self.time(now), *params))

    def mark_sending(
        self,
        conn: Connection,
        ids: Sequence[int],
        owner: str,
        at: datetime,
        until: datetime,
        outcomes: Sequence[tuple[Any, ...]] = (),
    ) -> set[int]:
        """The fence: of these rows, those this owner still holds `claimed` under a running
        lease become `sending` with a lease to `until`; answers their ids. `outcomes` (as
        `record` takes them) are written first: on PostgreSQL in the same statement, which
        touches the `sending` rows they name and the `claimed` rows fenced, never both."""
        match, params = self._ids(ids)
        sql = self._q(
            "UPDATE outbox SET status = 'sending', lease_until = ?, "
            "attempts = outbox.attempts + 1, updated_at = ? "
            f"WHERE id {match} AND lease_owner = ? AND status = 'claimed' AND lease_until > ? "
            "RETURNING id"
        )
        stamp = self.time(at)
        values: tuple[Any, ...] = (self.time(until), stamp, *params, owner, stamp)
        if outcomes and self.sqlite:
            self.record(conn, outcomes)
        elif outcomes:
            sql = f"WITH recorded AS ({self._record}) {sql}"
            values = (*self._columns_of(outcomes), *values)
        marked = conn.exec_driver_sql(sql, values)
        return {row[0] for row in marked}

    def record(self, conn: Connection, outcomes: Sequence[tuple[Any, ...]]) -> None:
        """Write a group of outcomes, each a tuple in RECORD_COLUMNS order, its times and
        cost already through `time` and `cost`."""
        if self.sqlite:
            conn.exec_driver_sql(self._record, list(outcomes))
        else:
            conn.exec_driver_sql(self._record, self._columns_of(outcomes))

    @staticmethod
    def _columns_of(outcomes: Sequence[tuple[Any, ...]]) -> tuple[list[Any], ...]:
        """Outcome rows as one array per column (PostgreSQL's `unnest`)."""
        return tuple(list(column) for column in zip(*outcomes, strict=True))

    def earliest_pending(self, conn: Connection) -> datetime | None:
        found = conn.exec_driver_sql(self.next_due).scalar()
        return None if found is None else self._time_out(found)

    def has_endpoint(self, conn: Connection) -> bool:
        return conn.exec_driver_sql(self.any_endpoint).first() is not None

    @staticmethod
    def _decode(row: Sequence[Any], processors: list[tuple[int, _Process]]) -> tuple[Any, ...]:
        values = list(row)
        for i, process in processors:
            values[i] = process(values[i])
        return tuple(values)


@cache
def _qmarks(count: int) -> str:
    return "IN (" + ", ".join("?" * count) + ")"


_BY_DIALECT: dict[str, DispatchSql] = {}


def dispatch_sql(dialect: Dialect) -> DispatchSql:
    """The statements for this dialect, built on first use."""
    found = _BY_DIALECT.get(dialect.name)
    if found is None:
        found = _BY_DIALECT.setdefault(dialect.name, DispatchSql(dialect))
    return found


class IngestSql:
    """The batched inbox apply's set-based reads and its receipts insert (services.ingest_batch).

    Reads of rows whose key is in a set of values are plain SQL with `IN (?, ...)` on SQLite
    and `= ANY(array)` on PostgreSQL: SQLAlchemy renders an expanding IN anew for every call,
    which costs more than the query itself at hundreds of values."""

    def __init__(self, dialect: Dialect) -> None:
        self.sqlite = dialect.name == "sqlite"
        self.codec = Codec(dialect)
        self.time = self.codec.bind(t.event_receipts.c.received_at)
        self._decoders: dict[tuple[str, tuple[str, ...]], list[tuple[int, _Process]]] = {}

    def rows_where(
        self,
        conn: Connection,
        table: Any,
        columns: Sequence[str],
        matches: Sequence[tuple[str, Sequence[Any]]],
        *,
        store_id: int | None = None,
        lock: bool = False,
    ) -> list[dict[str, Any]]:
        """`columns` of the rows (of `store_id`, if given) whose column is in its values, for
        any of `matches` ((column, values) each); locked on PostgreSQL when `lock`."""
        matches = [(column, list(values)) for column, values in matches if values]
        if not matches:
            return []
        params: list[Any] = [] if store_id is None else [store_id]
        tests = []
        for column, values in matches:
            if self.sqlite:
                tests.append(f"{column} {_qmarks(len(values))}")
                params.extend(values)
            else:
                kind = "bigint" if isinstance(values[0], int) else "text"
                tests.append(f"{column} = ANY(%s::{kind}[])")
                params.append(values)
        mark = "?" if self.sqlite else "%s"
        scope = "" if store_id is None else f"store_id = {mark} AND "
        sql = f"SELECT {', '.join(columns)} FROM {table.name} WHERE {scope}({' OR '.join(tests)})"
        if lock and not self.sqlite:
            sql += " FOR UPDATE"
        decoders = self._decoders_of(table, tuple(columns))
        found = []
        for row in conn.exec_driver_sql(sql, tuple(params)).fetchall():
            values = list(row)
            for i, process in decoders:
                values[i] = process(values[i])
            found.append(dict(zip(columns, values, strict=True)))
        return found

    def _decoders_of(self, table: Any, columns: tuple[str, ...]) -> list[tuple[int, _Process]]:
        key = (table.name, columns)
        found = self._decoders.get(key)
        if found is None:
            found = self._decoders[key] = self.codec.decoders([table.c[c] for c in columns])
        return found

    def first_receipts(
        self, conn: Connection, store_id: int, receipts: Sequence[tuple[str, str, datetime]]
    ) -> set[tuple[str, str]]:
        """Insert (source, event id, received at) receipts, none clamped; the (source, event
        id) of those not received before."""
        if not receipts:
            return set()
        if self.sqlite:
            params: tuple[Any, ...] = tuple(
                value
                for source, event_id, at in receipts
                for value in (store_id, source, event_id, self.time(at))
            )
            rows = conn.exec_driver_sql(_receipts_sql(len(receipts)), params)
        else:
            # One short text over arrays: psycopg parses a long multi-row text on every call.
            sources, event_ids, times = zip(*receipts, strict=True)
            params = (store_id, list(sources), list(event_ids), [self.time(at) for at in times])
            rows = conn.exec_driver_sql(_PG_RECEIPTS, params)
        return {(str(source), str(event_id)) for source, event_id in rows}


_RECEIPTS = "INSERT INTO event_receipts (store_id, source, event_id, received_at, clamped_seconds) "
_RECEIPT_KEY = " ON CONFLICT (store_id, source, event_id) DO NOTHING RETURNING source, event_id"
_PG_RECEIPTS = (
    _RECEIPTS
    + "SELECT %s, v.source, v.event_id, v.received_at, NULL "
    + "FROM unnest(%s::text[], %s::text[], %s::timestamptz[]) AS v(source, event_id, received_at)"
    + _RECEIPT_KEY
)


@cache
def _receipts_sql(rows: int) -> str:
    return _RECEIPTS + "VALUES " + ", ".join(["(?, ?, ?, ?, NULL)"] * rows) + _RECEIPT_KEY


_INGEST_BY_DIALECT: dict[str, IngestSql] = {}


def ingest_sql(dialect: Dialect) -> IngestSql:
    """The batched apply's statements for this dialect, built on first use."""
    found = _INGEST_BY_DIALECT.get(dialect.name)
    if found is None:
        found = _INGEST_BY_DIALECT.setdefault(dialect.name, IngestSql(dialect))
    return found
