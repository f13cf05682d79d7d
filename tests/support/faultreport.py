"""The fault suite's seed and summary lines, whole across pytest-xdist workers.

Each worker is its own process: the controller picks the one seed of the run and hands it to
every worker, and each worker hands its summary lines back for the controller to print. Run
without workers, the same hooks pick the seed and print the lines in the one process.
"""

from __future__ import annotations

import os
import random
from dataclasses import asdict
from typing import Any

import pytest

from tests.support.faultrig import RUNS, SUMMARIES, Counts, total_line

SEED_ENV = "CARTBACK_FAULT_SEED"
# The pytest-xdist group of the fault scenarios: one worker runs them all, one at a time.
FAULTS_GROUP = "faults"
_SEED = pytest.StashKey[int]()


def base_seed(config: pytest.Config) -> int:
    """The run's seed: set CARTBACK_FAULT_SEED to replay a run."""
    return config.stash[_SEED]


def in_faults_group(item: pytest.Item) -> bool:
    return any(marker.args == (FAULTS_GROUP,) for marker in item.iter_markers("xdist_group"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The fault scenarios first: one pytest-xdist worker runs them one after another, the
    longest stretch of the run, while the other workers share out the rest around it."""
    items.sort(key=lambda item: not in_faults_group(item))


def pytest_configure(config: pytest.Config) -> None:
    workerinput: dict[str, Any] | None = getattr(config, "workerinput", None)
    if workerinput is not None and "fault_seed" in workerinput:
        config.stash[_SEED] = int(workerinput["fault_seed"])
    else:
        config.stash[_SEED] = int(
            os.environ.get(SEED_ENV) or random.SystemRandom().randrange(10**6)
        )


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """Controller side: every worker runs with the controller's seed."""
    node.workerinput["fault_seed"] = base_seed(node.config)


def pytest_sessionfinish(session: pytest.Session) -> None:
    workeroutput: dict[str, Any] | None = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["fault_summaries"] = list(SUMMARIES)
        workeroutput["fault_runs"] = [asdict(run) for run in RUNS]


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """Controller side: collect what a finished worker ran."""
    workeroutput: dict[str, Any] = getattr(node, "workeroutput", {})
    SUMMARIES.extend(workeroutput.get("fault_summaries", ()))
    RUNS.extend(Counts(**run) for run in workeroutput.get("fault_runs", ()))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not SUMMARIES or hasattr(terminalreporter.config, "workerinput"):
        return
    terminalreporter.section(f"fault suite ({SEED_ENV}={base_seed(terminalreporter.config)})")
    for line in SUMMARIES:
        terminalreporter.write_line(line)
    terminalreporter.write_line(total_line(RUNS))
