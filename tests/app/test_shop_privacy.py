"""GDPR end to end: customers/redact and `contacts erase` remove the shopper's PII from every
table and keep only keyed hashes, which stop a re-import; data requests export what is held;
shop/redact erases a store's shoppers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from typer.testing import CliRunner

from cartback.cli import cli
from cartback.core.events import InboundReply
from cartback.core.model import Channel
from cartback.services import shops as shop_service
from cartback.services.ingest import ERASED
from cartback.services.replies import on_reply
from cartback.services.tick import tick
from cartback.store import tables as t
from cartback.web.app import create_app
from tests.support.shopify import (
    SECRET,
    SECRET_ENV,
    SHOP_DOMAIN,
    SUPPRESSION_KEY,
    body_of,
    fixture,
    headers_for,
)
from tests.support.world import World, make_world

PATH = "/hooks/shop/shopify/test"
PHONE, EMAIL = "+4791234567", "ingrid.test@example.com"
# Every way the fixtures spell the shopper: none may survive an erasure.
TRACES = (PHONE, "912 34 567", "91234567", EMAIL, "Ingrid.Test@Example.com", "Ingrid")


def _world(database_url: str, tmp_path: Path, **settings: Any) -> Iterator[World]:
    with make_world(database_url, export_dir=tmp_path / "exports", **settings) as world:
        with world.app.engine.begin() as conn:
            shop_service.connect(
                conn,
                world.store.id,
                "shopify",
                SHOP_DOMAIN,
                f"env:{SECRET_ENV}",
                None,
                None,
                world.now,
            )
        yield world


@pytest.fixture
def shop(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    yield from _world(database_url, tmp_path, suppression_key=SUPPRESSION_KEY)


@pytest.fixture
def client(shop: World) -> Iterator[TestClient]:
    with TestClient(create_app(shop.app)) as test_client:
        yield test_client


def post(client: TestClient, topic: str, payload: dict[str, Any]) -> Any:
    body = body_of(payload)
    return client.post(PATH, content=body, headers=headers_for(topic, body))


def traces_left(world: World) -> list[str]:
    """Each table and trace of the shopper still held anywhere in the database."""
    found = []
    with world.app.engine.connect() as conn:
        for table in t.metadata.sorted_tables:
            for row in conn.execute(select(table)).all():
                text = repr(tuple(row))
                found += [f"{table.name}: {trace}" for trace in TRACES if trace in text]
    return sorted(set(found))


def count(world: World, table: Any, *where: Any) -> int:
    with world.app.engine.connect() as conn:
        query = select(func.count()).select_from(table)
        return int(conn.execute(query.where(*where) if where else query).scalar_one())


def a_shopper_with_history(client: TestClient, shop: World) -> None:
    """A checkout, a message composed for it, a consent change, then an order."""
    post(client, "checkouts/create", fixture("checkouts_create"))
    shop.clock.advance(timedelta(minutes=30))
    assert tick(shop.app.engine, shop.app.registry, shop.now).claimed == 1
    assert count(shop, t.outbox) == 1
    post(
        client,
        "customers_email_marketing_consent/update",
        fixture("customers_email_marketing_consent_update"),
    )
    post(client, "orders/create", fixture("orders_create"))
    # A text reply from the shopper, kept for the cart's timeline.
    with shop.app.engine.begin() as conn:
        on_reply(
            conn,
            shop.store,
            InboundReply(
                provider="twilio",
                channel=Channel.SMS,
                sender=PHONE,
                text="Is the blue one back, Ingrid here?",
                provider_id="SM-reply-1",
                at=shop.now,
            ),
            shop.now,
        )
    assert count(shop, t.replies) == 1
    assert traces_left(shop) != []


def test_customers_redact_removes_every_trace_and_suppresses_a_reimport(
    client: TestClient, shop: World
) -> None:
    a_shopper_with_history(client, shop)
    response = post(client, "customers/redact", fixture("customers_redact"))
    assert response.status_code == 200, response.text
    assert response.json()["results"] == [
        {"id": "customer-redact:90001", "status": "erased", "contacts": 1}
    ]
    assert traces_left(shop) == []
    with shop.app.engine.connect() as conn:
        contact = conn.execute(select(t.contacts)).mappings().one()
        outbox = conn.execute(select(t.outbox)).mappings().one()
        digests = conn.execute(select(t.suppressions.c.kind, t.suppressions.c.digest)).all()
    assert contact["erased_at"] is not None
    assert (outbox["to_address"], outbox["body"]) == ("", "")
    assert sorted(kind for kind, _ in digests) == ["email", "phone"]
    assert all(len(digest) == 64 for _, digest in digests)
    # The same shopper checks out again, on a new checkout: nothing of them is stored.
    again = fixture("checkouts_create") | {
        "token": "ck-after-erasure",
        "id": 70002,
        "updated_at": "2026-11-23T12:20:00+00:00",
    }
    result = post(client, "checkouts/create", again).json()["results"][0]
    assert (result["status"], result["detail"]) == ("accepted", ERASED)
    assert traces_left(shop) == []
    assert count(shop, t.contacts) == 1 and count(shop, t.enrollments) == 1
    resent = t.carts.c.token == "ck-after-erasure"
    assert count(shop, t.carts, resent, t.carts.c.restore_url.is_(None)) == 1


def test_the_event_api_also_keeps_an_erased_shopper_out(client: TestClient, shop: World) -> None:
    post(client, "checkouts/create", fixture("checkouts_create"))
    post(client, "customers/redact", fixture("customers_redact"))
    event = {
        "id": "api-1",
        "type": "checkout.updated",
        "occurred_at": shop.now.isoformat(),
        "cart_token": "api-cart",
        "contact": {"phone": PHONE},
        "lines": [{"title": "Mittens", "quantity": 1, "price": "10.00"}],
        "currency": "NOK",
    }
    answer = client.post("/v1/events", json=event, headers={"Authorization": "Bearer cbk_test_key"})
    assert answer.json()["results"][0]["status"] == "accepted"
    # Whether the shopper was erased is found when the event is applied; its inbox row says so.
    with shop.app.engine.connect() as conn:
        detail = conn.execute(
            select(t.inbox.c.detail).where(t.inbox.c.event_id == "api-1")
        ).scalar_one()
    assert detail == ERASED
    assert traces_left(shop) == [] and count(shop, t.enrollments) == 1


def test_redact_without_a_suppression_key_is_refused_and_changes_nothing(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    for world in _world(database_url, tmp_path):
        with TestClient(create_app(world.app)) as client:
            post(client, "checkouts/create", fixture("checkouts_create"))
            response = post(client, "customers/redact", fixture("customers_redact"))
        assert response.status_code == 503
        assert "CARTBACK_SUPPRESSION_KEY" in response.json()["detail"]
        assert count(world, t.shop_deliveries) == 1
        assert count(world, t.contacts, t.contacts.c.erased_at.is_(None)) == 1


def test_a_data_request_writes_an_export_of_what_is_held(client: TestClient, shop: World) -> None:
    a_shopper_with_history(client, shop)
    post(client, "customers/data_request", fixture("customers_data_request"))
    export_dir = shop.app.settings.export_dir
    assert export_dir is not None
    (path,) = export_dir.glob("data-request-*-6001.json")
    export = json.loads(path.read_text())
    (held,) = export["contacts"]
    assert held["contact"]["phone"] == PHONE
    assert [entry["channel"] for entry in held["consent"]] == ["sms", "email", "email"]
    assert [order["order_ref"] for order in held["orders"]] == ["880001"]
    assert len(held["messages"]) == 1 and held["carts"][0]["token"] == "ck-9f1c2a7e"


def test_shop_redact_erases_every_shopper_of_the_store(client: TestClient, shop: World) -> None:
    post(client, "checkouts/create", fixture("checkouts_create"))
    other = fixture("checkouts_create") | {
        "token": "ck-other",
        "email": "someone@example.com",
        "sms_marketing_phone": "+4798765432",
    }
    other["shipping_address"] = {"country_code": "NO"}
    other["customer"] = {}
    post(client, "checkouts/create", other)
    assert count(shop, t.contacts, t.contacts.c.erased_at.is_(None)) == 2
    assert post(client, "shop/redact", fixture("shop_redact")).status_code == 200
    assert count(shop, t.contacts, t.contacts.c.erased_at.is_(None)) == 0
    assert traces_left(shop) == []
    assert count(shop, t.shop_deliveries, t.shop_deliveries.c.payload.is_not(None)) == 0


runner = CliRunner()
CONNECT = ["shops", "connect", "shopify", "--store", "test", "--shop-domain", SHOP_DOMAIN]


def _env(world: World, **extra: str) -> dict[str, str]:
    return {
        "CARTBACK_DATABASE_URL": world.app.settings.database_url,
        "CARTBACK_SUPPRESSION_KEY": SUPPRESSION_KEY,
        **extra,
    }


def test_contacts_erase_and_export_from_the_command_line(client: TestClient, shop: World) -> None:
    a_shopper_with_history(client, shop)
    exported = runner.invoke(cli, ["contacts", "export", EMAIL, "--store", "test"], env=_env(shop))
    assert exported.exit_code == 0, exported.output
    assert json.loads(exported.stdout)["contacts"][0]["contact"]["email"] == EMAIL
    no_key = _env(shop) | {"CARTBACK_SUPPRESSION_KEY": ""}
    refused = runner.invoke(cli, ["contacts", "erase", PHONE, "--store", "test"], env=no_key)
    assert refused.exit_code == 2 and "CARTBACK_SUPPRESSION_KEY" in refused.stderr
    erased = runner.invoke(cli, ["contacts", "erase", PHONE, "--store", "test"], env=_env(shop))
    assert erased.exit_code == 0, erased.output
    assert traces_left(shop) == []


def test_shops_connect_keeps_references_and_list_masks_them(shop: World, tmp_path: Path) -> None:
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text("a-file-secret\n")
    literal = runner.invoke(
        cli,
        [*CONNECT, "--secret", "shpss_plain_text"],
        env=_env(shop),
    )
    assert literal.exit_code == 2 and "env:NAME or file:PATH" in literal.stderr
    done = runner.invoke(
        cli,
        [*CONNECT, "--secret", f"file:{secret_file}", "--previous-secret", f"env:{SECRET_ENV}"],
        env=_env(shop, **{SECRET_ENV: SECRET}),
    )
    assert done.exit_code == 0, done.output
    listed = runner.invoke(cli, ["shops", "list"], env=_env(shop, COLUMNS="200"))
    assert listed.exit_code == 0, listed.output
    assert "file:…/secret.txt" in listed.stdout and f"env:{SECRET_ENV}" in listed.stdout
    assert "a-file-secret" not in listed.stdout and str(tmp_path) not in listed.stdout
    with shop.app.engine.connect() as conn:
        stored = repr(conn.execute(select(t.shop_connections)).all())
    assert "a-file-secret" not in stored and SECRET not in stored


def test_shops_replay_and_prune_from_the_command_line(client: TestClient, shop: World) -> None:
    body = body_of(fixture("checkouts_create"))
    client.post(PATH, content=body, headers=headers_for("checkouts/create", body, webhook_id="w9"))
    replayed = runner.invoke(cli, ["shops", "replay", "w9"], env=_env(shop))
    assert replayed.exit_code == 0, replayed.output
    assert "duplicate" in replayed.stdout
    missing = runner.invoke(cli, ["shops", "replay", "nope"], env=_env(shop))
    assert missing.exit_code == 2
    # The CLI's clock is the real one, days past the test clock's receive time.
    keep_one_day = _env(shop, CARTBACK_SHOP_PAYLOAD_RETENTION_DAYS="1")
    pruned = runner.invoke(cli, ["shops", "prune"], env=keep_one_day)
    assert pruned.exit_code == 0 and "1 payloads older than 1 days" in pruned.stdout
    gone = runner.invoke(cli, ["shops", "replay", "w9"], env=_env(shop))
    assert gone.exit_code == 2 and "retention" in gone.stderr
