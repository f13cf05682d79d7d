"""POST /v1/events: authentication, validation naming the field, batches, idempotency."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from cartback.services.tick import tick
from cartback.store import tables as t
from cartback.web.app import create_app
from tests.support.events import checkout_payload
from tests.support.world import World


@pytest.fixture
def client(world: World) -> Iterator[TestClient]:
    with TestClient(create_app(world.app)) as test_client:
        yield test_client


def _post(client: TestClient, body: Any, key: str | None = "cbk_test_key") -> Any:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return client.post("/v1/events", json=body, headers=headers)


def _count(world: World, table: Any) -> int:
    with world.app.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def test_a_missing_key_is_a_401_problem(client: TestClient, world: World) -> None:
    response = _post(client, checkout_payload("c1", world.now), key=None)
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["title"] == "Missing API key"


def test_a_wrong_key_is_a_401_problem(client: TestClient, world: World) -> None:
    response = _post(client, checkout_payload("c1", world.now), key="cbk_nope")
    assert response.status_code == 401
    assert response.json()["detail"] == "the key is unknown or revoked"


def test_a_single_event_is_accepted_and_enrolls_the_cart(client: TestClient, world: World) -> None:
    response = _post(client, checkout_payload("c1", world.now))
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 1
    assert _count(world, t.enrollments) == 1


def test_a_batch_is_accepted_with_a_result_per_event(client: TestClient, world: World) -> None:
    events = [checkout_payload(f"c{i}", world.now) for i in range(3)]
    events.append(dict(events[0]))
    body = _post(client, {"events": events}).json()
    assert (body["accepted"], body["duplicates"]) == (3, 1)
    assert [r["status"] for r in body["results"]] == ["accepted"] * 3 + ["duplicate"]


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"contact": {"phone": "12"}}, "events[1].contact.phone", "phone"),
        ({"contact": {"phone": "+47 912", "email": "x@y.no"}}, "events[1].contact.phone", "valid"),
        ({"contact": {"email": "not-an-email"}}, "events[1].contact.email", "pattern"),
        (
            {"contact": {"phone": "+4791234567", "zone": "Mars/Base"}},
            "events[1].contact.zone",
            "zone",
        ),
        ({"currency": "kr"}, "events[1].currency", "pattern"),
        ({"occurred_at": "2026-11-23T10:00:00"}, "events[1].occurred_at", "timezone"),
        (
            {"lines": [{"title": "x", "quantity": 0, "price": "1"}]},
            "events[1].lines[0].quantity",
            "",
        ),
        ({"lines": [{"title": "x", "quantity": 1, "price": "-1"}]}, "events[1].lines[0].price", ""),
        ({"type": "checkout.exploded"}, "events[1]", "type"),
        ({"colour": "red"}, "events[1].colour", "not permitted"),
        ({"contact": {}}, "events[1].contact", "phone or an email"),
        ({"restore_url": "javascript:alert(1)"}, "events[1].restore_url", "pattern"),
    ],
)
def test_a_bad_event_is_a_422_naming_the_field_and_nothing_is_written(
    client: TestClient, world: World, change: dict[str, Any], field: str, words: str
) -> None:
    good = checkout_payload("good", world.now)
    bad = checkout_payload("bad", world.now) | change
    response = _post(client, {"events": [good, bad]})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["field"] == field
    assert words.lower() in problem["errors"][0]["message"].lower()
    assert field in problem["detail"]
    assert _count(world, t.carts) == 0
    assert _count(world, t.event_receipts) == 0


def test_malformed_json_is_a_422_problem(client: TestClient) -> None:
    response = client.post(
        "/v1/events", content=b"{nope", headers={"Authorization": "Bearer cbk_test_key"}
    )
    assert response.status_code == 422
    assert response.json()["field"] == "body"


def test_an_oversized_batch_is_refused(client: TestClient, world: World) -> None:
    events = [checkout_payload(f"c{i}", world.now) for i in range(1001)]
    response = _post(client, {"events": events})
    assert response.status_code == 422
    assert response.json()["field"] == "events"


def test_an_order_event_stops_the_flow(client: TestClient, world: World) -> None:
    _post(client, checkout_payload("c1", world.now))
    order = {
        "id": "o1",
        "type": "order.placed",
        "occurred_at": world.now.isoformat(),
        "order_id": "1001",
        "cart_token": "c1",
        "value": "120.00",
        "currency": "NOK",
    }
    assert _post(client, order).json()["accepted"] == 1
    world.clock.advance(timedelta(days=4))
    tick(world.app.engine, world.app.registry, world.now)
    assert _count(world, t.outbox) == 0


def _enrollment_state(world: World) -> tuple[str, str | None]:
    with world.app.engine.connect() as conn:
        row = conn.execute(select(t.enrollments.c.state, t.enrollments.c.exit_reason)).one()
    return row.state, row.exit_reason


@pytest.mark.parametrize(
    "contact",
    [
        {"email": "Kari@Example.COM"},  # the email, in another case
        {"phone": "912 34 567"},  # the phone, as typed on the laptop, national format
    ],
)
def test_an_order_from_a_second_device_ends_the_flow_by_the_normalised_contact(
    client: TestClient, world: World, contact: dict[str, str]
) -> None:
    _post(client, checkout_payload("phone-cart", world.now))
    world.clock.advance(timedelta(minutes=30))
    tick(world.app.engine, world.app.registry, world.now)
    order = {
        "id": "o-laptop",
        "type": "order.placed",
        "occurred_at": world.now.isoformat(),
        "order_id": "1002",
        "cart_token": "laptop-token",  # never seen by cartback
        "contact": contact,
        "shipping": {"country": "NO"},
        "value": "120.00",
        "currency": "NOK",
    }
    assert _post(client, order).json()["accepted"] == 1
    assert _enrollment_state(world) == ("exited", "order_placed")
    sent_before = _count(world, t.outbox)
    world.clock.advance(timedelta(days=4))
    tick(world.app.engine, world.app.registry, world.now)
    assert _count(world, t.outbox) == sent_before == 1


def test_an_order_naming_another_shopper_leaves_the_flow_running(
    client: TestClient, world: World
) -> None:
    _post(client, checkout_payload("c1", world.now))
    order = {
        "id": "o-other",
        "type": "order.placed",
        "occurred_at": (world.now + timedelta(minutes=5)).isoformat(),
        "order_id": "1003",
        "contact": {"email": "ola@example.com", "phone": "+4798765432"},
        "value": "120.00",
        "currency": "NOK",
    }
    assert _post(client, order).json()["accepted"] == 1
    assert _enrollment_state(world) == ("active", None)


def test_consent_changes_are_recorded_in_the_ledger(client: TestClient, world: World) -> None:
    _post(client, checkout_payload("c1", world.now))
    revoke = {
        "id": "consent-1",
        "type": "consent.changed",
        "occurred_at": (world.now + timedelta(minutes=1)).isoformat(),
        "contact": {"phone": "+4791234567"},
        "channel": "sms",
        "granted": False,
    }
    assert _post(client, revoke).json()["accepted"] == 1
    with world.app.engine.connect() as conn:
        ledger = conn.execute(
            select(t.consent_events.c.channel, t.consent_events.c.granted).order_by(
                t.consent_events.c.id
            )
        ).all()
    assert [tuple(row) for row in ledger] == [("sms", True), ("email", True), ("sms", False)]


def test_decisions_explain_a_cart(client: TestClient, world: World) -> None:
    _post(client, checkout_payload("c1", world.now, consent={"email_marketing": True}))
    world.clock.advance(timedelta(minutes=25))
    tick(world.app.engine, world.app.registry, world.now)
    response = client.get(
        "/v1/carts/c1/decisions", headers={"Authorization": "Bearer cbk_test_key"}
    )
    assert response.status_code == 200
    assert response.json()[0]["step_id"] == "sms1"
    assert response.json()[0]["outcome"] == "skip"
    missing = client.get(
        "/v1/carts/nope/decisions", headers={"Authorization": "Bearer cbk_test_key"}
    )
    assert missing.status_code == 404


def test_openapi_publishes_the_event_schemas(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    components = schema["components"]["schemas"]
    assert {"EventBatchIn", "CheckoutUpdatedIn", "OrderPlacedIn"} <= set(components)
    body = schema["paths"]["/v1/events"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"]["oneOf"]


def test_unknown_routes_answer_with_problems(client: TestClient) -> None:
    response = client.get("/nope")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
