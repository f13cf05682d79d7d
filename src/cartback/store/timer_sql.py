"""The timer's per-batch SQL, prebuilt once per dialect and run through the driver (see hot.py).

Reads answer plain dicts keyed by column name, their values through the columns' own result
processors, so `store.rows`' `*_from_row` read them exactly as they read a Core row. Writes take
the dicts the timer builds for Core (`{column: value}`) and send them through the columns' bind
processors, one `executemany` per table: in process on SQLite, pipelined by psycopg on
PostgreSQL. Whole-table reads list the table's columns, so a new column needs no edit here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from functools import cache
from operator import itemgetter
from typing import Any

from sqlalchemy import JSON, Column, Connection, Dialect, Table

from cartback.store import tables as t
from cartback.store.hot import Codec

# Sends that count for cooldowns and caps: everything claimed or out, not what was withdrawn.
COUNTED = ("pending", "claimed", "sending", "sent", "delivered", "unknown")
# The enrollment columns the timer writes back after a step (the update's `?`s, then the id).
UPDATE_COLUMNS = ("step_index", "state", "wake_at", "exit_reason", "holds", "updated_at")
HISTORY_COLUMNS = (
    "enrollment_id",
    "step_id",
    "status",
    "created_at",
    "delivered_at",
    "opened_at",
    "clicked_at",
)

Row = dict[str, Any]
_Process = Callable[[Any], Any]


class _Reader:
    """A SELECT and how to turn its tuples into dicts."""

    def __init__(self, codec: Codec, sql: str, columns: Sequence[Column[Any]]) -> None:
        self.sql = sql
        self.names = tuple(column.name for column in columns)
        self.decoders = codec.decoders(columns)
        self.times = {i for i, column in enumerate(columns) if _is_time(column)}

    def rows(self, conn: Connection, params: Sequence[Any], sql: str | None = None) -> list[Row]:
        """Run the statement (or `sql`, its text for one list length) and decode its rows."""
        names = self.names
        decoders = [
            (i, _remembered(process) if i in self.times else process)
            for i, process in self.decoders
        ]
        found: list[Row] = []
        result = conn.exec_driver_sql(sql or self.sql, tuple(params))
        try:
            # The driver's own tuples: SQLAlchemy's Row objects cost more than the query.
            fetched_rows = result.cursor.fetchall()
        finally:
            result.close()
        for fetched in fetched_rows:
            values = list(fetched)
            for i, process in decoders:
                values[i] = process(values[i])
            found.append(dict(zip(names, values, strict=True)))
        return found


def _is_time(column: Column[Any]) -> bool:
    return isinstance(column.type, t.UtcDateTime)


def _remembered(process: _Process) -> _Process:
    """`process`, answering a value seen before from memory. For datetimes only (immutable):
    a batch's rows share many instants (one tick's `now`), and parsing them is the bulk of a
    row's decoding on SQLite."""
    seen: dict[Any, Any] = {}

    def remembered(value: Any) -> Any:
        found = seen.get(value, seen)
        if found is seen:
            found = seen[value] = process(value)
        return found

    return remembered


def _json_text(value: Any) -> str:
    """A JSON column's value as Core writes it (None is JSON's null, not SQL NULL)."""
    return json.dumps(value)


def _null_once(process: _Process) -> _Process:
    """`process`, with its answer for None worked out once (a JSON column's `null`)."""
    null = process(None)

    def processed(value: Any) -> Any:
        return null if value is None else process(value)

    return processed


class TimerSql:
    """The timer's statements for one dialect."""

    def __init__(self, dialect: Dialect) -> None:
        self.sqlite = dialect.name == "sqlite"
        self.codec = codec = Codec(dialect)
        self.time = codec.bind(t.enrollments.c.wake_at)
        self._inserts: dict[tuple[str, tuple[str, ...]], tuple[str, list[Column[Any]]]] = {}
        e, o = t.enrollments.c, t.outbox.c
        lock = "" if self.sqlite else " FOR UPDATE"
        self._claim = _Reader(
            codec,
            self._q(
                f"SELECT {_names(t.enrollments)} FROM enrollments WHERE wake_at <= ? "
                "ORDER BY wake_at LIMIT ?" + ("" if self.sqlite else " FOR UPDATE SKIP LOCKED")
                # Rows another worker holds are passed over, not waited for.
            ),
            list(t.enrollments.columns),
        )
        self._carts = self._whole(t.carts, "")
        # The per-contact lock (PostgreSQL): two workers cannot both pass a cap or a cooldown
        # for one shopper. Taken in id order, so two batches never wait on each other in a cycle.
        self._contacts = self._whole(t.contacts, " ORDER BY id" + lock)
        self._stores = self._whole(t.stores, "")
        # The consent ledger, in the order cartback received it (services.consent).
        self._consent = _Reader(
            codec,
            f"SELECT {_names(t.consent_events)} FROM consent_events WHERE contact_id {self._in} "
            "ORDER BY received_at, id",
            list(t.consent_events.columns),
        )
        self._history = _Reader(
            codec,
            f"SELECT {', '.join(HISTORY_COLUMNS)} FROM outbox WHERE enrollment_id {self._in}",
            [o[name] for name in HISTORY_COLUMNS],
        )
        # A contact's sends of the last days, through the (contact_id, created_at) index, which
        # carries the status on PostgreSQL. The status is filtered in `recent`: given a status
        # predicate, and statistics taken while the outbox was small, the planner scanned the
        # whole outbox by status. On PostgreSQL one index probe per contact (a LATERAL subquery
        # that OFFSET 0 keeps from being flattened into a scan of the outbox), so the cost
        # follows the batch's shoppers, not the outbox's size.
        columns = "o.channel, o.created_at, o.sent_at, e.cart_id, o.status"
        if self.sqlite:
            recent = (
                f"SELECT o.contact_id, {columns} FROM outbox o "
                "JOIN enrollments e ON e.id = o.enrollment_id "
                "WHERE o.contact_id IN ({ids}) AND o.created_at >= ?"
            )
        else:
            recent = (
                f"SELECT k.id, {columns} FROM unnest(%s::bigint[]) AS k(id) "
                "CROSS JOIN LATERAL (SELECT * FROM outbox WHERE outbox.contact_id = k.id "
                "AND outbox.created_at >= %s OFFSET 0) AS o "
                "JOIN enrollments e ON e.id = o.enrollment_id"
            )
        self._recent = _Reader(
            codec, recent, [o.contact_id, o.channel, o.created_at, o.sent_at, e.cart_id, o.status]
        )
        self._abandoned = self._q(
            "SELECT c.contact_id, COUNT(DISTINCT e.cart_id) FROM enrollments e "
            f"JOIN carts c ON c.id = e.cart_id WHERE c.contact_id {self._in} "
            "AND e.created_at >= ? GROUP BY c.contact_id"
        )
        self._update_columns = [*(e[name] for name in UPDATE_COLUMNS), e.id]
        if self.sqlite:
            self._update = (
                "UPDATE enrollments SET "
                + ", ".join(f"{_quote(name)} = ?" for name in UPDATE_COLUMNS)
                + " WHERE id = ?"
            )
        else:
            self._update = (
                "UPDATE enrollments SET "
                + ", ".join(
                    f"{_quote(name)} = {self._from_array(e[name])}" for name in UPDATE_COLUMNS
                )
                + f" FROM {self._unnest(self._update_columns)} WHERE enrollments.id = v.id"
            )
        self._update_keys = (*UPDATE_COLUMNS, "b_id")
        self._lease = self._q(f"UPDATE enrollments SET wake_at = ? WHERE id {self._in}")
        self._release = self._q("UPDATE enrollments SET wake_at = ? WHERE id = ?")
        self._held = self._q(f"SELECT id FROM enrollments WHERE wake_at = ? AND id {self._in}")
        self.last_outbox_id = "SELECT MAX(id) FROM outbox"
        self._sent_since = self._q(
            f"SELECT DISTINCT contact_id FROM outbox WHERE id > ? AND contact_id {self._in}"
        )

    @property
    def _in(self) -> str:
        """Match a column against a list of ids, the list one parameter (see `_ids`)."""
        return "IN ({ids})" if self.sqlite else "= ANY(%s::bigint[])"

    def _q(self, sql: str) -> str:
        """Statements are written with `?`; psycopg takes `%s`."""
        return sql if self.sqlite else sql.replace("?", "%s")

    def _whole(self, table: Table, tail: str) -> _Reader:
        sql = f"SELECT {_names(table)} FROM {table.name} WHERE id {self._in}{tail}"
        return _Reader(self.codec, sql, list(table.columns))

    def _with_ids(self, sql: str, ids: Sequence[int]) -> tuple[str, list[Any]]:
        """The statement for this many ids, and the ids as its parameters."""
        if self.sqlite:
            return sql.replace("{ids}", _qmarks(len(ids))), list(ids)
        return sql, [list(ids)]

    def _select(
        self, conn: Connection, reader: _Reader, ids: Sequence[int], *extra: Any
    ) -> list[Row]:
        if not ids:
            return []
        sql, params = self._with_ids(reader.sql, ids)
        return reader.rows(conn, [*params, *extra], sql)

    # Reads.

    def claim(self, conn: Connection, now: datetime, limit: int) -> list[Row]:
        """Up to `limit` due enrollments, the longest due first."""
        return self._claim.rows(conn, (self.time(now), limit))

    def carts(self, conn: Connection, ids: Sequence[int]) -> list[Row]:
        return self._select(conn, self._carts, ids)

    def contacts(self, conn: Connection, ids: Sequence[int]) -> list[Row]:
        """In id order; on PostgreSQL locked until the transaction ends."""
        return self._select(conn, self._contacts, sorted(ids))

    def stores(self, conn: Connection, ids: Sequence[int]) -> list[Row]:
        return self._select(conn, self._stores, ids)

    def consent_events(self, conn: Connection, contact_ids: Sequence[int]) -> list[Row]:
        return self._select(conn, self._consent, contact_ids)

    def history(self, conn: Connection, enrollment_ids: Sequence[int]) -> list[Row]:
        """HISTORY_COLUMNS of these enrollments' outbox rows."""
        return self._select(conn, self._history, enrollment_ids)

    def recent(self, conn: Connection, contact_ids: Sequence[int], since: datetime) -> list[Row]:
        """Counted sends to these contacts created since `since`, with their enrollment's cart."""
        found = self._select(conn, self._recent, contact_ids, self.time(since))
        return [row for row in found if row["status"] in COUNTED]

    def abandoned_since(
        self, conn: Connection, contact_ids: Sequence[int], since: datetime
    ) -> dict[int, int]:
        """Per contact, the carts that entered a flow since `since`."""
        if not contact_ids:
            return {}
        sql, params = self._with_ids(self._abandoned, contact_ids)
        rows = conn.exec_driver_sql(sql, (*params, self.time(since))).fetchall()
        return {int(contact_id): int(count) for contact_id, count in rows}

    # Writes.

    def insert(
        self, conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]], tail: str = ""
    ) -> None:
        """Insert rows that all have the first row's keys; `tail` ends the statement (an
        ON CONFLICT clause)."""
        if not rows:
            return
        names = tuple(rows[0])
        key = (table.name + tail, names)
        built = self._inserts.get(key)
        if built is None:
            columns = [table.c[name] for name in names]
            into = f"INSERT INTO {table.name} ({', '.join(map(_quote, names))}) "
            if self.sqlite:
                sql = into + f"VALUES ({', '.join('?' * len(names))}){tail}"
            else:
                # One statement for the batch: its values as one array per column.
                picks = ", ".join(self._from_array(column) for column in columns)
                sql = into + f"SELECT {picks} FROM {self._unnest(columns)}{tail}"
            built = self._inserts[key] = (sql, columns)
        sql, columns = built
        conn.exec_driver_sql(sql, self._encode(columns, names, rows))

    def update_enrollments(self, conn: Connection, updates: Sequence[Mapping[str, Any]]) -> None:
        """Each update: UPDATE_COLUMNS and `b_id`, the enrollment's id."""
        if updates:
            conn.exec_driver_sql(
                self._update, self._encode(self._update_columns, self._update_keys, updates)
            )

    def _encode(
        self, columns: Sequence[Column[Any]], keys: Sequence[str], rows: Sequence[Mapping[str, Any]]
    ) -> list[tuple[Any, ...]]:
        """Each row's values under `keys`, through the bind processors of `columns`."""
        encoders = [
            (i, _remembered(process) if _is_time(columns[i]) else _null_once(process))
            for i, process in self.codec.encoders(columns)
        ]
        if not self.sqlite:
            # PostgreSQL takes JSON values as text in its arrays, cast back in `_from_array`.
            encoders = [
                (i, _json_text if isinstance(columns[i].type, JSON) else process)
                for i, process in encoders
            ]
        get = itemgetter(*keys)
        encoded: list[tuple[Any, ...]] = []
        for row in rows:
            values = list(get(row)) if len(keys) > 1 else [get(row)]
            for i, process in encoders:
                values[i] = process(values[i])
            encoded.append(tuple(values))
        if self.sqlite:
            return encoded
        return [tuple(list(column) for column in zip(*encoded, strict=True))]

    def _unnest(self, columns: Sequence[Column[Any]]) -> str:
        """`unnest(...) AS v(...)`: one array parameter per column (PostgreSQL)."""
        arrays = ", ".join(f"%s::{self._array_type(column)}[]" for column in columns)
        return f"unnest({arrays}) AS v({', '.join(_quote(c.name) for c in columns)})"

    def _array_type(self, column: Column[Any]) -> str:
        if isinstance(column.type, JSON):
            return "text"
        return str(column.type.compile(dialect=self.codec.dialect))

    @staticmethod
    def _from_array(column: Column[Any]) -> str:
        value = f"v.{_quote(column.name)}"
        return f"{value}::json" if isinstance(column.type, JSON) else value

    def lease(self, conn: Connection, ids: Sequence[int], until: datetime) -> None:
        """Move these enrollments' wake time to `until`: no other claim takes them before."""
        if ids:
            sql, params = self._with_ids(self._lease, ids)
            conn.exec_driver_sql(sql, (self.time(until), *params))

    def release(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        """Give leased enrollments (claimed rows) their own wake time back."""
        if rows:
            params = [(self.time(row["wake_at"]), row["id"]) for row in rows]
            conn.exec_driver_sql(self._release, params)

    def still_held(self, conn: Connection, ids: Sequence[int], lease: datetime) -> set[int]:
        """Of these enrollments, those whose wake time is still the lease `lease`: nothing else
        (an order, a cart update, an erasure, another worker) has touched them since."""
        if not ids:
            return set()
        sql, params = self._with_ids(self._held, ids)
        return {row[0] for row in conn.exec_driver_sql(sql, (self.time(lease), *params))}

    def max_outbox_id(self, conn: Connection) -> int:
        found = conn.exec_driver_sql(self.last_outbox_id).scalar()
        return int(found or 0)

    def sent_since(self, conn: Connection, after_id: int, contact_ids: Sequence[int]) -> set[int]:
        """Of these contacts, those with an outbox row newer than `after_id`."""
        if not contact_ids:
            return set()
        sql, params = self._with_ids(self._sent_since, contact_ids)
        return {row[0] for row in conn.exec_driver_sql(sql, (after_id, *params))}


def _names(table: Table) -> str:
    return ", ".join(_quote(column.name) for column in table.columns)


def _quote(name: str) -> str:
    """Column names as identifiers (`at`, `rule` and `value` are words of SQL too)."""
    return f'"{name}"'


@cache
def _qmarks(count: int) -> str:
    return ", ".join("?" * count)


_BY_DIALECT: dict[str, TimerSql] = {}


def timer_sql(dialect: Dialect) -> TimerSql:
    """The statements for this dialect, built on first use."""
    found = _BY_DIALECT.get(dialect.name)
    if found is None:
        found = _BY_DIALECT.setdefault(dialect.name, TimerSql(dialect))
    return found
