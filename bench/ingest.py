"""Benchmark ingest over HTTP: signed Shopify `checkouts/update` deliveries and `POST /v1/events`
(one checkout.updated per request) against a real `cartback web`, on SQLite and on PostgreSQL,
each in a fresh database with one store and its Shopify connection; and the same deliveries
against a bare ASGI app that only answers 200, served by uvicorn with the same settings.

Prints requests/s, p50/p99 latency, the ratio to the bare app, the server's CPU time per event
(from /proc/<pid>/stat) and SQL statements per event (counted in-process on a sample), then
checks that every request answered 200 is in the database: durable before its answer. Events
and deliveries are appended to the inbox and applied by a `cartback worker` running beside the
server, as in production: the apply lag (accepted -> applied, p50/p99) and the worker's CPU per
event are printed, and every accepted event must be applied within a minute of the load's end.
(A delivery a server applied in its request, with no inbox row, counts as applied with no lag:
so the script also measures versions that did.)

    python bench/ingest.py                         # 5,000 per target, both backends
    python bench/ingest.py -n 2000 --backend sqlite
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

SECRET = "bench-shopify-secret"
SECRET_ENV = "BENCH_SHOPIFY_SECRET"
SHOP_DOMAIN = "bench-shop.myshopify.com"
API_KEY = "cbk_bench_ingest_key"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
# Share of deliveries that update a cart an earlier delivery created.
UPDATE_SHARE = 0.2
SAMPLE = 20
BARE_APP = """
import uvicorn

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b'{"status":"accepted"}'})

uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port={port}, log_level="info",
                              timeout_graceful_shutdown=5)).run()
"""


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes
    key: str  # the delivery id or event id to find in the database afterwards


@dataclass
class Result:
    label: str
    count: int
    ok: int
    seconds: float
    latencies: list[float]
    cpu_seconds: float
    missing: int | None = None
    statements: float | None = None
    lag: list[float] | None = None
    unapplied: int | None = None
    worker_cpu: float | None = None

    @property
    def rate(self) -> float:
        return self.ok / self.seconds


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its reaped children, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(value) for value in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def _checkout(token: str, number: int, updated: datetime, lines: int) -> dict[str, Any]:
    return {
        "id": 80_000_000 + number,
        "token": token,
        "cart_token": f"ct-{token}",
        "email": f"bench{number}@example.com",
        "phone": f"+4741{number % 1_000_000:06d}",
        "buyer_accepts_marketing": bool(number % 2),
        "currency": "NOK",
        "total_price": f"{lines * 199}.00",
        "line_items": [
            {"title": f"Wool socks {i}", "quantity": 1, "price": "199.00", "sku": f"S-{i}"}
            for i in range(lines)
        ],
        "abandoned_checkout_url": f"https://shop.example/checkouts/{token}/recover?key=k",
        "created_at": (updated - timedelta(minutes=3)).isoformat(),
        "updated_at": updated.isoformat(),
        "shipping_address": {"first_name": "Kari", "last_name": "Nordmann", "country_code": "NO"},
    }


def shopify_deliveries(count: int, tag: str, slug: str) -> list[Request]:
    """Distinct carts, and UPDATE_SHARE of updates (one minute later) to carts made earlier."""
    now = datetime.now(UTC).replace(microsecond=0)
    fresh = count - int(count * UPDATE_SHARE)
    requests = []
    for index in range(count):
        number = index if index < fresh else index - fresh
        at = now - timedelta(minutes=5) + (timedelta(minutes=1) if index >= fresh else timedelta())
        body = json.dumps(
            _checkout(f"{tag}-{number}", number, at, 1 + index % 3), separators=(",", ":")
        ).encode()
        webhook_id = str(uuid.uuid4())
        signature = base64.b64encode(hmac.new(SECRET.encode(), body, hashlib.sha256).digest())
        headers = {
            "Content-Type": "application/json",
            "X-Shopify-Topic": "checkouts/update",
            "X-Shopify-Hmac-Sha256": signature.decode(),
            "X-Shopify-Shop-Domain": SHOP_DOMAIN,
            "X-Shopify-API-Version": "2026-01",
            "X-Shopify-Webhook-Id": webhook_id,
            "X-Shopify-Event-Id": str(uuid.uuid4()),
            "X-Shopify-Triggered-At": now.isoformat(),
        }
        requests.append(Request(f"/hooks/shop/shopify/{slug}", headers, body, webhook_id))
    return requests


def api_events(count: int, tag: str) -> list[Request]:
    now = datetime.now(UTC).replace(microsecond=0)
    requests = []
    for index in range(count):
        event_id = f"{tag}-{index}"
        event = {
            "id": event_id,
            "type": "checkout.updated",
            "occurred_at": (now - timedelta(minutes=5)).isoformat(),
            "cart_token": f"{tag}-cart-{index}",
            "contact": {"phone": f"+4740{index % 1_000_000:06d}", "email": f"e{index}@ex.com"},
            "lines": [{"title": "Wool socks", "quantity": 1 + index % 3, "price": "199.00"}],
            "currency": "NOK",
        }
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"}
        requests.append(Request("/v1/events", headers, json.dumps(event).encode(), event_id))
    return requests


async def _post_all(
    base: str, requests: list[Request], concurrency: int
) -> tuple[float, list[float], list[Request]]:
    queue: asyncio.Queue[Request] = asyncio.Queue()
    for request in requests:
        queue.put_nowait(request)
    latencies: list[float] = []
    answered: list[Request] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:

        async def worker() -> None:
            while not queue.empty():
                request = queue.get_nowait()
                started = time.perf_counter()
                try:
                    response = await client.post(
                        request.path, content=request.body, headers=request.headers
                    )
                except httpx.TransportError:
                    # A connection the server closed as it was reused: counted as not answered.
                    continue
                latencies.append(time.perf_counter() - started)
                if response.status_code == 200:
                    answered.append(request)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started, latencies, answered


def measure(
    label: str, base: str, pid: int, requests: list[Request], concurrency: int
) -> tuple[Result, list[Request]]:
    before = cpu_seconds(pid)
    seconds, latencies, answered = asyncio.run(_post_all(base, requests, concurrency))
    used = cpu_seconds(pid) - before
    return Result(label, len(requests), len(answered), seconds, latencies, used), answered


@contextmanager
def server(command: list[str], env: dict[str, str], port: int, log: Path) -> Iterator[int]:
    with log.open("wb") as sink:
        process = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                    break
                except httpx.TransportError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit(f"server did not start; see {log}") from None
                    time.sleep(0.2)
            yield process.pid
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextmanager
def database(backend: str, workdir: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{workdir / 'bench-ingest.db'}"
        return
    import psycopg

    name = f"bench_ingest_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def prepare(url: str) -> None:
    """Schema, one store (flow `default`), its API key and its Shopify connection."""
    from cartback.app import build_app
    from cartback.config import load_settings
    from cartback.services import admin
    from cartback.services import shops as shop_service
    from cartback.store.migrate import upgrade

    app = build_app(load_settings({}, database_url=url))
    try:
        upgrade(app.engine)
        now = app.clock.now()
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
                    platform="shopify",
                ),
                now,
            )
            admin.issue_api_key(conn, store.id, now, key=API_KEY)
            shop_service.connect(
                conn, store.id, "shopify", SHOP_DOMAIN, f"env:{SECRET_ENV}", None, None, now
            )
    finally:
        app.close()


def _in_request(url: str) -> set[str]:
    """Delivery ids recorded with no inbox row: applied in their request (earlier versions)."""
    from sqlalchemy import create_engine, select

    from cartback.store import tables as t

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            recorded = set(conn.execute(select(t.shop_deliveries.c.delivery_id)).scalars())
            queued = set(conn.execute(select(t.inbox.c.event_id)).scalars())
    finally:
        engine.dispose()
    return recorded - queued


def missing(url: str, answered: list[Request]) -> int:
    """How many requests answered 200 left no row: each must be committed before its answer."""
    from sqlalchemy import create_engine, select

    from cartback.store import tables as t

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            stored = set(conn.execute(select(t.inbox.c.event_id)).scalars())
    finally:
        engine.dispose()
    stored |= _in_request(url)
    return sum(1 for request in answered if request.key not in stored)


def applied(url: str, answered: list[Request], wait: float = 60.0) -> tuple[list[float], int]:
    """(apply lag in seconds of each accepted event, accepted events not applied): waits up to
    `wait` seconds for the worker to apply every event answered 200."""
    from sqlalchemy import create_engine, select

    from cartback.store import tables as t

    keys = {request.key for request in answered}
    in_request = _in_request(url) & keys
    keys -= in_request
    i = t.inbox.c
    engine = create_engine(url)
    try:
        deadline = time.monotonic() + wait
        while True:
            with engine.connect() as conn:
                rows = conn.execute(select(i.event_id, i.received_at, i.applied_at)).all()
            done = {row.event_id: row for row in rows if row.applied_at is not None}
            left = len(keys - done.keys())
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    finally:
        engine.dispose()
    lags = [
        (_utc(row.applied_at) - _utc(row.received_at)).total_seconds()
        for key, row in done.items()
        if key in keys
    ]
    return lags + [0.0] * len(in_request), left


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


@contextmanager
def worker(env: dict[str, str], log: Path) -> Iterator[int]:
    """`cartback worker` beside the server: it applies the inbox."""
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "cartback", "worker"], env=env, stdout=sink, stderr=sink
        )
        try:
            yield process.pid
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def statements_per_request(url: str, requests: list[Request]) -> float:
    """SQL statements the whole request path runs, counted in-process over a sample."""
    from fastapi.testclient import TestClient
    from sqlalchemy import event

    from cartback.app import build_app, register_flows
    from cartback.config import load_settings
    from cartback.web.app import create_app

    app = build_app(load_settings({}, database_url=url))
    count = 0

    def counted(*_args: Any) -> None:
        nonlocal count
        count += 1

    try:
        register_flows(app)
        with TestClient(create_app(app)) as client:
            client.get("/healthz")
            event.listen(app.engine, "before_cursor_execute", counted)
            for request in requests:
                answer = client.post(request.path, content=request.body, headers=request.headers)
                if answer.status_code != 200:
                    raise SystemExit(f"sample request answered {answer.status_code}: {answer.text}")
    finally:
        app.close()
    return count / len(requests)


def run_backend(
    backend: str, count: int, concurrency: int, workdir: Path, env: dict[str, str]
) -> list[Result]:
    results = []
    with database(backend, workdir) as url:
        prepare(url)
        port = free_port()
        server_env = {**env, "CARTBACK_DATABASE_URL": url, "CARTBACK_PORT": str(port)}
        command = [sys.executable, "-m", "cartback", "web", "--host", "127.0.0.1"]
        command += ["--port", str(port)]
        with (
            server(command, server_env, port, workdir / f"web-{backend}.log") as pid,
            worker(server_env, workdir / f"worker-{backend}.log") as worker_pid,
        ):
            base = f"http://127.0.0.1:{port}"
            for kind, requests in (
                ("hooks", shopify_deliveries(count, f"{backend}-hook", "bench")),
                ("api", api_events(count, f"{backend}-api")),
            ):
                label = f"{backend} {'shopify hooks' if kind == 'hooks' else 'POST /v1/events'}"
                worker_before = cpu_seconds(worker_pid)
                result, answered = measure(label, base, pid, requests, concurrency)
                result.missing = missing(url, answered)
                result.lag, result.unapplied = applied(url, answered)
                result.worker_cpu = cpu_seconds(worker_pid) - worker_before
                results.append(result)
        samples = (
            shopify_deliveries(SAMPLE, f"{backend}-sample-hook", "bench"),
            api_events(SAMPLE, f"{backend}-sample-api"),
        )
        for result, sample in zip(results, samples, strict=True):
            result.statements = statements_per_request(server_env["CARTBACK_DATABASE_URL"], sample)
    return results


def run_bare(count: int, concurrency: int, workdir: Path, env: dict[str, str]) -> Result:
    port = free_port()
    script = workdir / "bare_app.py"
    script.write_text(BARE_APP.replace("{port}", str(port)))
    with server([sys.executable, str(script)], env, port, workdir / "bare.log") as pid:
        requests = shopify_deliveries(count, "bare", "bench")
        result, _ = measure("bare ASGI app", f"http://127.0.0.1:{port}", pid, requests, concurrency)
    return result


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def report(results: list[Result], bare: Result) -> None:
    print(
        f"{'target':<28} {'sent':>6} {'200':>6} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'ratio':>6} {'CPU µs/ev':>10} {'SQL/ev':>7} {'missing':>8}"
    )
    for result in [bare, *results]:
        ratio = result.rate / bare.rate
        statements = "-" if result.statements is None else f"{result.statements:.1f}"
        lost = "-" if result.missing is None else str(result.missing)
        print(
            f"{result.label:<28} {result.count:>6} {result.ok:>6} {result.rate:>8.1f} "
            f"{percentile(result.latencies, 0.5) * 1000:>8.1f} "
            f"{percentile(result.latencies, 0.99) * 1000:>8.1f} {ratio:>6.2f} "
            f"{result.cpu_seconds / max(result.ok, 1) * 1e6:>10.0f} {statements:>7} {lost:>8}"
        )
    print(f"mean latency, bare: {statistics.mean(bare.latencies) * 1000:.1f} ms")
    for result in results:
        if result.lag is None:
            continue
        lag = result.lag or [float("nan")]
        worker_us = (result.worker_cpu or 0.0) / max(result.ok, 1) * 1e6
        print(
            f"{result.label}: apply lag p50 {percentile(lag, 0.5):.2f} s, "
            f"p99 {percentile(lag, 0.99):.2f} s, max {max(lag):.2f} s; "
            f"worker CPU {worker_us:.0f} µs/event; not applied: {result.unapplied}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--requests", type=int, default=5_000, help="per target")
    parser.add_argument("-c", "--concurrency", type=int, default=32)
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    args = parser.parse_args()
    env = {
        **os.environ,
        SECRET_ENV: SECRET,
        "PYTHONPATH": str(ROOT / "src"),
        "CARTBACK_SMS_CHANNEL": "null",
        "CARTBACK_EMAIL_CHANNEL": "null",
    }
    os.environ[SECRET_ENV] = SECRET
    backends = ("sqlite", "postgres") if args.backend == "both" else (args.backend,)
    with tempfile.TemporaryDirectory(prefix="cartback-bench-ingest-") as tmp:
        workdir = Path(tmp)
        bare = run_bare(args.requests, args.concurrency, workdir, env)
        results: list[Result] = []
        for backend in backends:
            results.extend(run_backend(backend, args.requests, args.concurrency, workdir, env))
    report(results, bare)
    if any(result.missing for result in results):
        raise SystemExit("some deliveries answered 200 are not in the database")
    if any(result.unapplied for result in results):
        raise SystemExit("some accepted events were not applied")


if __name__ == "__main__":
    main()
