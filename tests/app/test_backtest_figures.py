"""The backtest's figures for a fixed sample stay what they were: speeding up the engine, the
policy, compose or the replay must not change one count, segment or cent. The reference
figures (tests/fixtures/backtest/figures.json) were made by the backtest before its fast
paths; see tests/app/backtest_sample.py."""

from __future__ import annotations

import json

import pytest

from tests.app.backtest_sample import FIGURES, plain, replay, setups, shoppers


@pytest.mark.parametrize("name", ["plain", "strict"])
def test_the_sample_gives_the_reference_figures(name: str) -> None:
    expected = json.loads(FIGURES.read_text())[name]
    found = plain(replay(setups()[name], shoppers(name)))
    assert found["carts"] > 1500
    assert found == expected


def test_two_processes_give_the_figures_of_one() -> None:
    expected = json.loads(FIGURES.read_text())["plain"]
    assert plain(replay(setups()["plain"], shoppers("plain"), workers=2)) == expected
