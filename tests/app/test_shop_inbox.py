"""Shop webhook deliveries through the inbox, as in production (no inline apply): answered once
the delivery's inbox row is committed, applied by the worker's applier, a redelivery a
duplicate by the inbox's key, and the kept payload still there for replay."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from cartback.services import shop_inbox
from cartback.services import shops as shop_service
from cartback.services.inbox import STALE_RULE, Applied, InboxApplier
from cartback.shops import shopify
from cartback.shops.base import DeliveryMeta
from cartback.store import tables as t
from cartback.web.app import create_app
from cartback.web.intake import event_from_stored
from tests.support.shopify import (
    SECRET,
    SECRET_ENV,
    SHOP_DOMAIN,
    SUPPRESSION_KEY,
    body_of,
    fixture,
    headers_for,
)
from tests.support.world import World, make_world

PATH = "/hooks/shop/shopify/test"


@pytest.fixture
def shop(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    with make_world(
        database_url,
        inbox_apply_inline=False,
        suppression_key=SUPPRESSION_KEY,
        export_dir=tmp_path / "exports",
    ) as world:
        with world.app.engine.begin() as conn:
            shop_service.connect(
                conn,
                world.store.id,
                "shopify",
                SHOP_DOMAIN,
                f"env:{SECRET_ENV}",
                None,
                None,
                world.now,
            )
        yield world


@pytest.fixture
def client(shop: World) -> Iterator[TestClient]:
    with TestClient(create_app(shop.app)) as test_client:
        yield test_client


def applier(world: World) -> InboxApplier:
    return InboxApplier(
        world.app.engine,
        world.app.registry,
        event_from_stored,
        world.app.clock.now,
        suppression_key=SUPPRESSION_KEY,
        export_dir=world.app.settings.export_dir,
    )


def apply_all(world: World) -> int:
    """Apply until nothing is pending (on SQLite a run stops after its time budget)."""
    applied = 0
    while (done := applier(world).apply_pending()) != Applied():
        applied += done.applied
    return applied


def post(client: TestClient, topic: str, payload: dict[str, Any], **options: Any) -> Any:
    body = body_of(payload)
    return client.post(PATH, content=body, headers=headers_for(topic, body, **options))


def count(world: World, table: Any, *where: Any) -> int:
    with world.app.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one())


def checkout_at(minute: int, **changes: Any) -> dict[str, Any]:
    payload = fixture("checkouts_create")
    payload["updated_at"] = f"2026-11-23T11:{minute:02d}:00+00:00"
    payload.update(changes)
    return payload


def test_a_delivery_is_answered_once_queued_and_applied_by_the_worker(
    client: TestClient, shop: World
) -> None:
    answer = post(client, "checkouts/create", fixture("checkouts_create"), webhook_id="wh-q1")
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"status": "accepted", "delivery_id": "wh-q1"}
    with shop.app.engine.connect() as conn:
        row = conn.execute(select(t.inbox)).mappings().one()
    assert (row["source"], row["event_id"], row["applied_at"]) == ("shopify", "wh-q1", None)
    # Only the headers parse reads are kept: never the signature.
    assert "Hmac" not in row["body"] and SECRET not in row["body"]
    assert count(shop, t.carts) == 0 and count(shop, t.shop_deliveries) == 0

    assert apply_all(shop) == 1
    assert count(shop, t.carts) == 1 and count(shop, t.enrollments) == 1
    with shop.app.engine.connect() as conn:
        row = conn.execute(select(t.inbox)).mappings().one()
        (delivery,) = shop_service.kept_deliveries(conn, "wh-q1")
    assert (row["status"], row["body"]) == ("accepted", None)
    assert '"status":"accepted"' in row["detail"]
    # The raw payload is kept in the delivery record, for replay until the retention.
    assert delivery.topic == "checkouts/create"
    assert delivery.payload == body_of(fixture("checkouts_create")).decode()


def test_a_redelivery_is_a_duplicate_before_and_after_it_is_applied(
    client: TestClient, shop: World
) -> None:
    statuses = [
        post(client, "checkouts/create", fixture("checkouts_create"), webhook_id="wh-d").json()
        for _ in range(3)
    ]
    apply_all(shop)
    statuses += [
        post(client, "checkouts/create", fixture("checkouts_create"), webhook_id="wh-d").json()
        for _ in range(2)
    ]
    assert [s["status"] for s in statuses] == ["accepted"] + ["duplicate"] * 4
    assert count(shop, t.inbox) == 1 and count(shop, t.shop_deliveries) == 1
    assert count(shop, t.enrollments) == 1 and count(shop, t.consent_events) == 2


def test_a_delivery_recorded_before_it_was_queued_changes_nothing(
    client: TestClient, shop: World
) -> None:
    """A delivery applied in its request by an earlier version, delivered again."""
    body = body_of(fixture("checkouts_create"))
    with shop.app.engine.begin() as conn:
        shop_service.record_delivery(
            conn,
            shop_service.Context(
                shop.store,
                shop.app.registry.current("default"),
                shop.now,
                timedelta(minutes=5),
                SUPPRESSION_KEY,
            ),
            "shopify",
            DeliveryMeta("wh-old", "checkouts/create"),
            body,
        )
    post(client, "checkouts/create", fixture("checkouts_create"), webhook_id="wh-old")
    apply_all(shop)
    with shop.app.engine.connect() as conn:
        status = conn.execute(select(t.inbox.c.status)).scalar_one()
    assert status == "duplicate"
    assert count(shop, t.carts) == 0


def test_a_stale_update_shows_in_the_carts_timeline(client: TestClient, shop: World) -> None:
    post(client, "checkouts/update", checkout_at(59))
    post(client, "checkouts/update", checkout_at(50))
    assert apply_all(shop) == 2
    with shop.app.engine.connect() as conn:
        cart = conn.execute(select(t.carts)).mappings().one()
        reasons = list(
            conn.execute(
                select(t.decisions.c.reason).where(t.decisions.c.rule == STALE_RULE)
            ).scalars()
        )
    assert cart["occurred_at"].minute == 59
    assert len(reasons) == 1 and "not applied" in reasons[0]


def test_concurrent_deliveries_are_queued_once_each_and_end_on_the_newest(
    client: TestClient, shop: World
) -> None:
    minutes = (41, 58, 47, 55, 52, 58)
    answers: list[int] = []

    def deliver(index: int, minute: int) -> None:
        answer = post(client, "checkouts/update", checkout_at(minute), webhook_id=f"w{index % 5}")
        answers.append(answer.status_code)

    threads = [threading.Thread(target=deliver, args=item) for item in enumerate(minutes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == [200] * 6
    assert count(shop, t.inbox) == 5
    assert apply_all(shop) == 5
    with shop.app.engine.connect() as conn:
        cart = conn.execute(select(t.carts)).mappings().one()
    assert cart["occurred_at"].minute == 58
    assert count(shop, t.enrollments) == 1 and count(shop, t.contacts) == 1


def test_a_payload_the_worker_cannot_parse_is_kept_with_its_error(
    client: TestClient, shop: World
) -> None:
    """Valid when accepted; its connection removed since: the row waits, the others go on."""
    post(client, "checkouts/create", fixture("checkouts_create"), webhook_id="wh-gone")
    with shop.app.engine.begin() as conn:
        conn.execute(t.shop_connections.delete())
    assert applier(shop).apply_pending() == Applied(failed=1)
    with shop.app.engine.connect() as conn:
        error = conn.execute(select(t.inbox.c.error)).scalar_one()
    assert "no shopify connection" in error


def test_the_kept_body_round_trips_any_bytes() -> None:
    meta = DeliveryMeta("d-1", "checkouts/update", "e-1")
    headers = {"x-shopify-topic": "checkouts/update", "x-shopify-hmac-sha256": "c2ln"}
    for body in (b'{"a":"line\\none"}\n{"b":1}', b"\xff\xfe not utf-8", b"nul \x00 byte"):
        kept = shop_inbox.read("shopify", shop_inbox.encode(shopify, meta, headers, body))
        assert (kept.body, kept.meta) == (body, meta)
        assert kept.headers == {"X-Shopify-Topic": "checkouts/update"}


def test_a_new_secret_is_accepted_at_once_though_the_connection_is_remembered(
    client: TestClient, shop: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert post(client, "checkouts/create", fixture("checkouts_create")).status_code == 200
    monkeypatch.setenv("TEST_SHOPIFY_NEW_SECRET", "shpss_test_new_secret")
    with shop.app.engine.begin() as conn:
        shop_service.connect(
            conn,
            shop.store.id,
            "shopify",
            SHOP_DOMAIN,
            "env:TEST_SHOPIFY_NEW_SECRET",
            None,
            None,
            shop.now,
        )
    signed = post(client, "checkouts/update", checkout_at(59), secret="shpss_test_new_secret")
    assert signed.status_code == 200, signed.text
    assert post(client, "checkouts/update", checkout_at(58), secret="wrong").status_code == 401
