"""Migrated databases to copy: each process migrates once, each test gets a copy.

Running every migration costs more than most tests that need a migrated database (a few tenths
of a second on SQLite, more on PostgreSQL). The copy is the same schema `make_world` would have
made; `make_world` still runs `upgrade` on it, which checks it is at head.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import threading
from pathlib import Path

from sqlalchemy.engine import make_url

from cartback.store.db import make_engine
from cartback.store.migrate import upgrade
from tests.support.pg import PgServer, create_database, drop_database

_lock = threading.Lock()
_sqlite_template: Path | None = None
_pg_templates: dict[tuple[str, int], str] = {}
# SQLite keeps recent writes in these beside the file until a checkpoint.
_SQLITE_SIDE_FILES = ("-wal", "-shm")


def _migrate(url: str) -> None:
    engine = make_engine(url)
    try:
        upgrade(engine)
    finally:
        engine.dispose()


def copy_migrated_sqlite(destination: Path) -> None:
    """Write a migrated SQLite database at `destination` (which must not exist yet)."""
    global _sqlite_template
    with _lock:
        if _sqlite_template is None:
            directory = Path(tempfile.mkdtemp(prefix="cartback-template-"))
            atexit.register(shutil.rmtree, directory, ignore_errors=True)
            template = directory / "migrated.db"
            _migrate(f"sqlite:///{template}")
            _sqlite_template = template
        template = _sqlite_template
    if destination.exists():
        raise FileExistsError(destination)
    shutil.copyfile(template, destination)
    for suffix in _SQLITE_SIDE_FILES:
        side = template.with_name(template.name + suffix)
        if side.exists():
            shutil.copyfile(side, destination.with_name(destination.name + suffix))


def migrated_template(server: PgServer) -> str:
    """Name of a migrated database on `server` to CREATE DATABASE ... TEMPLATE from.

    Nothing may stay connected to it (PostgreSQL refuses to copy a database in use), so only
    this function connects, once, to migrate it.
    """
    key = (server.host, server.port)
    with _lock:
        if key not in _pg_templates:
            url = create_database(server, prefix="cartback_template")
            try:
                _migrate(url)
            except BaseException:
                drop_database(server, url)
                raise
            atexit.register(drop_database, server, url)
            name = make_url(url).database
            assert name is not None
            _pg_templates[key] = name
        return _pg_templates[key]
