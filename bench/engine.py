"""Benchmark the durable timer: N pending enrollments, a stream of them due at R per second,
one or more workers (`--workers`, repeatable: each count runs on a fresh database in the same
run) with a null channel. Prints steps/s, the timer's CPU µs per step, lateness (fire time − due
time) and the workers' peak RSS, on SQLite and on PostgreSQL; on PostgreSQL also the server
backends' CPU per step (the PIDs in `pg_stat_activity`, read from /proc/PID/stat).

    python bench/engine.py                      # 100k and 1M pending, both backends
    python bench/engine.py --pending 100000 --backend sqlite --rate 5000 --window 20
    python bench/engine.py --pending 100000 --backend postgres --rate 2000 --workers 1 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, update

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

FLOW = """\
name: bench
abandon_after: 0s
steps:
  - id: sms1
    at: 0s
    channel: sms
    body: "{{ brand }}: {{ first_name }}, your {{ product }} is waiting: {{ link }}"
"""
CHUNK = 20_000
# `--no-send`: the workers run the timer alone, to tell its scaling from the dispatcher's.
SEND = os.environ.get("CARTBACK_BENCH_SEND", "1") == "1"
# Shoppers live where it is daytime when the bench runs, so quiet hours defer nothing: the bench
# measures the timer, not the night. (E.164 prefix, digits after it, the zone of that prefix.)
DAYTIME_NUMBERS = (
    ("+4740", 6, "Europe/Oslo"),
    ("+819012", 6, "Asia/Tokyo"),
    ("+55119", 8, "America/Sao_Paulo"),
    ("+6421", 7, "Pacific/Auckland"),
)


def daytime_numbers(at: datetime) -> tuple[str, int]:
    """A phone prefix whose zone is between 09:00 and 18:00 at `at`, and its digit count."""
    from zoneinfo import ZoneInfo

    for prefix, digits, zone in DAYTIME_NUMBERS:
        if 9 <= at.astimezone(ZoneInfo(zone)).hour < 18:
            return prefix, digits
    raise SystemExit("no daytime zone found; extend DAYTIME_NUMBERS")


def seed(url: str, pending: int, due: int, rate: float, lead: float) -> float:
    """Insert `pending` carts, contacts and enrollments; the first `due` fall due at `rate`/s
    starting `lead` seconds after seeding ends. Returns the epoch second the stream starts."""
    from cartback.services import admin
    from cartback.services.flows import FlowRegistry
    from cartback.store import tables as t
    from cartback.store.db import make_engine
    from cartback.store.migrate import upgrade
    from cartback.store.rows import phone_fact_columns

    engine = make_engine(url)
    upgrade(engine)
    now = datetime.now(UTC)
    flow = FlowRegistry(engine).register_text(FLOW, "bench.yaml", now)
    with engine.begin() as conn:
        store = admin.create_store(
            conn,
            admin.NewStore(
                slug="bench",
                name="Bench",
                brand="Bench",
                flow_name="bench",
                domains=("shop.example",),
                postal_address="1 Bench Street",
            ),
            now,
        )
    far = now + timedelta(days=2)
    prefix, digits = daytime_numbers(now)
    line = [{"title": "Wool socks", "quantity": 1, "price": "20.00"}]
    for base in range(0, pending, CHUNK):
        ids = range(base + 1, min(pending, base + CHUNK) + 1)
        contacts = [
            {
                "id": i,
                "store_id": store.id,
                "phone": f"{prefix}{i:0{digits}d}",
                # As ingest stores them: the timer reads these, never parses the number.
                **phone_fact_columns(f"{prefix}{i:0{digits}d}"),
                "email": None,
                "first_name": "Kari",
                "sms_marketing": True,
                "email_marketing": False,
                "orders_count": 0,
                "tags": [],
                "created_at": now,
                "updated_at": now,
            }
            for i in ids
        ]
        carts = [
            {
                "id": i,
                "store_id": store.id,
                "token": f"cart-{i}",
                "contact_id": i,
                "lines": line,
                "value": 20,
                "currency": "USD",
                "restore_url": f"https://shop.example/c/{i}",
                "status": "open",
                "tags": [],
                "occurred_at": now,
                "created_at": now,
                "updated_at": now,
            }
            for i in ids
        ]
        enrollments = []
        for i in ids:
            wake = far
            enrollments.append(
                {
                    "id": i,
                    "store_id": store.id,
                    "cart_id": i,
                    "flow_name": flow.name,
                    "flow_version": flow.version,
                    "step_index": 0,
                    "state": "active",
                    "abandoned_at": wake,
                    "wake_at": wake,
                    "variant": None,
                    "holdout": False,
                    "created_at": now,
                    "updated_at": now,
                }
            )
        consent = [
            {
                "store_id": store.id,
                "contact_id": i,
                "channel": "sms",
                "purpose": "marketing",
                "granted": True,
                "source": "checkout",
                "at": now,
                "received_at": now,
            }
            for i in ids
        ]
        with engine.begin() as conn:
            conn.execute(t.contacts.insert(), contacts)
            conn.execute(t.consent_events.insert(), consent)
            conn.execute(t.carts.insert(), carts)
            conn.execute(t.enrollments.insert(), enrollments)
    # Only now, with every row in place, set the due stream: it starts `lead` seconds from here.
    start = time.time() + lead
    e = t.enrollments.c
    stamp = update(t.enrollments).where(e.id == bindparam("b_id"))
    stamp = stamp.values(wake_at=bindparam("wake"), abandoned_at=bindparam("wake"))
    for base in range(0, due, CHUNK):
        batch = [
            {"b_id": i + 1, "wake": datetime.fromtimestamp(start + i / rate, UTC)}
            for i in range(base, min(due, base + CHUNK))
        ]
        with engine.begin() as conn:
            conn.execute(stamp, batch)
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")
    engine.dispose()
    if time.time() > start - 2:
        raise SystemExit(f"setting due times took longer than planned; raise --lead (now {lead})")
    return start


def child(url: str, out: str, stream_end: float, stop_after: float) -> None:
    """One worker under test: the tick and dispatch loops of `cartback worker`, with its default
    batch sizes. It stops once the due stream has ended and a tick finds nothing left."""
    from cartback.app import build_app
    from cartback.channels.dev import NullChannel
    from cartback.config import load_settings
    from cartback.core.model import Channel
    from cartback.services.dispatch import Dispatcher
    from cartback.services.tick import tick
    from cartback.worker import settle_startup_heap

    # CARTBACK_WORKER_BATCH and CARTBACK_DISPATCH_BATCH reach the worker as in production.
    settings = load_settings(
        dict(os.environ), database_url=url, sms_channel="null", email_channel="null"
    )
    app = build_app(settings)
    dispatcher = Dispatcher(app.engine, {Channel.SMS: NullChannel(Channel.SMS)}, concurrency=4)
    settle_startup_heap()  # as `cartback worker` does once it is ready
    # The process's CPU from here on: the timer and dispatcher threads, not imports and startup.
    process_cpu_began = time.process_time()
    lateness: list[float] = []
    busy = 0.0
    # CPU of the timer thread while it works on claimed steps (policy + render + outbox); the
    # dispatcher's thread is counted apart, in the process total.
    tick_cpu = 0.0
    fired = 0
    sent = 0
    last_commit = 0.0
    done = threading.Event()

    def dispatch_loop() -> None:
        nonlocal sent
        while True:
            stats = dispatcher.run_once(datetime.now(UTC), settings.dispatch_batch)
            sent += stats.sent
            if stats.claimed == 0:
                if done.is_set():
                    break
                time.sleep(0.05)

    sender = threading.Thread(target=dispatch_loop)
    if SEND:
        sender.start()
    deadline = time.time() + stop_after
    while time.time() < deadline:
        began = time.time()
        cpu_began = time.thread_time()
        stats = tick(app.engine, app.registry, datetime.now(UTC), limit=settings.worker_batch)
        ended = time.time()
        if stats.claimed:
            busy += ended - began
            tick_cpu += time.thread_time() - cpu_began
            fired += stats.claimed
            last_commit = ended
            # Lateness counts until the batch's commit: the step is durable only then.
            lateness.extend(value + (ended - began) for value in stats.lateness)
        elif began > stream_end:
            break
        else:
            time.sleep(0.02)
    done.set()
    if SEND:
        sender.join()
    dispatcher.close()
    result = {
        "fired": fired,
        "sent": sent,
        "busy": busy,
        "last_commit": last_commit,
        "tick_cpu": tick_cpu,
        "process_cpu": time.process_time() - process_cpu_began,
    }
    Path(out).write_text(json.dumps({**result, "lateness": lateness}))


def peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU of a process so far (/proc/PID/stat), None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # After the command's closing parenthesis: state is field 3, utime 14 and stime 15.
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_SECOND


class ServerCpu:
    """The CPU of the PostgreSQL backends serving the bench's database, sampled while the
    workers run: each backend's last reading counts (a backend's CPU only grows)."""

    def __init__(self, url: str) -> None:
        import psycopg
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        self.connection = psycopg.connect(
            parsed.set(drivername="postgresql").render_as_string(hide_password=False),
            autocommit=True,
        )
        self.seen: dict[int, float] = {}
        # What active backends were seen waiting on, per sample: lock waits here mean the
        # workers queue on each other's rows rather than share them out.
        self.waits: Counter[str] = Counter()
        self.commits_before = self._commits()
        # The sampler's own statements are transactions too; they are not the workers'.
        self.own = 1

    def _commits(self) -> int:
        row = self.connection.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
        return int(row[0]) if row else 0

    def commits(self) -> int:
        """Transactions the workers committed (read once their backends have ended)."""
        time.sleep(1.0)  # a backend's counters reach pg_stat_database as it exits
        return self._commits() - self.commits_before - self.own

    def sample(self) -> None:
        backends = self.connection.execute(
            "SELECT pid, state, wait_event_type, wait_event FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
        self.own += 1
        for pid, state, wait_type, wait in backends:
            used = cpu_seconds(pid)
            if used is not None:
                self.seen[pid] = max(used, self.seen.get(pid, 0.0))
            if state == "active":
                self.waits[f"{wait_type}:{wait}" if wait_type else "running"] += 1

    def total(self) -> float:
        self.connection.close()
        return sum(self.seen.values())


def run_workers(url: str, tmp: str, workers: int, stream_end: float, stop_after: float) -> Any:
    """Start the workers, watch their memory (and on PostgreSQL their backends' CPU), and return
    their results, the highest peak RSS and the server CPU seconds (None on SQLite)."""
    outs = [f"{tmp}/worker-{n}.json" for n in range(workers)]
    server = ServerCpu(url) if url.startswith("postgresql") else None
    # Each worker in a session of its own, as separate services run: with the kernel's
    # autogroup scheduling, the processes of one session share one slice of the CPU, and a
    # second worker beside the first would only split it.
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--child", url, out, str(stream_end), str(stop_after)],
            start_new_session=True,
        )
        for out in outs
    ]
    peak = 0.0
    while any(proc.poll() is None for proc in procs):
        peak = max([peak, *(peak_rss_mb(proc.pid) for proc in procs)])
        if server is not None:
            server.sample()
        time.sleep(0.1)
    if any(proc.returncode != 0 for proc in procs):
        raise SystemExit(f"a worker failed: exit codes {[proc.returncode for proc in procs]}")
    server_cpu = commits = None
    if server is not None:
        commits = server.commits()
        server_cpu = server.total()
        print(f"{workers} worker(s): active backends seen {dict(server.waits.most_common(6))}")
    return [json.loads(Path(out).read_text()) for out in outs], peak, (server_cpu, commits)


def run(
    backend: str, pending: int, rate: float, window: float, lead: float, workers: int
) -> dict[str, Any]:
    due = min(pending, int(rate * window))
    with tempfile.TemporaryDirectory() as tmp:
        if backend == "sqlite":
            url = f"sqlite:///{tmp}/bench.db"
            cleanup = None
        else:
            from tests.support.pg import acquire_server, create_database, drop_database

            server = acquire_server()
            url = create_database(server, "cartback_bench")
            cleanup = (server, url)
        try:
            seeded = time.time()
            start = seed(url, pending, due, rate, lead)
            seed_s = time.time() - seeded
            stream_end = start + due / rate
            # Generous: a saturated worker needs far longer than the window to work off the stream.
            results, peak, (server_cpu, commits) = run_workers(
                url, tmp, workers, stream_end, window + 900
            )
        finally:
            if cleanup is not None:
                drop_database(*cleanup)
    late = sorted(value for result in results for value in result["lateness"])
    fired = sum(result["fired"] for result in results)
    # A worker's capacity is what it fires per second of work; the fleet's is their sum.
    capacity = sum(result["fired"] / result["busy"] for result in results if result["busy"])
    last_commit = max(result["last_commit"] for result in results)
    tick_cpu = sum(result["tick_cpu"] for result in results)
    process_cpu = sum(result["process_cpu"] for result in results)

    def q(p: float) -> float:
        return late[min(len(late) - 1, int(p * len(late)))] if late else float("nan")

    return {
        "backend": backend,
        "pending": pending,
        "workers": workers,
        "due": due,
        "due_rate": rate,
        "seed_rows_per_s": round(3 * pending / seed_s),
        "fired": fired,
        "sent": sum(result["sent"] for result in results),
        "capacity_steps_per_s": round(capacity),
        "throughput_steps_per_s": round(fired / (last_commit - start)) if fired else 0,
        "late_p50_s": round(q(0.5), 3),
        "late_p99_s": round(q(0.99), 3),
        "late_max_s": round(late[-1], 3) if late else None,
        "worker_peak_rss_mb": round(peak, 1),
        # Wall-clock rates swing with the machine's load; CPU per step does not.
        "timer_cpu_us_per_step": round(1e6 * tick_cpu / fired, 1) if fired else None,
        "process_cpu_us_per_step": round(1e6 * process_cpu / fired, 1) if fired else None,
        # The database's side of each step (PostgreSQL's backends; SQLite runs in the worker).
        "server_cpu_us_per_step": (
            round(1e6 * server_cpu / fired, 1) if fired and server_cpu is not None else None
        ),
        # Each commit waits for the WAL flush: with fsync on, commits per step bound the rate.
        "commits_per_step": round(commits / fired, 3) if fired and commits is not None else None,
        "started_at": start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--pending", type=int, action="append")
    parser.add_argument("--backend", choices=["sqlite", "postgres"], action="append")
    parser.add_argument("--rate", type=float, default=5000)
    parser.add_argument("--window", type=float, default=20)
    # Seconds between seeding and the first due step; by default enough to stamp the due times.
    parser.add_argument("--lead", type=float)
    # Repeat it to compare worker counts in one run: `--workers 1 --workers 2`.
    parser.add_argument("--workers", type=int, action="append")
    parser.add_argument("--no-send", action="store_true", help="run the timer alone")
    args = parser.parse_args()
    if args.child:
        url, out, stream_end, stop_after = args.child
        child(url, out, float(stream_end), float(stop_after))
        return
    if args.no_send:
        os.environ["CARTBACK_BENCH_SEND"] = "0"  # the workers inherit it
    rows = []
    for backend in args.backend or ["sqlite", "postgres"]:
        for pending in args.pending or [100_000, 1_000_000]:
            for workers in args.workers or [1]:
                lead = args.lead or max(8.0, pending / 20_000)
                row = run(backend, pending, args.rate, args.window, lead, workers)
                rows.append(row)
                print(json.dumps(row), flush=True)
    print()
    print(
        "| backend | pending | workers | due at | fired | sent | capacity steps/s "
        "| throughput steps/s | late p50 | late p99 | worker CPU µs/step "
        "| server CPU µs/step | peak RSS |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['backend']} | {row['pending']:,} | {row['workers']} "
            f"| {row['due_rate']:,.0f}/s | {row['fired']:,} | {row['sent']:,} "
            f"| {row['capacity_steps_per_s']:,} | {row['throughput_steps_per_s']:,} "
            f"| {row['late_p50_s']} s | {row['late_p99_s']} s | {row['process_cpu_us_per_step']} "
            f"| {row['server_cpu_us_per_step'] or '–'} | {row['worker_peak_rss_mb']} MB |"
        )
    target = 5000
    for row in rows:
        ratio = row["capacity_steps_per_s"] / target
        print(
            f"{row['backend']} {row['pending']:,} × {row['workers']} worker(s): capacity "
            f"{ratio:.2f}× the 5,000 steps/s target; p99 lateness {row['late_p99_s']} s "
            f"(Celery ETA: 31.8 s at 5,000/s; a PostgreSQL job queue: 42.6 s at 1,000/s); "
            f"timer CPU {row['timer_cpu_us_per_step']} µs per step (target 150), whole worker "
            f"process {row['process_cpu_us_per_step']} µs per step, server "
            f"{row['server_cpu_us_per_step'] or '–'} µs per step (target 120)"
        )
    print_scaling(rows)


def print_scaling(rows: list[dict[str, Any]]) -> None:
    """Each worker count against one worker on the same backend and pending count, this run."""
    single = {(row["backend"], row["pending"]): row for row in rows if row["workers"] == 1}
    for row in rows:
        base = single.get((row["backend"], row["pending"]))
        if base is None or row is base or not base["throughput_steps_per_s"]:
            continue
        print(
            f"{row['backend']} {row['pending']:,}: {row['workers']} workers against 1: "
            f"throughput {row['throughput_steps_per_s'] / base['throughput_steps_per_s']:.2f}×, "
            f"capacity {row['capacity_steps_per_s'] / max(1, base['capacity_steps_per_s']):.2f}×"
            f", p99 lateness {row['late_p99_s']} s against {base['late_p99_s']} s"
        )


if __name__ == "__main__":
    main()
