"""The fault suite's fixtures: one database per scenario and backend, and a seed per scenario
derived from the run's (tests/support/faultreport.py prints both with the summary lines)."""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.faultreport import base_seed
from tests.support.pg import acquire_server, scratch_database


@pytest.fixture
def seed(request: pytest.FixtureRequest) -> int:
    return base_seed(request.config) + zlib.crc32(request.node.nodeid.encode()) % 1000


@pytest.fixture
def fault_database(backend: str, tmp_path: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'cartback.db'}"
        return
    with scratch_database(acquire_server(), prefix="cartback_faults") as url:
        yield url
