"""The fault suite's fixtures: one database per scenario and backend, a printed seed, and the
summary lines at the end of the run."""

from __future__ import annotations

import os
import random
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.faultrig import RUNS, SUMMARIES, total_line
from tests.support.pg import acquire_server, temporary_database

# One seed for the run, printed with every summary line; set it to replay a run.
BASE_SEED = int(os.environ.get("CARTBACK_FAULT_SEED") or random.SystemRandom().randrange(10**6))


@pytest.fixture
def seed(request: pytest.FixtureRequest) -> int:
    return BASE_SEED + zlib.crc32(request.node.nodeid.encode()) % 1000


@pytest.fixture
def fault_database(backend: str, tmp_path: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'cartback.db'}"
        return
    with temporary_database(acquire_server(), prefix="cartback_faults") as url:
        yield url


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not SUMMARIES:
        return
    terminalreporter.section(f"fault suite (CARTBACK_FAULT_SEED={BASE_SEED})")
    for line in SUMMARIES:
        terminalreporter.write_line(line)
    terminalreporter.write_line(total_line(RUNS))
