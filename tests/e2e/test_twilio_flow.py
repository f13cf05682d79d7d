"""End to end through the Twilio channel (over httpx.MockTransport) and the callback routes:
a flow sends an SMS, the status callback marks it delivered so `sms1.delivered` holds, a STOP
opts the shopper out with exactly one confirmation, HELP gets the help text once, and free text
reaches the store's support webhook and the cart's timeline."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from cartback.core.render import help_reply, opt_out_confirmation
from cartback.services.ingest import ingest
from cartback.services.tick import tick
from cartback.store import tables as t
from tests.support.delivery import (
    dispatch,
    hooks,
    inbound_form,
    outbox,
    post_signed,
    status_form,
    support_webhook,
    use_twilio,
)
from tests.support.events import checkout
from tests.support.twilio import FakeTwilio
from tests.support.world import World, make_world

FLOW = """\
name: delivered
abandon_after: 10m
exit_on: [order_placed, cart_emptied, opted_out]
holdout: 0
steps:
  - id: sms1
    at: 15m
    channel: sms
    when: contact.sms_consent
    body: 'Hi {{ first_name }}, your cart is waiting: {{ link }}'
  - id: sms2
    at: 2h30m
    channel: sms
    when: sms1.delivered
    body: 'Still thinking about it? {{ link }}'
  - id: sms3
    at: 5h
    channel: sms
    body: 'Last call for your cart: {{ link }}'
"""


@pytest.fixture
def flow_world(database_url: str, tmp_path: Path) -> Iterator[World]:
    flows = tmp_path / "flows"
    flows.mkdir()
    (flows / "delivered.yaml").write_text(FLOW)
    with make_world(database_url, flow="delivered", flows_dir=flows) as made:
        use_twilio(made)
        yield made


def _start(world: World) -> None:
    flow = world.app.registry.current("delivered")
    with world.app.engine.begin() as conn:
        ingest(conn, world.store, flow, [checkout("c1", world.now)], world.now)


def _tick_at(world: World, offset: timedelta, start: object) -> None:
    world.clock.set(start + offset)  # type: ignore[operator]
    tick(world.app.engine, world.app.registry, world.now)


def test_sms_delivered_then_stop_then_later_steps_skipped(flow_world: World) -> None:
    world, fake = flow_world, FakeTwilio()
    start = world.now
    _start(world)
    _tick_at(world, timedelta(minutes=25), start)
    assert dispatch(world, fake).sent == 1
    [sms1] = outbox(world)
    assert (sms1["status"], sms1["provider"], sms1["segments"]) == ("sent", "twilio", 2)
    [form] = fake.requests
    assert form["StatusCallback"].endswith(f"/hooks/channel/twilio/test/status?key=cb-{sms1['id']}")

    with hooks(world) as client:
        answer = post_signed(
            client,
            world,
            "status",
            status_form(sms1["provider_id"], "delivered"),
            query=f"key=cb-{sms1['id']}",
        )
        assert answer.status_code == 200, answer.text
        assert outbox(world)[0]["delivered_at"] is not None

        _tick_at(world, timedelta(hours=2, minutes=45), start)
        assert [row["step_id"] for row in outbox(world)] == ["sms1", "sms2"]
        assert dispatch(world, fake).sent == 1

        for _ in range(3):
            answer = post_signed(client, world, "inbound", inbound_form("STOP"))
            assert answer.status_code == 200
            assert "<Response/>" in answer.text
    confirmations = [row for row in outbox(world) if row["service_key"] is not None]
    assert len(confirmations) == 1
    assert confirmations[0]["body"] == opt_out_confirmation("TestShop", None)
    with world.app.engine.connect() as conn:
        contact = conn.execute(select(t.contacts)).mappings().one()
        assert contact["opted_out_at"] is not None and not contact["sms_marketing"]
        assert conn.execute(select(t.replies.c.action)).scalars().all() == ["opted_out"]

    stats = dispatch(world, fake)
    assert stats.sent == 1  # the confirmation goes out although the shopper opted out
    assert fake.requests[-1]["Body"] == confirmations[0]["body"]

    _tick_at(world, timedelta(hours=5, minutes=15), start)
    assert [row["step_id"] for row in outbox(world)] == ["sms1", "sms2", "reply.stop"]
    with world.app.engine.connect() as conn:
        enrollment = conn.execute(select(t.enrollments)).mappings().one()
    assert enrollment["exit_reason"] == "opted_out"
    assert dispatch(world, fake).sent == 0
    assert len(fake.requests) == 3


def test_without_a_delivery_report_the_delivered_step_is_skipped(flow_world: World) -> None:
    # The control for the test above: `sms1.delivered` is false until the callback.
    world, fake = flow_world, FakeTwilio()
    start = world.now
    _start(world)
    _tick_at(world, timedelta(minutes=25), start)
    dispatch(world, fake)
    _tick_at(world, timedelta(hours=2, minutes=45), start)
    assert [row["step_id"] for row in outbox(world)] == ["sms1"]


def test_help_gets_the_help_text_once(flow_world: World) -> None:
    world, fake = flow_world, FakeTwilio()
    with world.app.engine.begin() as conn:
        conn.execute(update(t.stores).values(support_contact="help@shop.example"))
    _start(world)
    with hooks(world) as client:
        for _ in range(2):
            assert post_signed(client, world, "inbound", inbound_form("help")).status_code == 200
        post_signed(client, world, "inbound", inbound_form("HELP", sid="SM" + "8" * 32))
    answers = [row for row in outbox(world) if row["step_id"] == "reply.help"]
    # Two different HELP messages get two answers; the same one delivered twice gets one.
    assert len(answers) == 2
    assert answers[0]["body"] == help_reply("TestShop", "en", "help@shop.example")
    dispatch(world, fake)
    assert [form["Body"] for form in fake.requests] == [answers[0]["body"]] * 2


def test_free_text_reaches_the_support_webhook_and_the_timeline(flow_world: World) -> None:
    world = flow_world
    _start(world)
    with support_webhook() as inbox:
        with world.app.engine.begin() as conn:
            conn.execute(update(t.stores).values(support_webhook_url=inbox.url))
        with hooks(world) as client:
            text = "Do you have the socks in blue?"
            for _ in range(2):
                assert post_signed(client, world, "inbound", inbound_form(text)).status_code == 200
            decisions = client.get(
                "/v1/carts/c1/decisions", headers={"Authorization": f"Bearer {world.key}"}
            ).json()
    assert len(inbox.received) == 1
    forwarded = inbox.received[0]
    assert (forwarded["text"], forwarded["from"], forwarded["cart_token"]) == (
        text,
        "+4791234567",
        "c1",
    )
    replies = [d for d in decisions if d["outcome"] == "reply"]
    assert len(replies) == 1 and text in replies[0]["reason"]
    with world.app.engine.connect() as conn:
        reply = conn.execute(select(t.replies)).mappings().one()
    assert (reply["action"], reply["forwarded_at"] is not None) == ("forwarded", True)
    assert [row for row in outbox(world) if row["service_key"]] == []
