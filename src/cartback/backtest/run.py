"""Run a backtest over many shoppers, in this process or in a pool of worker processes.

Each worker builds its own Replayer (engine, policy and message caches) once; shoppers go to
the workers in chunks and come back as tallies, which add up to the tally of one process:
every draw is keyed by the cart, not by the order carts are replayed in.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator, Sequence

from cartback.backtest.replay import Replayer, Setup
from cartback.backtest.source import Shopper
from cartback.backtest.tally import Tally

CHUNK = 250
_worker: Replayer | None = None


def backtest(
    shoppers: Sequence[Shopper],
    setup: Setup,
    *,
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
) -> Tally:
    """The tally of every shopper; `progress` is told how many carts each finished chunk had."""
    tally = Tally()
    chunks = list(_chunks(shoppers, CHUNK))
    if workers <= 1 or len(chunks) <= 1:
        replayer = Replayer(setup)
        for chunk in chunks:
            for shopper in chunk:
                replayer.shopper(shopper)
            if progress is not None:
                progress(sum(len(shopper) for shopper in chunk))
        return replayer.tally
    # fork: the workers inherit the setup (flows, compiled templates) instead of pickling it.
    context = multiprocessing.get_context("fork")
    with context.Pool(workers, initializer=_start, initargs=(setup,)) as pool:
        for part, carts in pool.imap_unordered(_replay_chunk, chunks):
            tally.add(part)
            if progress is not None:
                progress(carts)
    return tally


def _chunks(shoppers: Sequence[Shopper], size: int) -> Iterator[Sequence[Shopper]]:
    for start in range(0, len(shoppers), size):
        yield shoppers[start : start + size]


def _start(setup: Setup) -> None:
    global _worker
    _worker = Replayer(setup)


def _replay_chunk(chunk: Sequence[Shopper]) -> tuple[Tally, int]:
    assert _worker is not None
    _worker.tally = Tally()
    for shopper in chunk:
        _worker.shopper(shopper)
    return _worker.tally, sum(len(shopper) for shopper in chunk)
