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

from cartback.backtest import synthetic
from cartback.backtest.replay import Replayer
from cartback.core.events import CheckoutUpdated
from cartback.simulate import consent_of
from tests.app.backtest_sample import FIGURES, SEED, plain, replay, setups, shoppers


def test_the_sample_gives_the_reference_figures() -> None:
    # In a fresh process, as the reference was made: what ran before in this one must not
    # count (a strict store's sample replayed after other tests in one pytest process gives
    # one order more, with the code these figures were made with too).
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
