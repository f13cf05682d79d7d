"""Benchmark the worker's inbox apply: N checkout.updated events are appended to the inbox of a
fresh database, then applied by `InboxApplier` until none is left; one by one through `ingest`
(the reference path) and in batches (services.ingest_batch), in the same run, on SQLite and on
PostgreSQL. Prints events/s and the worker's CPU µs per event (process time of this process,
which is the worker's whole cost; on PostgreSQL the server's backend CPU comes on top).

    python bench/inbox_apply.py                  # 5,000 events, both backends
    python bench/inbox_apply.py -n 2000 --backend sqlite --profile
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
# Share of events that update a cart an earlier event created (as bench/ingest.py).
UPDATE_SHARE = 0.2
PROFILE_ORDER = "cumulative"


@contextmanager
def database(backend: str, workdir: Path, label: str) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{workdir / f'{label}.db'}"
        return
    import psycopg

    name = f"bench_apply_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def events(count: int, now: datetime) -> list[dict[str, object]]:
    fresh = count - int(count * UPDATE_SHARE)
    made = []
    for index in range(count):
        number = index if index < fresh else index - fresh
        at = now - timedelta(minutes=5 if index < fresh else 4)
        event: dict[str, object] = {
            "id": f"e{index}",
            "type": "checkout.updated",
            "occurred_at": at.isoformat(),
            "cart_token": f"cart-{number}",
            "contact": {
                "phone": f"+4741{number % 1_000_000:06d}",
                "email": f"bench{number}@example.com",
                "first_name": "Kari",
            },
            "shipping": {"country": "NO"},
            "lines": [{"title": "Wool socks", "quantity": 1 + index % 3, "price": "199.00"}],
            "currency": "NOK",
            "restore_url": f"https://shop.example/checkouts/{number}/recover",
        }
        if number % 2:
            event["consent"] = {"sms_marketing": True, "email_marketing": True}
        made.append(event)
    return made


def run(backend: str, count: int, batched: bool, workdir: Path, profile: bool) -> str:
    from cartback.app import build_app, register_flows
    from cartback.config import load_settings
    from cartback.services import admin, inbox
    from cartback.services.inbox import Entry, InboxApplier
    from cartback.store.migrate import upgrade
    from cartback.web.intake import event_from_stored

    label = f"{backend}-{'batched' if batched else 'one-by-one'}"
    with database(backend, workdir, label) as url:
        app = build_app(load_settings({}, database_url=url))
        try:
            upgrade(app.engine)
            register_flows(app)
            now = datetime.now(UTC).replace(microsecond=0)
            with app.engine.begin() as conn:
                store = admin.create_store(
                    conn,
                    admin.NewStore(
                        slug="bench",
                        name="Bench",
                        brand="Bench",
                        flow_name="default",
                        domains=("shop.example",),
                        postal_address="1 Bench Street, Oslo",
                    ),
                    now,
                )
                entries = [Entry(str(e["id"]), json.dumps(e)) for e in events(count, now)]
                for start in range(0, len(entries), 500):
                    inbox.append(conn, store.id, "api", entries[start : start + 500], now)
            applier = InboxApplier(
                app.engine,
                app.registry,
                event_from_stored,
                app.clock.now,
                budget_seconds=float("inf"),
                batched=batched,
            )
            profiler = cProfile.Profile() if profile else None
            wall, cpu = time.perf_counter(), time.process_time()
            if profiler:
                profiler.enable()
            applied = 0
            while done := applier.apply_pending().applied:
                applied += done
            if profiler:
                profiler.disable()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            if profiler:
                pstats.Stats(profiler).sort_stats(PROFILE_ORDER).print_stats(45)
        finally:
            app.close()
    return (
        f"{label:<24} {applied:>7} {applied / wall:>10.0f} {wall:>8.2f} "
        f"{cpu / max(applied, 1) * 1e6:>12.0f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--events", type=int, default=5_000)
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--profile", action="store_true", help="cProfile the batched runs")
    args = parser.parse_args()
    backends = ("sqlite", "postgres") if args.backend == "both" else (args.backend,)
    lines = []
    with tempfile.TemporaryDirectory() as folder:
        for backend in backends:
            for batched in (False, True):
                lines.append(
                    run(backend, args.events, batched, Path(folder), args.profile and batched)
                )
    print(f"{'path':<24} {'applied':>7} {'events/s':>10} {'wall s':>8} {'CPU µs/event':>12}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
