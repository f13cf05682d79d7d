"""PostgreSQL for the test suite: find a server or start a throwaway one, never skip.

Order of preference (see `find_or_start_server`):
1. the server named by ``CARTBACK_TEST_PG_URL``;
2. a server accepting trusted logins on 127.0.0.1:5432;
3. a throwaway cluster started from the installed server binaries.
If none works a RuntimeError explains why: a missing database must fail the run, not skip it.
``CARTBACK_TEST_PG_FORCE_LOCAL=1`` skips options 1 and 2.
"""

from __future__ import annotations

import atexit
import contextlib
import getpass
import glob
import os
import pwd
import queue
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

ENV_SERVER_URL = "CARTBACK_TEST_PG_URL"
ENV_FORCE_LOCAL = "CARTBACK_TEST_PG_FORCE_LOCAL"
DRIVER = "postgresql+psycopg"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5432
ADMIN_DB = "postgres"
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
# PostgreSQL truncates identifiers beyond 63 bytes; "_" + 32 hex chars must still fit.
MAX_PREFIX_LEN = 63 - 33
_PREFIX_RE = re.compile(r"[a-z_][a-z0-9_]*")
_REQUIRED_BINARIES = ("initdb", "postgres")


class LocalCluster:
    """A throwaway cluster this process started; `stop` kills it and deletes its files."""

    def __init__(self, base_dir: Path, process: subprocess.Popen[bytes]) -> None:
        self.base_dir = base_dir
        self.data_dir = base_dir / "data"
        self.log_path = base_dir / "server.log"
        self._process = process
        self._owner_pid = os.getpid()
        self._lock = threading.Lock()
        self._stopped = False

    @property
    def running(self) -> bool:
        return self._process.poll() is None

    def stop(self) -> None:
        """Immediate shutdown (SIGQUIT) then delete the directory. Safe to call twice."""
        with self._lock:
            # A forked child inherits the atexit hook; only the starting process may stop it.
            if self._stopped or os.getpid() != self._owner_pid:
                return
            self._stopped = True
            if self._process.poll() is None:
                self._process.send_signal(signal.SIGQUIT)
                try:
                    self._process.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.wait(timeout=STOP_TIMEOUT_S)
            shutil.rmtree(self.base_dir, ignore_errors=False)


@dataclass
class PgServer:
    host: str
    port: int
    user: str
    owned: bool  # True if this process started it
    password: str | None = field(default=None, repr=False)
    admin_db: str = ADMIN_DB
    cluster: LocalCluster | None = field(default=None, repr=False, compare=False)

    def url(self, dbname: str) -> str:
        """SQLAlchemy URL (psycopg 3 driver) for database `dbname` on this server."""
        if not dbname:
            raise ValueError("database name must not be empty")
        return URL.create(
            DRIVER,
            username=self.user,
            password=self.password,
            host=self.host,
            port=self.port,
            database=dbname,
        ).render_as_string(hide_password=False)

    def admin_url(self) -> str:
        """SQLAlchemy URL of the maintenance database used for CREATE/DROP DATABASE."""
        return self.url(self.admin_db)

    def connect_admin(self, connect_timeout: int = 5) -> psycopg.Connection[tuple[object, ...]]:
        """Autocommit psycopg connection to the maintenance database."""
        return _connect(
            self.host, self.port, self.user, self.password, self.admin_db, connect_timeout
        )


def _connect(
    host: str,
    port: int,
    user: str,
    password: str | None,
    dbname: str,
    connect_timeout: int,
) -> psycopg.Connection[tuple[object, ...]]:
    # psycopg leaves out None values, so a missing password falls back to libpq's defaults.
    return psycopg.connect(
        host=host,
        port=port,
        user=user,
        password=password,
        dbname=dbname,
        connect_timeout=connect_timeout,
        autocommit=True,
    )


# --- option 1: explicit server URL -------------------------------------------------------------


def server_from_url(raw_url: str) -> PgServer:
    """Parse a server URL such as ``postgresql://user@host:5432`` (database part optional)."""
    try:
        parsed = make_url(raw_url)
    except ArgumentError as exc:
        raise RuntimeError(f"{ENV_SERVER_URL} is not a valid database URL: {exc}") from exc
    if parsed.get_backend_name() != "postgresql":
        raise RuntimeError(
            f"{ENV_SERVER_URL} must be a postgresql:// URL, got {parsed.drivername!r}"
        )
    return PgServer(
        host=parsed.host or DEFAULT_HOST,
        port=parsed.port or DEFAULT_PORT,
        user=parsed.username or getpass.getuser(),
        owned=False,
        password=parsed.password,
        admin_db=parsed.database or ADMIN_DB,
    )


def _check_can_create_databases(server: PgServer) -> None:
    with server.connect_admin() as conn:
        row = conn.execute(
            "select rolsuper or rolcreatedb from pg_roles where rolname = current_user"
        ).fetchone()
    if row is None or row[0] is not True:
        raise PermissionError(f"role {server.user!r} may not create databases")


def _server_from_env(raw_url: str) -> PgServer:
    server = server_from_url(raw_url)
    try:
        _check_can_create_databases(server)
    except (psycopg.Error, PermissionError) as exc:
        # The user asked for this server explicitly: falling back would hide their mistake.
        raise RuntimeError(
            f"{ENV_SERVER_URL} names a server we cannot use ({server.host}:{server.port} "
            f"as {server.user!r}): {exc}"
        ) from exc
    return server


# --- option 2: a server already listening on the default port ---------------------------------


def _port_accepts_connections(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def candidate_users() -> list[str]:
    """Login names to try with trust auth: $PGUSER, "postgres", then the OS user (no repeats)."""
    names = [os.environ.get("PGUSER", ""), "postgres"]
    with contextlib.suppress(KeyError, OSError):
        names.append(getpass.getuser())
    return list(dict.fromkeys(name for name in names if name))


def _find_running_server(failures: list[str]) -> PgServer | None:
    if not _port_accepts_connections(DEFAULT_HOST, DEFAULT_PORT):
        failures.append(f"nothing accepts connections on {DEFAULT_HOST}:{DEFAULT_PORT}")
        return None
    for user in candidate_users():
        server = PgServer(host=DEFAULT_HOST, port=DEFAULT_PORT, user=user, owned=False)
        try:
            _check_can_create_databases(server)
        except (psycopg.Error, PermissionError) as exc:
            failures.append(f"{DEFAULT_HOST}:{DEFAULT_PORT} as {user!r}: {exc}".strip())
            continue
        return server
    return None


# --- option 3: a throwaway cluster --------------------------------------------------------------


def _has_server_binaries(bindir: Path) -> bool:
    return all(os.access(bindir / name, os.X_OK) for name in _REQUIRED_BINARIES)


def _version_key(bindir: Path) -> tuple[int, ...]:
    # /usr/lib/postgresql/<version>/bin: compare versions numerically so 15 beats 9.6.
    version = bindir.parent.name
    return tuple(int(part) for part in re.findall(r"\d+", version))


def find_server_bindir() -> Path:
    """Directory holding initdb and postgres: pg_config, then Debian's layout, then PATH."""
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True, timeout=10
            ).stdout.strip()
            if out and _has_server_binaries(Path(out)):
                return Path(out)
    debian = sorted(
        (Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin")),
        key=_version_key,
        reverse=True,
    )
    for bindir in debian:
        if _has_server_binaries(bindir):
            return bindir
    initdb = shutil.which("initdb")
    if initdb is not None:
        # /usr/local/bin/initdb may be a symlink; the real directory also holds postgres.
        bindir = Path(os.path.realpath(initdb)).parent
        if _has_server_binaries(bindir):
            return bindir
    raise FileNotFoundError(
        "no PostgreSQL server binaries (initdb, postgres) found via pg_config --bindir, "
        "/usr/lib/postgresql/*/bin or PATH"
    )


@dataclass(frozen=True)
class _RunAs:
    uid: int
    gid: int
    name: str


def _unprivileged_account() -> _RunAs | None:
    """initdb and postgres refuse to run as root; pick an account to run them as."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        if entry.pw_uid != 0:
            return _RunAs(uid=entry.pw_uid, gid=entry.pw_gid, name=name)
    raise RuntimeError(
        "running as root and neither a 'postgres' nor a 'nobody' account exists to run "
        "initdb/postgres as; create one (e.g. `useradd --system postgres`) or set "
        f"{ENV_SERVER_URL}"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((DEFAULT_HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(log unreadable: {exc})"
    return text[-limit:] or "(log empty)"


def _init_cluster(bindir: Path, base_dir: Path, run_as: _RunAs | None) -> None:
    data_dir = base_dir / "data"
    cmd = [
        str(bindir / "initdb"),
        "-D", str(data_dir),
        "-U", "postgres",
        "-A", "trust",
        "--no-sync",
        "-E", "UTF8",
        # The C locale always exists; the caller's $LANG might not be installed.
        "--locale=C",
    ]  # fmt: skip
    result = subprocess.run(
        cmd,
        cwd=base_dir,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        user=None if run_as is None else run_as.uid,
        group=None if run_as is None else run_as.gid,
        extra_groups=None if run_as is None else [],
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"initdb failed (exit {result.returncode}):\n{result.stdout}\n{result.stderr}"
        )


def _launch_postgres(
    bindir: Path, base_dir: Path, port: int, run_as: _RunAs | None
) -> subprocess.Popen[bytes]:
    cmd = [
        str(bindir / "postgres"),
        "-D", str(base_dir / "data"),
        "-k", str(base_dir),
        "-h", DEFAULT_HOST,
        "-p", str(port),
        "-c", "fsync=off",
        "-c", "synchronous_commit=off",
        "-c", "full_page_writes=off",
    ]  # fmt: skip
    with open(base_dir / "server.log", "ab") as log:
        return subprocess.Popen(
            cmd,
            cwd=base_dir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Own session: a Ctrl-C aimed at pytest must not kill the server before cleanup.
            start_new_session=True,
            user=None if run_as is None else run_as.uid,
            group=None if run_as is None else run_as.gid,
            # Drop root's supplementary groups too, not only uid and gid.
            extra_groups=None if run_as is None else [],
        )


def _wait_until_ready(server: PgServer, cluster: LocalCluster) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    last_error = "no attempt made"
    while time.monotonic() < deadline:
        if not cluster.running:
            raise RuntimeError(
                f"postgres exited before accepting connections; log:\n{_tail(cluster.log_path)}"
            )
        try:
            with server.connect_admin(connect_timeout=1) as conn:
                conn.execute("select 1")
            return
        except psycopg.OperationalError as exc:
            last_error = str(exc).strip()
        time.sleep(0.1)
    raise RuntimeError(
        f"postgres not ready after {READY_TIMEOUT_S:.0f} s ({last_error}); "
        f"log:\n{_tail(cluster.log_path)}"
    )


def start_local_cluster(attempts: int = 3) -> PgServer:
    """initdb + start a throwaway cluster on a free port; stopped and deleted at exit."""
    bindir = find_server_bindir()
    run_as = _unprivileged_account()
    last_error: Exception | None = None
    for _ in range(attempts):
        base_dir = Path(tempfile.mkdtemp(prefix="cartback-pg-"))
        if run_as is not None:
            os.chown(base_dir, run_as.uid, run_as.gid)
        port = _free_port()
        try:
            _init_cluster(bindir, base_dir, run_as)
            process = _launch_postgres(bindir, base_dir, port, run_as)
        except BaseException:
            shutil.rmtree(base_dir, ignore_errors=True)
            raise
        cluster = LocalCluster(base_dir, process)
        server = PgServer(
            host=DEFAULT_HOST, port=port, user="postgres", owned=True, cluster=cluster
        )
        try:
            _wait_until_ready(server, cluster)
        except RuntimeError as exc:
            # Most likely another process took the port between probing and binding: retry.
            last_error = exc
            cluster.stop()
            continue
        except BaseException:
            cluster.stop()
            raise
        atexit.register(cluster.stop)
        return server
    raise RuntimeError(
        f"could not start a throwaway cluster after {attempts} attempt(s): {last_error}"
    )


def interrupt_server(server: PgServer) -> None:
    """Fast shutdown (SIGINT) of a throwaway cluster, keeping its files: the database goes away
    until `relaunch_server`. Only for clusters this process started."""
    cluster = _own_cluster(server)
    process = cluster._process
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=STOP_TIMEOUT_S)


def relaunch_server(server: PgServer) -> None:
    """Start an interrupted throwaway cluster again on the same files and port."""
    cluster = _own_cluster(server)
    if cluster.running:
        return
    cluster._process = _launch_postgres(
        find_server_bindir(), cluster.base_dir, server.port, _unprivileged_account()
    )
    _wait_until_ready(server, cluster)


def _own_cluster(server: PgServer) -> LocalCluster:
    if server.cluster is None or server.cluster._stopped:
        raise ValueError("only a running throwaway cluster this process started can be restarted")
    return server.cluster


# --- choosing a server ---------------------------------------------------------------------------


def _force_local() -> bool:
    return os.environ.get(ENV_FORCE_LOCAL, "").strip().lower() in {"1", "true", "yes", "on"}


def find_or_start_server() -> PgServer:
    """Uncached: apply the three options in order; RuntimeError if none gives a server."""
    failures: list[str] = []
    if _force_local():
        failures.append(f"{ENV_FORCE_LOCAL} set: skipped {ENV_SERVER_URL} and port {DEFAULT_PORT}")
    else:
        raw_url = os.environ.get(ENV_SERVER_URL, "").strip()
        if raw_url:
            return _server_from_env(raw_url)
        running = _find_running_server(failures)
        if running is not None:
            return running
    try:
        return start_local_cluster()
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        failures.append(f"throwaway cluster: {exc}")
    raise RuntimeError(
        "no PostgreSQL server for the tests (they are never skipped). Tried:\n- "
        + "\n- ".join(failures)
        + f"\nSet {ENV_SERVER_URL}=postgresql://user@host:port or install the PostgreSQL server."
    )


_server_lock = threading.Lock()
_server: PgServer | None = None


def acquire_server() -> PgServer:
    """The process-wide server, found or started on first use (thread-safe)."""
    global _server
    with _server_lock:
        if _server is None:
            _server = find_or_start_server()
        return _server


# --- per-test databases --------------------------------------------------------------------------


def _check_prefix(prefix: str) -> None:
    if not _PREFIX_RE.fullmatch(prefix) or len(prefix) > MAX_PREFIX_LEN:
        raise ValueError(
            f"database prefix must match [a-z_][a-z0-9_]* and be at most {MAX_PREFIX_LEN} "
            f"characters, got {prefix!r}"
        )


def create_database(
    server: PgServer, prefix: str = "cartback_test", *, template: str | None = None
) -> str:
    """CREATE DATABASE <prefix>_<uuid4 hex>, a copy of database `template` if one is named;
    returns its SQLAlchemy URL."""
    _check_prefix(prefix)
    name = f"{prefix}_{uuid.uuid4().hex}"
    statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template is not None:
        statement += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
    with server.connect_admin() as conn:
        conn.execute(statement)
    return server.url(name)


def drop_database(server: PgServer, url: str) -> None:
    """DROP DATABASE ... WITH (FORCE), which also ends sessions still connected to it."""
    parsed = make_url(url)
    name = parsed.database
    if not name:
        raise ValueError(f"URL names no database: {parsed!r}")
    if name in {server.admin_db, "postgres", "template0", "template1"}:
        raise ValueError(f"refusing to drop system database {name!r}")
    if (parsed.host, parsed.port) != (server.host, server.port):
        raise ValueError(
            f"URL points at {parsed.host}:{parsed.port}, not this server "
            f"{server.host}:{server.port}"
        )
    with server.connect_admin() as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@contextlib.contextmanager
def temporary_database(server: PgServer, prefix: str = "cartback_test") -> Iterator[str]:
    """A fresh database for the duration of the block, dropped afterwards."""
    url = create_database(server, prefix)
    try:
        yield url
    finally:
        drop_database(server, url)


class BackgroundDrops:
    """Drops databases on one thread while the tests go on.

    DROP DATABASE waits for a checkpoint, a second or more on a busy server that fsyncs, and a
    test's teardown has no need to wait for it. At most `backlog` drops wait; `finish` waits
    for all of them and raises if any failed, so a database is never left behind unnoticed.
    """

    def __init__(self, backlog: int = 8) -> None:
        self._queue: queue.Queue[tuple[PgServer, str]] = queue.Queue(maxsize=backlog)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._failures: list[str] = []

    def submit(self, server: PgServer, url: str) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="drop-databases", daemon=True
                )
                self._thread.start()
                # Registered after any throwaway cluster started, so it runs before it stops.
                atexit.register(self.finish)
        self._queue.put((server, url))

    def finish(self) -> None:
        """Wait for every submitted drop; RuntimeError naming those that failed."""
        self._queue.join()
        with self._lock:
            failures, self._failures = self._failures, []
        if failures:
            raise RuntimeError("could not drop test databases:\n- " + "\n- ".join(failures))

    def _run(self) -> None:
        while True:
            server, url = self._queue.get()
            try:
                drop_database(server, url)
            except Exception as exc:  # reported by finish(), not lost with the thread
                with self._lock:
                    self._failures.append(f"{make_url(url).database}: {exc}")
            finally:
                self._queue.task_done()


background_drops = BackgroundDrops()


@contextlib.contextmanager
def scratch_database(
    server: PgServer, prefix: str = "cartback_test", *, template: str | None = None
) -> Iterator[str]:
    """Like `temporary_database` (a copy of `template` if named) but dropped in the
    background by `background_drops`: for the per-test databases of the fixtures."""
    url = create_database(server, prefix, template=template)
    try:
        yield url
    finally:
        background_drops.submit(server, url)
