"""Tracked links, the open pixel and one-click unsubscribe, through the HTTP app."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from cartback.core.links import is_valid_token
from cartback.services.ingest import ingest
from cartback.services.tick import tick
from cartback.store import tables as t
from cartback.web.app import create_app
from tests.support.events import checkout
from tests.support.world import World

BROWSER = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15"


@pytest.fixture
def client(world: World) -> Iterator[TestClient]:
    with TestClient(create_app(world.app), follow_redirects=False) as test_client:
        yield test_client


def _send_first_steps(world: World, **options: Any) -> None:
    flow = world.app.registry.current("default")
    with world.app.engine.begin() as conn:
        ingest(conn, world.store, flow, [checkout("c1", world.now, **options)], world.now)
    # The timer fires at each step's due time: sms1 at 25 minutes, email1 at 70.
    for wait in (timedelta(minutes=25), timedelta(minutes=45)):
        world.clock.advance(wait)
        tick(world.app.engine, world.app.registry, world.now, base_url="https://go.example")


def _message(world: World, step: str) -> dict[str, Any]:
    with world.app.engine.connect() as conn:
        row = conn.execute(select(t.outbox).where(t.outbox.c.step_id == step)).mappings().one()
    return dict(row)


def _token(world: World, step: str, purpose: str) -> str:
    with world.app.engine.connect() as conn:
        return str(
            conn.execute(
                select(t.links.c.token).where(
                    t.links.c.step_id == step, t.links.c.purpose == purpose
                )
            ).scalar_one()
        )


def test_every_message_carries_a_tracked_link_not_the_raw_url(world: World) -> None:
    _send_first_steps(world)
    sms = _message(world, "sms1")
    token = _token(world, "sms1", "click")
    assert is_valid_token(token) and len(token) == 17
    assert f"https://go.example/l/{token}" in sms["body"]
    assert "shop.example/cart" not in sms["body"]


def test_a_human_click_redirects_and_counts_for_conditions(
    client: TestClient, world: World
) -> None:
    _send_first_steps(world)
    token = _token(world, "email1", "click")
    response = client.get(f"/l/{token}", headers={"User-Agent": BROWSER})
    assert response.status_code == 302
    location = response.headers["location"]
    assert location.startswith("https://shop.example/cart/c1?")
    assert "utm_medium=email" in location and "utm_content=email1" in location
    assert response.headers["cache-control"] == "no-store"
    assert _message(world, "email1")["clicked_at"] is not None


@pytest.mark.parametrize(
    ("method", "agent", "headers", "kind"),
    [
        ("GET", "facebookexternalhit/1.1", {}, "bot"),
        ("GET", "Slackbot-LinkExpanding 1.0", {}, "bot"),
        ("HEAD", BROWSER, {}, "head"),
        ("GET", BROWSER, {"Sec-Purpose": "prefetch"}, "prefetch"),
    ],
)
def test_previews_and_prefetches_are_counted_apart_and_do_not_count_as_clicks(
    client: TestClient, world: World, method: str, agent: str, headers: dict[str, str], kind: str
) -> None:
    _send_first_steps(world)
    token = _token(world, "sms1", "click")
    response = client.request(method, f"/l/{token}", headers={"User-Agent": agent, **headers})
    assert response.status_code == 302
    assert _message(world, "sms1")["clicked_at"] is None
    with world.app.engine.connect() as conn:
        kinds = conn.execute(select(t.clicks.c.kind)).scalars().all()
    assert kinds == [kind]


@pytest.mark.parametrize(
    "token",
    ["nope", "0" * 17, "AAAAAAAAAAAAAAAAA", "../../etc/passwd", "javascript:alert(1)"],
)
def test_a_tampered_or_unknown_token_is_404_with_no_redirect(
    client: TestClient, world: World, token: str
) -> None:
    _send_first_steps(world)
    response = client.get(f"/l/{token}", headers={"User-Agent": BROWSER})
    assert response.status_code == 404
    assert "location" not in response.headers


def test_a_destination_off_the_store_domains_is_never_followed(
    client: TestClient, world: World
) -> None:
    _send_first_steps(world)
    token = _token(world, "sms1", "click")
    with world.app.engine.begin() as conn:
        conn.execute(update(t.links).values(destination="https://evil.example/phish"))
    response = client.get(f"/l/{token}", headers={"User-Agent": BROWSER})
    assert response.status_code == 404


def test_a_restore_url_off_the_store_domains_skips_the_step_with_a_reason(world: World) -> None:
    flow = world.app.registry.current("default")
    event = checkout("c1", world.now)
    from dataclasses import replace

    event = replace(event, restore_url="https://evil.example/cart")
    with world.app.engine.begin() as conn:
        ingest(conn, world.store, flow, [event], world.now)
    world.clock.advance(timedelta(minutes=25))
    tick(world.app.engine, world.app.registry, world.now)
    with world.app.engine.connect() as conn:
        decision = conn.execute(
            select(t.decisions.c.outcome, t.decisions.c.rule, t.decisions.c.reason)
        ).one()
    assert (decision.outcome, decision.rule) == ("skip", "link")
    assert "evil.example" in decision.reason


def test_the_open_pixel_marks_the_email_opened(client: TestClient, world: World) -> None:
    _send_first_steps(world)
    token = _token(world, "email1", "open")
    assert f"/o/{token}.gif" in str(_message(world, "email1")["html"])
    response = client.get(f"/o/{token}.gif", headers={"User-Agent": BROWSER})
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/gif"
    assert _message(world, "email1")["opened_at"] is not None


def test_marketing_email_has_one_click_unsubscribe_headers(world: World) -> None:
    _send_first_steps(world)
    message = _message(world, "email1")
    token = _token(world, "email1", "unsubscribe")
    assert message["headers"] == {
        "List-Unsubscribe": f"<https://go.example/u/{token}>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }
    assert "1 Test Street, Oslo" in message["body"]
    assert f"https://go.example/u/{token}" in message["body"]


def test_get_shows_a_page_and_post_unsubscribes_without_login(
    client: TestClient, world: World
) -> None:
    _send_first_steps(world)
    token = _token(world, "email1", "unsubscribe")
    page = client.get(f"/u/{token}")
    assert page.status_code == 200 and '<form method="post"' in page.text
    with world.app.engine.connect() as conn:
        assert conn.execute(select(t.contacts.c.email_marketing)).scalar_one() is True
    done = client.post(f"/u/{token}", content=b"List-Unsubscribe=One-Click")
    assert done.status_code == 200 and "unsubscribed" in done.text
    again = client.post(f"/u/{token}", content=b"List-Unsubscribe=One-Click")
    assert again.status_code == 200
    with world.app.engine.connect() as conn:
        assert conn.execute(select(t.contacts.c.email_marketing)).scalar_one() is False
        sources = conn.execute(select(t.consent_events.c.source)).scalars().all()
    assert sources.count("unsubscribe_link") == 2
    # The shopper opted out: the rest of this recovery stops, on every channel.
    world.clock.advance(timedelta(days=4))
    tick(world.app.engine, world.app.registry, world.now)
    with world.app.engine.connect() as conn:
        steps = conn.execute(select(t.outbox.c.step_id)).scalars().all()
    assert sorted(steps) == ["email1", "sms1"]


def test_a_store_without_a_postal_address_sends_no_marketing_email(world: World) -> None:
    with world.app.engine.begin() as conn:
        conn.execute(update(t.stores).values(postal_address=None))
    _send_first_steps(world)
    with world.app.engine.connect() as conn:
        email = conn.execute(
            select(t.decisions.c.outcome, t.decisions.c.rule).where(
                t.decisions.c.step_id == "email1"
            )
        ).one()
    assert tuple(email) == ("skip", "can_spam.postal_address")


def test_contact_consent_history_over_the_api(client: TestClient, world: World) -> None:
    _send_first_steps(world)
    with world.app.engine.connect() as conn:
        contact_id = conn.execute(select(t.contacts.c.id)).scalar_one()
    response = client.get(
        f"/v1/contacts/{contact_id}/consent", headers={"Authorization": "Bearer cbk_test_key"}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["current"]["sms"]["marketing"] is True
    assert [entry["source"] for entry in body["history"]] == ["checkout", "checkout"]
    missing = client.get(
        "/v1/contacts/999999/consent", headers={"Authorization": "Bearer cbk_test_key"}
    )
    assert missing.status_code == 404
