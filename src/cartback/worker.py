"""The worker: apply accepted events (the inbox), fire due timers and drain the outbox, in
batches, until told to stop; beside them, drain the SMPP binds and pull inMobile's reports and
replies (`services/bound.py`), and run the scheduled jobs.

Its parts are roles (`Role`), so that they can run in separate processes: `cartback worker
--role timer`, `--role dispatcher,inbox`, ... Loops wake each other through `services/wakeups.py`
(in-process events; LISTEN/NOTIFY between processes on PostgreSQL).

Stopping is bounded: once `stop` is set no new batch starts, a render in progress is interrupted
(its transaction rolls back; the step is rendered again after the restart), and provider calls in
flight may run to their timeout. `run` returns within `shutdown_seconds` of the stop. Once the
dispatcher is done, the SMPP binds are closed and what they queued meanwhile is applied.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum

from cartback import metrics
from cartback.app import App
from cartback.channels.registry import build_channels
from cartback.core.model import Store
from cartback.core.sandbox import RenderInterrupted, interrupt_renders_on
from cartback.services import outbound
from cartback.services.bound import Listeners
from cartback.services.dispatch import Dispatcher
from cartback.services.inbox import Applied, InboxApplier
from cartback.services.outbound import DEFAULT_RETRY, WebhookSender
from cartback.services.providers import ChannelResolver
from cartback.services.retry import RetryPolicy
from cartback.services.sendrate import shared_rates
from cartback.services.shops import prune
from cartback.services.tick import tick
from cartback.services.wakeups import Topic, Wakeups, next_wake
from cartback.web.intake import event_from_stored

log = logging.getLogger("cartback.worker")

# How often the timer thread blanks shop webhook payloads past their retention.
PRUNE_EVERY_SECONDS = 3600.0
# How often the worker issues the per-cart discount codes of steps due soon.
ISSUE_CODES_EVERY_SECONDS = 60.0
# How often it removes from the shops the per-cart codes that expired unused.
PRUNE_CODES_EVERY_SECONDS = 3600.0
# Delivered and given-up webhook deliveries are kept this long for `cartback webhooks list`.
WEBHOOK_DELIVERIES_KEPT = timedelta(days=30)
# How often the worker builds the report summary's ended days and rebuilds its stale ones.
REPORT_SUMMARY_EVERY_SECONDS = 60.0
# Days per refresh call, so a stop is noticed between batches of a long backfill.
REPORT_SUMMARY_BATCH = 20
# How long the inbox thread waits when nothing is pending, when appends are found by polling
# only (SQLite). With LISTEN (PostgreSQL) it waits up to the worker's poll, or until notified.
INBOX_IDLE_SECONDS = 0.05
# How soon the timer looks again at an enrollment that is due but was not claimed.
TIMER_RECHECK_SECONDS = 0.02
# Time for the last writes of a batch once its provider calls are done.
SHUTDOWN_MARGIN_SECONDS = 5.0


def shutdown_seconds(send_timeout_seconds: float) -> float:
    """How long a worker may take to stop: a provider call may run to its timeout, then the
    batch records its outcomes."""
    return send_timeout_seconds + SHUTDOWN_MARGIN_SECONDS


def idle_wait(next_due: datetime | None, now: datetime, poll_seconds: float) -> float:
    """How long the dispatcher (or the timer) waits after a run that took everything due: until
    the next row comes due, at most `poll_seconds` (rows another process queues, a rate's
    tokens, rows another worker holds, are looked for again within that)."""
    if next_due is None or next_due <= now:
        return poll_seconds
    return min(poll_seconds, (next_due - now).total_seconds())


class Role(StrEnum):
    """A part of the worker that can run in a process of its own."""

    # Fires due enrollments: policy, render, outbox rows.
    TIMER = "timer"
    # Sends the outbox; with it go the provider traffic that shares its channels (SMPP binds'
    # receipts, inMobile pulls) and the outbound webhook deliveries.
    DISPATCHER = "dispatcher"
    # Applies accepted events from the inbox.
    INBOX = "inbox"
    # The scheduled jobs: per-cart discount codes, the report summary, pruning kept payloads,
    # the Magento poll and the Shopify reconciliation.
    JOBS = "jobs"


ALL_ROLES = frozenset(Role)


def parse_roles(values: Iterable[str]) -> frozenset[Role]:
    """Roles from `--role` values, each one role or a comma list; `all` (or nothing) is every
    role. ValueError names an unknown one."""
    names = [name.strip() for value in values for name in value.split(",") if name.strip()]
    if not names or "all" in names:
        return ALL_ROLES
    known = {role.value: role for role in Role}
    unknown = [name for name in names if name not in known]
    if unknown:
        choices = ", ".join([*known, "all"])
        raise ValueError(f"unknown role {unknown[0]!r}; choose from {choices}")
    return frozenset(known[name] for name in names)


# The topics each role waits on.
_LISTENS = {Role.TIMER: Topic.DUE, Role.DISPATCHER: Topic.OUTBOX, Role.INBOX: Topic.INBOX}


def timer_wait(next_wake: datetime | None, now: datetime, poll_seconds: float) -> float:
    """How long the timer waits after a run that took everything due: until the next wake, at
    most the poll. A wake already past came due after the claim's clock, or another worker
    holds it (SKIP LOCKED) and commits shortly: looked at again soon, without spinning."""
    if next_wake is not None and next_wake <= now:
        return min(poll_seconds, TIMER_RECHECK_SECONDS)
    return idle_wait(next_wake, now, poll_seconds)


@dataclass
class Worker:
    app: App
    stop: threading.Event = field(default_factory=threading.Event)
    roles: frozenset[Role] = ALL_ROLES
    wakeups: Wakeups = field(init=False)
    # What to close once the loops have ended (the sending role's channels and binds).
    _closers: list[Callable[[], None]] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        topics = [_LISTENS[role] for role in self.roles if role in _LISTENS]
        self.wakeups = Wakeups(self.app.engine, topics, self.stop)

    @property
    def outbox_ready(self) -> threading.Event:
        """Set when messages were queued, and at shutdown: the dispatcher looks at once instead
        of at the end of its idle wait."""
        return self.wakeups.events[Topic.OUTBOX]

    @property
    def shutdown_seconds(self) -> float:
        return shutdown_seconds(self.app.settings.send_timeout_seconds)

    def run(self) -> bool:
        """Run this worker's roles on their threads until `stop` is set. True when they all
        ended within `shutdown_seconds` of the stop; False when a batch was still running then
        (the caller ends the process; its rows are recovered by lease, as after a crash)."""
        threads = [
            threading.Thread(target=target, name=name, daemon=True)
            for name, target in self._loops()
        ]
        self.wakeups.start()
        for thread in threads:
            thread.start()
        try:
            while not self.stop.is_set() and all(thread.is_alive() for thread in threads):
                self.stop.wait(0.5)
        finally:
            self.stop.set()
            self.wakeups.set_all()
        deadline = time.monotonic() + self.shutdown_seconds
        for thread in threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        busy = [thread.name for thread in threads if thread.is_alive()]
        if busy:
            log.warning(
                "stopping with a %s batch still running after %.0f s; its rows are recovered "
                "by lease",
                " and ".join(busy),
                self.shutdown_seconds,
            )
            return False
        for close in self._closers:
            close()
        self.wakeups.join(timeout=1.0)
        log.info("worker stopped")
        return True

    def _loops(self) -> list[tuple[str, Callable[[], None]]]:
        """(thread name, loop) of this worker's roles; `_closers` what to close once they end."""
        settings = self.app.settings
        loops: list[tuple[str, Callable[[], None]]] = []
        if Role.INBOX in self.roles:
            loops.append(("inbox", self._inbox_loop))
        if Role.TIMER in self.roles:
            loops.append(("timer", self._timer_loop))
        if Role.DISPATCHER in self.roles:
            loops.extend(self._sending_loops())
        if Role.JOBS in self.roles:
            loops.append(("prune", self._prune_loop))
            # Per-cart discount codes are asked of the shop here, never inside the timer's
            # transaction; a slow shop API holds up only this thread.
            loops.append(("unique-codes", self._codes_loop))
            # Its own thread: a long backfill of the report summary never holds up a send.
            loops.append(("report-summary", self._summary_loop))
            if settings.magento_poll_minutes > 0:
                # Its own thread: a slow shop API must not hold up timers or sends.
                loops.append(("magento", self._magento_loop))
            if settings.shopify_reconcile_minutes > 0:
                loops.append(("shopify-reconcile", self._reconcile_loop))
        return loops

    def _sending_loops(self) -> list[tuple[str, Callable[[], None]]]:
        settings = self.app.settings
        defaults = build_channels(settings)
        # Stores with a provider of their own send through it; the others through defaults.
        # One resolver for sending and listening: an SMPP bind that sent a message knows the
        # SMSC's ids of its parts, so its receipts are drained from that same channel.
        resolver = ChannelResolver(
            defaults, base_url=settings.base_url, timeout=settings.send_timeout_seconds
        )
        dispatcher = Dispatcher(
            self.app.engine,
            defaults,
            resolver=resolver,
            lease=timedelta(seconds=settings.lease_seconds),
            send_timeout=timedelta(seconds=settings.send_timeout_seconds),
            concurrency=settings.dispatch_concurrency,
            rates=shared_rates(self.app.engine, defaults, settings),
            clock=self.app.clock.now,
            stopping=self.stop,
            retry=RetryPolicy(max_attempts=settings.dispatch_max_attempts),
        )
        listeners = Listeners(
            self.app.engine,
            resolver,
            clock=self.app.clock.now,
            stop=self.stop,
            poll_seconds=settings.worker_poll_seconds,
            pull_seconds=settings.pull_seconds,
            forward_timeout=settings.send_timeout_seconds,
        )
        webhooks = WebhookSender(
            self.app.engine,
            clock=self.app.clock.now,
            timeout=settings.webhook_timeout_seconds,
            retry=replace(DEFAULT_RETRY, max_attempts=settings.webhook_max_attempts),
        )
        # Once the loops have ended: the binds' last receipts, then the connections.
        self._closers.extend([listeners.finish, dispatcher.close, webhooks.close])
        return [
            ("dispatch", lambda: self._dispatch_loop(dispatcher)),
            ("smpp-drain", listeners.run_drain),
            ("pull", listeners.run_pull),
            # Webhooks have a thread of their own: a slow endpoint never holds up a send.
            ("webhooks", lambda: self._webhook_loop(webhooks)),
        ]

    def _inbox_loop(self) -> None:
        """Apply accepted events. The apply lag is what shoppers' first messages wait on: on
        SQLite the idle poll (one indexed query) runs often; on PostgreSQL the web server's
        notification wakes it, and the worker's poll is only the fallback."""
        settings = self.app.settings
        applier = InboxApplier(
            self.app.engine,
            self.app.registry,
            event_from_stored,
            self.app.clock.now,
            future_skew=timedelta(seconds=settings.future_skew_seconds),
            suppression_key=settings.suppression_key,
            batch=settings.inbox_batch,
            export_dir=settings.export_dir,
        )
        while not self.stop.is_set():
            try:
                done = applier.apply_pending()
            except Exception:
                # A database hiccup must not end the worker; the rows stay pending.
                log.exception("inbox batch failed; retrying")
                self.stop.wait(settings.worker_poll_seconds * 4)
                continue
            if done.applied:
                # Enrollments may now be due before the timer's next wake.
                self.wakeups.announce(Topic.DUE)
            if done == Applied():
                listening = self.wakeups.listening.is_set()
                idle = settings.worker_poll_seconds if listening else INBOX_IDLE_SECONDS
                self.wakeups.wait(Topic.INBOX, idle)

    def _timer_loop(self) -> None:
        settings = self.app.settings
        interrupt_renders_on(self.stop)
        while not self.stop.is_set():
            try:
                stats = tick(
                    self.app.engine,
                    self.app.registry,
                    self.app.clock.now(),
                    limit=settings.worker_batch,
                    base_url=settings.base_url,
                )
            except RenderInterrupted:
                log.info("timer batch interrupted by the shutdown; it runs again on restart")
                return
            except Exception:
                # A database hiccup must not end the worker; the rows are still due next time.
                log.exception("timer batch failed; retrying")
                self.stop.wait(settings.worker_poll_seconds * 4)
                continue
            metrics.observe_lateness(stats.lateness)
            if stats.sent:
                self.wakeups.announce(Topic.OUTBOX)
            if stats.claimed < settings.worker_batch:
                self._timer_idle()

    def _timer_idle(self) -> None:
        """Wait until the next enrollment is due, at most the poll, or until one may be due
        sooner (an applied event here, or a notification from another process)."""
        poll = self.app.settings.worker_poll_seconds
        try:
            due = next_wake(self.app.engine)
        except Exception:
            log.exception("reading the next wake time failed; polling")
            due = None
        self.wakeups.wait(Topic.DUE, timer_wait(due, self.app.clock.now(), poll))

    def _prune_loop(self) -> None:
        while not self.stop.is_set():
            self._prune_payloads()
            self.stop.wait(PRUNE_EVERY_SECONDS)

    def _prune_payloads(self) -> None:
        try:
            with self.app.engine.begin() as conn:
                count = prune(
                    conn, self.app.clock.now(), self.app.settings.shop_payload_retention_days
                )
                outbound.prune(conn, self.app.clock.now() - WEBHOOK_DELIVERIES_KEPT)
        except Exception:
            log.exception("pruning kept shop payloads failed; retrying in an hour")
            return
        if count:
            log.info("removed %d shop webhook payloads past their retention", count)

    def _codes_loop(self) -> None:
        next_prune = time.monotonic()
        while not self.stop.is_set():
            self.issue_unique_codes()
            if time.monotonic() >= next_prune and not self.stop.is_set():
                next_prune = time.monotonic() + PRUNE_CODES_EVERY_SECONDS
                self.prune_expired_codes()
            self.stop.wait(ISSUE_CODES_EVERY_SECONDS)

    def prune_expired_codes(self) -> None:
        """Remove from the shops the per-cart codes that expired unused; a code that fails is
        logged and tried again at the next run."""
        from cartback.services import unique_codes

        try:
            stats = unique_codes.prune_expired(
                self.app.engine,
                self.app.clock.now(),
                unique_codes.shop_issuers(clock=self.app.clock.now),
                stop=self.stop,
            )
        except Exception:
            log.exception("removing expired discount codes failed; retrying at the next run")
            return
        if stats.removed or stats.gone or stats.failed:
            log.info(
                "expired discount codes: %d removed, %d already gone, %d failed",
                stats.removed,
                stats.gone,
                stats.failed,
            )

    def issue_unique_codes(self) -> None:
        """Issue the per-cart codes that steps due soon ask for; failures are logged and
        tried again on the next run, while the timer defers those steps."""
        from cartback.services import unique_codes

        try:
            stats = unique_codes.issue_due(
                self.app.engine,
                self.app.registry,
                self.app.clock.now(),
                unique_codes.shop_issuers(clock=self.app.clock.now),
                stop=self.stop,
            )
        except Exception:
            log.exception("issuing unique discount codes failed; retrying at the next run")
            return
        if stats.issued or stats.failed:
            log.info("unique discount codes: %d issued, %d failed", stats.issued, stats.failed)

    def _summary_loop(self) -> None:
        while not self.stop.is_set():
            self.refresh_report_summary()
            self.stop.wait(REPORT_SUMMARY_EVERY_SECONDS)

    def refresh_report_summary(self) -> None:
        """Build the report summary's ended days and rebuild stale ones, a batch at a time;
        a failure is logged and the next run tries again (reports read those days live)."""
        from cartback.services import report_summary

        try:
            while not self.stop.is_set():
                done = report_summary.refresh(
                    self.app.engine, self.app.clock.now(), limit=REPORT_SUMMARY_BATCH
                )
                if done.built or done.rebuilt:
                    log.info("report summary: %d days built, %d rebuilt", done.built, done.rebuilt)
                if done.built + done.rebuilt < REPORT_SUMMARY_BATCH:
                    return
        except Exception:
            log.exception("building the report summary failed; retrying at the next run")

    def _magento_loop(self) -> None:
        every = self.app.settings.magento_poll_minutes * 60
        while not self.stop.is_set():
            self.poll_magento()
            self.stop.wait(every)

    def poll_magento(self) -> None:
        """Poll every store connected to Magento once; one store's failure is logged and the
        others are still polled."""
        from cartback.services import admin
        from cartback.services import magento as poller
        from cartback.services import shops as shop_service
        from cartback.shops.magento import MagentoError

        settings = self.app.settings
        try:
            with self.app.engine.connect() as conn:
                slugs = [
                    row["slug"]
                    for row in shop_service.connections(conn)
                    if row["platform"] == "magento"
                ]
                stores = [(slug, admin.store_by_slug(conn, slug)) for slug in slugs]
                links = [
                    (slug, store, shop_service.connection(conn, store.id, "magento"))
                    for slug, store in stores
                    if store is not None
                ]
        except Exception:
            log.exception("listing the Magento connections failed; retrying at the next poll")
            return
        for slug, store, link in links:
            if link is None or self.stop.is_set():
                continue

            def context(store: Store = store) -> shop_service.Context:
                return shop_service.Context(
                    store=store,
                    flow=self.app.registry.current(store.flow_name),
                    now=self.app.clock.now(),
                    future_skew=timedelta(seconds=settings.future_skew_seconds),
                    suppression_key=settings.suppression_key,
                )

            try:
                report = poller.poll_connection(
                    self.app.engine, context, link, first_window=timedelta(hours=24)
                )
            except (shop_service.SecretError, MagentoError) as error:
                log.warning("store %s: Magento poll failed: %s", slug, error)
                continue
            except Exception:
                log.exception("store %s: Magento poll failed", slug)
                continue
            log.info(
                "store %s: Magento poll fetched %d, applied %s, rejected %d",
                slug,
                report.fetched,
                dict(report.statuses),
                len(report.rejected),
            )

    def _reconcile_loop(self) -> None:
        every = self.app.settings.shopify_reconcile_minutes * 60
        while not self.stop.is_set():
            self.reconcile_shopify()
            self.stop.wait(every)

    def reconcile_shopify(self, api_base: str | None = None) -> None:
        """Reconcile every store connected to Shopify with an API token, over the last
        `shopify_reconcile_window_hours`; one store's failure is logged and the others run.
        (`api_base` replaces the shops' address in tests.)"""
        from cartback.services import shopify_reconcile

        settings = self.app.settings
        now = self.app.clock.now()
        contexts = shopify_reconcile.contexts(
            self.app.engine,
            self.app.registry,
            self.app.clock.now,
            timedelta(seconds=settings.future_skew_seconds),
            settings.suppression_key,
        )
        try:
            runs = shopify_reconcile.reconcile_stores(
                self.app.engine,
                contexts,
                now - timedelta(hours=settings.shopify_reconcile_window_hours),
                api_base=api_base,
                stop=self.stop,
            )
        except Exception:
            log.exception("Shopify reconciliation failed; retrying at the next run")
            return
        for run in runs:
            if run.report is None:
                log.warning("store %s: Shopify reconciliation failed: %s", run.slug, run.error)
                continue
            report = run.report
            log.info(
                "store %s: Shopify reconciliation fetched %d: %d new, %d updated, "
                "%d unchanged checkouts; %d orders matched; %d rejected",
                run.slug,
                report.fetched,
                report.new,
                report.updated,
                report.unchanged,
                report.orders_matched,
                len(report.rejected),
            )

    def _dispatch_loop(self, dispatcher: Dispatcher) -> None:
        settings = self.app.settings
        while not self.stop.is_set():
            try:
                stats = dispatcher.run_once(self.app.clock.now(), settings.dispatch_batch)
            except Exception:
                log.exception("dispatch batch failed; retrying")
                self.stop.wait(settings.worker_poll_seconds * 4)
                continue
            if stats.claimed < settings.dispatch_batch:
                now = self.app.clock.now()
                wait = idle_wait(stats.next_due, now, settings.worker_poll_seconds)
                self.wakeups.wait(Topic.OUTBOX, wait)

    def _webhook_loop(self, sender: WebhookSender) -> None:
        settings = self.app.settings
        while not self.stop.is_set():
            try:
                claimed = sender.run_once()
            except Exception:
                log.exception("webhook batch failed; retrying")
                self.stop.wait(settings.worker_poll_seconds * 4)
                continue
            if claimed == 0:
                self.stop.wait(max(settings.worker_poll_seconds, 1.0))


def serve_worker_metrics(host: str, port: int) -> None:
    """The counters of a worker run on its own, on a port of its own (`/metrics`)."""
    from prometheus_client import start_http_server

    start_http_server(port, addr=host, registry=metrics.REGISTRY)
    log.info("worker metrics on http://%s:%d/metrics", host, port)


def settle_startup_heap() -> None:
    """Move what startup built (modules, the schema, flows, rule packs, compiled templates) out
    of the garbage collector's view, once the worker process is ready. Its full collections then
    walk only what the batches make: without this they cost about a sixth of the timer's CPU per
    step. Garbage is collected first, so none of it is kept."""
    gc.collect()
    gc.freeze()
