"""`cartback shops shopify subscribe` against a local server that records the Admin API calls."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cartback.cli import cli
from cartback.services import shops as shop_service
from cartback.shops.shopify_admin import API_VERSION, SUBSCRIBED_TOPICS
from tests.support.recording import recording_server
from tests.support.shopify import SHOP_DOMAIN
from tests.support.world import World, make_world

runner = CliRunner()
TOKEN_ENV = "TEST_SHOPIFY_ADMIN_TOKEN"
ADDRESS = "https://cartback.example/hooks/shop/shopify/test"
WEBHOOKS = f"/admin/api/{API_VERSION}/webhooks.json"


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[World]:
    with make_world(f"sqlite:///{tmp_path / 'cartback.db'}") as world:
        with world.app.engine.begin() as conn:
            shop_service.connect(
                conn,
                world.store.id,
                "shopify",
                SHOP_DOMAIN,
                "env:UNUSED_SECRET",
                None,
                f"env:{TOKEN_ENV}",
                world.now,
            )
        yield world


def _subscribe(world: World, api: str) -> Any:
    env = {
        "CARTBACK_DATABASE_URL": world.app.settings.database_url,
        "CARTBACK_BASE_URL": "https://cartback.example",
        TOKEN_ENV: "shpat_test_token",
    }
    return runner.invoke(
        cli, ["shops", "shopify", "subscribe", "--store", "test", "--api-base", api], env=env
    )


def test_subscribe_registers_each_missing_topic_once(shop: World) -> None:
    def shopify(method: str, path: str, body: Any) -> tuple[int, Any]:
        if method == "GET":
            existing = {"topic": "orders/create", "address": ADDRESS, "format": "json"}
            elsewhere = {"topic": "checkouts/create", "address": "https://other.example/x"}
            return 200, {"webhooks": [existing, elsewhere]}
        if body["webhook"]["topic"] == "orders/paid":
            return 422, {"errors": {"address": ["for this topic has already been taken"]}}
        return 201, {"webhook": {"id": 1, **body["webhook"]}}

    with recording_server(shopify) as api:
        result = _subscribe(shop, api.url)
    assert result.exit_code == 0, result.output
    posted = [r.body["webhook"] for r in api.requests if r.method == "POST"]
    assert [hook["topic"] for hook in posted] == [
        topic for topic in SUBSCRIBED_TOPICS if topic != "orders/create"
    ]
    assert {hook["address"] for hook in posted} == {ADDRESS}
    assert {hook["format"] for hook in posted} == {"json"}
    assert all(r.path == WEBHOOKS for r in api.requests)
    assert all(r.headers["X-Shopify-Access-Token"] == "shpat_test_token" for r in api.requests)
    # GDPR topics come from the app's configuration, never from this API.
    assert not {"customers/redact", "shop/redact"} & {hook["topic"] for hook in posted}
    created = len(SUBSCRIBED_TOPICS) - 2
    assert f"{created} topics subscribed, 2 already were" in result.stdout


def test_a_refusal_names_the_request_and_exits_1(shop: World) -> None:
    def shopify(method: str, path: str, body: Any) -> tuple[int, Any]:
        return 401, {"errors": "[API] Invalid API key or access token"}

    with recording_server(shopify) as api:
        result = _subscribe(shop, api.url)
    assert result.exit_code == 1
    assert f"GET {WEBHOOKS}: 401" in result.stderr and "Invalid API key" in result.stderr


def test_subscribe_needs_an_api_token(shop: World) -> None:
    with shop.app.engine.begin() as conn:
        shop_service.connect(
            conn, shop.store.id, "shopify", SHOP_DOMAIN, "env:UNUSED", None, None, shop.now
        )
    result = _subscribe(shop, "http://127.0.0.1:9")
    assert result.exit_code == 2 and "--api-token" in result.stderr
