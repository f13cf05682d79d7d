"""Failover to a secondary provider, behind a circuit breaker on the primary.

`FailoverChannel(primary, secondary, breaker)` is itself a `MessageChannel`, so the dispatcher
does not know it is there. A message goes to the primary while its circuit is closed. Only a
refusal that proves the message was not taken (REJECTED and retryable: a connect error, a 429,
a 5xx) counts as a failure; that message then goes to the secondary at once, since it cannot
be a duplicate. After `failures` such refusals in a row, or within `window`, the circuit opens
and every message goes to the secondary; after `cool_down` one trial message goes to the
primary again (half-open), and its success closes the circuit.

An UNKNOWN answer (a timeout after the request went out) is never a failure and is never tried
on the secondary: the primary may have taken it, and a second provider would send it twice. It
is returned as it is, and the dispatcher marks the row `unknown`. A permanent refusal (an
invalid number, an opted-out recipient) is an answer from a working provider: it counts as a
success for the breaker and is returned as it is, never retried elsewhere.

The breaker lives in the worker's memory: each worker judges the primary on its own calls.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from enum import StrEnum

from cartback.ports import (
    LookupResult,
    LookupStatus,
    MessageChannel,
    OutboundMessage,
    SendResult,
    SendStatus,
)


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Opens after `failures` failures in a row or within `window` seconds; after `cool_down`
    seconds lets one trial call through; a success closes it, a failure opens it again."""

    def __init__(
        self,
        failures: int = 5,
        window: float = 60.0,
        cool_down: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failures < 1:
            raise ValueError(f"failures must be at least 1, got {failures}")
        self.failures = failures
        self.window = window
        self.cool_down = cool_down
        self._clock = clock
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._in_a_row = 0
        self._recent: deque[float] = deque()
        self._opened_at = 0.0
        self._trial_out = False

    @property
    def state(self) -> BreakerState:
        with self._lock:
            self._cool(self._clock())
            return self._state

    def allows(self) -> bool:
        """May this call go to the primary? In half-open, only one trial at a time."""
        with self._lock:
            self._cool(self._clock())
            if self._state is BreakerState.CLOSED:
                return True
            if self._state is BreakerState.HALF_OPEN and not self._trial_out:
                self._trial_out = True
                return True
            return False

    def succeeded(self) -> None:
        """A success ends a run of failures; failures in the window still count (a provider
        failing every other call opens the circuit too). A successful trial starts afresh."""
        with self._lock:
            if self._state is not BreakerState.CLOSED:
                self._recent.clear()
            self._state = BreakerState.CLOSED
            self._in_a_row = 0
            self._trial_out = False

    def failed(self) -> None:
        with self._lock:
            now = self._clock()
            self._in_a_row += 1
            self._recent.append(now)
            while self._recent and self._recent[0] < now - self.window:
                self._recent.popleft()
            trial_failed = self._state is BreakerState.HALF_OPEN
            if (
                trial_failed
                or self._in_a_row >= self.failures
                or len(self._recent) >= self.failures
            ):
                self._state = BreakerState.OPEN
                self._opened_at = now
                self._trial_out = False

    def undecided(self) -> None:
        """The call's outcome is unknown: it proves nothing either way. A trial's slot is freed
        so another message can try the primary."""
        with self._lock:
            self._trial_out = False

    def _cool(self, now: float) -> None:
        if self._state is BreakerState.OPEN and now - self._opened_at >= self.cool_down:
            self._state = BreakerState.HALF_OPEN
            self._trial_out = False


class FailoverChannel:
    """The primary while it works, the secondary while it does not."""

    def __init__(
        self, primary: MessageChannel, secondary: MessageChannel, breaker: CircuitBreaker
    ) -> None:
        if primary.kind is not secondary.kind:
            raise ValueError(f"a {primary.kind} primary needs a {primary.kind} secondary")
        self.primary = primary
        self.secondary = secondary
        self.breaker = breaker
        self.kind = primary.kind
        self.name = primary.name

    def send(self, message: OutboundMessage) -> SendResult:
        if not self.breaker.allows():
            return _from(self.secondary, message)
        result = _from(self.primary, message)
        if result.status is SendStatus.UNKNOWN:
            self.breaker.undecided()
            return result
        if result.status is SendStatus.REJECTED and result.retryable:
            # The primary certainly did not take it: the secondary cannot make a duplicate.
            self.breaker.failed()
            return _from(self.secondary, message)
        self.breaker.succeeded()
        return result

    def lookup(self, key: str) -> LookupStatus | LookupResult:
        """Taken if either provider took it; not sent only if both say so."""
        answers = [_lookup(channel, key) for channel in (self.primary, self.secondary)]
        for found in answers:
            if found.status is LookupStatus.SENT:
                return found
        if all(found.status is LookupStatus.NOT_SENT for found in answers):
            return LookupResult(LookupStatus.NOT_SENT)
        return LookupResult(LookupStatus.UNKNOWN)

    def close(self) -> None:
        self.primary.close()
        self.secondary.close()


def _from(channel: MessageChannel, message: OutboundMessage) -> SendResult:
    """The channel's answer, with the provider that gave it. A channel that raises broke its
    contract: whether the provider took the message cannot be known."""
    try:
        result = channel.send(message)
    except Exception as error:
        result = SendResult(SendStatus.UNKNOWN, error=f"{type(error).__name__}: {error}")
    return result if result.provider else replace(result, provider=channel.name)


def _lookup(channel: MessageChannel, key: str) -> LookupResult:
    try:
        found = channel.lookup(key)
    except Exception:
        return LookupResult(LookupStatus.UNKNOWN)
    return LookupResult(found) if isinstance(found, LookupStatus) else found
