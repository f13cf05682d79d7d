"""Outbound webhooks: a delivery row per event in the transaction that caused it, sent signed by
the worker, retried with backoff on failure, given up after N, never twice on success."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update

from cartback.core.consent import ConsentSource
from cartback.core.model import Channel, Purpose
from cartback.ports import LookupStatus, OutboundMessage, SendResult, SendStatus
from cartback.services import outbound
from cartback.services.consent import record_consent
from cartback.services.dispatch import Dispatcher
from cartback.services.ingest import ingest
from cartback.services.retry import RetryPolicy
from cartback.services.tick import tick
from cartback.store import tables as t
from tests.support.events import checkout, order
from tests.support.recording import recording_server
from tests.support.world import World

SECRET = "whsec_test_0123456789"
ENV = {"HOOK_SECRET": SECRET}


class Accepting:
    name = "recorder"
    kind = Channel.SMS

    def send(self, message: OutboundMessage) -> SendResult:
        return SendResult(SendStatus.ACCEPTED, provider_id="p-1")

    def lookup(self, key: str) -> LookupStatus:
        return LookupStatus.UNKNOWN

    def close(self) -> None:
        return None


def _ok(method: str, path: str, body: Any) -> tuple[int, Any]:
    return 200, {"ok": True}


def _subscribe(world: World, url: str, events: tuple[str, ...] = outbound.EVENTS) -> int:
    with world.app.engine.begin() as conn:
        return outbound.add_endpoint(
            conn, world.store.id, url, events, "env:HOOK_SECRET", world.now
        )


@contextmanager
def _sender(world: World, **options: Any) -> Iterator[outbound.WebhookSender]:
    options.setdefault("timeout", 2.0)
    sender = outbound.WebhookSender(world.app.engine, clock=world.clock.now, environ=ENV, **options)
    try:
        yield sender
    finally:
        sender.close()


def _deliveries(world: World) -> list[dict[str, Any]]:
    d = t.webhook_deliveries.c
    with world.app.engine.connect() as conn:
        rows = conn.execute(select(t.webhook_deliveries).order_by(d.id)).mappings()
        return [dict(row) for row in rows]


def _recovered_cart(world: World) -> None:
    """A cart abandoned, its first message sent, then ordered; then the shopper says STOP."""
    flow = world.app.registry.current("default")
    with world.app.engine.begin() as conn:
        ingest(conn, world.store, flow, [checkout("c1", world.now)], world.now)
    world.clock.advance(timedelta(minutes=25))
    tick(world.app.engine, world.app.registry, world.now)
    dispatcher = Dispatcher(
        world.app.engine,
        {Channel.SMS: Accepting(), Channel.EMAIL: Accepting()},  # type: ignore[dict-item]
        clock=world.clock.now,
    )
    try:
        dispatcher.run_once(world.now)
    finally:
        dispatcher.close()
    world.clock.advance(timedelta(minutes=5))
    with world.app.engine.begin() as conn:
        ingest(conn, world.store, flow, [order("c1", world.now)], world.now)
        contact_id = conn.execute(select(t.contacts.c.id)).scalar_one()
        record_consent(
            conn,
            store_id=world.store.id,
            contact_id=contact_id,
            channel=Channel.SMS,
            purpose=Purpose.MARKETING,
            granted=False,
            source=ConsentSource.KEYWORD_REPLY,
            at=world.now,
        )


def test_each_event_arrives_once_signed_over_timestamp_and_body(world: World) -> None:
    with recording_server(_ok) as server:
        _subscribe(world, server.url + "/hook")
        _recovered_cart(world)
        with _sender(world) as sender:
            sender.run_once()
            sender.run_once()
            world.clock.advance(timedelta(hours=1))
            sender.run_once()
    types = [request.body["type"] for request in server.requests]
    assert sorted(types) == sorted(outbound.EVENTS)
    assert len(set(types)) == len(types)  # no duplicate on success
    for request in server.requests:
        headers = {name.lower(): value for name, value in request.headers.items()}
        assert outbound.verify(
            SECRET, headers["cartback-timestamp"], request.raw, headers["cartback-signature"]
        )
        assert not outbound.verify("another-secret", headers["cartback-timestamp"], request.raw,
                                   headers["cartback-signature"])  # fmt: skip
        assert headers["cartback-event"] == request.body["type"]
        assert headers["cartback-delivery"] == request.body["id"]
        assert request.body["store"] == "test"
    by_type = {request.body["type"]: request.body["data"] for request in server.requests}
    assert by_type["cart.abandoned"]["cart_token"] == "c1"
    assert by_type["cart.recovered"]["order_id"] == "o-c1"
    assert by_type["message.sent"]["channel"] in ("sms", "email")
    assert by_type["contact.opted_out"]["phone"] == "+4791234567"
    # A sent message's body and address never leave in a webhook.
    assert "to" not in by_type["message.sent"] and "body" not in by_type["message.sent"]
    assert {row["status"] for row in _deliveries(world)} == {"delivered"}


def test_an_order_without_a_sent_message_is_no_recovery(world: World) -> None:
    _subscribe(world, "http://127.0.0.1:9/never")
    flow = world.app.registry.current("default")
    with world.app.engine.begin() as conn:
        ingest(conn, world.store, flow, [checkout("c1", world.now)], world.now)
        ingest(conn, world.store, flow, [order("c1", world.now)], world.now)
    assert _deliveries(world) == []


def test_a_500_is_retried_with_backoff_then_delivered_once(world: World) -> None:
    answers = iter([500, 200])

    def flaky(method: str, path: str, body: Any) -> tuple[int, Any]:
        return next(answers, 200), {}

    with recording_server(flaky) as server:
        _subscribe(world, server.url, (outbound.CART_ABANDONED,))
        _enqueue_abandoned(world)
        with _sender(world) as sender:
            sender.run_once()
            row = _deliveries(world)[0]
            assert (row["status"], row["attempts"], row["error"]) == ("pending", 1, "HTTP 500")
            wait = row["available_at"] - world.now
            assert timedelta(seconds=15) <= wait <= timedelta(seconds=30)
            assert sender.run_once() == 0  # not before its backoff
            world.clock.advance(timedelta(seconds=31))
            sender.run_once()
            world.clock.advance(timedelta(hours=1))
            assert sender.run_once() == 0
    assert len(server.requests) == 2
    assert server.requests[0].body["id"] == server.requests[1].body["id"]
    row = _deliveries(world)[0]
    assert (row["status"], row["attempts"]) == ("delivered", 2)


def test_a_delivery_is_given_up_after_max_attempts_with_the_reason(world: World) -> None:
    def failing(method: str, path: str, body: Any) -> tuple[int, Any]:
        return 503, {}

    with recording_server(failing) as server:
        _subscribe(world, server.url, (outbound.CART_ABANDONED,))
        _enqueue_abandoned(world)
        with _sender(world, retry=RetryPolicy(max_attempts=2)) as sender:
            for _ in range(4):
                sender.run_once()
                world.clock.advance(timedelta(hours=2))
    assert len(server.requests) == 2
    row = _deliveries(world)[0]
    assert row["status"] == "failed"
    assert row["error"] == "gave up after 2 attempts: HTTP 503"


def test_one_bad_endpoint_does_not_hold_up_another(world: World) -> None:
    release = threading.Event()

    def hanging(method: str, path: str, body: Any) -> tuple[int, Any]:
        release.wait(5)
        return 200, {}

    with recording_server(hanging) as slow, recording_server(_ok) as good:
        _subscribe(world, "http://127.0.0.1:9/refused", (outbound.CART_ABANDONED,))
        _subscribe(world, slow.url, (outbound.CART_ABANDONED,))
        _subscribe(world, good.url, (outbound.CART_ABANDONED,))
        _enqueue_abandoned(world)
        with _sender(world, timeout=0.5) as sender:
            sender.run_once()
        release.set()
    assert len(good.requests) == 1
    statuses = [row["status"] for row in _deliveries(world)]
    assert statuses == ["pending", "pending", "delivered"]


def test_a_producer_run_twice_writes_one_delivery(world: World) -> None:
    _subscribe(world, "http://127.0.0.1:9/hook")
    _enqueue_abandoned(world)
    _enqueue_abandoned(world)
    assert len(_deliveries(world)) == 1


def test_a_store_without_endpoints_writes_nothing(world: World) -> None:
    _enqueue_abandoned(world)
    assert _deliveries(world) == []


def test_an_unresolvable_secret_is_retried_with_its_reason(world: World) -> None:
    with recording_server(_ok) as server:
        _subscribe(world, server.url, (outbound.CART_ABANDONED,))
        _enqueue_abandoned(world)
        sender = outbound.WebhookSender(world.app.engine, clock=world.clock.now, environ={})
        try:
            sender.run_once()
        finally:
            sender.close()
    assert server.requests == []
    row = _deliveries(world)[0]
    assert row["status"] == "pending"
    assert "HOOK_SECRET is not set" in row["error"]
    assert SECRET not in json.dumps(row, default=str)


def _enqueue_abandoned(world: World) -> None:
    """The timer's producer, for an enrollment at its first step."""
    flow = world.app.registry.current("default")
    with world.app.engine.begin() as conn:
        ingest(conn, world.store, flow, [checkout("c1", world.now)], world.now)
        rows = list(conn.execute(select(t.enrollments)).mappings())
        outbound.carts_abandoned(conn, rows, world.now)
        conn.execute(update(t.enrollments).values(updated_at=world.now))


def test_finished_deliveries_are_pruned_and_waiting_ones_kept(world: World) -> None:
    endpoint = _subscribe(world, "http://127.0.0.1:9/hook", (outbound.CART_ABANDONED,))
    _enqueue_abandoned(world)
    d = t.webhook_deliveries.c
    with world.app.engine.begin() as conn:
        waiting = conn.execute(select(t.webhook_deliveries)).mappings().one()
        for key, status in (("old-delivered", "delivered"), ("old-failed", "failed")):
            conn.execute(
                t.webhook_deliveries.insert().values(
                    {
                        **{k: v for k, v in waiting.items() if k != "id"},
                        "event_key": key,
                        "status": status,
                    }
                )
            )
        conn.execute(update(t.webhook_deliveries).values(updated_at=world.now - timedelta(days=40)))
        assert outbound.prune(conn, world.now - timedelta(days=30)) == 2
        left = conn.execute(select(d.status, d.endpoint_id)).all()
    assert [tuple(row) for row in left] == [("pending", endpoint)]
