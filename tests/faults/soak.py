"""The soak: the fault scenarios again and again, on both backends, for as long as asked.

    python -m tests.faults.soak --seconds 600            # what `make soak SECONDS=600` runs
    python -m tests.faults.soak --seconds 60 --backend postgres --scenario kill9 --seed 7

Prints one summary line per run and a total per scenario and backend; exits 1 if any run broke
a promise (a duplicate, a send after an opt-out, an SMS in quiet hours, a lost event), listing
the scenarios that still await a fix separately.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
import traceback
from collections import defaultdict
from pathlib import Path

from tests.faults import scenarios
from tests.support.faultrig import Counts, rig
from tests.support.pg import acquire_server, start_local_cluster, temporary_database

TOTALS = ("sent", "duplicates", "after_optout", "quiet", "lost", "unknown")


def run_one(name: str, backend: str, seed: int) -> Counts:
    scenario = scenarios.SCENARIOS[name]
    with tempfile.TemporaryDirectory(prefix="cartback-soak-") as folder:
        tmp = Path(folder)
        if backend == "sqlite":
            with rig(backend, f"sqlite:///{tmp / 'cartback.db'}", tmp, seed) as made:
                return scenario(made, None) if name == "database_outage" else scenario(made)
        if name == "database_outage":
            server = start_local_cluster()
            try:
                with (
                    temporary_database(server, "cartback_soak") as url,
                    rig(backend, url, tmp, seed) as made,
                ):
                    return scenario(made, server)
            finally:
                assert server.cluster is not None
                server.cluster.stop()
        with (
            temporary_database(acquire_server(), "cartback_soak") as url,
            rig(backend, url, tmp, seed) as made,
        ):
            return scenario(made)


def broken(counts: Counts) -> bool:
    try:
        counts.assert_promises()
    except AssertionError:
        return True
    return bool(counts.extra.get("stale") or counts.extra.get("held_by_skew"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--scenario", choices=sorted(scenarios.SCENARIOS), action="append")
    parser.add_argument("--seed", type=int, default=random.SystemRandom().randrange(10**6))
    args = parser.parse_args(argv)
    names = args.scenario or list(scenarios.SCENARIOS)
    backends = ("sqlite", "postgres") if args.backend == "both" else (args.backend,)
    rng = random.Random(args.seed)
    print(f"soak: seed={args.seed} for {args.seconds:g}s over {', '.join(names)}", flush=True)
    totals: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    failing: set[tuple[str, str]] = set()
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        for name in names:
            for backend in backends:
                seed = rng.randrange(10**6)
                try:
                    counts = run_one(name, backend, seed)
                except Exception:
                    traceback.print_exc()
                    print(f"faults[{name}/{backend}] seed={seed} ERROR", flush=True)
                    failing.add((name, backend))
                    continue
                print(counts.line(), flush=True)
                total = totals[(name, backend)]
                total["runs"] += 1
                for key in TOTALS:
                    total[key] += getattr(counts, key)
                if broken(counts):
                    failing.add((name, backend))
                if time.monotonic() >= deadline:
                    break
            if time.monotonic() >= deadline:
                break
    print("soak totals:")
    for (name, backend), total in sorted(totals.items()):
        counted = " ".join(f"{key}={total[key]}" for key in ("runs", *TOTALS))
        print(f"  faults[{name}/{backend}] {counted}")
    if failing:
        print("broke a promise: " + ", ".join(f"{n}/{b}" for n, b in sorted(failing)))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
