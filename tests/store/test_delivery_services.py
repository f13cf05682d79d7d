"""Delivery reports, replies and per-store channels in the store, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import select, update

from cartback.core.events import DeliveryStatus, DeliveryUpdate, InboundReply
from cartback.core.model import Channel
from cartback.ports import OutboundMessage, SendResult, SendStatus
from cartback.services.admin import NewStore, create_store
from cartback.services.delivery import Applied, apply_delivery
from cartback.services.ingest import ingest
from cartback.services.providers import set_provider
from cartback.services.replies import on_reply
from cartback.services.tick import tick
from cartback.store import tables as t
from tests.support.delivery import _Unused, dispatch, outbox, use_twilio
from tests.support.events import checkout
from tests.support.twilio import FakeTwilio
from tests.support.world import World


def _queued(world: World, token: str = "c1", phone: str = "+4791234567") -> None:
    flow = world.app.registry.current("default")
    with world.app.engine.begin() as conn:
        ingest(conn, world.store, flow, [checkout(token, world.now, phone=phone)], world.now)
    world.clock.advance(timedelta(minutes=25))
    tick(world.app.engine, world.app.registry, world.now)


def _ledger(world: World) -> list[Any]:
    with world.app.engine.connect() as conn:
        return list(
            conn.execute(select(t.consent_events).order_by(t.consent_events.c.id)).mappings()
        )


def _reply(world: World, text: str, sid: str, sender: str = "+4791234567") -> Any:
    reply = InboundReply("twilio", Channel.SMS, sender, text, to="+15550001111", provider_id=sid)
    with world.app.engine.begin() as conn:
        return on_reply(conn, world.store, reply, world.now)


def test_a_receipt_settles_a_message_left_unknown(world: World) -> None:
    use_twilio(world)
    _queued(world)
    with world.app.engine.begin() as conn:
        conn.execute(update(t.outbox).values(status="unknown", error="stopped mid-send"))
    row = outbox(world)[0]
    report = DeliveryUpdate(
        "twilio", DeliveryStatus.DELIVERED, "SM1", f"cb-{row['id']}", cost=Decimal("0.04")
    )
    with world.app.engine.begin() as conn:
        [first] = apply_delivery(conn, world.store, [report], world.now)
        [again] = apply_delivery(conn, world.store, [report], world.now)
    assert (first.applied, again.applied) == (Applied.CHANGED, Applied.UNCHANGED)
    row = outbox(world)[0]
    assert (row["status"], row["provider_id"], row["error"]) == ("delivered", "SM1", None)
    assert row["delivered_at"] == world.now and row["cost"] == Decimal("0.04")


def test_a_report_for_another_store_s_message_is_unknown(world: World) -> None:
    _queued(world)
    row = outbox(world)[0]
    with world.app.engine.begin() as conn:
        other = create_store(
            conn, NewStore(slug="other", name="O", brand="O", flow_name="default"), world.now
        )
        report = DeliveryUpdate("twilio", DeliveryStatus.DELIVERED, message_key=f"cb-{row['id']}")
        [outcome] = apply_delivery(conn, other, [report], world.now)
    assert outcome.applied is Applied.UNKNOWN


def test_a_provider_opt_out_fails_for_good_and_suppresses(world: World) -> None:
    use_twilio(world)
    _queued(world)
    fake = FakeTwilio(answers=[("error_21610.json", 400)])
    stats = dispatch(world, fake)
    assert (stats.failed, stats.retried) == (1, 0)
    row = outbox(world)[0]
    assert (row["status"], row["error_code"], row["provider"]) == ("failed", "21610", "twilio")
    assert row["failed_at"] is not None
    last = _ledger(world)[-1]
    assert (last["source"], last["granted"], last["purpose"]) == ("provider", False, "marketing")
    assert "delivery.opted_out" in last["wording"]
    world.clock.advance(timedelta(hours=2))
    dispatch(world, fake)
    assert len(fake.requests) == 1


def test_each_store_sends_through_its_own_provider(world: World) -> None:
    use_twilio(world)
    with world.app.engine.begin() as conn:
        other = create_store(
            conn,
            NewStore(
                slug="plain",
                name="Plain",
                brand="Plain",
                flow_name="default",
                default_zone="Europe/Oslo",
                domains=("shop.example",),
                postal_address="2 Test Street, Oslo",
            ),
            world.now,
        )
    flow = world.app.registry.current("default")
    with world.app.engine.begin() as conn:
        ingest(conn, world.store, flow, [checkout("a", world.now, phone="+4791111111")], world.now)
        ingest(conn, other, flow, [checkout("b", world.now, phone="+4792222222")], world.now)
    world.clock.advance(timedelta(minutes=25))
    tick(world.app.engine, world.app.registry, world.now)
    fake, default = FakeTwilio(), _Unused()
    dispatch(world, fake, {Channel.SMS: default, Channel.EMAIL: _Unused(Channel.EMAIL)})
    assert [form["To"] for form in fake.requests] == ["+4791111111"]
    assert [message.to for message in default.sent] == ["+4792222222"]


def test_new_settings_are_used_on_the_next_batch(world: World) -> None:
    from tests.support.delivery import resolver

    use_twilio(world)
    fake = FakeTwilio()
    channels = resolver(world, fake)
    with world.app.engine.begin() as conn:
        channels.refresh(conn, [world.store.id])
    first = channels.channel(world.store.id, Channel.SMS)
    with world.app.engine.begin() as conn:
        set_provider(
            conn,
            store_id=world.store.id,
            kind=Channel.SMS,
            provider="twilio",
            options={"account_sid": "AC00000000000000000000000000000001", "from": "+15559990000"},
            secrets={"auth_token": "env:CARTBACK_TEST_TWILIO_TOKEN"},
            now=world.now,
        )
        channels.refresh(conn, [world.store.id])
    second = channels.channel(world.store.id, Channel.SMS)
    assert second is not first
    second.send(OutboundMessage("cb-1", Channel.SMS, "+4791234567", "hi"))
    assert fake.requests[-1]["From"] == "+15559990000"
    channels.close()


def test_an_unresolvable_secret_holds_the_message_back(world: World) -> None:
    _queued(world)
    with world.app.engine.begin() as conn:
        set_provider(
            conn,
            store_id=world.store.id,
            kind=Channel.SMS,
            provider="twilio",
            options={"account_sid": "AC1", "from": "+15550001111"},
            secrets={"auth_token": "env:CARTBACK_TEST_NOT_SET"},
            now=world.now,
        )
    fake = FakeTwilio()
    stats = dispatch(world, fake)
    row = outbox(world)[0]
    assert (stats.retried, row["status"]) == (1, "pending")
    assert "CARTBACK_TEST_NOT_SET" in row["error"] and fake.requests == []


def test_stop_commits_the_opt_out_with_the_reply_and_confirms_once(world: World) -> None:
    _queued(world)
    first = _reply(world, "Stop", "SM-a")
    again = _reply(world, "Stop", "SM-a")
    second = _reply(world, "STOP please", "SM-b")
    assert (first.action, again.duplicate, second.action) == (
        "opted_out",
        True,
        "already_opted_out",
    )
    services = [row for row in outbox(world) if row["service_key"]]
    assert [row["service_key"] for row in services] == [f"reply:{first.reply_id}"]
    assert [row["status"] for row in outbox(world) if not row["service_key"]] == ["cancelled"]
    assert [e["source"] for e in _ledger(world)][-2:] == ["keyword_reply", "keyword_reply"]


def test_a_stop_from_an_unknown_number_is_kept(world: World) -> None:
    outcome = _reply(world, "please stop texting me", "SM-x", sender="+4799999999")
    assert outcome.action == "opted_out"
    with world.app.engine.connect() as conn:
        contact = (
            conn.execute(select(t.contacts).where(t.contacts.c.phone == "+4799999999"))
            .mappings()
            .one()
        )
    assert contact["opted_out_at"] is not None


def test_an_unsure_stop_opts_out_and_is_flagged(world: World) -> None:
    _queued(world)
    outcome = _reply(world, "when does the sale end", "SM-u")
    assert outcome.action == "opted_out" and not outcome.classification.confident
    with world.app.engine.connect() as conn:
        assert conn.execute(select(t.replies.c.needs_review)).scalar() is True


def test_only_a_start_of_the_shopper_s_own_resubscribes(world: World) -> None:
    _queued(world)
    _reply(world, "STOP", "SM-1")
    world.clock.advance(timedelta(minutes=1))
    inside = _reply(world, "yes I want the red one", "SM-2")
    assert inside.action == "forwarding" or inside.action == "recorded"
    back = _reply(world, "START", "SM-3")
    assert back.action == "resubscribed"
    with world.app.engine.connect() as conn:
        contact = conn.execute(select(t.contacts)).mappings().one()
        keys = conn.execute(select(t.outbox.c.step_id).where(t.outbox.c.service_key.is_not(None)))
        assert contact["sms_marketing"] is True
        assert list(keys.scalars()) == ["reply.stop", "reply.start"]


def test_service_messages_are_sent_with_the_channel_s_result(world: World) -> None:
    _queued(world)
    _reply(world, "STOP", "SM-1")
    default = _Unused()
    default_result = SendResult(SendStatus.ACCEPTED, provider_id="x", segments=1)
    default.send = lambda message: (default.sent.append(message), default_result)[1]  # type: ignore[method-assign]
    dispatch(world, FakeTwilio(), {Channel.SMS: default, Channel.EMAIL: _Unused(Channel.EMAIL)})
    assert len(default.sent) == 1 and "unsubscribed" in default.sent[0].body
