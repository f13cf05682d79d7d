"""GET/PUT /v1/flows (the key's store's flows, triggers and priorities) and cart.updated
events on the event API."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from cartback.store import tables as t
from cartback.web.app import create_app
from tests.support.events import checkout_payload
from tests.support.world import World

AUTH = {"Authorization": "Bearer cbk_test_key"}
TWO_FLOWS = {
    "flows": [
        {"name": "default", "priority": 1, "trigger": "checkout.updated"},
        {"name": "demo", "priority": 2, "trigger": "cart.updated"},
    ],
    "suppression_window": "12h",
}


@pytest.fixture
def client(world: World) -> Iterator[TestClient]:
    with TestClient(create_app(world.app)) as test_client:
        yield test_client


def _enrolled(world: World) -> list[tuple[str, str]]:
    e, c = t.enrollments.c, t.carts.c
    with world.app.engine.connect() as conn:
        rows = conn.execute(select(c.token, e.flow_name).join(t.carts, c.id == e.cart_id)).all()
    return [(row.token, row.flow_name) for row in rows]


def test_a_new_store_runs_its_flow_on_checkouts(client: TestClient) -> None:
    answer = client.get("/v1/flows", headers=AUTH)
    assert answer.status_code == 200
    assert answer.json() == {
        "flows": [{"name": "default", "priority": 1, "trigger": "checkout.updated"}],
        "suppression_window": "3d",
    }


def test_put_sets_the_flows_and_a_cart_event_starts_the_cart_flow(
    client: TestClient, world: World
) -> None:
    answer = client.put("/v1/flows", json=TWO_FLOWS, headers=AUTH)
    assert answer.status_code == 200, answer.text
    assert answer.json() == TWO_FLOWS
    assert client.get("/v1/flows", headers=AUTH).json() == TWO_FLOWS
    cart = checkout_payload("cart-1", world.now, id="cart-evt-1", type="cart.updated")
    del cart["consent"]
    posted = client.post("/v1/events", json=cart, headers=AUTH)
    assert posted.status_code == 200, posted.text
    assert posted.json()["accepted"] == 1
    assert _enrolled(world) == [("cart-1", "demo")]


def test_a_checkout_matching_both_flows_is_enrolled_in_the_first_and_the_skip_explained(
    client: TestClient, world: World
) -> None:
    client.put("/v1/flows", json=TWO_FLOWS, headers=AUTH)
    posted = client.post("/v1/events", json=checkout_payload("c1", world.now), headers=AUTH)
    assert posted.status_code == 200, posted.text
    assert _enrolled(world) == [("c1", "default")]
    decisions = client.get("/v1/carts/c1/decisions", headers=AUTH).json()
    assert [(d["outcome"], d["rule"]) for d in decisions] == [("skip", "flow_priority")]
    assert "not enrolled in flow demo (priority 2)" in decisions[0]["reason"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"flows": [{"name": "nope", "priority": 1}]}, "name"),
        ({"flows": [{"name": "default", "priority": 0}]}, "flows[0].priority"),
        ({"flows": [{"name": "default", "priority": 1, "trigger": "browse"}]}, "flows[0].trigger"),
        ({"flows": []}, "flows"),
        ({"flows": [{"name": "default", "priority": 1}], "suppression_window": "soon"}, None),
        ({"flows": [{"name": "default", "priority": 1}], "suppression_window": "400d"}, None),
        (
            {"flows": [{"name": "default", "priority": 1}], "suppression_window": "9" * 15 + "w"},
            None,
        ),
        (
            {"flows": [{"name": "demo", "priority": 1}, {"name": "demo", "priority": 2}]},
            "flows[1].name",
        ),
    ],
)
def test_a_bad_put_is_a_422_problem_naming_the_field(
    client: TestClient, body: dict[str, Any], field: str | None
) -> None:
    answer = client.put("/v1/flows", json=body, headers=AUTH)
    assert answer.status_code == 422
    assert answer.headers["content-type"].startswith("application/problem+json")
    expected = field or "suppression_window"
    assert answer.json()["field"].endswith(expected)
    assert client.get("/v1/flows", headers=AUTH).json()["flows"] == [
        {"name": "default", "priority": 1, "trigger": "checkout.updated"}
    ]


def test_flows_need_the_key(client: TestClient) -> None:
    assert client.get("/v1/flows").status_code == 401
    assert client.put("/v1/flows", json=TWO_FLOWS).status_code == 401
