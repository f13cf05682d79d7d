"""POST /hooks/shop/generic/{store}: any JSON, signed with HMAC-SHA256 under the store's secret,
read through the connection's field mapping; and the mapping file's own errors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from typer.testing import CliRunner

from cartback.cli import cli
from cartback.services import shops as shop_service
from cartback.shops import generic
from cartback.store import tables as t
from cartback.web.app import create_app
from tests.support.shops import (
    FIXTURES,
    PREVIOUS_ENV,
    PREVIOUS_SECRET,
    SECRET,
    SECRET_ENV,
    fixture,
    generic_headers,
    json_body,
)
from tests.support.world import World, make_world

PATH = "/hooks/shop/generic/test"
MAPPING = FIXTURES / "generic/zapier_mapping.yaml"
CART = "gen-7c1e"


@pytest.fixture
def shop(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    monkeypatch.setenv(PREVIOUS_ENV, PREVIOUS_SECRET)
    with make_world(database_url) as world:
        with world.app.engine.begin() as conn:
            shop_service.connect(
                conn,
                world.store.id,
                "generic",
                "zapier",
                f"env:{SECRET_ENV}",
                f"env:{PREVIOUS_ENV}",
                f"file:{MAPPING}",
                world.now,
            )
        yield world


@pytest.fixture
def client(shop: World) -> Iterator[TestClient]:
    with TestClient(create_app(shop.app)) as test_client:
        yield test_client


def post(client: TestClient, payload: dict[str, Any], **options: Any) -> Any:
    body = json_body(payload)
    return client.post(PATH, content=body, headers=generic_headers(body, **options))


def count(world: World, table: Any, *where: Any) -> int:
    with world.app.engine.connect() as conn:
        query = select(func.count()).select_from(table)
        return int(conn.execute(query.where(*where) if where else query).scalar_one())


def cart(world: World, token: str = CART) -> Any:
    with world.app.engine.connect() as conn:
        return conn.execute(select(t.carts).where(t.carts.c.token == token)).mappings().first()


def states(world: World) -> list[str]:
    with world.app.engine.connect() as conn:
        return [str(s) for s in conn.execute(select(t.enrollments.c.state)).scalars()]


def checkout(**changes: Any) -> dict[str, Any]:
    return fixture("generic", "zap_checkout") | changes


def test_a_mapped_checkout_creates_the_cart_and_one_enrollment(
    client: TestClient, shop: World
) -> None:
    response = post(client, checkout())
    assert response.status_code == 200, response.text
    assert [r["status"] for r in response.json()["results"]] == ["accepted"]
    row = cart(shop)
    assert [(line["title"], line["quantity"]) for line in row["lines"]] == [
        ("Wool socks - Grey", 2),
        ("Knitted hat", 1),
    ]
    assert (str(row["value"]).rstrip("0"), row["currency"]) == ("598.", "NOK")
    assert row["restore_url"] == "https://shop.example/cart/recover/gen-7c1e"
    with shop.app.engine.connect() as conn:
        contact = conn.execute(select(t.contacts)).mappings().one()
        consent = conn.execute(select(t.consent_events.c.channel)).scalars().all()
    assert (contact["phone"], contact["email"], contact["first_name"]) == (
        "+4791234567",
        "ingrid.test@example.com",
        "Ingrid",
    )
    assert consent == ["sms"]
    assert states(shop) == ["active"]


def test_base64_signatures_and_the_previous_secret_are_accepted(client: TestClient) -> None:
    assert post(client, checkout(), encoding="base64").status_code == 200
    later = checkout(occurred="2026-11-23T11:45:00+00:00")
    assert post(client, later, secret=PREVIOUS_SECRET).status_code == 200


def test_the_same_delivery_five_times_is_applied_once(client: TestClient, shop: World) -> None:
    answers = [post(client, checkout(), delivery_id="zap-run-1") for _ in range(5)]
    assert [a.json()["status"] for a in answers] == ["accepted"] + ["duplicate"] * 4
    # Without a delivery id header, the body itself names the delivery.
    again = [post(client, checkout(occurred="2026-11-23T11:41:00+00:00")) for _ in range(2)]
    assert [a.json()["status"] for a in again] == ["accepted", "duplicate"]
    for table in (t.carts, t.contacts, t.enrollments):
        assert count(shop, table) == 1


def test_a_bad_signature_is_a_401_and_writes_nothing(client: TestClient, shop: World) -> None:
    assert post(client, checkout(), secret="guess").status_code == 401
    body = json_body(checkout())
    headers = generic_headers(body)
    assert client.post(PATH, content=body + b" ", headers=headers).status_code == 401
    bare = client.post(PATH, content=body, headers={"Content-Type": "application/json"})
    assert bare.status_code == 401
    assert bare.headers["content-type"] == "application/problem+json"
    for table in (t.shop_deliveries, t.carts, t.contacts):
        assert count(shop, table) == 0


def test_stale_and_reordered_checkouts_keep_the_newest(client: TestClient, shop: World) -> None:
    newest = checkout(occurred="2026-11-23T11:50:00+00:00")
    newest["checkout"] = newest["checkout"] | {"items": newest["checkout"]["items"][:1]}
    post(client, newest)
    older = post(client, checkout())
    assert [r["status"] for r in older.json()["results"]] == ["stale"]
    assert len(cart(shop)["lines"]) == 1


def test_the_mapped_order_ends_the_enrollment(client: TestClient, shop: World) -> None:
    post(client, checkout())
    response = post(client, fixture("generic", "zap_order"))
    assert [r["status"] for r in response.json()["results"]] == ["accepted"]
    assert cart(shop)["status"] == "ordered" and states(shop) == ["exited"]


def test_an_order_without_a_cart_token_ends_the_shoppers_open_cart(
    client: TestClient, shop: World
) -> None:
    post(client, checkout())
    order = fixture("generic", "zap_order")
    del order["checkout"]["id"]
    post(client, order)
    assert states(shop) == ["exited"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda p: p["checkout"].pop("id"), "checkout.id"),
        (lambda p: p.pop("occurred"), "occurred"),
        (lambda p: p.update(occurred="soon"), "occurred"),
        (lambda p: p.pop("event"), "event"),
        (lambda p: p["checkout"]["items"][1].pop("unit_price"), "checkout.items[1].unit_price"),
        (lambda p: p["checkout"].update(total="lots"), "checkout.total"),
    ],
)
def test_a_missing_or_bad_field_is_a_422_naming_its_incoming_path(
    client: TestClient, shop: World, change: Any, field: str
) -> None:
    payload = checkout()
    change(payload)
    response = post(client, payload)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field
    assert count(shop, t.shop_deliveries) == 0


def test_extra_fields_and_unmapped_types_are_ignored(client: TestClient, shop: World) -> None:
    extra = checkout(something_new={"deep": [1]})
    extra["checkout"] = extra["checkout"] | {"gift_wrap": True}
    assert post(client, extra).status_code == 200
    other = post(client, checkout(event="product_viewed"))
    assert other.status_code == 200 and other.json()["results"] == []
    assert count(shop, t.carts) == 1


def test_without_a_mapping_the_fields_are_read_by_their_own_names(shop: World) -> None:
    with shop.app.engine.begin() as conn:
        shop_service.connect(
            conn, shop.store.id, "generic", "own", f"env:{SECRET_ENV}", None, None, shop.now
        )
    with TestClient(create_app(shop.app)) as client:
        response = post(client, fixture("generic", "default_checkout"))
    assert response.status_code == 200, response.text
    assert cart(shop, "gen-default-1") is not None and states(shop) == ["active"]


def test_a_mapping_broken_after_connecting_is_a_503(shop: World, tmp_path: Path) -> None:
    broken = tmp_path / "mapping.yaml"
    broken.write_text("cart_token: checkout.id\n")
    with shop.app.engine.begin() as conn:
        shop_service.connect(
            conn,
            shop.store.id,
            "generic",
            "z",
            f"env:{SECRET_ENV}",
            None,
            f"file:{broken}",
            shop.now,
        )
    broken.write_text("cart_token: checkout.id\nnot_a_field: x\n")
    with TestClient(create_app(shop.app)) as client:
        assert post(client, checkout()).status_code == 503
    assert count(shop, t.shop_deliveries) == 0


@pytest.mark.parametrize(
    ("text", "line", "field"),
    [
        ("type: event\ncart_tokn: checkout.id\n", 2, "cart_tokn"),
        ("type: event\n\nvalue: [a, b]\n", 3, "value"),
        ("type: event\nemail: a..b\n", 2, "email"),
        ("types:\n  paid: purchase\n", 2, "types.paid"),
        ("type: event\n  bad indent: [\n", 2, "mapping"),
        ('{\n  "type": "event",\n  "colour": "x"\n}\n', 3, "colour"),
        ("- a\n- b\n", 1, "mapping"),
    ],
)
def test_mapping_errors_name_the_line_and_the_key(text: str, line: int, field: str) -> None:
    with pytest.raises(generic.MappingError) as raised:
        generic.load_mapping(text)
    assert (raised.value.line, raised.value.field) == (line, field)


def test_shops_connect_generic_checks_the_mapping_file(shop: World, tmp_path: Path) -> None:
    runner = CliRunner()
    env = {"CARTBACK_DATABASE_URL": shop.app.settings.database_url, SECRET_ENV: SECRET}
    connect = ["shops", "connect", "generic", "--store", "test", "--shop-domain", "zapier"]
    connect += ["--secret", f"env:{SECRET_ENV}"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("type: event\ncart_token: checkout.id\nphone_number: customer.phone\n")
    refused = runner.invoke(cli, [*connect, "--mapping", str(bad)], env=env)
    assert refused.exit_code == 2
    assert f"{bad}:3: phone_number:" in " ".join(refused.stderr.split())
    assert "Traceback" not in refused.output
    done = runner.invoke(cli, [*connect, "--mapping", str(MAPPING)], env=env)
    assert done.exit_code == 0, done.output
    with shop.app.engine.connect() as conn:
        link = shop_service.connection(conn, shop.store.id, "generic")
    assert link is not None and link.api_token_ref == f"file:{MAPPING.resolve()}"
    token = runner.invoke(cli, [*connect, "--api-token", f"env:{SECRET_ENV}"], env=env)
    assert token.exit_code == 2
    elsewhere = ["shops", "connect", "shopify", "--store", "test", "--shop-domain", "x.example"]
    misplaced = runner.invoke(
        cli, [*elsewhere, "--secret", f"env:{SECRET_ENV}", "--mapping", str(MAPPING)], env=env
    )
    assert misplaced.exit_code == 2
