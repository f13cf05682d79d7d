"""Shared fixtures: every store test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.pg import acquire_server, background_drops, scratch_database
from tests.support.templates import copy_migrated_sqlite, migrated_template
from tests.support.world import World, make_world

# The fault suite's seed, its summary lines whole across pytest-xdist workers, and its order.
pytest_plugins = ["tests.support.faultreport"]

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]

# Fixtures that hand `database_url` to `make_world` as their first use of it: tests asking for
# one get the database already migrated (a copy of a migrated template), which `make_world`
# would otherwise do for each of them. Other tests get an empty database.
MIGRATED_FOR = frozenset({"world", "world_", "shop", "two_flows", "flow_world"})


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    migrated = not MIGRATED_FOR.isdisjoint(request.fixturenames)
    if request.param == "sqlite":
        path = tmp_path / "cartback.db"
        if migrated:
            copy_migrated_sqlite(path)
        yield f"sqlite:///{path}"
        return
    server = acquire_server()
    template = migrated_template(server) if migrated else None
    with scratch_database(server, template=template) as url:
        yield url


@pytest.fixture
def world(database_url: str) -> Iterator[World]:
    with make_world(database_url) as made:
        yield made


@pytest.fixture(scope="session", autouse=True)
def _test_databases_dropped() -> Iterator[None]:
    """The per-test databases are dropped in the background; the run ends once they are."""
    yield
    background_drops.finish()
