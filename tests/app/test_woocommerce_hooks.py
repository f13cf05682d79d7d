"""POST /hooks/shop/woocommerce/{store} and /hooks/shop/cartflows/{store}: WooCommerce order
webhooks end recovery; the CartFlows plugin's unsigned form posts, guarded by the URL token,
start and end it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from cartback.services import shops as shop_service
from cartback.store import tables as t
from cartback.web.app import create_app
from cartback.web.limits import SHOP_HOOK_BODY_BYTES
from tests.support.shops import (
    FORM,
    PREVIOUS_ENV,
    PREVIOUS_SECRET,
    SECRET,
    SECRET_ENV,
    SITE,
    fixture,
    form_body,
    json_body,
    woo_headers,
)
from tests.support.world import World, make_world

WOO = "/hooks/shop/woocommerce/test"
CARTFLOWS = "/hooks/shop/cartflows/test"
CART = "cf-cf7a91d2e4b8"


@pytest.fixture
def shop(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    monkeypatch.setenv(PREVIOUS_ENV, PREVIOUS_SECRET)
    with make_world(database_url) as world:
        with world.app.engine.begin() as conn:
            for platform in ("woocommerce", "cartflows"):
                shop_service.connect(
                    conn,
                    world.store.id,
                    platform,
                    SITE,
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


def woo(
    client: TestClient, payload: dict[str, Any], topic: str = "order.created", **kw: Any
) -> Any:
    body = json_body(payload)
    return client.post(WOO, content=body, headers=woo_headers(topic, body, **kw))


def cartflows(client: TestClient, fields: dict[str, Any], token: str = SECRET) -> Any:
    return client.post(CARTFLOWS, params={"token": token}, content=form_body(fields), headers=FORM)


def count(world: World, table: Any, *where: Any) -> int:
    with world.app.engine.connect() as conn:
        query = select(func.count()).select_from(table)
        return int(conn.execute(query.where(*where) if where else query).scalar_one())


def states(world: World) -> list[str]:
    with world.app.engine.connect() as conn:
        return [str(s) for s in conn.execute(select(t.enrollments.c.state)).scalars()]


def cart(world: World, token: str = CART) -> Any:
    with world.app.engine.connect() as conn:
        return conn.execute(select(t.carts).where(t.carts.c.token == token)).mappings().first()


def abandoned(**changes: Any) -> dict[str, Any]:
    return fixture("cartflows", "abandoned") | changes


def order(**changes: Any) -> dict[str, Any]:
    return fixture("woocommerce", "order_processing") | changes


# CartFlows


def test_an_abandoned_cartflows_checkout_creates_the_cart_and_one_enrollment(
    client: TestClient, shop: World
) -> None:
    response = cartflows(client, abandoned())
    assert response.status_code == 200, response.text
    assert [r["status"] for r in response.json()["results"]] == ["accepted"]
    row = cart(shop)
    assert row["restore_url"] == abandoned()["checkout_url"]
    assert [line["title"] for line in row["lines"]] == ["Wool socks - Grey", "Knitted hat"]
    # The plugin names no currency: the store's.
    assert (str(row["value"]).rstrip("0"), row["currency"]) == ("598.", shop.store.currency)
    with shop.app.engine.connect() as conn:
        contact = conn.execute(select(t.contacts)).mappings().one()
        kept = conn.execute(select(t.shop_deliveries.c.payload)).scalar_one()
    assert (contact["phone"], contact["email"]) == ("+4791234567", "ingrid.test@example.com")
    assert states(shop) == ["active"]
    assert "product_table" in kept  # the raw body is kept as it came, for replay


def test_the_same_cartflows_post_five_times_is_applied_once(
    client: TestClient, shop: World
) -> None:
    answers = [cartflows(client, abandoned()) for _ in range(5)]
    assert [a.json()["status"] for a in answers] == ["accepted"] + ["duplicate"] * 4
    for table in (t.shop_deliveries, t.carts, t.contacts, t.enrollments):
        assert count(shop, table) == 1


def test_a_wrong_or_missing_url_token_is_a_401_and_writes_nothing(
    client: TestClient, shop: World
) -> None:
    assert cartflows(client, abandoned(), token="guess").status_code == 401
    assert cartflows(client, abandoned(), token=SECRET[:-1]).status_code == 401
    bare = client.post(CARTFLOWS, content=form_body(abandoned()), headers=FORM)
    assert bare.status_code == 401
    assert bare.headers["content-type"] == "application/problem+json"
    for table in (t.shop_deliveries, t.carts, t.contacts):
        assert count(shop, table) == 0


def test_the_previous_token_is_accepted_during_a_rotation(client: TestClient) -> None:
    assert cartflows(client, abandoned(), token=PREVIOUS_SECRET).status_code == 200


def test_a_changed_cart_updates_it_without_a_second_enrollment(
    client: TestClient, shop: World
) -> None:
    cartflows(client, abandoned())
    shop.clock.advance(timedelta(minutes=5))
    changed = cartflows(client, abandoned(product_names="Knitted hat", cart_total="200.00"))
    assert [r["status"] for r in changed.json()["results"]] == ["accepted"]
    assert [line["title"] for line in cart(shop)["lines"]] == ["Knitted hat"]
    assert count(shop, t.enrollments) == 1


def test_completed_ends_the_enrollment_and_a_late_abandoned_does_not_restart_it(
    client: TestClient, shop: World
) -> None:
    cartflows(client, abandoned())
    done = cartflows(client, abandoned(order_status="completed"))
    assert [r["status"] for r in done.json()["results"]] == ["accepted"]
    assert cart(shop)["status"] == "ordered"
    assert states(shop) == ["exited"]
    again = cartflows(client, abandoned(order_status="completed", coupon_code="X"))
    assert [r["status"] for r in again.json()["results"]] == ["duplicate"]
    assert count(shop, t.orders) == 1
    # The abandoned post reordered after the completion: no new recovery.
    cartflows(client, abandoned(cart_total="599.00"))
    assert states(shop) == ["exited"]


def test_cartflows_missing_fields_are_a_422_naming_them(client: TestClient, shop: World) -> None:
    fields = abandoned()
    del fields["order_status"]
    response = cartflows(client, fields)
    assert response.status_code == 422 and response.json()["field"] == "order_status"
    fields = abandoned()
    del fields["cart_total"]
    assert cartflows(client, fields).json()["field"] == "cart_total"
    nobody = abandoned(email="", phone_number="", checkout_url="")
    assert cartflows(client, nobody).json()["field"] == "email"
    assert count(shop, t.shop_deliveries) == 0


def test_cartflows_extra_fields_and_other_statuses_are_ignored(
    client: TestClient, shop: World
) -> None:
    assert cartflows(client, abandoned(a_new_plugin_field="1")).status_code == 200
    other = cartflows(client, abandoned(order_status="normal"))
    assert other.json()["status"] == "ignored"
    assert count(shop, t.carts) == 1


# WooCommerce


def test_the_unsigned_ping_is_answered_and_writes_nothing(client: TestClient, shop: World) -> None:
    response = client.post(WOO, content=b"webhook_id=7", headers=FORM)
    assert response.status_code == 200 and response.json()["status"] == "ping"
    assert count(shop, t.shop_deliveries) == 0
    # Anything else unsigned is refused.
    body = json_body(order())
    unsigned = {k: v for k, v in woo_headers("order.created", body).items() if "Signature" not in k}
    assert client.post(WOO, content=body, headers=unsigned).status_code == 401
    assert client.post(WOO, content=b"webhook_id=7&x=1", headers=FORM).status_code == 401


def test_a_processing_order_ends_the_shoppers_cartflows_recovery_by_contact(
    client: TestClient, shop: World
) -> None:
    cartflows(client, abandoned())
    response = woo(client, order())
    assert response.status_code == 200, response.text
    assert [r["status"] for r in response.json()["results"]] == ["accepted"]
    assert cart(shop)["status"] == "ordered"
    assert states(shop) == ["exited"]
    with shop.app.engine.connect() as conn:
        row = conn.execute(select(t.orders)).mappings().one()
    assert (row["order_ref"], str(row["value"]).rstrip("0"), row["currency"]) == (
        "wc-4817",
        "647.",
        "NOK",
    )


def test_an_order_names_its_cart_through_the_snippets_meta_data(
    client: TestClient, shop: World
) -> None:
    cartflows(client, abandoned())
    cartflows(client, abandoned(email="else@example.com", phone_number="", checkout_url=""))
    meta = [{"id": 1, "key": "cartback_cart_token", "value": CART}]
    other_shopper = order(billing={"email": "third@example.com", "country": "NO"}, meta_data=meta)
    woo(client, other_shopper)
    assert cart(shop)["status"] == "ordered"
    assert sorted(states(shop)) == ["active", "exited"]


def test_the_same_woo_delivery_five_times_is_applied_once(client: TestClient, shop: World) -> None:
    body = json_body(order())
    headers = woo_headers("order.created", body, delivery_id="d-1")
    answers = [client.post(WOO, content=body, headers=headers) for _ in range(5)]
    assert [a.json()["status"] for a in answers] == ["accepted"] + ["duplicate"] * 4
    assert count(shop, t.shop_deliveries) == 1 and count(shop, t.orders) == 1
    # order.updated to completed is the same order: nothing new.
    completed = woo(client, order(status="completed"), "order.updated")
    assert [r["status"] for r in completed.json()["results"]] == ["duplicate"]


def test_pending_and_failed_orders_end_nothing_and_reordering_is_harmless(
    client: TestClient, shop: World
) -> None:
    cartflows(client, abandoned())
    for status in ("pending", "failed", "on-hold"):
        answer = woo(client, order(status=status))
        assert answer.status_code == 200 and answer.json()["results"] == []
    assert states(shop) == ["active"]
    # The completed update arrives before the processing one: one order, recovery ended.
    woo(client, order(status="completed"), "order.updated")
    woo(client, order(), "order.created")
    assert count(shop, t.orders) == 1 and states(shop) == ["exited"]


def test_a_bad_woo_signature_is_a_401_and_writes_nothing(client: TestClient, shop: World) -> None:
    assert woo(client, order(), secret="not-the-secret").status_code == 401
    body = json_body(order())
    tampered = body.replace(b"647.00", b"1.00")
    headers = woo_headers("order.created", body)
    assert client.post(WOO, content=tampered, headers=headers).status_code == 401
    assert count(shop, t.shop_deliveries) == 0 and count(shop, t.orders) == 0


def test_the_previous_woo_secret_is_accepted(client: TestClient) -> None:
    assert woo(client, order(), secret=PREVIOUS_SECRET).status_code == 200


def test_a_delivery_from_another_site_is_refused(client: TestClient, shop: World) -> None:
    assert woo(client, order(), source="https://other.example/").status_code == 401
    assert count(shop, t.shop_deliveries) == 0


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda p: p.pop("id"), "id"),
        (lambda p: p.pop("status"), "status"),
        (lambda p: p.pop("currency"), "currency"),
        (lambda p: p.update(total="lots"), "total"),
        (lambda p: p.update(date_paid_gmt="yesterday"), "date_paid_gmt"),
    ],
)
def test_a_missing_or_bad_woo_field_is_a_422_naming_it(
    client: TestClient, shop: World, change: Any, field: str
) -> None:
    payload = order()
    change(payload)
    response = woo(client, payload)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field
    assert count(shop, t.shop_deliveries) == 0


def test_missing_woo_headers_are_a_422_naming_them(client: TestClient) -> None:
    body = json_body(order())
    headers = woo_headers("order.created", body)
    del headers["X-WC-Webhook-Delivery-ID"]
    response = client.post(WOO, content=body, headers=headers)
    assert response.json()["field"] == "X-WC-Webhook-Delivery-ID"


def test_woo_extra_fields_and_other_topics_are_ignored(client: TestClient, shop: World) -> None:
    assert woo(client, order(a_field_woo_adds_later={"x": [1]})).status_code == 200
    assert woo(client, {"id": 3}, "product.updated").json()["status"] == "ignored"


def test_an_oversized_body_is_a_413(client: TestClient, shop: World) -> None:
    response = woo(client, order(customer_note="x" * SHOP_HOOK_BODY_BYTES))
    assert response.status_code == 413
    big = abandoned(product_table="x" * SHOP_HOOK_BODY_BYTES)
    assert cartflows(client, big).status_code == 413
    assert count(shop, t.shop_deliveries) == 0


def test_a_cartflows_delivery_replays_from_the_command_line(
    client: TestClient, shop: World
) -> None:
    from typer.testing import CliRunner

    from cartback.cli import cli

    delivery_id = cartflows(client, abandoned()).json()["delivery_id"]
    assert delivery_id.startswith("sha256:")
    env = {"CARTBACK_DATABASE_URL": shop.app.settings.database_url}
    replayed = CliRunner().invoke(cli, ["shops", "replay", delivery_id], env=env)
    assert replayed.exit_code == 0, replayed.output
    assert ": duplicate" in replayed.stdout
    assert count(shop, t.carts) == 1 and count(shop, t.enrollments) == 1
