"""Benchmark the flow report: seed enrollments, messages, orders and their attributions, then
time `services.reports.flow_report` for one flow over 30 days, on SQLite and PostgreSQL.

    python bench/report.py                                   # 1M / 3M / 150k, both backends
    python bench/report.py --enrollments 100000 --backend sqlite

Enrollments are spread over 60 days and two flows, so one flow over 30 days reads about a
quarter of them. Each treated cart has two SMS and an email, a third of them a second email
(3M messages for 1M enrollments); 10 % are held out; 0.3 % of treated shoppers reply STOP.
Target: ≤ 1 s per report.

In one run it times the report read live (`summary=False`, as before the daily summary), the
build of the summary (`report_summary.rebuild`, the backfill), the report from the summary, and
the report with three days of the window stale (a late receipt each), which it reads live.
Each timing is wall-clock seconds and CPU seconds: this process's, plus on PostgreSQL the
server backend's (read from /proc; the throwaway cluster runs on this machine).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

CHUNK = 20_000
NOW = datetime(2026, 6, 1, tzinfo=UTC)
SPAN = timedelta(days=60)


def _insert(engine: Any, table: Any, rows: list[dict[str, Any]]) -> None:
    with engine.begin() as conn:
        conn.execute(table.insert(), rows)


def seed(url: str, enrollments: int, orders: int) -> dict[str, int]:
    from sqlalchemy import create_engine

    from cartback.store import tables as t
    from cartback.store.migrate import upgrade

    engine = create_engine(url)
    upgrade(engine)
    with engine.begin() as conn:
        store_id = conn.execute(
            t.stores.insert()
            .values(
                slug="bench",
                name="Bench",
                brand="Bench",
                default_zone="UTC",
                default_locale="en",
                currency="USD",
                domains=[],
                flow_name="a",
                created_at=NOW,
                measurement={
                    "rates": {"EUR": "1.10"},
                    "prices": {"sms": {"*": "0.05"}, "email": "0.001"},
                },
            )
            .returning(t.stores.c.id)
        ).scalar_one()
    counts = {"enrollments": 0, "messages": 0, "orders": 0, "opt_outs": 0}
    order_every = max(1, enrollments // orders)
    for base in range(0, enrollments, CHUNK):
        contacts, carts, enrolls, outbox, ords, attrs, stops = [], [], [], [], [], [], []
        for i in range(base, min(enrollments, base + CHUNK)):
            n = i + 1
            at = NOW - SPAN * (i / enrollments)
            common = {"store_id": store_id, "created_at": at, "updated_at": at}
            contacts.append(
                {
                    **common,
                    "id": n,
                    "phone": f"+1555{n:09d}",
                    "phone_country": "US",
                    "sms_marketing": True,
                    "email_marketing": True,
                    "orders_count": 0,
                    "tags": [],
                }
            )
            carts.append(
                {
                    **common,
                    "id": n,
                    "token": f"t{n}",
                    "contact_id": n,
                    "lines": [],
                    "value": Decimal("80"),
                    "currency": "USD",
                    "status": "open",
                    "tags": [],
                    "occurred_at": at,
                }
            )
            holdout = i % 10 == 0
            enrolls.append(
                {
                    **common,
                    "id": n,
                    "cart_id": n,
                    "flow_name": "a" if i % 2 else "b",
                    "flow_version": "1",
                    "step_index": 3,
                    "state": "completed",
                    "abandoned_at": at,
                    "wake_at": None,
                    "variant": "A" if i % 4 < 2 else "B",
                    "holdout": holdout,
                    "held_channel": None,
                }
            )
            if holdout:
                continue
            # 3⅓ messages per treated cart: 3M for 1M enrollments with a 10 % holdout.
            steps = [("sms1", "sms", 1), ("email1", "email", 2), ("sms2", "sms", 3)]
            if i % 3 == 0:
                steps.append(("email2", "email", 4))
            for step, channel, slot in steps:
                sent = at + timedelta(hours=slot)
                outbox.append(
                    {
                        **common,
                        "id": 4 * n + slot - 4,
                        "enrollment_id": n,
                        "contact_id": n,
                        "step_id": step,
                        "channel": channel,
                        "to_address": "x",
                        "body": "x",
                        "segments": 1,
                        "status": "delivered",
                        "attempts": 1,
                        "available_at": sent,
                        "sent_at": sent,
                        "delivered_at": sent,
                        "clicked_at": sent if i % 7 == 0 else None,
                    }
                )
            if i % 333 == 7:  # 0.3 % of treated carts: STOP to the first SMS
                stop_at = at + timedelta(hours=1, minutes=20)
                stops.append(
                    {
                        "store_id": store_id,
                        "contact_id": n,
                        "channel": "sms",
                        "purpose": "marketing",
                        "granted": False,
                        "source": "keyword_reply",
                        "at": stop_at,
                        "received_at": stop_at,
                    }
                )
            if i % order_every == 1 and counts["orders"] + len(ords) < orders:
                placed = at + timedelta(hours=4)
                ords.append(
                    {
                        "id": n,
                        "store_id": store_id,
                        "order_ref": f"o{n}",
                        "cart_id": n,
                        "contact_id": n,
                        "value": Decimal("80"),
                        "currency": "USD",
                        "occurred_at": placed,
                    }
                )
                attrs.append(
                    {
                        "store_id": store_id,
                        "order_id": n,
                        "outbox_id": 4 * n - 3,
                        "enrollment_id": n,
                        "flow_name": enrolls[-1]["flow_name"],
                        "step_id": "sms1",
                        "variant": enrolls[-1]["variant"],
                        "channel": "sms",
                        "touch": "delivery",
                        "matched_by": "cart",
                        "model": "last_touch",
                        "touch_at": at + timedelta(hours=1),
                        "order_at": placed,
                        "revenue": Decimal("80"),
                        "currency": "USD",
                        "created_at": placed,
                    }
                )
        for table, rows in (
            (t.contacts, contacts),
            (t.carts, carts),
            (t.enrollments, enrolls),
            (t.outbox, outbox),
            (t.orders, ords),
            (t.attributions, attrs),
            (t.consent_events, stops),
        ):
            if rows:
                _insert(engine, table, rows)
        counts["enrollments"] += len(enrolls)
        counts["messages"] += len(outbox)
        counts["orders"] += len(ords)
        counts["opt_outs"] += len(stops)
    with engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")
    engine.dispose()
    return counts


WINDOW = {"since": NOW - timedelta(days=30), "until": NOW + timedelta(days=1), "flow": "a"}


class Stopwatch:
    """Wall and CPU seconds of one block: this process, plus the PostgreSQL backend's."""

    def __init__(self, conn: Any) -> None:
        self.backend: Path | None = None
        if conn.dialect.name == "postgresql":
            pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
            stat = Path(f"/proc/{pid}/stat")
            self.backend = stat if stat.exists() else None

    def _server_cpu(self) -> float:
        if self.backend is None:
            return 0.0
        # utime and stime, fields 14 and 15, in clock ticks (after the parenthesised name).
        fields = self.backend.read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def __enter__(self) -> Stopwatch:
        self.wall, self.cpu = time.perf_counter(), time.process_time() + self._server_cpu()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() + self._server_cpu() - self.cpu


def time_reports(engine: Any, runs: int, *, summary: bool) -> tuple[list[float], list[float], Any]:
    from cartback.services.reports import flow_report

    walls, cpus, report = [], [], None
    for _ in range(runs):
        with engine.connect() as conn, Stopwatch(conn) as watch:
            report = flow_report(conn, 1, summary=summary, **WINDOW)
        walls.append(watch.wall)
        cpus.append(watch.cpu)
        assert report["flows"], "the report found no carts"
    return walls, cpus, report


def make_stale(engine: Any, days: int) -> None:
    """A late delivery receipt for one message on each of the window's last `days` days."""
    from sqlalchemy import select, update

    from cartback.store import tables as t

    e, o = t.enrollments.c, t.outbox.c
    with engine.begin() as conn:
        for back in range(1, days + 1):
            start = NOW - timedelta(days=back)
            message = conn.execute(
                select(o.id)
                .select_from(t.outbox.join(t.enrollments, e.id == o.enrollment_id))
                .where(e.abandoned_at >= start, e.abandoned_at < start + timedelta(days=1))
                .limit(1)
            ).scalar_one()
            conn.execute(update(t.outbox).where(o.id == message).values(delivered_at=NOW))


def measure(url: str, runs: int) -> dict[str, Any]:
    from sqlalchemy import create_engine

    from cartback.services import report_summary

    engine = create_engine(url)
    try:
        live, live_cpu, live_report = time_reports(engine, runs, summary=False)
        with engine.connect() as conn:
            watch = Stopwatch(conn)
        with watch:
            days = report_summary.rebuild(engine, 1, NOW + timedelta(days=1))
        fast, fast_cpu, fast_report = time_reports(engine, runs, summary=True)
        assert fast_report == live_report, "the summary's report differs from the live one"
        make_stale(engine, 3)
        stale, stale_cpu, _ = time_reports(engine, runs, summary=True)
    finally:
        engine.dispose()

    def best(walls: list[float], cpus: list[float]) -> dict[str, Any]:
        return {
            "runs_s": [round(w, 3) for w in walls],
            "best_s": round(min(walls), 3),
            "cpu_s": round(cpus[walls.index(min(walls))], 3),
        }

    return {
        "live": best(live, live_cpu),
        "summary_build": {"days": days, "s": round(watch.wall, 1), "cpu_s": round(watch.cpu, 1)},
        "summary": best(fast, fast_cpu),
        "summary_3_stale_days": best(stale, stale_cpu),
        "speedup": round(min(live) / min(fast), 1),
    }


def run(backend: str, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        cleanup = None
        if backend == "sqlite":
            url = f"sqlite:///{tmp}/bench.db"
        else:
            from tests.support.pg import acquire_server, create_database, drop_database

            server = acquire_server()
            url = create_database(server, "cartback_report_bench")
            cleanup = (server, url)
        try:
            started = time.perf_counter()
            counts = seed(url, args.enrollments, args.orders)
            seeded = time.perf_counter() - started
            figures = measure(url, args.runs)
        finally:
            if cleanup is not None:
                drop_database(*cleanup)
    return {"backend": backend, **counts, "seed_s": round(seeded, 1), **figures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--enrollments", type=int, default=1_000_000)
    parser.add_argument("--orders", type=int, default=150_000)
    parser.add_argument("--runs", type=int, default=3, help="timed reports per backend")
    parser.add_argument("--backend", choices=["sqlite", "postgres"], action="append")
    args = parser.parse_args()
    for backend in args.backend or ["sqlite", "postgres"]:
        print(json.dumps(run(backend, args)), flush=True)


if __name__ == "__main__":
    main()
