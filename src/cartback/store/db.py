"""Engine construction: SQLite (WAL, one writer) or PostgreSQL, from one URL."""

from __future__ import annotations

import sqlite3
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def make_engine(
    url: str,
    *,
    pool_size: int = 8,
    connect_timeout: int = 5,
    statement_timeout: float = 30.0,
) -> Engine:
    """An engine whose waits are all bounded: `connect_timeout` seconds to connect (and to get a
    pooled connection), `statement_timeout` seconds per statement (SQLite: for the lock)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(url, busy_timeout=statement_timeout)
    if parsed.get_backend_name() == "postgresql":
        if parsed.drivername == "postgresql":
            # psycopg 3 is the driver we ship; a bare postgresql:// URL means it too.
            url = parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
        return create_engine(
            url,
            pool_size=pool_size,
            max_overflow=0,
            pool_pre_ping=True,
            # Bound values are phones, emails and message bodies: errors must not quote them.
            hide_parameters=True,
            pool_timeout=connect_timeout,
            connect_args={
                # libpq counts whole seconds, and at least 2.
                "connect_timeout": max(2, int(connect_timeout)),
                "options": f"-c statement_timeout={int(statement_timeout * 1000)}",
            },
        )
    raise ValueError(
        f"unsupported database {parsed.get_backend_name()!r}: use sqlite or postgresql"
    )


def _sqlite_engine(url: str, *, busy_timeout: float) -> Engine:
    memory = make_url(url).database in (None, "", ":memory:")
    engine = create_engine(
        url,
        # One connection per checkout keeps writers honest; WAL lets readers run beside the writer.
        poolclass=NullPool if not memory else None,
        connect_args={"check_same_thread": False, "timeout": busy_timeout},
        # Bound values are phones, emails and message bodies: errors must not quote them.
        hide_parameters=True,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
        # Take over transaction control from the sqlite3 module so BEGIN IMMEDIATE can be used.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        if not memory:
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # Every transaction takes the write lock up front: a claim and its writes can never
        # interleave with another writer, which is SQLite's stand-in for SKIP LOCKED.
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine
