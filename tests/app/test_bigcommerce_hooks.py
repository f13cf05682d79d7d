"""POST /hooks/shop/bigcommerce/{store}: the custom header authenticates, the payload's hash
de-duplicates, and the thin payload's cart or order is fetched from the API (a local recording
server here) before the delivery's transaction opens."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, func, select

from cartback.services import shops as shop_service
from cartback.store import tables as t
from cartback.web.app import create_app
from tests.support.recording import RecordingServer, recording_server
from tests.support.shops import (
    BC_CART,
    BC_STORE_HASH,
    BC_TOKEN,
    BC_TOKEN_ENV,
    PREVIOUS_ENV,
    PREVIOUS_SECRET,
    SECRET,
    SECRET_ENV,
    bc_api,
    bc_headers,
    fixture,
    json_body,
)
from tests.support.world import World, make_world

PATH = "/hooks/shop/bigcommerce/test"


@pytest.fixture
def api() -> Iterator[RecordingServer]:
    with recording_server(bc_api()) as server:
        yield server


@pytest.fixture
def shop(
    database_url: str, api: RecordingServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[World]:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    monkeypatch.setenv(PREVIOUS_ENV, PREVIOUS_SECRET)
    monkeypatch.setenv(BC_TOKEN_ENV, BC_TOKEN)
    with make_world(database_url) as world:
        with world.app.engine.begin() as conn:
            shop_service.connect(
                conn,
                world.store.id,
                "bigcommerce",
                f"{api.url}/stores/{BC_STORE_HASH}",
                f"env:{SECRET_ENV}",
                f"env:{PREVIOUS_ENV}",
                f"env:{BC_TOKEN_ENV}",
                world.now,
            )
        yield world


@pytest.fixture
def client(shop: World) -> Iterator[TestClient]:
    with TestClient(create_app(shop.app)) as test_client:
        yield test_client


def reconnect(world: World, url: str) -> None:
    """Point the store's connection at another recorded API."""
    with world.app.engine.begin() as conn:
        shop_service.connect(
            conn,
            world.store.id,
            "bigcommerce",
            f"{url}/stores/{BC_STORE_HASH}",
            f"env:{SECRET_ENV}",
            None,
            f"env:{BC_TOKEN_ENV}",
            world.now,
        )


def post(client: TestClient, payload: dict[str, Any], **options: Any) -> Any:
    return client.post(PATH, content=json_body(payload), headers=bc_headers(**options))


def count(world: World, table: Any, *where: Any) -> int:
    with world.app.engine.connect() as conn:
        query = select(func.count()).select_from(table)
        return int(conn.execute(query.where(*where) if where else query).scalar_one())


def cart(world: World) -> Any:
    with world.app.engine.connect() as conn:
        return conn.execute(select(t.carts).where(t.carts.c.token == BC_CART)).mappings().first()


def states(world: World) -> list[str]:
    with world.app.engine.connect() as conn:
        return [str(s) for s in conn.execute(select(t.enrollments.c.state)).scalars()]


def abandoned(**changes: Any) -> dict[str, Any]:
    return fixture("bigcommerce", "cart_abandoned") | changes


def converted(**changes: Any) -> dict[str, Any]:
    return fixture("bigcommerce", "cart_converted") | changes


def test_an_abandoned_cart_is_fetched_and_creates_one_enrollment(
    client: TestClient, shop: World, api: RecordingServer
) -> None:
    response = post(client, abandoned())
    assert response.status_code == 200, response.text
    assert [r["status"] for r in response.json()["results"]] == ["accepted"]
    row = cart(shop)
    assert [line["title"] for line in row["lines"]] == ["Wool socks - Grey", "Knitted hat"]
    assert str(row["lines"][0]["price"]).rstrip("0") == "199.5"
    assert (str(row["value"]).rstrip("0"), row["currency"]) == ("647.", "NOK")
    assert row["restore_url"].endswith("action=loadInCheckout&id=made-up&token=t3st")
    with shop.app.engine.connect() as conn:
        contact = conn.execute(select(t.contacts)).mappings().one()
    assert (contact["phone"], contact["email"]) == ("+4791234567", "ingrid.test@example.com")
    assert states(shop) == ["active"]
    calls = [(r.method, r.path) for r in api.requests]
    assert calls == [
        ("GET", f"/stores/{BC_STORE_HASH}/v3/checkouts/{BC_CART}"),
        ("POST", f"/stores/{BC_STORE_HASH}/v3/carts/{BC_CART}/redirect_urls"),
    ]
    assert {r.headers["X-Auth-Token"] for r in api.requests} == {BC_TOKEN}


def test_the_api_is_never_called_inside_a_transaction(shop: World) -> None:
    """Each API request is answered while no database transaction is open."""
    engine = shop.app.engine
    open_now: set[int] = set()
    seen: list[int] = []
    recorded = bc_api()

    def answer(method: str, path: str, body: Any) -> tuple[int, Any]:
        seen.append(len(open_now))
        return recorded(method, path, body)

    begun: list[int] = []

    def began(conn: Any) -> None:
        begun.append(id(conn))
        open_now.add(id(conn))

    def ended(conn: Any) -> None:
        open_now.discard(id(conn))

    hooks = [("begin", began), ("commit", ended), ("rollback", ended)]
    with recording_server(answer) as api:
        reconnect(shop, api.url)
        for name, hook in hooks:
            event.listen(engine, name, hook)
        try:
            with TestClient(create_app(shop.app)) as client:
                assert post(client, abandoned()).status_code == 200
                assert post(client, converted()).status_code == 200
        finally:
            for name, hook in hooks:
                event.remove(engine, name, hook)
    assert seen == [0, 0, 0]
    assert len(begun) >= 2  # the listeners did see the deliveries' transactions
    assert states(shop) == ["exited"]


def test_the_same_hash_five_times_is_applied_once(
    client: TestClient, shop: World, api: RecordingServer
) -> None:
    answers = [post(client, abandoned()) for _ in range(5)]
    assert [a.json()["status"] for a in answers] == ["accepted"] + ["duplicate"] * 4
    for table in (t.shop_deliveries, t.carts, t.contacts, t.enrollments):
        assert count(shop, table) == 1


def test_a_wrong_or_missing_header_is_a_401_and_nothing_is_fetched_or_written(
    client: TestClient, shop: World, api: RecordingServer
) -> None:
    assert post(client, abandoned(), secret="guess").status_code == 401
    bare = client.post(PATH, content=json_body(abandoned()))
    assert bare.status_code == 401
    assert bare.headers["content-type"] == "application/problem+json"
    assert api.requests == []
    assert count(shop, t.shop_deliveries) == 0 and count(shop, t.carts) == 0


def test_the_previous_secret_is_accepted(client: TestClient) -> None:
    assert post(client, abandoned(), secret=PREVIOUS_SECRET).status_code == 200


def test_a_delivery_for_another_store_hash_is_refused(client: TestClient, shop: World) -> None:
    assert post(client, abandoned(producer="stores/other")).status_code == 401
    assert count(shop, t.shop_deliveries) == 0


def test_the_converted_cart_ends_the_enrollment(client: TestClient, shop: World) -> None:
    post(client, abandoned())
    response = post(client, converted())
    assert [r["status"] for r in response.json()["results"]] == ["accepted"]
    assert cart(shop)["status"] == "ordered"
    assert states(shop) == ["exited"]
    with shop.app.engine.connect() as conn:
        row = conn.execute(select(t.orders)).mappings().one()
    assert (row["order_ref"], str(row["value"]).rstrip("0"), row["currency"]) == (
        "bc-250",
        "647.",
        "NOK",
    )
    assert row["occurred_at"].minute == 55
    # Converted before the (late) abandoned delivery: the cart is gone, nothing restarts.
    late = post(client, abandoned(hash="late-retry"))
    assert late.status_code == 200
    assert states(shop) == ["exited"]


def test_a_cart_the_api_no_longer_has_changes_nothing(shop: World) -> None:
    with recording_server(lambda m, p, b: (404, {"status": 404})) as gone:
        reconnect(shop, gone.url)
        with TestClient(create_app(shop.app)) as client:
            response = post(client, abandoned())
    assert response.status_code == 200 and response.json()["results"] == []
    assert count(shop, t.carts) == 0


def test_an_api_failure_is_a_503_and_writes_nothing(shop: World) -> None:
    with recording_server(bc_api(status=500)) as failing:
        reconnect(shop, failing.url)
        with TestClient(create_app(shop.app)) as client:
            response = post(client, abandoned())
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    # Not recorded: BigCommerce's retry of the same hash is applied then.
    assert count(shop, t.shop_deliveries) == 0


def test_a_stale_cart_update_is_ignored(client: TestClient, shop: World) -> None:
    post(client, abandoned())
    older = fixture("bigcommerce", "api_checkout")
    older["data"]["cart"]["updated_time"] = "2026-11-23T11:35:00+00:00"
    older["data"]["cart"]["line_items"]["physical_items"] = []
    with recording_server(bc_api(older)) as api:
        reconnect(shop, api.url)
        response = post(client, abandoned(hash="second-event"))
    assert [r["status"] for r in response.json()["results"]] == ["stale"]
    assert len(cart(shop)["lines"]) == 2


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda p: p.pop("hash"), "hash"),
        (lambda p: p.pop("scope"), "scope"),
        (lambda p: p["data"].pop("id"), "data.id"),
        (lambda p: p.update(created_at="yesterday"), "created_at"),
    ],
)
def test_a_missing_or_bad_field_is_a_422_naming_it(
    client: TestClient, shop: World, change: Any, field: str
) -> None:
    payload = abandoned()
    change(payload)
    if field == "created_at":
        # The cart's own time wins; the webhook's is read only when the API has none.
        checkout = fixture("bigcommerce", "api_checkout")
        del checkout["data"]["cart"]["updated_time"]
        with recording_server(bc_api(checkout)) as api:
            reconnect(shop, api.url)
            response = post(client, payload)
    else:
        response = post(client, payload)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field
    assert count(shop, t.shop_deliveries) == 0


def test_a_missing_order_id_is_a_422(client: TestClient, shop: World) -> None:
    payload = converted()
    del payload["data"]["orderId"]
    response = post(client, payload)
    assert response.status_code == 422 and response.json()["field"] == "data.orderId"


def test_extra_fields_and_other_scopes_are_ignored(client: TestClient, shop: World) -> None:
    payload = abandoned(a_new_field={"x": 1})
    payload["data"]["another"] = True
    assert post(client, payload).status_code == 200
    other = post(client, abandoned(scope="store/product/updated", hash="p1"))
    assert other.json()["status"] == "ignored"


def test_a_replay_fetches_the_cart_again_before_its_transaction(
    client: TestClient, shop: World, api: RecordingServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from cartback.cli import cli

    assert post(client, abandoned()).status_code == 200
    fetched = len(api.requests)
    env = {
        "CARTBACK_DATABASE_URL": shop.app.settings.database_url,
        SECRET_ENV: SECRET,
        BC_TOKEN_ENV: BC_TOKEN,
    }
    replayed = CliRunner().invoke(cli, ["shops", "replay", abandoned()["hash"]], env=env)
    assert replayed.exit_code == 0, replayed.output
    assert ": duplicate" in replayed.stdout
    assert len(api.requests) == fetched + 2
    monkeypatch.delenv(BC_TOKEN_ENV)
    no_token = CliRunner().invoke(
        cli,
        ["shops", "replay", abandoned()["hash"]],
        env={k: v for k, v in env.items() if k != BC_TOKEN_ENV},
    )
    assert no_token.exit_code == 1 and "TEST_BC_API_TOKEN" in no_token.stderr
