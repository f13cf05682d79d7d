"""The PostgreSQL harness finds or starts a real server and fails loudly instead of skipping."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.engine import make_url

from . import pg

# A server nobody listens on: option 1 pointed here must fail, never fall back.
NOWHERE = pg.PgServer(host="127.0.0.1", port=1, user="nobody", owned=False)


def _database_exists(server: pg.PgServer, name: str) -> bool:
    with server.connect_admin() as conn:
        row = conn.execute("select count(*) from pg_database where datname = %s", (name,))
        found = row.fetchone()
    assert found is not None
    return found[0] == 1


def _select_one(url: str) -> object:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text("select 1")).scalar_one()
    finally:
        engine.dispose()


def _accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


@pytest.mark.postgres
def test_create_connect_and_drop_database() -> None:
    server = pg.acquire_server()
    url = pg.create_database(server)
    name = make_url(url).database
    assert name is not None and name.startswith("cartback_test_")
    assert make_url(url).drivername == "postgresql+psycopg"
    assert _database_exists(server, name)

    engine = sa.create_engine(url)
    conn = engine.connect()
    try:
        assert conn.execute(sa.text("select 1")).scalar_one() == 1
        # FORCE must end this still-open session rather than fail the drop.
        pg.drop_database(server, url)
        with pytest.raises(sa.exc.OperationalError, match="terminating connection"):
            conn.execute(sa.text("select 1"))
    finally:
        conn.invalidate()  # the server already closed it; don't roll back on a dead socket
        conn.close()
        engine.dispose()
    assert not _database_exists(server, name)


@pytest.mark.postgres
def test_databases_are_unique_and_temporary_database_cleans_up() -> None:
    server = pg.acquire_server()
    with (
        pg.temporary_database(server, prefix="harness") as first,
        pg.temporary_database(server, prefix="harness") as second,
    ):
        assert first != second
        assert _select_one(first) == 1
    for url in (first, second):
        name = make_url(url).database
        assert name is not None and not _database_exists(server, name)


@pytest.mark.postgres
def test_acquire_server_is_a_thread_safe_singleton() -> None:
    results: list[pg.PgServer] = []
    threads = [
        threading.Thread(target=lambda: results.append(pg.acquire_server())) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 8
    assert all(server is results[0] for server in results)
    assert pg.acquire_server() is results[0]


@pytest.mark.postgres
def test_forced_local_cluster_starts_and_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(pg.ENV_FORCE_LOCAL, "1")
    # Option 1 would raise for this URL, so reaching a cluster proves it was skipped.
    monkeypatch.setenv(pg.ENV_SERVER_URL, "postgresql://nobody@127.0.0.1:1")
    monkeypatch.setattr(pg, "_server", None)

    server = pg.acquire_server()
    cluster = server.cluster
    assert cluster is not None
    try:
        assert server.owned
        assert server.port != pg.DEFAULT_PORT
        assert (cluster.data_dir / "PG_VERSION").is_file()
        assert cluster.running
        with pg.temporary_database(server) as url:
            assert make_url(url).port == server.port
            assert _select_one(url) == 1
        with server.connect_admin() as conn:
            row = conn.execute("show fsync").fetchone()
        assert row == ("off",)
    finally:
        cluster.stop()

    assert not cluster.running
    assert not cluster.base_dir.exists()
    assert not cluster.data_dir.exists()
    assert not _accepts_connections(server.port)
    cluster.stop()  # idempotent: the atexit hook calls it again


def test_explicit_url_that_does_not_work_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(pg.ENV_FORCE_LOCAL, raising=False)
    monkeypatch.setenv(pg.ENV_SERVER_URL, "postgresql+psycopg://nobody@127.0.0.1:1")
    with pytest.raises(RuntimeError, match=pg.ENV_SERVER_URL):
        pg.find_or_start_server()


@pytest.mark.parametrize("raw", ["sqlite:///x.db", "mysql://u@h/db", "not a url"])
def test_explicit_url_must_be_postgresql(raw: str) -> None:
    with pytest.raises(RuntimeError, match=pg.ENV_SERVER_URL):
        pg.server_from_url(raw)


def test_server_from_url_reads_every_part() -> None:
    server = pg.server_from_url("postgresql://alice:s3cret@db.example:6543/maint")
    assert (server.host, server.port, server.user, server.password) == (
        "db.example",
        6543,
        "alice",
        "s3cret",
    )
    assert server.admin_db == "maint"
    assert not server.owned
    assert make_url(server.admin_url()).database == "maint"
    assert "s3cret" not in repr(server)

    defaults = pg.server_from_url("postgresql://bob@")
    assert (defaults.host, defaults.port, defaults.admin_db) == ("127.0.0.1", 5432, "postgres")


def test_no_server_anywhere_raises_instead_of_skipping(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_binaries() -> Path:
        raise FileNotFoundError("no PostgreSQL server binaries")

    monkeypatch.setenv(pg.ENV_FORCE_LOCAL, "1")
    monkeypatch.setattr(pg, "find_server_bindir", no_binaries)
    with pytest.raises(RuntimeError, match="never skipped") as info:
        pg.find_or_start_server()
    assert "no PostgreSQL server binaries" in str(info.value)
    assert pg.ENV_FORCE_LOCAL in str(info.value)


def test_server_binaries_are_found_in_their_real_directory() -> None:
    bindir = pg.find_server_bindir()
    for name in ("initdb", "postgres"):
        binary = bindir / name
        assert os.access(binary, os.X_OK)
        assert not binary.is_symlink()


def test_candidate_users_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGUSER", "carol")
    users = pg.candidate_users()
    assert users[:2] == ["carol", "postgres"]
    assert len(users) == len(set(users))
    monkeypatch.setenv("PGUSER", "postgres")
    assert pg.candidate_users()[0] == "postgres"
    assert pg.candidate_users().count("postgres") == 1


@pytest.mark.parametrize("prefix", ["", "Upper", "1digit", "has-dash", "x" * 31, "a;drop"])
def test_bad_prefix_is_rejected_before_any_connection(prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        pg.create_database(NOWHERE, prefix)


def test_drop_database_refuses_wrong_targets() -> None:
    with pytest.raises(ValueError, match="not this server"):
        pg.drop_database(NOWHERE, "postgresql+psycopg://nobody@127.0.0.1:2/cartback_test_x")
    for system_db in ("postgres", "template0", "template1"):
        with pytest.raises(ValueError, match="system database"):
            pg.drop_database(NOWHERE, NOWHERE.url(system_db))
    with pytest.raises(ValueError, match="no database"):
        pg.drop_database(NOWHERE, "postgresql+psycopg://nobody@127.0.0.1:1")


def test_connecting_to_nowhere_is_an_operational_error() -> None:
    with pytest.raises(psycopg.OperationalError):
        NOWHERE.connect_admin(connect_timeout=1)


@given(
    dbname=st.text(min_size=1, max_size=40).filter(lambda s: "\x00" not in s),
    password=st.none() | st.text(min_size=1, max_size=20),
)
def test_url_round_trips_any_database_name(dbname: str, password: str | None) -> None:
    server = pg.PgServer(host="127.0.0.1", port=5433, user="u@ser", owned=False, password=password)
    parsed = make_url(server.url(dbname))
    assert parsed.database == dbname
    assert parsed.username == "u@ser"
    assert parsed.password == password
    assert (parsed.host, parsed.port) == ("127.0.0.1", 5433)


@pytest.mark.postgres
def test_cluster_that_cannot_start_reports_its_log(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy_port: int = taken.getsockname()[1]
        monkeypatch.setattr(pg, "_free_port", lambda: busy_port)
        before = set(Path(os.environ.get("TMPDIR", "/tmp")).glob("cartback-pg-*"))
        with pytest.raises(RuntimeError, match=r"after 1 attempt\(s\)") as info:
            pg.start_local_cluster(attempts=1)
    message = str(info.value)
    assert "exited before accepting connections" in message
    assert "could not" in message  # the server's own complaint, taken from its log
    assert set(Path(os.environ.get("TMPDIR", "/tmp")).glob("cartback-pg-*")) <= before
