"""A fixed sample for the backtest's figures: synthetic shoppers across the 20 countries
(locales, currencies, zones, consent states), replayed under two store setups. The figures the
backtest gives for it are kept in tests/fixtures/backtest/figures.json; regenerate them with
`python -m tests.app.backtest_sample` only when a change is meant to change the figures."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from cartback.backtest import synthetic
from cartback.backtest.engagement import Engagement
from cartback.backtest.replay import Replayer, Setup
from cartback.backtest.run import backtest
from cartback.backtest.tally import Tally
from cartback.core.flows import default_flow_path, load_flow
from cartback.core.lineup import Lineup
from cartback.core.model import Store
from cartback.core.storepolicy import parse_store_policy_text
from cartback.services.reports import money_from

FIGURES = Path(__file__).resolve().parents[1] / "fixtures" / "backtest" / "figures.json"
SHOPPERS = 1500
SEED = 11
MONEY = {
    "rates": {"USD": "0.92", "CAD": "0.68", "GBP": "1.17", "NOK": "0.085", "SEK": "0.087"},
    "prices": {"sms": {"US": "0.008", "NO": "0.045", "*": "0.06"}, "email": "0.0005"},
}
# A stricter store: its own cooldown and cap, tighter US quiet hours, exchange rates and
# discount exclusions, so the cached policy and compose paths see store overrides too.
STRICT_POLICY = """\
sms_cooldown: 4h
sms_cap: {count: 2, window: 24h}
email_cooldown: 16h
rules:
  - name: us.quiet_hours
    window: {mon-sun: "09:00-20:00"}
exchange_rates:
  base: EUR
  USD: "0.92"
  NOK: "0.085"
discount_exclusions:
  tags: [no-discount]
"""


def setups() -> dict[str, Setup]:
    flow = load_flow(default_flow_path())
    money = money_from(MONEY, "EUR")
    plain = Store(
        id=1, name="Plain", brand="Plain", domains=("shop.example",), postal_address="1 Main St"
    )
    strict = Store(
        id=2,
        name="Strict",
        brand="Strict",
        domains=("shop.example",),
        postal_address="2 Main St",
        policy=parse_store_policy_text(STRICT_POLICY, "strict.yaml"),
    )
    return {
        "plain": Setup(Lineup.single(flow), plain, Engagement(), money, SEED),
        "strict": Setup(Lineup.single(flow), strict, Engagement(), money, SEED + 1),
    }


def shoppers(setup_name: str) -> list[Any]:
    offset = 0 if setup_name == "plain" else 50_000
    return list(synthetic.shoppers(SEED, offset, offset + SHOPPERS))


def replay(setup: Setup, sample: list[Any], workers: int = 1) -> Tally:
    if workers == 1:
        replayer = Replayer(setup)
        for shopper in sample:
            replayer.shopper(shopper)
        return replayer.tally
    return backtest(sample, setup, workers=workers)


class PausingClock:
    """The render sandbox's clock, as it reads during a pause of 2 s (a long garbage
    collection, a busy machine) at each of the readings `at` and the one after: whichever of
    the two starts a render, a render is stopped by its 1 s budget there."""

    def __init__(self, *at: int) -> None:
        self.at = frozenset(at) | frozenset(reading + 1 for reading in at)
        self.readings = 0
        self.paused = 0.0

    def monotonic(self) -> float:
        self.readings += 1
        if self.readings in self.at:
            self.paused += 2.0
        return time.monotonic() + self.paused


def plain(value: Any) -> Any:
    """The tally as JSON data: every counter and sum, Decimals as text, keys sorted."""
    if is_dataclass(value) and not isinstance(value, type):
        return {item.name: plain(getattr(value, item.name)) for item in fields(value)}
    if isinstance(value, Mapping):
        return {str(key): plain(item) for key, item in sorted(value.items()) if item != 0}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    if isinstance(value, Decimal):
        return str(value)
    return value


def figures() -> dict[str, Any]:
    return {name: plain(replay(setup, shoppers(name))) for name, setup in setups().items()}


if __name__ == "__main__":
    text = json.dumps(figures(), indent=1, sort_keys=True) + "\n"
    if sys.argv[1:] == ["--print"]:
        print(text, end="")
    else:
        FIGURES.write_text(text)
