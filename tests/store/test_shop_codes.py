"""Per-cart codes through the shop's API, beyond Shopify's issuing: WooCommerce coupons (REST,
basic auth), the removal of codes that expired unused on both platforms, and one shop-issued
code per cart. Each API is a local server that records the requests and answers as recorded."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from typer.testing import CliRunner

from cartback.cli import cli
from cartback.services import shops as shop_service
from cartback.services import unique_codes
from cartback.services.ingest import ingest
from cartback.services.tick import tick
from cartback.shops import woocommerce_rest
from cartback.shops.shopify_admin import API_VERSION
from cartback.store import tables as t
from cartback.store.migrate import downgrade, upgrade
from tests.support.events import checkout, order
from tests.support.recording import Recorded, RecordingServer, Reply, recording_api
from tests.support.world import World

WOO_ENV = "TEST_WOO_REST_KEYS"
WOO_KEYS = "ck_made_up_key:cs_made_up_secret"
SHOPIFY_ENV = "TEST_SHOPIFY_PRUNE_TOKEN"
COUPONS = "/wp-json/wc/v3/coupons"

FLOW = """
name: unique
abandon_after: 0s
steps:
  - id: sms1
    at: 0s
    channel: sms
    body: "{{{{ brand }}}}: {{{{ discount_text }}}} with {{{{ discount_code }}}}: {{{{ link }}}}"
    discount: {{unique: true, {offer}, expires_after: 2d}}
"""


@dataclass
class Shops:
    """WooCommerce's coupons and Shopify's price rules, as the APIs answer; a set of ids
    answers 500 and another 404."""

    failing: set[str] = field(default_factory=set)
    missing: set[str] = field(default_factory=set)
    coupons: int = 0

    def __call__(self, request: Recorded) -> Reply:
        name = request.path.rsplit("/", 1)[-1].removesuffix(".json")
        if name in self.failing:
            return Reply(500, {"code": "internal_error", "message": "made-up failure"})
        if name in self.missing:
            return Reply(404, {"code": "woocommerce_rest_shop_coupon_invalid_id"})
        if request.method == "POST" and request.path == COUPONS:
            self.coupons += 1
            coupon = {**request.body, "code": request.body["code"].lower()}
            return Reply(201, {"id": 700 + self.coupons, **coupon})
        if request.method == "DELETE":
            return Reply(200, {"id": int(name)} if name.isdigit() else {})
        return Reply(404, {"errors": "Not Found"})


@pytest.fixture
def shops() -> Iterator[tuple[Shops, RecordingServer]]:
    script = Shops()
    with recording_api(script) as server:
        yield script, server


def _connect(world: World, platform: str, env: str) -> None:
    with world.app.engine.begin() as conn:
        shop_service.connect(
            conn,
            world.store.id,
            platform,
            "shop.example",
            "env:UNUSED_SECRET",
            None,
            f"env:{env}",
            world.now,
        )


def _woo_store(world: World, monkeypatch: pytest.MonkeyPatch, offer: str) -> None:
    monkeypatch.setenv(WOO_ENV, WOO_KEYS)
    world.app.registry.register_text(FLOW.format(offer=offer), "unique.yaml", world.now)
    with world.app.engine.begin() as conn:
        conn.execute(update(t.stores).values(flow_name="unique", platform="woocommerce"))
    _connect(world, "woocommerce", WOO_ENV)


def _ingest(world: World, *events: Any, flow: str = "default") -> None:
    with world.app.engine.begin() as conn:
        ingest(conn, world.store, world.app.registry.current(flow), events, world.now)


def _issue(world: World, server: RecordingServer) -> unique_codes.IssueStats:
    issuers = unique_codes.shop_issuers(api_base=server.url)
    return unique_codes.issue_due(world.app.engine, world.app.registry, world.now, issuers)


def _codes(world: World) -> list[Any]:
    d = t.discount_codes.c
    with world.app.engine.connect() as conn:
        return list(conn.execute(select(t.discount_codes).order_by(d.id)).mappings())


def test_a_woocommerce_store_gets_a_coupon_per_cart_and_it_appears_in_the_message(
    world: World, monkeypatch: pytest.MonkeyPatch, shops: tuple[Shops, RecordingServer]
) -> None:
    _, server = shops
    _woo_store(world, monkeypatch, "percent: 15")
    _ingest(world, checkout("w1", world.now, email="kari@example.com"), flow="unique")
    issued_at = world.now
    assert (_issue(world, server).issued, _issue(world, server).issued) == (1, 0)
    [call] = server.requests
    assert (call.method, call.path) == ("POST", COUPONS)
    assert call.headers["Authorization"] == "Basic " + base64.b64encode(WOO_KEYS.encode()).decode()
    coupon = call.body
    assert coupon["code"].startswith("CB-") and len(coupon["code"]) == 13
    assert (coupon["discount_type"], coupon["amount"]) == ("percent", "15")
    assert (coupon["individual_use"], coupon["usage_limit"], coupon["usage_limit_per_user"]) == (
        True,
        1,
        1,
    )
    assert coupon["email_restrictions"] == ["kari@example.com"]
    assert coupon["date_expires"] == (issued_at + timedelta(days=2)).isoformat(timespec="seconds")
    [stored] = _codes(world)
    # The code as the shop keeps it (WooCommerce lower-cases), and the coupon to remove later.
    assert stored["code"] == coupon["code"].lower()
    assert (stored["platform"], stored["platform_ref"]) == ("woocommerce", "701")
    assert stored["expires_at"] == issued_at + timedelta(days=2)
    world.clock.advance(timedelta(seconds=1))
    tick(world.app.engine, world.app.registry, world.now)
    with world.app.engine.connect() as conn:
        [body] = conn.execute(select(t.outbox.c.body)).scalars()
    assert f"15% off with {stored['code']}: " in body


def test_a_fixed_amount_coupon_for_a_cart_without_an_email(
    world: World, monkeypatch: pytest.MonkeyPatch, shops: tuple[Shops, RecordingServer]
) -> None:
    _, server = shops
    _woo_store(world, monkeypatch, "amount: {NOK: 50}")
    _ingest(world, checkout("w1", world.now, email=None), flow="unique")
    assert _issue(world, server).issued == 1
    [call] = server.requests
    assert (call.body["discount_type"], call.body["amount"]) == ("fixed_cart", "50")
    assert "email_restrictions" not in call.body
    assert "(NOK)" in call.body["description"]


def test_unusable_woocommerce_keys_fail_that_store_without_a_request(
    world: World, monkeypatch: pytest.MonkeyPatch, shops: tuple[Shops, RecordingServer]
) -> None:
    _, server = shops
    _woo_store(world, monkeypatch, "percent: 10")
    monkeypatch.setenv(WOO_ENV, "no-separator")
    _ingest(world, checkout("w1", world.now), flow="unique")
    stats = _issue(world, server)
    assert (stats.issued, stats.failed, len(server.requests)) == (0, 1, 0)


def test_the_rest_keys_are_never_sent_over_plain_http() -> None:
    with pytest.raises(woocommerce_rest.WooError, match="only sent over https"):
        woocommerce_rest.client("http://shop.example", WOO_KEYS.encode())
    with pytest.raises(woocommerce_rest.WooError, match="CONSUMER_KEY:CONSUMER_SECRET"):
        woocommerce_rest.client("https://shop.example", b"ck_only")
    woocommerce_rest.client("https://shop.example", WOO_KEYS.encode()).close()


def test_a_woocommerce_refusal_names_its_code(shops: tuple[Shops, RecordingServer]) -> None:
    script, server = shops
    script.failing.add("coupons")
    issuer = woocommerce_rest.WooCouponIssuer(
        woocommerce_rest.client(server.url, WOO_KEYS.encode())
    )
    with pytest.raises(
        woocommerce_rest.WooError, match="POST /wp-json/wc/v3/coupons: 500 internal_error: made-up"
    ):
        issuer.issue(
            cart_token="c", percent=Decimal(5), amount=None, currency="EUR", expires_at=None
        )
    issuer.close()


def test_a_refusal_repeating_the_shoppers_email_is_reported_without_it() -> None:
    def refusing(request: Recorded) -> Reply:
        message = f"Invalid restriction {request.body['email_restrictions'][0]}."
        return Reply(400, {"code": "woocommerce_rest_invalid_email", "message": message})

    with recording_api(refusing) as server:
        issuer = woocommerce_rest.WooCouponIssuer(
            woocommerce_rest.client(server.url, WOO_KEYS.encode())
        )
        with pytest.raises(woocommerce_rest.WooError) as refused:
            issuer.issue(
                cart_token="c",
                percent=Decimal(5),
                amount=None,
                currency="EUR",
                expires_at=None,
                email="kari.nordmann@example.com",
            )
        issuer.close()
    assert str(refused.value).endswith(
        "400 woocommerce_rest_invalid_email: Invalid restriction [email]."
    )


# Removal of codes that expired unused.


def _code(
    world: World,
    cart: str,
    platform: str,
    ref: str,
    expires: datetime | None,
    *,
    removed: datetime | None = None,
) -> None:
    with world.app.engine.begin() as conn:
        cart_id = conn.execute(select(t.carts.c.id).where(t.carts.c.token == cart)).scalar_one()
        conn.execute(
            insert(t.discount_codes).values(
                store_id=world.store.id,
                pool=unique_codes.UNIQUE_POOL,
                code=f"CB-{cart.upper()}",
                cart_id=cart_id,
                assigned_at=world.now,
                created_at=world.now,
                platform=platform,
                platform_ref=ref,
                expires_at=expires,
                removed_at=removed,
            )
        )


def _removed(world: World) -> dict[str, bool]:
    return {row["platform_ref"]: row["removed_at"] is not None for row in _codes(world)}


@pytest.fixture
def expired(world: World, monkeypatch: pytest.MonkeyPatch) -> World:
    """A store connected to both platforms, with codes in every state."""
    monkeypatch.setenv(WOO_ENV, WOO_KEYS)
    monkeypatch.setenv(SHOPIFY_ENV, "shpat_prune")
    _connect(world, "woocommerce", WOO_ENV)
    _connect(world, "shopify", SHOPIFY_ENV)
    tokens = ["s1", "s2", "w1", "w2", "ordered", "fresh", "done", "forever"]
    _ingest(world, *(checkout(token, world.now, phone=None, email=None) for token in tokens))
    _ingest(world, order("ordered", world.now, order_id="o-1"))
    past, future = world.now - timedelta(hours=1), world.now + timedelta(hours=1)
    _code(world, "s1", "shopify", "9101", past)
    _code(world, "s2", "shopify", "9102", past)
    _code(world, "w1", "woocommerce", "701", past)
    _code(world, "w2", "woocommerce", "702", past)
    _code(world, "ordered", "woocommerce", "703", past)  # the order may have used it
    _code(world, "fresh", "shopify", "9103", future)
    _code(world, "done", "shopify", "9104", past, removed=past)
    _code(world, "forever", "shopify", "9105", None)
    return world


def test_expired_unused_codes_are_deleted_in_the_shop_once(
    expired: World, shops: tuple[Shops, RecordingServer]
) -> None:
    script, server = shops
    script.failing.add("9102")  # Shopify refuses this one, this time
    script.missing.add("702")  # deleted in the WooCommerce admin already
    issuers = unique_codes.shop_issuers(api_base=server.url)
    stats = unique_codes.prune_expired(expired.app.engine, expired.now, issuers)
    assert (stats.removed, stats.gone, stats.failed) == (2, 1, 1)
    assert stats.failures == [
        "shopify 9102: DELETE /admin/api/2026-01/price_rules/9102.json: 500 "
        '{"code": "internal_error", "message": "made-up failure"}'
    ]
    calls = {(r.method, r.path, tuple(r.query.get("force", []))) for r in server.requests}
    assert calls == {
        ("DELETE", f"/admin/api/{API_VERSION}/price_rules/9101.json", ()),
        ("DELETE", f"/admin/api/{API_VERSION}/price_rules/9102.json", ()),
        ("DELETE", f"{COUPONS}/701", ("true",)),
        ("DELETE", f"{COUPONS}/702", ("true",)),
    }
    assert server.requests[0].headers["X-Shopify-Access-Token"] == "shpat_prune"
    assert _removed(expired) == {
        "9101": True,
        "9102": False,
        "701": True,
        "702": True,
        "703": False,
        "9103": False,
        "9104": True,
        "9105": False,
    }
    # The next run tries only the one that failed.
    script.failing.clear()
    server.requests.clear()
    again = unique_codes.prune_expired(expired.app.engine, expired.now, issuers)
    assert (again.removed, again.gone, again.failed) == (1, 0, 0)
    assert [r.path for r in server.requests] == [f"/admin/api/{API_VERSION}/price_rules/9102.json"]
    server.requests.clear()
    last = unique_codes.prune_expired(expired.app.engine, expired.now, issuers)
    assert (last.removed, last.gone, last.failed, server.requests) == (0, 0, 0, [])


def test_codes_that_keep_failing_never_keep_the_others_from_their_turn(
    expired: World, shops: tuple[Shops, RecordingServer]
) -> None:
    script, server = shops
    script.failing |= {"9101", "9102"}  # the first codes by id
    issuers = unique_codes.shop_issuers(api_base=server.url)
    stats = unique_codes.prune_expired(expired.app.engine, expired.now, issuers, batch=1)
    assert (stats.removed, stats.failed) == (2, 2)
    assert _removed(expired)["701"] and _removed(expired)["702"]


def test_a_store_whose_token_is_gone_fails_its_codes_only(
    expired: World, monkeypatch: pytest.MonkeyPatch, shops: tuple[Shops, RecordingServer]
) -> None:
    _, server = shops
    monkeypatch.delenv(SHOPIFY_ENV)
    issuers = unique_codes.shop_issuers(api_base=server.url)
    stats = unique_codes.prune_expired(expired.app.engine, expired.now, issuers)
    assert (stats.removed, stats.failed) == (2, 2)
    assert {r.path for r in server.requests} == {f"{COUPONS}/701", f"{COUPONS}/702"}


def test_discounts_prune_from_the_command_line(
    expired: World, shops: tuple[Shops, RecordingServer]
) -> None:
    script, server = shops
    env = {
        "CARTBACK_DATABASE_URL": expired.app.settings.database_url,
        WOO_ENV: WOO_KEYS,
        SHOPIFY_ENV: "shpat_prune",
    }
    script.failing.add("701")
    run = ["discounts", "prune", "--api-base", server.url]
    # The CLI's clock is the real one, days after the fixture's: "fresh" has expired too.
    first = CliRunner().invoke(cli, run, env=env)
    assert first.exit_code == 1
    assert "4 expired codes removed, 0 already gone, 1 failed" in first.stdout
    assert f"failed woocommerce 701: DELETE {COUPONS}/701: 500 internal_error" in first.stderr
    script.failing.clear()
    second = CliRunner().invoke(cli, run, env=env)
    assert second.exit_code == 0, second.output
    assert "1 expired codes removed, 0 already gone, 0 failed" in second.stdout


# One shop-issued code per cart.


def test_a_cart_holds_one_shop_issued_code(world: World) -> None:
    _ingest(world, checkout("c1", world.now))
    _code(world, "c1", "shopify", "1", None)
    with pytest.raises(IntegrityError), world.app.engine.begin() as conn:
        conn.execute(
            insert(t.discount_codes).values(
                store_id=world.store.id,
                pool=unique_codes.UNIQUE_POOL,
                code="CB-OTHER",
                cart_id=select(t.carts.c.id).scalar_subquery(),
                created_at=world.now,
            )
        )
    # Pooled codes are not limited: a pool is the shop owner's, loaded from a file.
    with world.app.engine.begin() as conn:
        cart_id = conn.execute(select(t.carts.c.id)).scalar_one()
        for code in ("P1", "P2"):
            conn.execute(
                insert(t.discount_codes).values(
                    store_id=world.store.id,
                    pool="spring",
                    code=code,
                    cart_id=cart_id,
                    created_at=world.now,
                )
            )


def test_a_code_issued_twice_for_one_cart_is_removed_again(
    world: World, monkeypatch: pytest.MonkeyPatch, shops: tuple[Shops, RecordingServer]
) -> None:
    """Two workers asked for the same cart's code at once: the second is deleted in the shop."""
    _, server = shops
    _woo_store(world, monkeypatch, "percent: 10")
    _ingest(world, checkout("w1", world.now), flow="unique")
    with world.app.engine.connect() as conn:
        [want] = unique_codes.wanted(
            conn, world.app.registry, world.now, lead=unique_codes.LEAD, limit=10
        )
    monkeypatch.setattr(unique_codes, "wanted", lambda *args, **kwargs: [want])
    assert _issue(world, server).issued == 1
    assert _issue(world, server).issued == 0
    assert [(r.method, r.path) for r in server.requests] == [
        ("POST", COUPONS),
        ("POST", COUPONS),
        ("DELETE", f"{COUPONS}/702"),
    ]
    assert [row["platform_ref"] for row in _codes(world)] == ["701"]


def test_the_migration_keeps_the_first_of_a_carts_codes(world: World) -> None:
    _ingest(world, checkout("c1", world.now))
    engine = world.app.engine
    downgrade(engine, "0015")
    with engine.begin() as conn:
        cart_id = conn.execute(select(t.carts.c.id)).scalar_one()
        for code, pool in (("FIRST", "@unique"), ("SECOND", "@unique"), ("P", "spring")):
            conn.execute(
                t.discount_codes.insert().values(
                    store_id=world.store.id, pool=pool, code=code, cart_id=cart_id
                ),
                {"created_at": world.now},
            )
    upgrade(engine)
    with engine.connect() as conn:
        kept = conn.execute(select(t.discount_codes.c.code).order_by(t.discount_codes.c.id))
        assert list(kept.scalars()) == ["FIRST", "P"]
