"""Receipts and replies that do not arrive over HTTP: drained from SMPP binds, pulled from
inMobile.

- **SMPP** (`DRAINED`): receipts and MO messages arrive on the store's transceiver bind, and
  `SmppChannel` queues them. `Listeners.drain_once` opens the bind of every store whose SMS
  provider is `smpp` (through the worker's `ChannelResolver`, so the channel that sends is the
  one that drains: it alone knows the SMSC's ids of the parts it sent), takes what is queued
  and applies each item.
- **inMobile** (`PULLED`): reports and incoming messages wait at inMobile until collected, and
  each one is handed out once. `Listeners.pull_once` calls `pull_reports` / `pull_inbound`
  every `CARTBACK_PULL_SECONDS` per store, outside any transaction, and applies what came back
  before it asks for anything more.

Each report or reply is applied in its own short transaction (`apply_delivery`, or
`receive_reply`, which forwards free text to the support webhook after its commit); no
transaction is open while a bind is waited on or a provider is called. An item whose
transaction fails (the database is away) is kept in memory and tried again with backoff, so
one bad item never blocks the others and a database hiccup loses nothing the process still
holds. Logs name message keys, provider ids and reply ids, never a number or a text.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable

from sqlalchemy import Engine

from cartback.channels.inmobile import PULL_LIMIT
from cartback.core.events import DeliveryUpdate, InboundReply
from cartback.services import admin
from cartback.services.delivery import apply_delivery
from cartback.services.providers import (
    ChannelResolver,
    ProviderUnavailable,
    StoreProvider,
    list_providers,
)
from cartback.services.replies import receive_reply

log = logging.getLogger("cartback.bound")

Event = DeliveryUpdate | InboundReply

# Providers whose reports and replies come on a connection the worker keeps open.
DRAINED = frozenset({"smpp"})
# Providers whose reports and replies the worker collects from pull endpoints.
PULLED = frozenset({"inmobile"})
# How often the list of stores to drain or pull is read again (settings can change).
REFRESH_SECONDS = 5.0
# Items taken from one bind per round, so one busy store does not starve the others.
DRAIN_LIMIT = 500
# A full pull page means more may be waiting: ask again, up to this many pages per round.
PULL_PAGES = 20
# Items that could not be applied: tried again with backoff up to this many times, and at
# most this many kept (the oldest is dropped first, with its ids logged).
MAX_ATTEMPTS = 20
MAX_HELD = 10_000
MAX_BACKOFF_SECONDS = 60.0


@runtime_checkable
class DrainedChannel(Protocol):
    def start(self) -> None: ...

    def drain(self, limit: int) -> list[Event]: ...

    def close(self) -> None: ...


@runtime_checkable
class PulledChannel(Protocol):
    def pull_reports(self, limit: int) -> list[DeliveryUpdate]: ...

    def pull_inbound(self, limit: int) -> list[InboundReply]: ...


def describe(event: Event) -> str:
    """What a log line may say about an item: its ids, never a phone number or a text."""
    if isinstance(event, DeliveryUpdate):
        key, provider_id = event.message_key or "-", event.provider_id or "-"
        return f"{event.provider} {event.status} report (key {key}, id {provider_id})"
    return f"{event.provider} reply (id {event.provider_id or '-'})"


@dataclass
class _Held:
    store_id: int
    event: Event
    attempts: int
    next_try: float


class Applier:
    """Applies reports and replies, each in its own transaction; keeps the failed ones."""

    def __init__(
        self,
        engine: Engine,
        clock: Callable[[], datetime],
        *,
        forward_timeout: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.forward_timeout = forward_timeout
        self.monotonic = monotonic
        self.held: deque[_Held] = deque()

    def apply(self, store_id: int, events: list[Event]) -> int:
        """Apply each; the number applied. The others are held for `retry`."""
        return sum(self._try(_Held(store_id, event, 0, 0.0)) for event in events)

    def retry(self) -> int:
        now = self.monotonic()
        due = [item for item in self.held if item.next_try <= now]
        if not due:
            return 0
        self.held = deque(item for item in self.held if item.next_try > now)
        return sum(self._try(item) for item in due)

    def _try(self, item: _Held) -> bool:
        try:
            self._apply_one(item.store_id, item.event)
            return True
        except Exception as error:
            item.attempts += 1
            what = describe(item.event)
            if item.attempts >= MAX_ATTEMPTS:
                log.error("gave up on %s after %d attempts: %r", what, item.attempts, error)
                return False
            log.warning(
                "could not apply %s (attempt %d, tried again later): %s",
                what,
                item.attempts,
                type(error).__name__,
            )
            item.next_try = self.monotonic() + min(2.0**item.attempts, MAX_BACKOFF_SECONDS)
            self.held.append(item)
            while len(self.held) > MAX_HELD:
                log.error("dropped %s: too many items waiting", describe(self.held.popleft().event))
            return False

    def _apply_one(self, store_id: int, event: Event) -> None:
        if isinstance(event, DeliveryUpdate):
            with self.engine.begin() as conn:
                apply_delivery(conn, admin.get_store(conn, store_id), [event], self.clock())
        else:
            receive_reply(self.engine, store_id, event, self.clock, timeout=self.forward_timeout)


class Listeners:
    """The worker's SMPP drain and inMobile pull: `run_drain` and `run_pull`, one thread each,
    until `stop` is set; `finish` once the dispatcher has stopped sending."""

    def __init__(
        self,
        engine: Engine,
        resolver: ChannelResolver,
        *,
        clock: Callable[[], datetime],
        stop: threading.Event,
        poll_seconds: float,
        pull_seconds: float,
        forward_timeout: float,
    ) -> None:
        self.engine = engine
        self.resolver = resolver
        # A replaced bind may be mid-send for up to one provider timeout.
        self.grace_seconds = forward_timeout + 5.0
        self.stop = stop
        self.poll_seconds = poll_seconds
        self.pull_seconds = pull_seconds
        self.drained = Applier(engine, clock, forward_timeout=forward_timeout)
        self.pulled = Applier(engine, clock, forward_timeout=forward_timeout)
        self._settings: dict[frozenset[str], tuple[float, list[StoreProvider]]] = {}
        self._next_pull: dict[tuple[int, str], float] = {}
        # The binds drained now, by id(channel): (store id, channel).
        self._draining: dict[int, tuple[int, DrainedChannel]] = {}
        # Binds of replaced settings: drained until the time given, then closed.
        self._retiring: list[tuple[float, int, DrainedChannel]] = []
        # Settings whose channel could not be built, already logged.
        self._unavailable: set[tuple[int, str, int]] = set()

    # -- which stores --------------------------------------------------------------------------

    def _stores(self, providers: frozenset[str]) -> list[StoreProvider]:
        read_at, found = self._settings.get(providers, (float("-inf"), []))
        if time.monotonic() - read_at >= REFRESH_SECONDS:
            with self.engine.connect() as conn:
                found = [item for item in list_providers(conn) if item.provider in providers]
            self._settings[providers] = (time.monotonic(), found)
        return found

    def _channel(self, setting: StoreProvider) -> object | None:
        try:
            return self.resolver.build(setting)
        except ProviderUnavailable as error:
            # Said once per settings version (the loops ask every round); the dispatcher
            # retries the store's messages meanwhile.
            said = (setting.store_id, str(setting.kind), setting.version)
            if said not in self._unavailable:
                self._unavailable.add(said)
                log.error("cannot listen to %s: %s", setting.provider, error)
            return None

    # -- SMPP ----------------------------------------------------------------------------------

    def drain_once(self) -> int:
        """Open every SMPP store's bind, apply what its bind queued; the number applied."""
        applied = self.drained.retry()
        current: dict[int, tuple[int, DrainedChannel]] = {}
        for setting in self._stores(DRAINED):
            channel = self._channel(setting)
            if isinstance(channel, DrainedChannel):
                channel.start()
                current[id(channel)] = (setting.store_id, channel)
        now = time.monotonic()
        for key, (store_id, channel) in self._draining.items():
            if key not in current:
                # Settings changed or were removed: the old bind may still be finishing a send,
                # so it is drained for a grace period, then closed and drained a last time.
                self._retiring.append((now + self.grace_seconds, store_id, channel))
        self._draining = current
        for store_id, channel in current.values():
            applied += self._drain(store_id, channel)
        keep: list[tuple[float, int, DrainedChannel]] = []
        for until, store_id, channel in self._retiring:
            if now >= until:
                channel.close()
            else:
                keep.append((until, store_id, channel))
            applied += self._drain(store_id, channel)
        self._retiring = keep
        return applied

    def _drain(self, store_id: int, channel: DrainedChannel) -> int:
        return self.drained.apply(store_id, channel.drain(DRAIN_LIMIT))

    def run_drain(self) -> None:
        while not self.stop.is_set():
            try:
                applied = self.drain_once()
            except Exception:
                # A database hiccup must not end the drain: the items wait on the bind's queue.
                log.exception("draining the SMPP binds failed; retrying")
                applied = 0
            if not applied:
                self.stop.wait(self.poll_seconds)

    # -- inMobile ------------------------------------------------------------------------------

    def pull_once(self, *, force: bool = False) -> int:
        """Pull each inMobile store whose time has come; the number of items applied."""
        applied = self.pulled.retry()
        for setting in self._stores(PULLED):
            key = (setting.store_id, str(setting.kind))
            if not force and time.monotonic() < self._next_pull.get(key, 0.0):
                continue
            self._next_pull[key] = time.monotonic() + self.pull_seconds
            channel = self._channel(setting)
            if isinstance(channel, PulledChannel):
                applied += self._pull(setting, channel)
        return applied

    def _pull(self, setting: StoreProvider, channel: PulledChannel) -> int:
        applied = 0
        for what, pull in (("reports", channel.pull_reports), ("replies", channel.pull_inbound)):
            for _ in range(PULL_PAGES):
                if self.stop.is_set():
                    return applied
                try:
                    items: list[Event] = list(pull(PULL_LIMIT))  # outside any transaction
                except Exception as error:
                    log.warning(
                        "pulling %s of store %s from %s failed: %s",
                        what,
                        setting.store_slug,
                        setting.provider,
                        type(error).__name__,
                    )
                    break
                # Handed out once: applied (or held) before anything else is asked for.
                applied += self.pulled.apply(setting.store_id, items)
                if items:
                    log.info(
                        "pulled %d %s of store %s from %s",
                        len(items),
                        what,
                        setting.store_slug,
                        setting.provider,
                    )
                if len(items) < PULL_LIMIT:
                    break
        return applied

    def run_pull(self) -> None:
        while not self.stop.is_set():
            try:
                self.pull_once()
            except Exception:
                log.exception("pulling reports and replies failed; retrying")
            self.stop.wait(min(self.pull_seconds, max(self.poll_seconds, 1.0)))

    # -- shutdown ------------------------------------------------------------------------------

    def finish(self) -> None:
        """Once nothing is sent any more: unbind, then apply what the binds queued meanwhile
        (the SMSC had those acknowledged, so they exist nowhere else)."""
        binds = [*self._draining.values(), *((s, c) for _, s, c in self._retiring)]
        self._draining, self._retiring = {}, []
        for store_id, channel in binds:
            channel.close()
            try:
                self._drain(store_id, channel)
            except Exception:
                log.exception("applying the last SMPP items failed")
        self.drained.retry()
        for held in (*self.drained.held, *self.pulled.held):
            log.error("stopping with %s not applied", describe(held.event))
