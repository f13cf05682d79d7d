"""Benchmark the flow report: seed enrollments, messages, orders and their attributions, then
time `services.reports.flow_report` for one flow over 30 days, on SQLite and PostgreSQL.

    python bench/report.py                                   # 1M / 3M / 150k, both backends
    python bench/report.py --enrollments 100000 --backend sqlite

Enrollments are spread over 60 days and two flows, so one flow over 30 days reads about a
quarter of them. Each treated cart has two SMS and an email, a third of them a second email
(3M messages for 1M enrollments); 10 % are held out. Target: ≤ 1 s per report.
"""

from __future__ import annotations

import argparse
import json
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
    counts = {"enrollments": 0, "messages": 0, "orders": 0}
    order_every = max(1, enrollments // orders)
    for base in range(0, enrollments, CHUNK):
        contacts, carts, enrolls, outbox, ords, attrs = [], [], [], [], [], []
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
        ):
            if rows:
                _insert(engine, table, rows)
        counts["enrollments"] += len(enrolls)
        counts["messages"] += len(outbox)
        counts["orders"] += len(ords)
    with engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")
    engine.dispose()
    return counts


def time_report(url: str, runs: int) -> list[float]:
    from sqlalchemy import create_engine

    from cartback.services.reports import flow_report

    engine = create_engine(url)
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        with engine.connect() as conn:
            report = flow_report(
                conn, 1, since=NOW - timedelta(days=30), until=NOW + timedelta(days=1), flow="a"
            )
        timings.append(time.perf_counter() - started)
        assert report["flows"], "the report found no carts"
    engine.dispose()
    return timings


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
            timings = time_report(url, args.runs)
        finally:
            if cleanup is not None:
                drop_database(*cleanup)
    return {
        "backend": backend,
        **counts,
        "seed_s": round(seeded, 1),
        "report_s": [round(t, 3) for t in timings],
        "best_s": round(min(timings), 3),
    }


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
