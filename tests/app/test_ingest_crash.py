"""kill -9 of `cartback web` under load: every event that was answered 2xx is in the inbox,
and a worker started afterwards applies every one of them."""

from __future__ import annotations

import os
import signal
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
from sqlalchemy import select
from typer.testing import CliRunner

from cartback.app import build_app
from cartback.cli import cli
from cartback.config import load_settings
from cartback.services.inbox import InboxApplier
from cartback.store import tables as t
from cartback.web.intake import event_from_stored
from tests.support.procs import cartback_env, free_port, start_cartback, stop, wait_for
from tests.support.served import _only

DEMO_KEY = "cbk_demo_local_only"
CLIENTS = 16
# Killed once this many events were answered (or after KILL_AFTER seconds of load).
ANSWERED_BEFORE_KILL = 300
KILL_AFTER = 20.0


def _event(client_no: int, n: int) -> dict[str, object]:
    token = f"crash-{client_no}-{n}"
    return {
        "id": f"evt-{token}",
        "type": "checkout.updated",
        "occurred_at": datetime.now(UTC).isoformat(),
        "cart_token": token,
        "contact": {"email": f"{token}@example.com", "locale": "en"},
        "lines": [{"title": "Wool socks", "quantity": 2, "price": "60.00"}],
        "currency": "USD",
        "restore_url": f"https://shop.example/cart/{token}",
    }


def _load(base: str, client_no: int, answered: list[str], stop_load: threading.Event) -> None:
    headers = {"Authorization": f"Bearer {DEMO_KEY}"}
    with httpx.Client(base_url=base, headers=headers, timeout=10) as client:
        n = 0
        while not stop_load.is_set():
            event = _event(client_no, n)
            n += 1
            try:
                answer = client.post("/v1/events", json=event)
            except httpx.HTTPError:
                continue  # the server is gone (or going): this event was never answered
            if 200 <= answer.status_code < 300:
                assert answer.json()["results"][0]["status"] == "accepted"
                answered.append(str(event["id"]))


def test_kill_9_under_load_loses_no_answered_event(database_url: str, tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = cartback_env(database_url, CARTBACK_PORT=str(port), CARTBACK_SMS_CHANNEL="null")
    for command in (["migrate"], ["demo"]):
        done = CliRunner().invoke(cli, command, env=_only(env))
        assert done.exit_code == 0, done.output
    log = tmp_path / "web.log"
    web = start_cartback(["web"], env, tmp_path, log)
    answered: list[str] = []
    stop_load = threading.Event()
    clients = [
        threading.Thread(target=_load, args=(base, n, answered, stop_load), daemon=True)
        for n in range(CLIENTS)
    ]
    try:
        wait_for(lambda: _healthy(base) or web.poll() is not None, 30, "cartback web")
        assert web.poll() is None, log.read_text()
        for client in clients:
            client.start()
        deadline = time.monotonic() + KILL_AFTER
        while len(answered) < ANSWERED_BEFORE_KILL and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(web.pid, signal.SIGKILL)
        web.wait(timeout=10)
    finally:
        stop_load.set()
        for client in clients:
            client.join(timeout=15)
        stop(web)
    assert len(answered) >= 50, f"too little load before the kill: {log.read_text()[-2000:]}"

    app = build_app(load_settings(_only(env)))  # type: ignore[arg-type]
    try:
        with app.engine.connect() as conn:
            stored = set(conn.execute(select(t.inbox.c.event_id)).scalars())
        assert set(answered) <= stored, "an event answered 2xx is not in the inbox"
        # A worker started after the crash applies everything that was accepted.
        applier = InboxApplier(app.engine, app.registry, event_from_stored, app.clock.now)
        while applier.apply_pending().applied:
            pass
        with app.engine.connect() as conn:
            statuses = dict(conn.execute(select(t.inbox.c.event_id, t.inbox.c.status)).all())
            carts = set(conn.execute(select(t.carts.c.token)).scalars())
    finally:
        app.close()
    assert {statuses[event_id] for event_id in answered} == {"accepted"}
    assert {event_id.removeprefix("evt-") for event_id in answered} <= carts


def _healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
