"""Hostile input on every field: a 422 problem naming the field, never a 500, on both backends."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from cartback.store import tables as t
from cartback.web.app import create_app
from tests.support.events import checkout_payload
from tests.support.world import World, make_world

AUTH = {"Authorization": "Bearer cbk_test_key"}


@pytest.fixture
def client(world: World) -> Iterator[TestClient]:
    with TestClient(create_app(world.app), raise_server_exceptions=False) as test_client:
        yield test_client


def _post(client: TestClient, body: Any) -> Any:
    return client.post("/v1/events", json=body, headers=AUTH)


def _post_raw(client: TestClient, body: bytes) -> Any:
    return client.post(
        "/v1/events", content=body, headers={**AUTH, "Content-Type": "application/json"}
    )


def _assert_refused(response: Any, field: str, words: str = "") -> None:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["field"] == field, problem
    assert words.lower() in problem["errors"][0]["message"].lower(), problem


def _count(world: World, table: Any) -> int:
    with world.app.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def _full_checkout(world: World) -> dict[str, Any]:
    """A checkout with every string field of the schema filled in."""
    return checkout_payload(
        "c1",
        world.now,
        contact={
            "phone": "+4791234567",
            "email": "kari@example.com",
            "first_name": "Kari",
            "last_name": "Nordmann",
            "locale": "nb-NO",
            "zone": "Europe/Oslo",
            "tags": ["vip"],
        },
        shipping={"country": "NO", "region": "03"},
        lines=[
            {
                "title": "Wool socks",
                "quantity": 2,
                "price": "60.00",
                "sku": "SOCK-1",
                "product_id": "p1",
                "image_url": "https://shop.example/socks.png",
            }
        ],
        consent={
            "sms_marketing": True,
            "email_marketing": True,
            "wording": "Yes, text me",
            "ip": "192.0.2.1",
            "user_agent": "Mozilla/5.0",
        },
        tags=["winter"],
    )


def _full_order(world: World) -> dict[str, Any]:
    return {
        "id": "o1",
        "type": "order.placed",
        "occurred_at": world.now.isoformat(),
        "order_id": "1001",
        "cart_token": "c1",
        "value": "120.00",
        "currency": "NOK",
    }


def _full_consent_change(world: World) -> dict[str, Any]:
    return {
        "id": "k1",
        "type": "consent.changed",
        "occurred_at": world.now.isoformat(),
        "contact": {"phone": "+4791234567"},
        "shipping": {"country": "NO"},
        "channel": "sms",
        "granted": True,
        "source": "form",
        "wording": "Yes, text me",
        "ip": "192.0.2.1",
        "user_agent": "Mozilla/5.0",
    }


def _string_leaves(value: Any, path: str = "") -> Iterator[tuple[str, list[Any]]]:
    """Every string in a payload, as (field path, the route to it)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from ((p, [key, *r]) for p, r in _string_leaves(item, f"{path}.{key}"))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from ((p, [index, *r]) for p, r in _string_leaves(item, f"{path}[{index}]"))
    elif isinstance(value, str):
        yield path.lstrip("."), []


def _with(payload: dict[str, Any], route: list[Any], text: str) -> dict[str, Any]:
    copy = json.loads(json.dumps(payload))
    target = copy
    for step in route[:-1]:
        target = target[step]
    target[route[-1]] = target[route[-1]][:2] + text + target[route[-1]][2:]
    return copy


@pytest.mark.parametrize("build", [_full_checkout, _full_order, _full_consent_change])
def test_a_nul_in_any_string_is_a_422_naming_that_field(
    client: TestClient, world: World, build: Any
) -> None:
    payload = build(world)
    assert _post(client, payload).status_code == 200
    leaves = [(path, route) for path, route in _string_leaves(payload) if path != "type"]
    assert len(leaves) >= 5
    for path, route in leaves:
        _assert_refused(_post(client, _with(payload, route, "\u0000")), path)


@pytest.mark.parametrize(
    ("char", "words"),
    [
        ("\u0000", "control"),
        ("\u0007", "control"),
        ("\u001b", "control"),
        ("\u007f", "control"),
        ("\u0085", "control"),
        ("\ud800", "unicode"),
    ],
)
def test_control_characters_and_lone_surrogates_are_refused(
    client: TestClient, world: World, char: str, words: str
) -> None:
    line = {"title": f"Wool{char}socks", "quantity": 1, "price": "1"}
    body = json.dumps(checkout_payload("c1", world.now, lines=[line])).encode()
    _assert_refused(_post_raw(client, body), "lines[0].title", words)
    assert _count(world, t.carts) == 0


def test_tabs_and_newlines_are_kept_in_consent_wording(client: TestClient, world: World) -> None:
    consent = {"sms_marketing": True, "wording": "Text me.\n\tReply STOP to opt out."}
    response = _post(client, checkout_payload("c1", world.now, consent=consent))
    assert response.status_code == 200, response.text


def test_json_nested_ten_thousand_deep_is_a_422(client: TestClient) -> None:
    response = _post_raw(client, b"[" * 10_000 + b"]" * 10_000)
    _assert_refused(response, "body", "deep")


def test_an_integer_of_five_thousand_digits_is_a_422_naming_the_field(
    client: TestClient, world: World
) -> None:
    line = '{"title": "x", "quantity": ' + "9" * 5000 + ', "price": "1"}'
    body = json.dumps(checkout_payload("c1", world.now, lines=["LINE"])).replace('"LINE"', line)
    _assert_refused(_post_raw(client, body.encode()), "lines[0].quantity", "integer")


@pytest.mark.parametrize("when", ["9999-12-31T23:59:59Z", "0001-01-01T00:00:00+14:00"])
def test_an_out_of_range_event_time_is_a_422(client: TestClient, world: World, when: str) -> None:
    _assert_refused(
        _post(client, checkout_payload("c1", world.now, occurred_at=when)), "occurred_at"
    )


def test_event_times_outside_the_plausible_window_are_refused(
    client: TestClient, world: World
) -> None:
    old = (world.now - timedelta(days=401)).isoformat()
    ahead = (world.now + timedelta(days=2)).isoformat()
    _assert_refused(
        _post(client, checkout_payload("c1", world.now, occurred_at=old)), "occurred_at", "past"
    )
    _assert_refused(
        _post(client, checkout_payload("c1", world.now, occurred_at=ahead)), "occurred_at", "ahead"
    )
    assert _count(world, t.carts) == 0
    recent = (world.now - timedelta(days=399)).isoformat()
    assert _post(client, checkout_payload("c1", world.now, occurred_at=recent)).status_code == 200


def test_the_past_limit_is_a_setting(database_url: str) -> None:
    with (
        make_world(database_url, event_max_age_days=10) as world,
        TestClient(create_app(world.app)) as client,
    ):
        old = (world.now - timedelta(days=11)).isoformat()
        response = _post(client, checkout_payload("c1", world.now, occurred_at=old))
        _assert_refused(response, "occurred_at", "10 days")


def test_a_locale_longer_than_its_column_is_a_422(client: TestClient, world: World) -> None:
    contact = {"phone": "+4791234567", "locale": "nb-abcdefgh-abcdefgh"}
    assert len(contact["locale"]) == 20
    response = _post(client, checkout_payload("c1", world.now, contact=contact))
    _assert_refused(response, "contact.locale", "16")


def test_a_line_total_that_overflows_the_cart_value_column_is_a_422(
    client: TestClient, world: World
) -> None:
    line = {"title": "Gold", "quantity": 100_000, "price": "9999999.9999"}
    response = _post(client, checkout_payload("c1", world.now, lines=[line]))
    _assert_refused(response, "lines[0].price", "total")
    assert _count(world, t.carts) == 0


def test_a_value_too_large_for_its_column_is_a_422(client: TestClient, world: World) -> None:
    response = _post(client, checkout_payload("c1", world.now, value="99999999999999"))
    _assert_refused(response, "value", "digits")


def test_a_contact_id_above_the_id_column_is_a_422(client: TestClient) -> None:
    response = client.get(f"/v1/contacts/{2**63}/consent", headers=AUTH)
    _assert_refused(response, "contact_id")


@pytest.mark.parametrize("flag", ["yes", 1, "true", None])
def test_consent_flags_take_only_json_booleans(client: TestClient, world: World, flag: Any) -> None:
    consent = {"sms_marketing": True, "email_marketing": flag, "double_opt_in": True}
    if flag is None:
        consent["double_opt_in"] = 1
        field = "consent.double_opt_in"
    else:
        field = "consent.email_marketing"
    _assert_refused(
        _post(client, checkout_payload("c1", world.now, consent=consent)), field, "bool"
    )
    change = _full_consent_change(world) | {"granted": 1 if flag is None else flag}
    _assert_refused(_post(client, change), "granted", "bool")


@pytest.mark.parametrize("when", [1_700_000_000, True, "1700000000", "2026-11-23", 1.5])
def test_event_times_take_only_rfc3339_strings(client: TestClient, world: World, when: Any) -> None:
    response = _post(client, checkout_payload("c1", world.now, occurred_at=when))
    _assert_refused(response, "occurred_at")


@pytest.mark.parametrize("quantity", [True, "3", 3.0])
def test_quantities_take_only_json_integers(
    client: TestClient, world: World, quantity: Any
) -> None:
    line = {"title": "Wool socks", "quantity": quantity, "price": "60.00"}
    response = _post(client, checkout_payload("c1", world.now, lines=[line]))
    _assert_refused(response, "lines[0].quantity", "integer")


def test_prices_are_not_booleans(client: TestClient, world: World) -> None:
    line = {"title": "Wool socks", "quantity": 1, "price": True}
    _assert_refused(
        _post(client, checkout_payload("c1", world.now, lines=[line])), "lines[0].price"
    )
