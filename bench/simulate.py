"""Benchmark the backtest: N synthetic carts across 20 countries (cartback.backtest.synthetic)
through the default flow, in worker processes, with the default engagement rates and a price
table. Prints wall-clock, CPU per cart, and the single-process rate measured in the same run
on a sample, as ratios. Target: 1,000,000 carts in 60 s.

    python bench/simulate.py                         # 1M carts, 2 processes
    python bench/simulate.py --carts 50000 --sample 5000

Each process makes its own shard of shoppers from the seed (nothing is pickled but the tallies
coming back); making them is timed apart from replaying them.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from cartback.backtest import synthetic  # noqa: E402
from cartback.backtest.engagement import Engagement  # noqa: E402
from cartback.backtest.replay import Replayer, Setup  # noqa: E402
from cartback.backtest.report import step_figures, totals  # noqa: E402
from cartback.backtest.tally import Tally  # noqa: E402
from cartback.core.flows import default_flow_path, load_flow  # noqa: E402
from cartback.core.lineup import Lineup  # noqa: E402
from cartback.core.model import Store  # noqa: E402
from cartback.services.reports import money_from  # noqa: E402

TARGET_S = 60.0
TARGET_CARTS = 1_000_000
# Shoppers per task: small enough to keep both processes busy to the end.
SHARD = 5_000
MEASUREMENT = {
    "currency": "EUR",
    "rates": {
        "USD": "0.92",
        "CAD": "0.68",
        "GBP": "1.17",
        "NOK": "0.085",
        "SEK": "0.087",
        "DKK": "0.134",
        "CHF": "1.05",
        "PLN": "0.23",
        "AUD": "0.61",
        "NZD": "0.56",
    },
    "prices": {
        "sms": {"US": "0.008", "CA": "0.008", "NO": "0.045", "*": "0.06"},
        "email": "0.0005",
    },
}


def setup(seed: int) -> Setup:
    store = Store(
        id=1, name="Bench", brand="Bench", domains=("shop.example",), postal_address="1 Bench St"
    )
    money = money_from(MEASUREMENT, "EUR")
    return Setup(Lineup.single(load_flow(default_flow_path())), store, Engagement(), money, seed)


_replayer: Replayer | None = None


def _start(seed: int) -> None:
    global _replayer
    _replayer = Replayer(setup(seed))


def _shard(task: tuple[int, int, int]) -> tuple[Tally, float, float]:
    """Make shoppers [start, stop) and replay them: (tally, CPU s making, CPU s replaying)."""
    seed, start, stop = task
    assert _replayer is not None
    began = time.process_time()
    shoppers = list(synthetic.shoppers(seed, start, stop))
    made = time.process_time()
    _replayer.tally = Tally()
    for shopper in shoppers:
        _replayer.shopper(shopper)
    return _replayer.tally, made - began, time.process_time() - made


def baseline(seed: int, sample: int) -> float:
    """Carts per CPU second of one process on a sample, after a warm-up of the same size (the
    caches of a long run are warm, too)."""
    _start(seed)
    _shard((seed, 10_000_000, 10_000_000 + sample // 2))
    tally, _, replay_s = _shard((seed, 20_000_000, 20_000_000 + sample))
    return tally.carts / replay_s


def run(carts: int, workers: int, seed: int) -> dict[str, Any]:
    # 1.1 carts per shopper on average (one in ten has two).
    shoppers = round(carts / 1.1)
    tasks = [(seed, start, min(shoppers, start + SHARD)) for start in range(0, shoppers, SHARD)]
    total = Tally()
    make_cpu = replay_cpu = 0.0
    began = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(workers, _start, (seed,)) as pool:
        for tally, make_s, replay_s in pool.imap_unordered(_shard, tasks):
            total.add(tally)
            make_cpu += make_s
            replay_cpu += replay_s
    wall = time.perf_counter() - began
    rows = step_figures(total, setup(seed))
    summed = totals(rows)
    return {
        "carts": total.carts,
        "workers": workers,
        "wall_s": round(wall, 1),
        "replay_cpu_us_per_cart": round(replay_cpu / total.carts * 1e6, 1),
        "make_cpu_us_per_cart": round(make_cpu / total.carts * 1e6, 1),
        "carts_per_s": round(total.carts / wall),
        "messages": summed["sent"],
        "expected_recoveries": str(summed["recoveries"]),
        "cost": str(summed["cost"]),
        "sent_per_step": {row.step: row.sent for row in rows},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--carts", type=int, default=TARGET_CARTS)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--sample", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    single = baseline(args.seed, args.sample)
    print(json.dumps({"baseline_single_process_carts_per_cpu_s": round(single)}), flush=True)
    row = run(args.carts, args.workers, args.seed)
    row["load_average"] = [round(load_before, 1), round(os.getloadavg()[0], 1)]
    print(json.dumps(row), flush=True)
    needed = TARGET_CARTS / TARGET_S
    scaled = row["wall_s"] * TARGET_CARTS / row["carts"]
    print(
        f"\n{row['carts']:,} carts, {row['workers']} processes: {row['wall_s']} s wall "
        f"({row['carts_per_s']:,} carts/s), {row['replay_cpu_us_per_cart']} µs CPU per cart "
        f"replayed + {row['make_cpu_us_per_cart']} µs to make it"
    )
    pooled = 1e6 / row["replay_cpu_us_per_cart"]
    print(
        f"one process on a {args.sample:,}-cart sample: {single:,.0f} carts per CPU second; in "
        f"the pool: {pooled:,.0f} ({pooled / single:.2f}× per process, so up to "
        f"{row['workers'] * pooled / single:.2f}× with {row['workers']} idle cores); wall-clock "
        f"vs the target (1M in 60 s, {needed:,.0f} carts/s): {row['carts_per_s'] / needed:.2f}×, "
        f"1M carts at this rate: {scaled:,.0f} s"
    )
    # The machine may be shared: CPU time per cart does not depend on what else runs.
    cpu_bound = (row["replay_cpu_us_per_cart"] + row["make_cpu_us_per_cart"]) * TARGET_CARTS
    idle = cpu_bound / 1e6 / row["workers"]
    print(
        f"load average {row['load_average'][0]} before, {row['load_average'][1]} after; on "
        f"{row['workers']} otherwise idle cores 1M carts would take about {idle:,.0f} s "
        f"({TARGET_S / idle:.2f}× the target)"
    )


if __name__ == "__main__":
    main()
