"""Prometheus metrics: counters each process keeps in memory, and the backlog read at scrape time.

Counters and the lateness histogram are incremented where the work happens (ingest, the timer,
the dispatcher, the consent ledger) and cost a lock and an addition, never SQL. Each process
exposes its own: the web server at `/metrics`, a separate worker on
CARTBACK_WORKER_METRICS_PORT. Prometheus adds the series of all targets up. The backlog (due
timers, queued messages and webhook deliveries, inbox rows waiting) is a database fact, the
same from every process, so only the web server reports it: a few indexed COUNTs, cached for a
few seconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select

from cartback.store import tables as t

REGISTRY = CollectorRegistry(auto_describe=True)

EVENTS_INGESTED = Counter(
    "cartback_events_ingested",
    "Shop events received, by type and outcome (accepted, duplicate, stale).",
    ["type", "status"],
    registry=REGISTRY,
)
SENDS = Counter(
    "cartback_sends",
    "Provider calls by channel, provider and outcome (sent, unknown, retried, failed).",
    ["channel", "provider", "status"],
    registry=REGISTRY,
)
PROVIDER_ERRORS = Counter(
    "cartback_provider_errors",
    "Provider calls refused (retried or failed) or left unknown, by channel and provider.",
    ["channel", "provider"],
    registry=REGISTRY,
)
OPT_OUTS = Counter(
    "cartback_opt_outs",
    "Marketing opt-outs recorded in the consent ledger, by channel and source.",
    ["channel", "source"],
    registry=REGISTRY,
)
WEBHOOKS = Counter(
    "cartback_webhook_deliveries",
    "Outbound webhook attempts by event type and outcome (delivered, retried, failed).",
    ["event", "status"],
    registry=REGISTRY,
)
# Timers fire up to a poll interval late when all is well; minutes mean a backlog.
LATENESS = Histogram(
    "cartback_timer_lateness_seconds",
    "How long after its wake time each timer fired.",
    buckets=(0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600, float("inf")),
    registry=REGISTRY,
)

# From the commit of an event's inbox row to its application by the worker.
APPLY_LAG = Histogram(
    "cartback_inbox_apply_lag_seconds",
    "How long after it was accepted each event was applied.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, float("inf")),
    registry=REGISTRY,
)

# How long one backlog reading is served before the database is asked again.
BACKLOG_CACHE_SECONDS = 5.0


def count_events(events: Sequence[object], statuses: Sequence[str]) -> None:
    """One count per event, by its kind (`checkout_updated`) and what ingest made of it."""
    for event, status in zip(events, statuses, strict=True):
        EVENTS_INGESTED.labels(_snake(type(event).__name__), str(status)).inc()


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")


# What the dispatcher wrote for a provider's answer -> the `status` label.
_SEND_STATUS = {"pending": "retried"}


def count_send(channel: str, provider: str | None, status: str, count: int = 1) -> None:
    label = _SEND_STATUS.get(status, status)
    SENDS.labels(channel, provider or "none", label).inc(count)
    # `unknown`: the call timed out or broke after the request went out.
    if label in ("retried", "failed", "unknown"):
        PROVIDER_ERRORS.labels(channel, provider or "none").inc(count)


def observe_lateness(seconds: Iterable[float]) -> None:
    for value in seconds:
        LATENESS.observe(max(0.0, value))


def observe_apply_lag(seconds: Iterable[float]) -> None:
    for value in seconds:
        APPLY_LAG.observe(max(0.0, value))


class BacklogCollector(Collector):
    """Due enrollments, outbox rows and webhook deliveries waiting, by status, read with a few
    COUNTs on indexed columns at scrape time and cached briefly, so that scrapes from several
    Prometheus servers never add load."""

    def __init__(
        self,
        engine: Engine,
        clock: Callable[[], datetime],
        cache_seconds: float = BACKLOG_CACHE_SECONDS,
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._read_at = float("-inf")
        self._cached: list[Metric] = []

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            if time.monotonic() - self._read_at >= self.cache_seconds:
                self._cached = self._read()
                self._read_at = time.monotonic()
            yield from self._cached

    def _read(self) -> list[Metric]:
        now = self.clock()
        e, o, w, i = t.enrollments.c, t.outbox.c, t.webhook_deliveries.c, t.inbox.c
        with self.engine.connect() as conn:
            due = conn.execute(select(func.count()).where(e.wake_at <= now)).scalar_one()
            queued = conn.execute(
                select(o.status, func.count())
                .where(o.status.in_(("pending", "claimed", "sending")))
                .group_by(o.status)
            ).all()
            inbox = conn.execute(
                select(func.count(i.error), func.count())
                .select_from(t.inbox)
                .where(i.applied_at.is_(None))
            ).one()
            hooks = conn.execute(
                select(w.status, func.count())
                .where(w.status.in_(("pending", "sending")))
                .group_by(w.status)
            ).all()
        timers = GaugeMetricFamily(
            "cartback_due_enrollments", "Enrollments whose timer is due (wake_at <= now)."
        )
        timers.add_metric([], due)
        outbox = GaugeMetricFamily(
            "cartback_outbox_messages",
            "Messages not yet handed over, by status.",
            labels=["status"],
        )
        for status, count in _with_zeros(("pending", "claimed", "sending"), queued).items():
            outbox.add_metric([status], count)
        deliveries = GaugeMetricFamily(
            "cartback_webhook_backlog", "Webhook deliveries waiting, by status.", labels=["status"]
        )
        for status, count in _with_zeros(("pending", "sending"), hooks).items():
            deliveries.add_metric([status], count)
        failed, waiting = int(inbox[0]), int(inbox[1])
        events = GaugeMetricFamily(
            "cartback_inbox_events",
            "Accepted events not yet applied: pending, or failed (kept with their error).",
            labels=["status"],
        )
        events.add_metric(["pending"], waiting - failed)
        events.add_metric(["failed"], failed)
        return [timers, outbox, deliveries, events]


def _with_zeros(statuses: Iterable[str], rows: Iterable[Any]) -> dict[str, int]:
    counts = dict.fromkeys(statuses, 0)
    counts.update({str(status): int(count) for status, count in rows})
    return counts


def exposition(*extra: Collector) -> bytes:
    """The text format of this process's metrics, with `extra` collectors after them."""
    if not extra:
        return generate_latest(REGISTRY)
    combined = CollectorRegistry(auto_describe=False)
    combined.register(_Forward(REGISTRY))
    for collector in extra:
        combined.register(collector)
    return generate_latest(combined)


class _Forward(Collector):
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        yield from self.registry.collect()
