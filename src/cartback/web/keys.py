"""API keys for the hot path: a store's id by its key, remembered for a few seconds.

`POST /v1/events` needs only the store's id to append; a database round trip (and a thread
hop) for each request would cost more than the append itself. Only known keys are remembered,
so a new key works at once; a revoked key stops working within `ttl` seconds. The shop webhook
route keeps its stores' connections the same way (web/shop_hooks.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Generic, TypeVar

V = TypeVar("V")

# How long a key's store is remembered.
KEY_TTL_SECONDS = 5.0
# Remembered keys at most; more are forgotten all at once (a flood of distinct keys).
MAX_KEYS = 10_000


class KeyCache(Generic[V]):
    def __init__(
        self,
        ttl: float = KEY_TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.clock = clock
        self._known: dict[str, tuple[float, V]] = {}

    def get(self, key: str) -> V | None:
        found = self._known.get(key)
        if found is None or self.clock() >= found[0]:
            return None
        return found[1]

    def put(self, key: str, value: V) -> None:
        if len(self._known) >= MAX_KEYS:
            self._known.clear()
        self._known[key] = (self.clock() + self.ttl, value)
