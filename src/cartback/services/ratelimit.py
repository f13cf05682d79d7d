"""A token bucket in one process: the dispatcher sends no faster than it allows.

Time is an argument, like everywhere in the services, so tests drive it with a manual clock.
The bucket shared by every worker (a database row) is `services.sendrate.SharedBucket`; both
answer `reserve` and `settle`, which is all the dispatcher uses.
"""

from __future__ import annotations

from datetime import datetime


class TokenBucket:
    """`rate` messages a second on average, in bursts of at most one second's worth (and never
    less than one message, so a rate below 1/s still sends)."""

    def __init__(self, rate: float) -> None:
        if rate <= 0:
            raise ValueError(f"a rate must be positive, got {rate}")
        self.rate = rate
        self.capacity = max(1.0, rate)
        self._tokens = self.capacity
        self._at: datetime | None = None

    def available(self, now: datetime) -> int:
        """Whole messages that may go at `now`."""
        if self._at is None or now > self._at:
            if self._at is not None:
                elapsed = (now - self._at).total_seconds()
                self._tokens = min(self.capacity, self._tokens + elapsed * self.rate)
            self._at = now
        return int(self._tokens)

    def take(self, count: int) -> None:
        self._tokens -= count

    def reserve(self, now: datetime, most: int) -> int:
        """Take up to `most` whole tokens at `now`; the answer is how many were taken."""
        granted = max(0, min(most, self.available(now)))
        self.take(granted)
        return granted

    def settle(self, reserved: int, used: int) -> None:
        """Give back what a reservation did not use, or charge what it used beyond it."""
        self._tokens = min(self.capacity, self._tokens + reserved - used)
