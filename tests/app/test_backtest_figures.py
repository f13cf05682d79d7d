"""The backtest's figures for a fixed sample stay what they were: speeding up the engine, the
policy, compose or the replay must not change one count, segment or cent. The reference
figures (tests/fixtures/backtest/figures.json) were made by the backtest before its fast
paths; see tests/app/backtest_sample.py."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from cartback.backtest import synthetic
from cartback.backtest.replay import Replayer
from cartback.core import sandbox
from cartback.core.events import CheckoutUpdated
from cartback.simulate import consent_of
from tests.app.backtest_sample import (
    FIGURES,
    SEED,
    PausingClock,
    plain,
    replay,
    setups,
    shoppers,
)


def test_the_sample_gives_the_reference_figures() -> None:
    # Made as `python -m tests.app.backtest_sample` makes the reference, in a fresh process.
    root = Path(__file__).resolve().parents[2]
    made = subprocess.run(
        [sys.executable, "-m", "tests.app.backtest_sample", "--print"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    )
    found, expected = json.loads(made.stdout), json.loads(FIGURES.read_text())
    assert found["plain"]["carts"] > 1500 and found["strict"]["carts"] > 1500
    assert found == expected


def test_two_processes_give_the_figures_of_one() -> None:
    expected = json.loads(FIGURES.read_text())["plain"]
    assert plain(replay(setups()["plain"], shoppers("plain"), workers=2)) == expected


def test_the_order_of_shoppers_and_samples_in_one_process_leaves_the_figures() -> None:
    expected = json.loads(FIGURES.read_text())
    for name in ("strict", "plain"):
        sample = shoppers(name)[::-1]
        assert plain(replay(setups()[name], sample)) == expected[name]


def test_pauses_during_renders_leave_the_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    # A long garbage collection or a busy machine stops a render by the sandbox's clock; each
    # of these pauses, with the text kept for the cart in hand, used to skip that text for
    # every later cart with the same step, language, name and product.
    clock = PausingClock(100, 1000, 3000)
    monkeypatch.setattr(sandbox, "time", clock)
    expected = json.loads(FIGURES.read_text())["plain"]
    assert plain(replay(setups()["plain"], shoppers("plain"))) == expected
    assert clock.paused == 12.0


def test_kept_consent_views_equal_a_fresh_fold() -> None:
    replayer = Replayer(setups()["plain"])
    checked = 0
    for shopper in synthetic.shoppers(SEED, 0, 400):
        for events in shopper:
            checkout = next(e for e in events if isinstance(e, CheckoutUpdated))
            # The same flags at another instant too: only the basis time may move.
            later = replace(checkout, occurred_at=checkout.occurred_at + timedelta(days=3))
            for event in (checkout, later):
                assert replayer._consent(event) == consent_of(event)
                checked += 1
    assert checked > 800 and len(replayer._consents) > 4
