"""SIGTERM stops `cartback worker` and `cartback serve` within the documented bound, exit code 0,
even in the middle of a timer batch whose renders are stuck."""

from __future__ import annotations

import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from cartback.services import admin
from cartback.services.flows import FlowRegistry
from cartback.services.ingest import ingest
from cartback.store import tables as t
from cartback.store.db import make_engine
from cartback.worker import shutdown_seconds
from tests.support.events import checkout
from tests.support.procs import cartback_env, free_port, run_cartback, start_cartback, wait_for

SEND_TIMEOUT = 2.0
CARTS = 30
# Each render of this body runs until its time budget ends: a batch of carts takes many seconds.
STUCK_FLOW = """
name: stuck
abandon_after: 0s
steps:
  - id: email1
    at: 0s
    channel: email
    subject: Your cart
    body: |
      {% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(40) }}
      {{ link }}
"""


def _seed(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        flow = FlowRegistry(engine).current("stuck")
        with engine.begin() as conn:
            store = admin.store_by_slug(conn, "demo")
            assert store is not None
            conn.execute(t.stores.update().values(flow_name="stuck"))
            past = datetime.now(UTC) - timedelta(minutes=5)
            events = [
                checkout(f"cart-{i}", past, phone=f"+47400{i:05d}", email=f"s{i}@example.com")
                for i in range(CARTS)
            ]
            ingest(conn, store, flow, events, datetime.now(UTC))
    finally:
        engine.dispose()


def _healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.parametrize("command", ["worker", "serve"])
def test_sigterm_during_a_stuck_batch_exits_0_within_the_bound(
    database_url: str, tmp_path: Path, command: str
) -> None:
    flows = tmp_path / "flows"
    flows.mkdir()
    (flows / "stuck.yaml").write_text(STUCK_FLOW)
    port = free_port()
    env = cartback_env(
        database_url,
        CARTBACK_SMS_CHANNEL="jsonl",
        CARTBACK_EMAIL_CHANNEL="jsonl",
        CARTBACK_JSONL_PATH=str(tmp_path / "messages.jsonl"),
        CARTBACK_FLOWS_DIR=str(flows),
        CARTBACK_SEND_TIMEOUT_SECONDS=str(SEND_TIMEOUT),
        CARTBACK_WORKER_POLL_SECONDS="0.1",
        CARTBACK_PORT=str(port),
    )
    for setup in (["migrate"], ["demo"]):
        done = run_cartback(setup, env, tmp_path)
        assert done.returncode == 0, done.stderr
    # The stuck template passes the static check: only the runtime limits can stop it.
    done = run_cartback(["flows", "check", str(flows / "stuck.yaml")], env, tmp_path)
    assert done.returncode == 0, done.stderr
    log = tmp_path / f"{command}.log"
    process = start_cartback([command], env, tmp_path, log)
    try:
        if command == "worker":
            wait_for(lambda: "worker running" in log.read_text(errors="replace"), 60, "worker")
        else:
            wait_for(lambda: _healthy(f"http://127.0.0.1:{port}"), 60, "the web server")
        _seed(database_url)
        time.sleep(2.5)  # the timer is now inside its batch, one stuck render after another
        assert process.poll() is None
        process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        code = process.wait(timeout=60)
        took = time.monotonic() - signalled
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    output = log.read_text(errors="replace")
    assert code == 0, output
    assert took < shutdown_seconds(SEND_TIMEOUT), output
    assert "interrupted by the shutdown" in output
    assert "Traceback" not in output
    # The interrupted render is not anyone's failure: no decision says so.
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            reasons = conn.execute(select(t.decisions.c.reason)).scalars().all()
    finally:
        engine.dispose()
    assert not any("shutting down" in reason for reason in reasons)
