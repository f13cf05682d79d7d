"""Benchmark the dispatcher: N outbox rows handed to providers, on SQLite and on PostgreSQL.

Runs, per backend, on N seeded `pending` SMS rows each:
- **null**: the dispatcher with the null channel, unlimited: its own ceiling;
- **webhook**: the real webhook channel (channels/webhook.py) POSTing to a local HTTP sink (a
  bare ASGI app under uvicorn, in its own process, answering 200 with an id);
- **limited**: two dispatchers (two engines, as two workers) sharing one send rate of
  `--rate` msg/s (the `send_rates` row), for `--seconds`; the achieved rate is counted from
  the rows' `sent_at`, after the first second's burst.
And once, as the webhook run's ceiling, **raw httpx**: the same N POSTs with the same
concurrency from a bare httpx client, no database.

Each line gives messages/s (wall clock) and the dispatcher's CPU time per message (this
process's user + system time: the dispatcher, the channel and the database client; SQLite's
work runs in-process too, PostgreSQL's server does not), and for the null and webhook runs
`vs_raw_httpx`, their messages/s over the raw httpx run's, measured in the same run because
this machine is shared and noisy. The sink counts the messages it got and any key it got
twice.

    python bench/dispatch.py                        # N = 20,000, both backends
    python bench/dispatch.py -n 5000 --backend sqlite --rate 50 --seconds 10
    python bench/dispatch.py -n 10000 --runs null       # raw httpx and the null runs only
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

STEPS_PER_ENROLLMENT = 100
CHUNK = 5_000
BODY = (
    "Bench: Kari, your wool socks are waiting: https://shop.example/r/abc123 Reply STOP to opt out"
)


# --- the sink provider (its own process) --------------------------------------------------


def sink_app() -> Callable[..., Any]:
    """A bare ASGI app: POST takes a message (200 with an id), GET /count tells how many
    messages and repeated keys it saw, any other GET is a lookup that finds nothing (404).
    Keys are counted per path: each run posts to its own path, since every run's fresh
    database numbers its rows (and so its keys) from 1 again."""
    seen: set[tuple[str, bytes]] = set()
    counts = {"messages": 0, "repeated": 0}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        more = True
        while more:
            more = (await receive()).get("more_body", False)
        if scope["method"] == "POST":
            key = (scope["path"], dict(scope["headers"]).get(b"idempotency-key", b""))
            counts["repeated" if key in seen else "messages"] += 1
            seen.add(key)
            status, body = 200, b'{"id": "sink-%d"}' % counts["messages"]
        elif scope["path"].endswith("/count"):
            status, body = 200, json.dumps(counts).encode()
        else:
            status, body = 404, b"{}"
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def run_sink(port: int) -> None:
    import uvicorn

    uvicorn.run(sink_app(), host="127.0.0.1", port=port, log_level="warning", access_log=False)


@contextmanager
def sink() -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([sys.executable, __file__, "--sink", str(port)])
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise SystemExit("the sink did not start") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


def sink_counts(url: str) -> dict[str, int]:
    import httpx

    counts: dict[str, int] = httpx.get(f"{url}/count").json()
    return counts


# --- seeding ---------------------------------------------------------------------------------


def seed(url: str, count: int) -> None:
    """`count` pending SMS rows, due now, for shoppers who consented; 100 steps per cart."""
    from cartback.services import admin
    from cartback.store import tables as t
    from cartback.store.db import make_engine
    from cartback.store.migrate import upgrade

    engine = make_engine(url)
    upgrade(engine)
    now = datetime.now(UTC)
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
    carts = -(-count // STEPS_PER_ENROLLMENT)
    common = {"store_id": store.id, "created_at": now, "updated_at": now}
    with engine.begin() as conn:
        conn.execute(
            t.contacts.insert(),
            [
                {
                    **common,
                    "id": i,
                    "phone": f"+4740{i:06d}",
                    "first_name": "Kari",
                    "sms_marketing": True,
                    "email_marketing": False,
                    "orders_count": 0,
                    "tags": [],
                }
                for i in range(1, carts + 1)
            ],
        )
        conn.execute(
            t.carts.insert(),
            [
                {
                    **common,
                    "id": i,
                    "token": f"cart-{i}",
                    "contact_id": i,
                    "lines": [],
                    "value": 20,
                    "currency": "USD",
                    "restore_url": f"https://shop.example/c/{i}",
                    "status": "open",
                    "tags": [],
                    "occurred_at": now,
                }
                for i in range(1, carts + 1)
            ],
        )
        conn.execute(
            t.enrollments.insert(),
            [
                {
                    **common,
                    "id": i,
                    "cart_id": i,
                    "flow_name": "bench",
                    "flow_version": 1,
                    "step_index": 0,
                    "state": "active",
                    "abandoned_at": now,
                    "wake_at": now + timedelta(days=2),
                    "holdout": False,
                }
                for i in range(1, carts + 1)
            ],
        )
    for base in range(0, count, CHUNK):
        rows = [
            {
                **common,
                "enrollment_id": n // STEPS_PER_ENROLLMENT + 1,
                "contact_id": n // STEPS_PER_ENROLLMENT + 1,
                "step_id": f"s{n % STEPS_PER_ENROLLMENT}",
                "channel": "sms",
                "to_address": f"+4740{n // STEPS_PER_ENROLLMENT + 1:06d}",
                "body": BODY,
                "segments": 1,
                "status": "pending",
                "attempts": 0,
                "available_at": now,
            }
            for n in range(base, min(count, base + CHUNK))
        ]
        with engine.begin() as conn:
            conn.execute(t.outbox.insert(), rows)
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")
    engine.dispose()


@contextmanager
def database(backend: str, count: int) -> Iterator[str]:
    with tempfile.TemporaryDirectory() as tmp:
        if backend == "sqlite":
            url = f"sqlite:///{tmp}/bench.db"
            seed(url, count)
            yield url
            return
        from tests.support.pg import acquire_server, create_database, drop_database

        server = acquire_server()
        url = create_database(server, "cartback_bench")
        try:
            seed(url, count)
            yield url
        finally:
            drop_database(server, url)


# --- the runs --------------------------------------------------------------------------------


def now() -> datetime:
    return datetime.now(UTC)


def drain(url: str, channel: Any, count: int, batch: int, concurrency: int) -> dict[str, Any]:
    """One dispatcher, unlimited, until `count` rows are out."""
    from cartback.core.model import Channel
    from cartback.services.dispatch import Dispatcher
    from cartback.store.db import make_engine

    engine = make_engine(url)
    dispatcher = Dispatcher(engine, {Channel.SMS: channel}, concurrency=concurrency)
    sent = failed = 0
    cpu, wall = time.process_time(), time.perf_counter()
    try:
        while sent + failed < count:
            stats = dispatcher.run_once(now(), limit=batch)
            sent += stats.sent
            failed += stats.failed + stats.unknown + stats.retried
            if not stats.claimed:
                break
    finally:
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        dispatcher.close()
        engine.dispose()
    return {
        "sent": sent,
        "not_sent": failed,
        "msgs_per_s": round(sent / wall),
        "cpu_us_per_msg": round(cpu / max(sent, 1) * 1e6),
        "wall_s": round(wall, 2),
    }


def raw_httpx(url: str, count: int, concurrency: int) -> dict[str, Any]:
    """The ceiling for the webhook run: the same POSTs, same concurrency, no dispatcher."""
    import httpx

    client = httpx.Client(timeout=httpx.Timeout(10.0))
    payload = {"channel": "sms", "to": "+4740000001", "body": BODY, "headers": {}}

    def post(n: int) -> bool:
        key = f"raw-{n}"
        response = client.post(url, json={**payload, "key": key}, headers={"Idempotency-Key": key})
        return response.status_code == 200

    cpu, wall = time.process_time(), time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        ok = sum(pool.map(post, range(count)))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    client.close()
    return {
        "sent": ok,
        "msgs_per_s": round(ok / wall),
        "cpu_us_per_msg": round(cpu / max(ok, 1) * 1e6),
        "wall_s": round(wall, 2),
    }


def limited(url: str, rate: float, seconds: float, concurrency: int) -> dict[str, Any]:
    """Two dispatchers sharing one `rate`; the rate achieved after the first second's burst,
    from the rows' `sent_at`."""
    from sqlalchemy import func, select

    from cartback.channels.dev import NullChannel
    from cartback.core.model import Channel
    from cartback.services.dispatch import Dispatcher
    from cartback.services.sendrate import SharedBucket
    from cartback.store import tables as t
    from cartback.store.db import make_engine

    engines = [make_engine(url) for _ in range(2)]
    dispatchers = [
        Dispatcher(
            engine,
            {Channel.SMS: NullChannel(Channel.SMS)},
            concurrency=concurrency,
            owner=f"worker-{i}",
            rates={Channel.SMS: SharedBucket(engine, "sms:bench", "BENCH", rate)},
        )
        for i, engine in enumerate(engines)
    ]
    stop = threading.Event()
    sent = [0, 0]

    def work(i: int) -> None:
        while not stop.is_set():
            stats = dispatchers[i].run_once(now())
            sent[i] += stats.sent
            if not stats.claimed:
                stop.wait(0.005)

    started = now()
    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    time.sleep(seconds + 1.5)
    stop.set()
    for thread in threads:
        thread.join()
    for dispatcher in dispatchers:
        dispatcher.close()
    o = t.outbox.c
    since, until = started + timedelta(seconds=1), started + timedelta(seconds=1 + seconds)
    with engines[0].connect() as conn:
        steady = conn.execute(
            select(func.count()).where(o.status == "sent", o.sent_at >= since, o.sent_at < until)
        ).scalar_one()
    for engine in engines:
        engine.dispose()
    achieved = steady / seconds
    return {
        "configured_per_s": rate,
        "achieved_per_s": round(achieved, 2),
        "error_pct": round((achieved - rate) / rate * 100, 2),
        "per_worker": sent,
        "window_s": seconds,
    }


def run_backend(
    backend: str, args: argparse.Namespace, url_of_sink: str, ceiling: float
) -> Iterator[dict[str, Any]]:
    from cartback.channels.dev import NullChannel
    from cartback.channels.webhook import WebhookChannel
    from cartback.core.model import Channel

    runs = set(args.runs.split(","))
    if "null" in runs:
        with database(backend, args.n) as url:
            result = drain(url, NullChannel(Channel.SMS), args.n, args.batch, args.concurrency)
        yield {"backend": backend, "run": "null", **result, **ratio(result, ceiling)}
    if "webhook" in runs:
        before = sink_counts(url_of_sink)
        with database(backend, args.n) as url:
            channel = WebhookChannel(Channel.SMS, f"{url_of_sink}/{backend}", timeout=10.0)
            result = drain(url, channel, args.n, args.batch, args.concurrency)
            channel.close()
            after = sink_counts(url_of_sink)
        result["sink_received"] = after["messages"] - before["messages"]
        result["sink_repeated"] = after["repeated"] - before["repeated"]
        yield {"backend": backend, "run": "webhook", **result, **ratio(result, ceiling)}
    if "limited" in runs:
        needed = int(args.rate * (args.seconds + 3))
        with database(backend, needed) as url:
            result = limited(url, args.rate, args.seconds, args.concurrency)
        yield {"backend": backend, "run": "limited", **result}


def ratio(result: dict[str, Any], ceiling: float) -> dict[str, float]:
    """Messages/s over the raw httpx run's, from the same run of this script."""
    return {"vs_raw_httpx": round(result["msgs_per_s"] / max(ceiling, 1), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sink", type=int, help=argparse.SUPPRESS)
    parser.add_argument("-n", type=int, default=20_000, help="messages per run")
    parser.add_argument("--backend", choices=["sqlite", "postgres"], action="append")
    parser.add_argument("--batch", type=int, default=200, help="rows claimed per run_once")
    parser.add_argument("--concurrency", type=int, default=8, help="provider calls in flight")
    parser.add_argument("--rate", type=float, default=50, help="the limited run's msg/s")
    parser.add_argument("--seconds", type=float, default=10, help="the limited run's window")
    parser.add_argument(
        "--runs", default="null,webhook,limited", help="which runs, comma-separated"
    )
    args = parser.parse_args()
    if args.sink:
        run_sink(args.sink)
        return
    with sink() as url:
        ceiling = raw_httpx(f"{url}/raw", args.n, args.concurrency)
        print(json.dumps({"run": "raw_httpx", **ceiling}), flush=True)
        for backend in args.backend or ["sqlite", "postgres"]:
            for line in run_backend(backend, args, url, ceiling["msgs_per_s"]):
                print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
