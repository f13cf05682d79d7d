"""Shopify to a running `cartback serve`, as a shop owner connects it: a signed checkout creates
one enrollment, its redelivery changes nothing, a bad signature is refused, the order ends the
enrollment, and customers/redact erases the shopper but keeps them suppressed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select

from cartback.store import tables as t
from cartback.store.db import make_engine
from tests.support.procs import (
    cartback_env,
    free_port,
    run_cartback,
    start_cartback,
    stop,
    wait_for,
)
from tests.support.shopify import (
    SECRET,
    SECRET_ENV,
    SHOP_DOMAIN,
    SUPPRESSION_KEY,
    body_of,
    fixture,
    headers_for,
)

STORE = ["store", "create", "test", "--name", "Test", "--brand", "TestShop"]
CONNECT = ["shops", "connect", "shopify", "--store", "test"]


def _healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _count(database_url: str, table: Any, *where: Any) -> int:
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            query = select(func.count()).select_from(table)
            return int(conn.execute(query.where(*where) if where else query).scalar_one())
    finally:
        engine.dispose()


def test_a_shopify_store_end_to_end(database_url: str, tmp_path: Path) -> None:
    port = free_port()
    env = cartback_env(
        database_url,
        CARTBACK_SMS_CHANNEL="null",
        CARTBACK_EMAIL_CHANNEL="null",
        CARTBACK_PORT=str(port),
        CARTBACK_SUPPRESSION_KEY=SUPPRESSION_KEY,
        **{SECRET_ENV: SECRET},
    )
    setup = [
        ["migrate"],
        [*STORE, "--domain", "shop.example", "--platform", "shopify"],
        [*CONNECT, "--shop-domain", SHOP_DOMAIN, "--secret", f"env:{SECRET_ENV}"],
    ]
    for command in setup:
        done = run_cartback(command, env, tmp_path)
        assert done.returncode == 0, done.stderr
    server = start_cartback(["serve"], env, tmp_path, tmp_path / "serve.log")
    url = f"http://127.0.0.1:{port}/hooks/shop/shopify/test"
    now = datetime.now(UTC)

    def deliver(topic: str, payload: dict[str, Any], **options: Any) -> httpx.Response:
        body = body_of(payload)
        return httpx.post(url, content=body, headers=headers_for(topic, body, **options))

    try:
        wait_for(lambda: _healthy(f"http://127.0.0.1:{port}"), 30, "the server to answer")
        checkout = fixture("checkouts_create") | {"updated_at": now.isoformat()}
        first = deliver("checkouts/create", checkout, webhook_id="e2e-1")
        assert first.status_code == 200, first.text
        # Answered once durable; the server's worker applies it.
        wait_for(lambda: _count(database_url, t.enrollments) == 1, 15, "the enrollment")
        again = deliver("checkouts/create", checkout, webhook_id="e2e-1")
        assert again.json()["status"] == "duplicate"
        assert _count(database_url, t.enrollments) == 1
        assert deliver("checkouts/update", checkout, secret="wrong").status_code == 401
        order = fixture("orders_create") | {"processed_at": now.isoformat()}
        assert deliver("orders/create", order).status_code == 200
        exited = t.enrollments.c.state == "exited"
        wait_for(lambda: _count(database_url, t.enrollments, exited) == 1, 15, "the exit")
        redact = deliver("customers/redact", fixture("customers_redact"))
        assert redact.status_code == 200, redact.text
        phones = t.contacts.c.phone.is_not(None)
        wait_for(lambda: _count(database_url, t.contacts, phones) == 0, 15, "the erasure")
        assert _count(database_url, t.suppressions) == 2
        # The same number checks out again later: it stays blocked.
        later = (now + timedelta(seconds=1)).isoformat()
        resent = checkout | {"token": "ck-resent", "id": 70009, "updated_at": later}
        assert deliver("checkouts/create", resent).status_code == 200
        # Its answer came once its inbox row was committed: none pending means it is applied.
        pending = t.inbox.c.applied_at.is_(None)
        wait_for(lambda: _count(database_url, t.inbox, pending) == 0, 15, "the resend")
        assert _count(database_url, t.enrollments) == 1
        assert _count(database_url, t.contacts, t.contacts.c.phone == "+4791234567") == 0
    finally:
        code = stop(server)
    assert code == 0, (tmp_path / "serve.log").read_text()
