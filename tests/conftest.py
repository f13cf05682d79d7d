"""Shared fixtures: every store test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.pg import acquire_server, temporary_database
from tests.support.world import World, make_world

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'cartback.db'}"
        return
    with temporary_database(acquire_server()) as url:
        yield url


@pytest.fixture
def world(database_url: str) -> Iterator[World]:
    with make_world(database_url) as made:
        yield made
