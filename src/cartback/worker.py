"""The worker: apply accepted events (the inbox), fire due timers and drain the outbox, in
batches, until told to stop; beside them, drain the SMPP binds and pull inMobile's reports and
replies (`services/bound.py`).

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
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

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
# How long the inbox thread waits when nothing is pending.
INBOX_IDLE_SECONDS = 0.05
# Time for the last writes of a batch once its provider calls are done.
SHUTDOWN_MARGIN_SECONDS = 5.0


def shutdown_seconds(send_timeout_seconds: float) -> float:
    """How long a worker may take to stop: a provider call may run to its timeout, then the
    batch records its outcomes."""
    return send_timeout_seconds + SHUTDOWN_MARGIN_SECONDS


def idle_wait(next_due: datetime | None, now: datetime, poll_seconds: float) -> float:
    """How long the dispatcher waits after a run that took everything due: until the next
    pending row comes due, at most `poll_seconds` (rows another process queues, a rate's
    tokens, rows another worker holds, are looked for again within that)."""
    if next_due is None or next_due <= now:
        return poll_seconds
    return min(poll_seconds, (next_due - now).total_seconds())


@dataclass
class Worker:
    app: App
    stop: threading.Event = field(default_factory=threading.Event)
    # Set by the timer when it has queued messages, and at shutdown: the dispatcher looks at
    # once instead of at the end of its idle wait.
    outbox_ready: threading.Event = field(default_factory=threading.Event)

    @property
    def shutdown_seconds(self) -> float:
        return shutdown_seconds(self.app.settings.send_timeout_seconds)

    def run(self) -> bool:
        """Run the timer and the dispatcher on two threads until `stop` is set. True when both
        ended within `shutdown_seconds` of the stop; False when a batch was still running then
        (the caller ends the process; its rows are recovered by lease, as after a crash)."""
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
        threads = [
            threading.Thread(target=self._inbox_loop, name="inbox", daemon=True),
            threading.Thread(target=self._timer_loop, name="timer", daemon=True),
            threading.Thread(
                target=self._dispatch_loop, args=(dispatcher,), name="dispatch", daemon=True
            ),
            threading.Thread(target=listeners.run_drain, name="smpp-drain", daemon=True),
            threading.Thread(target=listeners.run_pull, name="pull", daemon=True),
            # Webhooks have a thread of their own: a slow endpoint never holds up a timer.
            threading.Thread(
                target=self._webhook_loop, args=(webhooks,), name="webhooks", daemon=True
            ),
        ]
        # Per-cart discount codes are asked of the shop here, never inside the timer's
        # transaction; a slow shop API holds up only this thread.
        threads.append(threading.Thread(target=self._codes_loop, name="unique-codes", daemon=True))
        # Its own thread: a long backfill of the report summary never holds up a send.
        threads.append(
            threading.Thread(target=self._summary_loop, name="report-summary", daemon=True)
        )
        if settings.magento_poll_minutes > 0:
            # Its own thread: a slow shop API must not hold up timers or sends.
            threads.append(threading.Thread(target=self._magento_loop, name="magento", daemon=True))
        if settings.shopify_reconcile_minutes > 0:
            threads.append(
                threading.Thread(target=self._reconcile_loop, name="shopify-reconcile", daemon=True)
            )
        for thread in threads:
            thread.start()
        try:
            while not self.stop.is_set() and all(thread.is_alive() for thread in threads):
                self.stop.wait(0.5)
        finally:
            self.stop.set()
            self.outbox_ready.set()
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
        listeners.finish()
        dispatcher.close()
        webhooks.close()
        log.info("worker stopped")
        return True

    def _inbox_loop(self) -> None:
        """Apply accepted events. An idle poll is one indexed query on pending rows, so it
        runs often: the apply lag is what shoppers' first messages wait on."""
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
            if done == Applied():
                self.stop.wait(INBOX_IDLE_SECONDS)

    def _timer_loop(self) -> None:
        settings = self.app.settings
        interrupt_renders_on(self.stop)
        next_prune = time.monotonic()
        while not self.stop.is_set():
            if time.monotonic() >= next_prune:
                next_prune = time.monotonic() + PRUNE_EVERY_SECONDS
                self._prune_payloads()
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
                self.outbox_ready.set()
            if stats.claimed < settings.worker_batch:
                self.stop.wait(settings.worker_poll_seconds)

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
                self.outbox_ready.wait(idle_wait(stats.next_due, now, settings.worker_poll_seconds))
                # Cleared before the next run, which sees whatever the timer committed.
                self.outbox_ready.clear()

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
