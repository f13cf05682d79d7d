"""The WooCommerce storefront plugin (contrib/woocommerce/cartback-capture.php): the event the
docs show it sending is accepted by the event API and enrolls the cart, the order it tags is
matched by that tag, and every key the plugin writes is one the event schema knows."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from cartback.services import shops as shop_service
from cartback.shops import woocommerce
from cartback.store import tables as t
from cartback.web.app import create_app
from tests.support.shops import SECRET, SECRET_ENV, SITE, fixture, json_body, woo_headers
from tests.support.world import World, make_world

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = ROOT / "contrib/woocommerce/cartback-capture.php"
DOCS = ROOT / "docs/shops.md"
SCHEMA = ROOT / "docs/schemas/events.json"
MARKER = "<!-- woocommerce-plugin-event -->"


def documented_event() -> dict[str, Any]:
    text = DOCS.read_text(encoding="utf-8")
    after = text[text.index(MARKER) + len(MARKER) :]
    block = re.match(r"\s*```json\n(.*?)\n```", after, re.DOTALL)
    assert block is not None, "the marker must be followed by a ```json block"
    event: dict[str, Any] = json.loads(block.group(1))
    return event


def plugin_function(name: str) -> str:
    source = PLUGIN.read_text(encoding="utf-8")
    start = source.index(f"function {name}(")
    end = source.index("\n}\n", start)
    return source[start:end]


def schema_keys() -> set[str]:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    keys = set(schema.get("properties", {}))
    for definition in schema["$defs"].values():
        keys |= set(definition.get("properties", {}))
    return keys


def keys_of(document: Any) -> set[str]:
    if isinstance(document, dict):
        return set(document) | {key for value in document.values() for key in keys_of(value)}
    if isinstance(document, list):
        return {key for value in document for key in keys_of(value)}
    return set()


@pytest.fixture
def shop(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    with make_world(database_url) as world:
        with world.app.engine.begin() as conn:
            shop_service.connect(
                conn,
                world.store.id,
                "woocommerce",
                SITE,
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


def states(world: World) -> dict[str, str]:
    with world.app.engine.connect() as conn:
        rows = conn.execute(
            select(t.carts.c.token, t.enrollments.c.state).join(
                t.carts, t.carts.c.id == t.enrollments.c.cart_id
            )
        )
        return {row.token: row.state for row in rows}


def test_the_documented_event_enrolls_its_cart_and_the_tagged_order_ends_it(
    shop: World, client: TestClient
) -> None:
    event = documented_event()
    auth = {"Authorization": f"Bearer {shop.key}"}
    answer = client.post("/v1/events", json=event, headers=auth)
    assert answer.status_code == 200, answer.text
    assert answer.json()["accepted"] == 1
    token = event["cart_token"]
    assert states(shop) == {token: "active"}
    with shop.app.engine.connect() as conn:
        cart = conn.execute(select(t.carts).where(t.carts.c.token == token)).mappings().one()
        purposes = set(conn.execute(select(t.consent_events.c.purpose)).scalars())
    assert cart["restore_url"] == event["restore_url"]
    assert str(cart["value"]).startswith("746")
    assert purposes == {"marketing", "cart_reminders"}
    # The same cart posted again by the next refresh of the order review changes nothing.
    again = client.post("/v1/events", json=event, headers=auth)
    assert again.json()["duplicates"] == 1

    # The order names the cart in its meta data; its shopper details match no contact, so
    # only the tag can end the cart's reminders.
    order = copy.deepcopy(fixture("woocommerce", "order_processing"))
    order["billing"].update(email="someone.else@example.com", phone="")
    order["meta_data"].append({"id": 902, "key": "_cartback_cart_token", "value": token})
    body = json_body(order)
    hook = client.post(
        "/hooks/shop/woocommerce/test",
        content=body,
        headers=woo_headers("order.created", body),
    )
    assert hook.status_code == 200, hook.text
    assert states(shop) == {token: "exited"}


def test_every_key_the_plugin_writes_is_in_the_event_schema() -> None:
    body = plugin_function("cartback_event")
    written = set(re.findall(r"'([a-z_]+)'\s*=>", body))
    assert {"cart_token", "contact", "lines", "consent", "restore_url", "occurred_at"} <= written
    assert written <= schema_keys()
    # And the documented example shows nothing the plugin does not write.
    assert keys_of(documented_event()) <= written
    assert re.search(r"'type'\s*=>\s*'checkout\.updated'", body)


def test_the_plugin_tags_orders_where_the_order_webhook_looks() -> None:
    source = PLUGIN.read_text(encoding="utf-8")
    meta = re.search(r"const CARTBACK_ORDER_META = '([^']+)';", source)
    assert meta is not None and meta.group(1) in woocommerce.CART_TOKEN_KEYS
    sender = plugin_function("cartback_send")
    assert "'/v1/events'" in sender and "'Bearer ' . CARTBACK_API_KEY" in sender
    # The shopper's checkout never waits on cartback.
    assert "'blocking' => false" in sender
