"""A shop clock running ahead never outranks the shopper's opt-out (issue 12, defect 2).

Through the HTTP app and the real timer and dispatcher, on SQLite and PostgreSQL: a checkout
that grants consent with a time stamped ahead, then the shopper's one-click unsubscribe (or a
STOP reply); the ledger says unsubscribed and the next message of the recovery is not sent.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from cartback.channels.dev import NullChannel
from cartback.core.events import ConsentChanged, ContactInfo
from cartback.core.model import Channel, Purpose
from cartback.services.dispatch import Dispatcher
from cartback.services.ingest import EventStatus, ingest
from cartback.services.tick import tick
from cartback.store import tables as t
from cartback.web.app import create_app
from tests.support.events import checkout_payload
from tests.support.world import World, make_world

AUTH = {"Authorization": "Bearer cbk_test_key"}
EMAIL_ONLY = {"sms_marketing": False, "email_marketing": True}
SMS_ONLY = {"sms_marketing": True, "email_marketing": False}


@contextmanager
def _running(database_url: str, **settings: Any) -> Iterator[tuple[World, TestClient]]:
    with (
        make_world(database_url, **settings) as world,
        TestClient(create_app(world.app)) as client,
    ):
        yield world, client


def _post_checkout(
    client: TestClient, at: datetime, event_id: str, consent: dict[str, bool]
) -> dict[str, Any]:
    body = checkout_payload("c1", at, id=event_id, consent=consent)
    response = client.post("/v1/events", json=body, headers=AUTH)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()["results"][0]
    return result


def _run_until(world: World, end: datetime) -> None:
    """Move time to `end` in 15-minute steps; the timer and the dispatcher run at each."""
    channels = {channel: NullChannel(channel) for channel in Channel}
    while world.now < end:
        world.clock.advance(min(timedelta(minutes=15), end - world.now))
        tick(world.app.engine, world.app.registry, world.now, base_url="https://go.example")
        dispatcher = Dispatcher(world.app.engine, channels)  # type: ignore[arg-type]
        try:
            dispatcher.run_once(world.now)
        finally:
            dispatcher.close()


def _sent_steps(world: World) -> list[str]:
    o = t.outbox.c
    with world.app.engine.connect() as conn:
        rows = conn.execute(select(o.step_id).where(o.status == "sent").order_by(o.id)).all()
    return [row.step_id for row in rows]


def _unsubscribe_token(world: World) -> str:
    with world.app.engine.connect() as conn:
        return str(
            conn.execute(
                select(t.links.c.token).where(
                    t.links.c.step_id == "email1", t.links.c.purpose == "unsubscribe"
                )
            ).scalar_one()
        )


def _consent(client: TestClient, world: World) -> dict[str, Any]:
    with world.app.engine.connect() as conn:
        contact_id = conn.execute(select(t.contacts.c.id)).scalar_one()
    response = client.get(f"/v1/contacts/{contact_id}/consent", headers=AUTH)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _contact_flags(world: World) -> tuple[bool, bool, datetime | None]:
    c = t.contacts.c
    with world.app.engine.connect() as conn:
        row = conn.execute(select(c.sms_marketing, c.email_marketing, c.opted_out_at)).one()
    return row.sms_marketing, row.email_marketing, row.opted_out_at


@pytest.mark.parametrize(
    ("ahead", "window"),
    [
        # The case: 10 minutes ahead, clamped under the default 5-minute window.
        (timedelta(minutes=10), 300),
        # The same within a wider window: not clamped, so the ledger's receive order alone
        # must put the unsubscribe last.
        (timedelta(minutes=10), 3600),
        # A shop that labels its local time (UTC+2) as UTC: every stamp two hours ahead.
        (timedelta(hours=2), 300),
    ],
    ids=["10min-clamped", "10min-in-window", "local-time-as-utc"],
)
def test_one_click_unsubscribe_beats_a_grant_the_shop_stamped_ahead(
    database_url: str, ahead: timedelta, window: int
) -> None:
    with _running(database_url, future_skew_seconds=window) as (world, client):
        start = world.now
        assert _post_checkout(client, start, "co-1", EMAIL_ONLY)["status"] == "accepted"
        _run_until(world, start + timedelta(hours=1, minutes=10))
        assert _sent_steps(world) == ["email1"]
        token = _unsubscribe_token(world)
        first_opt_out = world.now
        assert client.post(f"/u/{token}").status_code == 200

        # The shopper comes back and ticks the email box at checkout again; the shop's clock
        # runs `ahead`. Then, two minutes later, the shopper unsubscribes again.
        world.clock.advance(timedelta(minutes=30))
        result = _post_checkout(client, world.now + ahead, "co-2", EMAIL_ONLY)
        assert result["status"] == "accepted"
        clamped = ahead > timedelta(seconds=window)
        expected = f"occurred_at was {int(ahead.total_seconds())} s ahead of the receive time"
        assert (expected in (result["detail"] or "")) is clamped
        world.clock.advance(timedelta(minutes=2))
        unsubscribed_at = world.now
        page = client.post(f"/u/{token}")
        assert page.status_code == 200 and "unsubscribed" in page.text.lower()

        consent = _consent(client, world)
        email = consent["current"]["email"]
        assert email["marketing"] is False and email["suppressed"] is True
        # The cached flags agree. A clamped grant never lifted the first opt-out, so the
        # suppression still dates from it; otherwise it dates from the second unsubscribe.
        assert _contact_flags(world) == (
            False,
            False,
            first_opt_out if clamped else unsubscribed_at,
        )
        history = consent["history"]
        assert history[-1]["source"] == "unsubscribe_link"
        assert history[-1]["received_at"] == unsubscribed_at.isoformat()
        # Every entry shows the shop's time beside the receive time.
        assert all({"time", "received_at"} <= set(entry) for entry in history)

        # The rest of the recovery: email2 (24 h) and email3 (72 h) must not go out.
        _run_until(world, start + timedelta(hours=80))
        assert _sent_steps(world) == ["email1"]


def test_a_stop_reply_beats_an_sms_grant_stamped_ahead(world: World) -> None:
    """A STOP reached through the reply source (keyword_reply) after a checkout stamped ahead."""
    flow = world.app.registry.current("default")
    start = world.now
    contact = ContactInfo(phone="+4791234567", email="kari@example.com")
    with TestClient(create_app(world.app)) as client:
        # A first checkout without SMS consent enrolls the cart; sms1 is skipped for want of it.
        assert _post_checkout(client, start, "co-1", {"sms_marketing": False})["status"] == (
            "accepted"
        )
        world.clock.advance(timedelta(minutes=5))
        # The box is ticked on an update the shop stamps 10 minutes ahead.
        _post_checkout(client, world.now + timedelta(minutes=10), "co-2", SMS_ONLY)
        assert _contact_flags(world)[0] is True
        world.clock.advance(timedelta(minutes=1))
        stop = ConsentChanged(
            event_id="reply-1",
            occurred_at=world.now,
            contact=contact,
            channel=Channel.SMS,
            purpose=Purpose.MARKETING,
            granted=False,
            source="keyword_reply",
        )
        with world.app.engine.begin() as conn:
            results = ingest(conn, world.store, flow, [stop], world.now)
        assert [r.status for r in results] == [EventStatus.ACCEPTED]
        sms = _consent(client, world)["current"]["sms"]
        assert sms["marketing"] is False and sms["suppressed"] is True
        assert _contact_flags(world)[0] is False
        _run_until(world, start + timedelta(hours=80))
        assert [step for step in _sent_steps(world) if step.startswith("sms")] == []


def test_a_grant_received_after_the_opt_out_but_stamped_before_it_does_not_resubscribe(
    world: World,
) -> None:
    """A checkout webhook delivered late: the box was ticked before the shopper said stop."""
    with TestClient(create_app(world.app)) as client:
        start = world.now
        _post_checkout(client, start, "co-1", EMAIL_ONLY)
        _run_until(world, start + timedelta(hours=1, minutes=10))
        client.post(f"/u/{_unsubscribe_token(world)}")
        world.clock.advance(timedelta(minutes=5))
        late = _post_checkout(client, world.now - timedelta(minutes=10), "co-late", EMAIL_ONLY)
        assert late["status"] == "accepted"
        assert _consent(client, world)["current"]["email"]["marketing"] is False
        assert _contact_flags(world)[1] is False


def test_a_new_checkout_after_the_opt_out_resubscribes_the_shopper(world: World) -> None:
    """The documented rule: ticking the box at a later checkout is the shopper's own new grant,
    when the checkout is received after the opt-out and stamped after it too."""
    with TestClient(create_app(world.app)) as client:
        start = world.now
        _post_checkout(client, start, "co-1", EMAIL_ONLY)
        _run_until(world, start + timedelta(hours=1, minutes=10))
        client.post(f"/u/{_unsubscribe_token(world)}")
        world.clock.advance(timedelta(minutes=5))
        again = _post_checkout(client, world.now, "co-again", EMAIL_ONLY)
        assert again["status"] == "accepted" and again["detail"] is None
        consent = _consent(client, world)
        assert consent["current"]["email"]["marketing"] is True
        assert consent["history"][-1]["note"] == "re-subscribed by the shopper (checkout)"
        assert _contact_flags(world) == (False, True, None)


def test_a_clamped_checkout_cannot_lift_an_opt_out(world: World) -> None:
    """A shop clock far ahead is no evidence the grant came after the shopper said stop."""
    with TestClient(create_app(world.app)) as client:
        start = world.now
        _post_checkout(client, start, "co-1", EMAIL_ONLY)
        _run_until(world, start + timedelta(hours=1, minutes=10))
        client.post(f"/u/{_unsubscribe_token(world)}")
        world.clock.advance(timedelta(minutes=5))
        ahead = _post_checkout(client, world.now + timedelta(hours=3), "co-ahead", EMAIL_ONLY)
        assert ahead["status"] == "accepted"
        assert ahead["detail"] == "occurred_at was 10800 s ahead of the receive time; clamped"
        assert _consent(client, world)["current"]["email"]["marketing"] is False


def test_consent_show_prints_the_receive_time_beside_the_shops(world: World) -> None:
    from typer.testing import CliRunner

    from cartback.cli import cli

    with TestClient(create_app(world.app)) as client:
        _post_checkout(client, world.now - timedelta(days=3), "co-old", EMAIL_ONLY)
    env = {"CARTBACK_DATABASE_URL": world.app.settings.database_url, "COLUMNS": "220"}
    result = CliRunner().invoke(cli, ["consent", "show", "kari@example.com"], env=env)
    assert result.exit_code == 0, result.output
    assert "received" in result.stdout and "shop time" in result.stdout
    received = world.now.isoformat()[:19]
    shop = (world.now - timedelta(days=3)).isoformat()[:19]
    [line] = [row for row in result.stdout.splitlines() if "checkout" in row]
    assert line.index(received) < line.index(shop)
