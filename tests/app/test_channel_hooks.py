"""The provider callback routes: signatures, unknown routes, malformed payloads, duplicates and
reordered receipts, unknown messages, GET callbacks and the body cap."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from cartback.services.ingest import ingest
from cartback.services.tick import tick
from cartback.store import tables as t
from tests.support.delivery import (
    dispatch,
    hook_url,
    hooks,
    inbound_form,
    outbox,
    post_signed,
    status_form,
    use_twilio,
)
from tests.support.events import checkout
from tests.support.twilio import FakeTwilio, callback, sign
from tests.support.world import World


@pytest.fixture
def sent(world: World) -> dict[str, Any]:
    """A store on Twilio with one SMS sent."""
    use_twilio(world)
    flow = world.app.registry.current("default")
    with world.app.engine.begin() as conn:
        ingest(conn, world.store, flow, [checkout("c1", world.now)], world.now)
    world.clock.advance(timedelta(minutes=25))
    tick(world.app.engine, world.app.registry, world.now)
    dispatch(world, FakeTwilio())
    [row] = outbox(world)
    assert row["status"] == "sent"
    return row


@pytest.fixture
def client(world: World) -> Iterator[TestClient]:
    with hooks(world) as made:
        yield made


def _report(client: TestClient, world: World, row: dict[str, Any], status: str, **kw: str) -> Any:
    form = status_form(row["provider_id"], status, kw.get("code"))
    return post_signed(client, world, "status", form, query=f"key=cb-{row['id']}")


def test_a_bad_signature_is_401_and_changes_nothing(
    world: World, sent: dict[str, Any], client: TestClient
) -> None:
    path, url = hook_url(world, "status", f"key=cb-{sent['id']}")
    body, headers = callback(url, status_form(sent["provider_id"], "delivered"), token="wrong")
    answer = client.post(path, content=body, headers=headers)
    assert answer.status_code == 401
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert outbox(world)[0]["status"] == "sent"
    assert outbox(world)[0]["delivered_at"] is None
    inbound_path, inbound_url = hook_url(world, "inbound")
    body, headers = callback(inbound_url, inbound_form("STOP"), token="wrong")
    assert client.post(inbound_path, content=body, headers=headers).status_code == 401
    with world.app.engine.connect() as conn:
        assert conn.execute(select(t.replies)).all() == []
        assert set(conn.execute(select(t.consent_events.c.source)).scalars()) == {"checkout"}


def test_unknown_store_or_provider_is_404(world: World, client: TestClient) -> None:
    use_twilio(world)
    assert client.post("/hooks/channel/twilio/nope/status", content=b"").status_code == 404
    assert client.post("/hooks/channel/vonage/test/status", content=b"").status_code == 404


def test_a_malformed_payload_is_422_naming_the_field(
    world: World, sent: dict[str, Any], client: TestClient
) -> None:
    answer = post_signed(client, world, "status", {"MessageStatus": "delivered"})
    assert answer.status_code == 422
    assert answer.json()["field"] == "MessageSid"


def test_receipts_move_forward_only(world: World, sent: dict[str, Any], client: TestClient) -> None:
    assert _report(client, world, sent, "delivered").status_code == 200
    delivered_at = outbox(world)[0]["delivered_at"]
    world.clock.advance(timedelta(minutes=5))
    # A late `sent`, a duplicate `delivered` and a `failed` after it change nothing.
    for status in ("sent", "delivered", "undelivered"):
        assert _report(client, world, sent, status, code="30003").status_code == 200
    row = outbox(world)[0]
    assert (row["status"], row["delivered_at"], row["failed_at"]) == (
        "delivered",
        delivered_at,
        None,
    )


def test_a_permanent_failure_suppresses_the_address_with_the_rule(
    world: World, sent: dict[str, Any], client: TestClient
) -> None:
    assert _report(client, world, sent, "sent").status_code == 200
    assert _report(client, world, sent, "undelivered", code="30006").status_code == 200
    row = outbox(world)[0]
    assert (row["status"], row["error_code"]) == ("failed", "30006")
    assert row["failed_at"] is not None
    with world.app.engine.connect() as conn:
        ledger = conn.execute(select(t.consent_events).order_by(t.consent_events.c.id)).all()
        contact = conn.execute(select(t.contacts)).mappings().one()
        rules = conn.execute(select(t.decisions.c.rule)).scalars().all()
    assert (ledger[-1].source, ledger[-1].granted) == ("provider", False)
    assert "delivery.permanent_failure" in ledger[-1].wording
    assert not contact["sms_marketing"]
    assert "delivery.permanent_failure" in rules


def test_a_report_for_an_unknown_message_is_200(
    world: World, sent: dict[str, Any], client: TestClient
) -> None:
    form = status_form("SM" + "7" * 32, "delivered")
    assert post_signed(client, world, "status", form, query="key=cb-999999").status_code == 200
    assert post_signed(client, world, "status", form).status_code == 200
    assert outbox(world)[0]["status"] == "sent"


def test_a_report_without_our_key_finds_the_message_by_provider_id(
    world: World, sent: dict[str, Any], client: TestClient
) -> None:
    answer = post_signed(client, world, "status", status_form(sent["provider_id"], "delivered"))
    assert answer.status_code == 200
    assert outbox(world)[0]["status"] == "delivered"


def test_get_callbacks_carry_the_payload_in_the_query(
    world: World, sent: dict[str, Any], client: TestClient
) -> None:
    from urllib.parse import urlencode

    form = status_form(sent["provider_id"], "delivered")
    query = urlencode({"key": f"cb-{sent['id']}", **form})
    path, url = hook_url(world, "status", query)
    answer = client.get(path, headers={"x-twilio-signature": sign(_token(), url, [])})
    assert answer.status_code == 200
    assert outbox(world)[0]["status"] == "delivered"


def test_the_body_cap_applies(world: World, client: TestClient) -> None:
    use_twilio(world)
    answer = client.post("/hooks/channel/twilio/test/inbound", content=b"x" * (65 * 1024))
    assert answer.status_code == 413


def _token() -> str:
    from tests.support.twilio import AUTH_TOKEN

    return AUTH_TOKEN
