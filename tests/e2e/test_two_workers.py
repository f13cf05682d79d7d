"""Two worker processes on one database: every step of every cart is sent exactly once; and
workers with complementary roles (`--role`) together send a cart's messages."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import func, select

from cartback.services import admin, inbox
from cartback.services.flows import FlowRegistry
from cartback.services.inbox import Entry
from cartback.services.ingest import ingest
from cartback.store import tables as t
from cartback.store.db import make_engine
from tests.support.events import checkout, checkout_payload
from tests.support.procs import cartback_env, run_cartback, start_cartback, stop, wait_for

CARTS = 150
STEPS = 4
# Email steps only: SMS would meet quiet hours and cooldowns, which depend on the wall clock and
# are not what this test is about.
# The carts come an hour late; a long grace lets every step run, one per tick, a second apart.
BURST = """
name: burst
abandon_after: 0s
grace: 2h
steps:
""" + "".join(
    f"""  - id: email{i}
    at: {i}s
    channel: email
    subject: Your cart
    body: "{{{{ first_name }}}}, your {{{{ product }}}} is waiting: {{{{ link }}}}"
"""
    for i in range(STEPS)
)


def _seed(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        registry = FlowRegistry(engine)
        flow = registry.current("burst")
        with engine.begin() as conn:
            store = admin.store_by_slug(conn, "demo")
            assert store is not None
            conn.execute(t.stores.update().values(flow_name="burst"))
            # Carts abandoned an hour ago: every step is already due.
            past = datetime.now(UTC) - timedelta(hours=1)
            events = [
                checkout(f"cart-{i}", past, phone=f"+47400{i:05d}", email=f"s{i}@example.com")
                for i in range(CARTS)
            ]
            ingest(conn, store, flow, events, datetime.now(UTC))
    finally:
        engine.dispose()


def _migrated(database_url: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    """A migrated database with the demo store and the burst flow; the workers' environment."""
    flows = tmp_path / "flows"
    flows.mkdir()
    (flows / "burst.yaml").write_text(BURST)
    env = cartback_env(
        database_url,
        CARTBACK_SMS_CHANNEL="jsonl",
        CARTBACK_EMAIL_CHANNEL="jsonl",
        CARTBACK_FLOWS_DIR=str(flows),
        **extra,
    )
    for command in (["migrate"], ["demo"]):
        done = run_cartback(command, env, tmp_path)
        assert done.returncode == 0, done.stderr
    return env


def test_two_workers_never_send_a_step_twice(database_url: str, tmp_path: Path) -> None:
    env = _migrated(database_url, tmp_path)
    outputs = [tmp_path / f"worker{i}.jsonl" for i in (1, 2)]
    workers = [
        start_cartback(
            ["worker"],
            {
                **env,
                "CARTBACK_JSONL_PATH": str(path),
                "CARTBACK_WORKER_BATCH": "20",
                "CARTBACK_DISPATCH_BATCH": "10",
                "CARTBACK_WORKER_POLL_SECONDS": "0.05",
            },
            tmp_path,
            tmp_path / f"worker{i}.log",
        )
        for i, path in enumerate(outputs, start=1)
    ]
    logs = [tmp_path / f"worker{i}.log" for i in (1, 2)]

    def both_running() -> bool:
        return all("worker running" in log.read_text(errors="replace") for log in logs)

    # The carts come once both workers poll, so neither can drain the burst before the other
    # starts: the test proves little if one worker did all the work.
    engine = make_engine(database_url)
    try:
        wait_for(both_running, 60, "both workers to start")
        _seed(database_url)

        def all_sent() -> bool:
            with engine.connect() as conn:
                sent = conn.execute(
                    select(func.count()).select_from(t.outbox).where(t.outbox.c.status == "sent")
                ).scalar_one()
            return bool(sent == CARTS * STEPS)

        wait_for(all_sent, 90, "every message to be sent")
    finally:
        codes = [stop(worker) for worker in workers]
        engine.dispose()
    assert codes == [0, 0], [(tmp_path / f"worker{i}.log").read_text() for i in (1, 2)]
    records = [
        json.loads(line)
        for path in outputs
        if path.exists()
        for line in path.read_text().splitlines()
    ]
    sent_by = Counter(record["key"] for record in records)
    assert len(sent_by) == CARTS * STEPS
    assert max(sent_by.values()) == 1
    if database_url.startswith("postgresql"):
        # Both workers took part: SKIP LOCKED shares the rows out. SQLite has one writer at a
        # time and its lock is not fair, so one worker may win every claim there; what the test
        # shows on SQLite is that the lock and the unique key still allow no second send.
        assert all(path.exists() and path.stat().st_size > 0 for path in outputs)


def test_workers_with_complementary_roles_send_a_cart_end_to_end(
    database_url: str, tmp_path: Path
) -> None:
    """One process applies the inbox and fires the timer (and runs the jobs), another sends:
    an accepted event becomes a sent message, sent by the dispatcher's process only."""
    env = _migrated(database_url, tmp_path, CARTBACK_WORKER_POLL_SECONDS="0.1")
    roles = {"firing": "inbox,timer,jobs", "sending": "dispatcher"}
    outputs = {name: tmp_path / f"{name}.jsonl" for name in roles}
    logs = {name: tmp_path / f"{name}.log" for name in roles}
    workers = [
        start_cartback(
            ["worker", "--role", role],
            {**env, "CARTBACK_JSONL_PATH": str(outputs[name])},
            tmp_path,
            logs[name],
        )
        for name, role in roles.items()
    ]
    engine = make_engine(database_url)
    try:
        wait_for(
            lambda: all(
                "worker running" in log.read_text(errors="replace") for log in logs.values()
            ),
            60,
            "both workers to start",
        )
        past = datetime.now(UTC) - timedelta(hours=1)
        payload = checkout_payload("cart-1", past, id="evt-1")
        with engine.begin() as conn:
            store = admin.store_by_slug(conn, "demo")
            assert store is not None
            conn.execute(t.stores.update().values(flow_name="burst"))
            inbox.append(
                conn, store.id, "api", [Entry("evt-1", json.dumps(payload))], datetime.now(UTC)
            )

        def all_sent() -> bool:
            with engine.connect() as conn:
                statuses = conn.execute(select(t.outbox.c.status)).scalars().all()
            return sorted(statuses) == ["sent"] * STEPS

        wait_for(all_sent, 60, "the cart's messages to be sent")
    finally:
        codes = [stop(worker) for worker in workers]
        engine.dispose()
    assert codes == [0, 0], [log.read_text() for log in logs.values()]
    assert "worker running (inbox,jobs,timer)" in logs["firing"].read_text()
    assert not outputs["firing"].exists()
    sent = [json.loads(line) for line in outputs["sending"].read_text().splitlines()]
    assert len(sent) == STEPS
