"""The README quickstart, as a newcomer runs it: migrate, demo, serve, post a checkout, watch
the messages arrive at their times, post an order, and see the rest stop."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

from tests.support.faultrig import daytime_number
from tests.support.procs import (
    cartback_env,
    free_port,
    run_cartback,
    start_cartback,
    stop,
    wait_for,
)

# The shipped demo flow, sped up further so the test takes seconds: same steps, same rules.
FAST_DEMO = Path(__file__).resolve().parents[2] / "src/cartback/flows/demo.yaml"


def _fast_flow(tmp_path: Path) -> Path:
    text = FAST_DEMO.read_text()
    pace = (("5s", "1s"), ("15s", "4s"), ("30s", "6s"), ("40s", "7s"), ("45s", "8s"), ("60s", "9s"))
    for old, new in pace:
        text = text.replace(f"at: {old}", f"at: {new}").replace(f"after: {old}", f"after: {new}")
    folder = tmp_path / "flows"
    folder.mkdir()
    (folder / "demo.yaml").write_text(text)
    return folder


def _messages(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_quickstart_recovers_a_cart_and_an_order_stops_the_rest(
    database_url: str, tmp_path: Path
) -> None:
    port = free_port()
    outbox = tmp_path / "messages.jsonl"
    env = cartback_env(
        database_url,
        CARTBACK_SMS_CHANNEL="jsonl",
        CARTBACK_EMAIL_CHANNEL="jsonl",
        CARTBACK_JSONL_PATH=str(outbox),
        CARTBACK_FLOWS_DIR=str(_fast_flow(tmp_path)),
        CARTBACK_PORT=str(port),
        CARTBACK_WORKER_POLL_SECONDS="0.1",
    )
    for command in (["migrate"], ["demo"]):
        done = run_cartback(command, env, tmp_path)
        assert done.returncode == 0, done.stderr
    assert "cbk_demo_local_only" in done.stdout
    server = start_cartback(["serve"], env, tmp_path, tmp_path / "serve.log")
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": "Bearer cbk_demo_local_only"}
    try:
        wait_for(lambda: _healthy(base), 30, "the server to answer /healthz")
        # A shopper whose phone's zone is in daytime now, whenever the suite runs: the first
        # text must not wait for the morning.
        phone = daytime_number(datetime.now(UTC), 1)
        checkout = {
            "id": "evt-1",
            "type": "checkout.updated",
            "occurred_at": datetime.now(UTC).isoformat(),
            "cart_token": "cart-123",
            "contact": {"phone": phone, "email": "kari@example.com", "first_name": "Kari"},
            "lines": [{"title": "Wool socks", "quantity": 2, "price": "60.00"}],
            "currency": "USD",
            "restore_url": "https://shop.example/cart/cart-123",
            "consent": {"sms_marketing": True, "email_marketing": True},
        }
        posted = time.monotonic()
        response = httpx.post(f"{base}/v1/events", json=checkout, headers=headers)
        assert response.status_code == 200, response.text
        wait_for(lambda: len(_messages(outbox)) >= 1, 20, "the first SMS")
        first = _messages(outbox)[0]
        # abandon_after 1s + sms1 at 1s: not before 2 s after the checkout.
        assert time.monotonic() - posted >= 1.9
        assert first["channel"] == "sms" and "Wool socks" in first["body"]
        assert first["body"].startswith("DemoShop:")
        order = {
            "id": "evt-2",
            "type": "order.placed",
            "occurred_at": datetime.now(UTC).isoformat(),
            "order_id": "1001",
            "cart_token": "cart-123",
            "value": "120.00",
            "currency": "USD",
        }
        assert httpx.post(f"{base}/v1/events", json=order, headers=headers).status_code == 200
        time.sleep(9)  # past every remaining step of the fast flow
        assert [m["channel"] for m in _messages(outbox)] == ["sms"]
        decisions = httpx.get(f"{base}/v1/carts/cart-123/decisions", headers=headers).json()
        assert decisions[-1]["outcome"] == "exit"
        assert "order" in decisions[-1]["reason"]
    finally:
        code = stop(server)
    assert code == 0, (tmp_path / "serve.log").read_text()


def _healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
