"""POST /hooks/shop/shopify/{store}: signatures over the raw bytes, one delivery applied once,
Shopify's topics mapped through ingest, and the problems a bad delivery gets."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from cartback.services import shops as shop_service
from cartback.shops import shopify
from cartback.store import tables as t
from cartback.web.app import create_app
from cartback.web.limits import SHOP_HOOK_BODY_BYTES
from cartback.web.shop_hooks import _apply
from tests.support.shopify import (
    PREVIOUS_ENV,
    PREVIOUS_SECRET,
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
CART = "ck-9f1c2a7e"


@pytest.fixture
def shop(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    monkeypatch.setenv(PREVIOUS_ENV, PREVIOUS_SECRET)
    with make_world(
        database_url, suppression_key=SUPPRESSION_KEY, export_dir=tmp_path / "exports"
    ) as world:
        with world.app.engine.begin() as conn:
            shop_service.connect(
                conn,
                world.store.id,
                "shopify",
                SHOP_DOMAIN,
                f"env:{SECRET_ENV}",
                f"env:{PREVIOUS_ENV}",
                None,
                world.now,
            )
        yield world


@pytest.fixture
def client(shop: World) -> Iterator[TestClient]:
    with TestClient(create_app(shop.app)) as test_client:
        yield test_client


def post(client: TestClient, topic: str, payload: dict[str, Any], **options: Any) -> Any:
    body = body_of(payload)
    return client.post(PATH, content=body, headers=headers_for(topic, body, **options))


def count(world: World, table: Any, *where: Any) -> int:
    with world.app.engine.connect() as conn:
        query = select(func.count()).select_from(table)
        return int(conn.execute(query.where(*where) if where else query).scalar_one())


def cart(world: World, token: str = CART) -> Any:
    with world.app.engine.connect() as conn:
        return conn.execute(select(t.carts).where(t.carts.c.token == token)).mappings().first()


def enrollment_states(world: World) -> list[str]:
    with world.app.engine.connect() as conn:
        return [str(s) for s in conn.execute(select(t.enrollments.c.state)).scalars()]


def checkout_at(minutes: int, **changes: Any) -> dict[str, Any]:
    payload = fixture("checkouts_create")
    payload["updated_at"] = f"2026-11-23T11:{minutes:02d}:00+00:00"
    payload.update(changes)
    return payload


def test_a_signed_checkout_creates_the_cart_contact_consent_and_one_enrollment(
    client: TestClient, shop: World
) -> None:
    response = post(client, "checkouts/create", fixture("checkouts_create"))
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "accepted"
    assert [r["status"] for r in response.json()["results"]] == ["accepted"]
    row = cart(shop)
    assert row is not None and row["status"] == "open"
    assert [line["title"] for line in row["lines"]] == ["Wool socks (Grey / 40-43)", "Knitted hat"]
    assert (str(row["value"]).rstrip("0"), row["currency"]) == ("598.", "NOK")
    assert row["restore_url"].endswith("/checkouts/ck-9f1c2a7e/recover?key=k1")
    with shop.app.engine.connect() as conn:
        contact = conn.execute(select(t.contacts)).mappings().one()
        consent = conn.execute(select(t.consent_events.c.channel)).scalars().all()
    # sms_marketing_phone wins, normalised; the email lower-cased; the region from the address.
    assert (contact["phone"], contact["email"]) == ("+4791234567", "ingrid.test@example.com")
    assert (contact["country"], contact["region"], contact["locale"]) == ("NO", "03", "nb")
    assert sorted(consent) == ["email", "sms"]
    assert enrollment_states(shop) == ["active"]


def test_the_same_delivery_five_times_is_applied_once(client: TestClient, shop: World) -> None:
    body = body_of(fixture("checkouts_create"))
    headers = headers_for("checkouts/create", body, webhook_id="wh-1")
    answers = [client.post(PATH, content=body, headers=headers) for _ in range(5)]
    assert [a.status_code for a in answers] == [200] * 5
    assert [a.json()["status"] for a in answers] == ["accepted"] + ["duplicate"] * 4
    for table in (t.shop_deliveries, t.carts, t.contacts, t.enrollments):
        assert count(shop, table) == 1
    assert count(shop, t.consent_events) == 2
    assert count(shop, t.event_receipts) == 1


def test_a_second_delivery_of_the_same_checkout_state_changes_nothing(
    client: TestClient, shop: World
) -> None:
    """Two subscriptions (or a retry with a new webhook id) carry the same checkout state."""
    post(client, "checkouts/create", fixture("checkouts_create"))
    again = post(client, "checkouts/update", fixture("checkouts_create"))
    assert again.json()["status"] == "accepted"
    assert [r["status"] for r in again.json()["results"]] == ["duplicate"]
    assert count(shop, t.enrollments) == 1 and count(shop, t.consent_events) == 2


def test_a_bad_signature_is_a_401_and_writes_nothing(client: TestClient, shop: World) -> None:
    body = body_of(fixture("checkouts_create"))
    headers = headers_for("checkouts/create", body, secret="not-the-secret")
    response = client.post(PATH, content=body, headers=headers)
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    tampered = headers_for("checkouts/create", body)
    response = client.post(PATH, content=body.replace(b"Wool", b"Silk"), headers=tampered)
    assert response.status_code == 401
    unsigned = {k: v for k, v in tampered.items() if k != "X-Shopify-Hmac-Sha256"}
    assert client.post(PATH, content=body, headers=unsigned).status_code == 401
    for table in (t.shop_deliveries, t.carts, t.contacts, t.event_receipts):
        assert count(shop, table) == 0


def test_the_previous_secret_is_accepted_during_a_rotation(client: TestClient, shop: World) -> None:
    response = post(client, "checkouts/create", fixture("checkouts_create"), secret=PREVIOUS_SECRET)
    assert response.status_code == 200, response.text
    with shop.app.engine.begin() as conn:
        # Rotation over: the previous secret is dropped and no longer accepted.
        shop_service.connect(
            conn, shop.store.id, "shopify", SHOP_DOMAIN, f"env:{SECRET_ENV}", None, None, shop.now
        )
    later = post(client, "checkouts/update", checkout_at(59), secret=PREVIOUS_SECRET)
    assert later.status_code == 401


def test_a_delivery_for_another_shop_is_refused(client: TestClient, shop: World) -> None:
    response = post(
        client, "checkouts/create", fixture("checkouts_create"), shop="other.myshopify.com"
    )
    assert response.status_code == 401
    assert count(shop, t.shop_deliveries) == 0


def test_a_stale_update_is_ignored(client: TestClient, shop: World) -> None:
    post(
        client,
        "checkouts/update",
        checkout_at(59, line_items=fixture("checkouts_create")["line_items"][:1]),
    )
    older = post(client, "checkouts/update", checkout_at(50))
    assert [r["status"] for r in older.json()["results"]] == ["stale"]
    row = cart(shop)
    assert len(row["lines"]) == 1 and row["occurred_at"].minute == 59


def test_reordered_deliveries_end_with_the_newest_state(client: TestClient, shop: World) -> None:
    one_line = fixture("checkouts_create")["line_items"][:1]
    post(client, "checkouts/update", checkout_at(59, line_items=one_line))
    post(client, "checkouts/create", checkout_at(40))
    post(client, "checkouts/update", checkout_at(45))
    assert len(cart(shop)["lines"]) == 1
    assert count(shop, t.enrollments) == 1


def test_concurrent_deliveries_apply_once_each_and_keep_the_newest(shop: World) -> None:
    items_of = [
        (
            minute,
            shopify.parse({"X-Shopify-Topic": "checkouts/update"}, body_of(checkout_at(minute))),
        )
        for minute in (41, 47, 52, 55, 58, 58)
    ]
    errors: list[BaseException] = []

    def deliver(index: int, items: Any) -> None:
        meta = shopify.meta(
            {"X-Shopify-Topic": "checkouts/update", "X-Shopify-Webhook-Id": f"w{index % 5}"}
        )
        try:
            _apply(shop.app, shop.store, "shopify", meta, b"{}", items)
        except BaseException as error:
            errors.append(error)

    threads = [
        threading.Thread(target=deliver, args=(index, items))
        for index, (_, items) in enumerate(items_of)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert count(shop, t.shop_deliveries) == 5
    assert cart(shop)["occurred_at"].minute == 58
    assert count(shop, t.enrollments) == 1 and count(shop, t.contacts) == 1


def test_the_thin_checkouts_delete_empties_the_cart_it_names(
    client: TestClient, shop: World
) -> None:
    post(client, "checkouts/create", fixture("checkouts_create"))
    response = post(client, "checkouts/delete", fixture("checkouts_delete"))
    assert [r["status"] for r in response.json()["results"]] == ["accepted"]
    assert cart(shop)["status"] == "emptied"
    assert enrollment_states(shop) == ["exited"]


def test_a_delete_with_only_the_cart_token_still_finds_the_cart(
    client: TestClient, shop: World
) -> None:
    post(client, "checkouts/create", fixture("checkouts_create"))
    post(client, "checkouts/delete", {"cart_token": "ct-51b0d3"})
    assert cart(shop)["status"] == "emptied"


def test_an_order_ends_the_enrollment_by_checkout_token(client: TestClient, shop: World) -> None:
    post(client, "checkouts/create", fixture("checkouts_create"))
    response = post(client, "orders/create", fixture("orders_create"))
    assert [r["status"] for r in response.json()["results"]] == ["accepted"]
    assert cart(shop)["status"] == "ordered"
    assert enrollment_states(shop) == ["exited"]
    paid = post(client, "orders/paid", fixture("orders_create"))
    assert [r["status"] for r in paid.json()["results"]] == ["duplicate"]
    assert count(shop, t.orders) == 1


def test_an_order_with_only_the_cart_token_ends_the_enrollment(
    client: TestClient, shop: World
) -> None:
    post(client, "checkouts/create", fixture("checkouts_create"))
    order = fixture("orders_create")
    del order["checkout_token"]
    post(client, "orders/create", order)
    assert enrollment_states(shop) == ["exited"]


def test_unknown_extra_fields_are_ignored(client: TestClient, shop: World) -> None:
    payload = fixture("checkouts_create")
    payload["a_field_shopify_adds_later"] = {"nested": [1, 2]}
    payload["line_items"][0]["another_new_field"] = True
    response = post(client, "checkouts/create", payload)
    assert response.status_code == 200, response.text
    assert count(shop, t.enrollments) == 1


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda p: p.pop("token"), "token"),
        (lambda p: p.pop("updated_at"), "updated_at"),
        (lambda p: p.update(updated_at="yesterday"), "updated_at"),
        (lambda p: p["line_items"][1].pop("price"), "line_items[1].price"),
        (lambda p: p.update(total_price="a lot"), "total_price"),
        (lambda p: p.pop("currency"), "currency"),
    ],
)
def test_a_missing_or_bad_required_field_is_a_422_naming_it(
    client: TestClient, shop: World, change: Any, field: str
) -> None:
    payload = fixture("checkouts_create")
    change(payload)
    response = post(client, "checkouts/create", payload)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["field"] == field
    assert count(shop, t.shop_deliveries) == 0 and count(shop, t.carts) == 0


def test_a_missing_delivery_id_is_a_422_naming_the_header(client: TestClient) -> None:
    body = body_of(fixture("checkouts_create"))
    headers = headers_for("checkouts/create", body)
    del headers["X-Shopify-Webhook-Id"]
    response = client.post(PATH, content=body, headers=headers)
    assert response.status_code == 422
    assert response.json()["field"] == "X-Shopify-Webhook-Id"


def test_an_oversized_body_is_a_413(client: TestClient, shop: World) -> None:
    payload = fixture("checkouts_create")
    payload["note"] = "x" * SHOP_HOOK_BODY_BYTES
    response = post(client, "checkouts/create", payload)
    assert response.status_code == 413
    assert count(shop, t.shop_deliveries) == 0


def test_a_large_checkout_under_the_cap_is_accepted(client: TestClient) -> None:
    """The shop route's cap is not the 64 KiB of other small posts."""
    payload = fixture("checkouts_create")
    payload["note"] = "x" * 200_000
    assert post(client, "checkouts/create", payload).status_code == 200


def test_unknown_platform_store_or_connection_is_a_404(client: TestClient, shop: World) -> None:
    body = body_of(fixture("checkouts_create"))
    headers = headers_for("checkouts/create", body)
    for path in ("/hooks/shop/shopify/nope", "/hooks/shop/magento/test"):
        response = client.post(path, content=body, headers=headers)
        assert response.status_code == 404, path
        assert response.headers["content-type"] == "application/problem+json"


def test_a_topic_without_a_mapping_is_answered_and_ignored(client: TestClient, shop: World) -> None:
    response = post(client, "products/update", {"id": 1})
    assert response.status_code == 200
    assert response.json()["status"] == "ignored"
    assert post(client, "orders/cancelled", fixture("orders_create")).status_code == 200
    assert count(shop, t.orders) == 0


def test_consent_topics_enter_the_ledger_with_their_source(client: TestClient, shop: World) -> None:
    post(client, "checkouts/create", fixture("checkouts_create"))
    post(
        client, "customers_marketing_consent/update", fixture("customers_marketing_consent_update")
    )
    post(
        client,
        "customers_email_marketing_consent/update",
        fixture("customers_email_marketing_consent_update"),
    )
    with shop.app.engine.connect() as conn:
        c = t.consent_events.c
        rows = conn.execute(select(c.channel, c.granted, c.source, c.evidence).order_by(c.id)).all()
        contact = conn.execute(select(t.contacts)).mappings().one()
    sms_revoke = rows[2]
    assert (sms_revoke.channel, sms_revoke.granted, sms_revoke.source) == ("sms", False, "import")
    assert sms_revoke.evidence["consent_collected_from"] == "OTHER"
    assert rows[3].evidence["opt_in_level"] == "confirmed_opt_in"
    # The shop's unsubscribe is an opt-out: it beats the checkout's grant.
    assert contact["sms_marketing"] is False and contact["opted_out_at"] is not None


def test_customers_update_maps_a_storefront_grant_to_the_checkout_source(
    client: TestClient, shop: World
) -> None:
    response = post(client, "customers/update", fixture("customers_update"))
    assert [r["status"] for r in response.json()["results"]] == ["accepted"]
    with shop.app.engine.connect() as conn:
        row = conn.execute(select(t.consent_events)).mappings().one()
    # not_subscribed email says nothing; the SMS grant came from Shopify's own storefront.
    assert (row["channel"], row["granted"], row["source"]) == ("sms", True, "checkout")


def test_replay_runs_a_kept_payload_again_idempotently(client: TestClient, shop: World) -> None:
    post(client, "checkouts/create", fixture("checkouts_create"), webhook_id="wh-replay")
    ctx = shop_service.Context(
        store=shop.store,
        flow=shop.app.registry.current(shop.store.flow_name),
        now=shop.now,
        future_skew=timedelta(minutes=5),
        suppression_key=SUPPRESSION_KEY,
    )
    with shop.app.engine.begin() as conn:
        (delivery,) = shop_service.kept_deliveries(conn, "wh-replay")
        again = shop_service.replay(conn, ctx, shopify, delivery)
    assert [r["status"] for r in again.results] == ["duplicate"]
    with shop.app.engine.begin() as conn:
        # What the first run applied is lost (restored from an old backup, say): a replay
        # fills it in.
        conn.execute(t.enrollments.delete())
        conn.execute(t.carts.delete())
        conn.execute(t.event_receipts.delete())
        (delivery,) = shop_service.kept_deliveries(conn, "wh-replay")
        restored = shop_service.replay(conn, ctx, shopify, delivery)
    assert [r["status"] for r in restored.results] == ["accepted"]
    assert cart(shop) is not None and count(shop, t.enrollments) == 1


def test_prune_blanks_old_payloads_but_keeps_their_ids(client: TestClient, shop: World) -> None:
    post(client, "checkouts/create", fixture("checkouts_create"), webhook_id="wh-old")
    shop.clock.advance(timedelta(days=31))
    post(client, "checkouts/update", checkout_at(59), webhook_id="wh-new")
    with shop.app.engine.begin() as conn:
        assert shop_service.prune(conn, shop.now, 30) == 1
    with shop.app.engine.connect() as conn:
        kept = dict(
            conn.execute(select(t.shop_deliveries.c.delivery_id, t.shop_deliveries.c.payload)).all()
        )
    assert kept["wh-old"] is None and kept["wh-new"] is not None
    again = post(client, "checkouts/create", fixture("checkouts_create"), webhook_id="wh-old")
    assert again.json()["status"] == "duplicate"


def test_a_phone_that_is_not_a_number_is_dropped_not_refused(
    client: TestClient, shop: World
) -> None:
    payload = fixture("checkouts_create") | {"sms_marketing_phone": "call me"}
    payload["shipping_address"] = payload["shipping_address"] | {"phone": "12"}
    payload["customer"] = {}
    response = post(client, "checkouts/create", payload)
    assert response.status_code == 200, response.text
    with shop.app.engine.connect() as conn:
        contact = conn.execute(select(t.contacts)).mappings().one()
    assert (contact["phone"], contact["email"]) == (None, "ingrid.test@example.com")


def test_the_worker_prunes_payloads_past_their_retention(client: TestClient, shop: World) -> None:
    from cartback.worker import Worker

    post(client, "checkouts/create", fixture("checkouts_create"))
    shop.clock.advance(timedelta(days=30, minutes=1))
    Worker(shop.app)._prune_payloads()
    assert count(shop, t.shop_deliveries, t.shop_deliveries.c.payload.is_not(None)) == 0
