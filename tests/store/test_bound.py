"""The worker's listeners (`services/bound.py`) on SQLite and PostgreSQL: SMPP binds drained,
inMobile's pull endpoints collected, each item applied in its own transaction and kept for a
later try when its transaction fails."""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import httpx
import pytest
from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError

from cartback.channels.inmobile import InMobileChannel
from cartback.core.events import DeliveryStatus, DeliveryUpdate, InboundReply
from cartback.core.model import Channel
from cartback.ports import ProviderConfig
from cartback.services import bound
from cartback.services.bound import Listeners
from cartback.services.ingest import ingest
from cartback.services.providers import ChannelResolver, list_providers, set_provider
from cartback.services.tick import tick
from cartback.store import tables as t
from cartback.worker import Worker
from tests.support.delivery import outbox
from tests.support.events import checkout
from tests.support.procs import wait_for
from tests.support.world import World, make_world

PHONE = "+4791234567"
ENVIRON = {"INMOBILE_KEY": "key-1"}


def _sent_sms(world: World) -> int:
    """A checkout whose first SMS is out (status `sent`); its outbox id."""
    flow = world.app.registry.current("default")
    with world.app.engine.begin() as conn:
        ingest(conn, world.store, flow, [checkout("c1", world.now, phone=PHONE)], world.now)
    world.clock.advance(timedelta(minutes=25))
    tick(world.app.engine, world.app.registry, world.now)
    [row] = outbox(world)
    with world.app.engine.begin() as conn:
        conn.execute(update(t.outbox).values(status="sent", sent_at=world.now))
    return int(row["id"])


def _use(world: World, provider: str, **options: str) -> None:
    secrets = {"api_key": "env:INMOBILE_KEY"} if provider == "inmobile" else {}
    with world.app.engine.begin() as conn:
        set_provider(
            conn,
            store_id=world.store.id,
            kind=Channel.SMS,
            provider=provider,
            options=options,
            secrets=secrets,
            now=world.now,
            known=[provider],
        )


def _listeners(world: World, factories: dict[str, Any]) -> Listeners:
    resolver = ChannelResolver(
        {},
        base_url=world.app.settings.base_url,
        timeout=2.0,
        environ=ENVIRON,
        factories=factories,
    )
    return Listeners(
        world.app.engine,
        resolver,
        clock=world.clock.now,
        stop=threading.Event(),
        poll_seconds=0.05,
        pull_seconds=30,
        forward_timeout=2.0,
    )


def _contact(world: World) -> Any:
    with world.app.engine.connect() as conn:
        return conn.execute(select(t.contacts)).mappings().one()


class InMobileInbox:
    """inMobile's pull endpoints: each item handed out once, then an empty list."""

    def __init__(self, reports: list[dict[str, Any]], messages: list[dict[str, Any]]) -> None:
        self.waiting = {"/v4/sms/outgoing/reports": reports, "/v4/sms/incoming/messages": messages}
        self.calls: list[str] = []

    def answer(self, request: httpx.Request) -> httpx.Response:
        self.calls.append(request.url.path)
        items, self.waiting[request.url.path] = self.waiting[request.url.path], []
        envelope = "reports" if "reports" in request.url.path else "messages"
        return httpx.Response(200, json={envelope: items})

    def factory(self, config: ProviderConfig) -> InMobileChannel:
        return InMobileChannel(config, transport=httpx.MockTransport(self.answer))


def _inmobile_world(world: World) -> tuple[int, InMobileInbox]:
    outbox_id = _sent_sms(world)
    _use(world, "inmobile", **{"from": "Shop"})
    report = {
        "messageId": f"cb-{outbox_id}",
        "deliveryInfo": {"stateCode": 1, "doneTime": "2026-12-01T10:05:07Z"},
        "chargeInfo": {"smsCount": 1},
    }
    stop = {
        "from": {"countryCode": "47", "phoneNumber": "91234567", "isValidMsisdn": True},
        "to": {"msisdn": "4519000000"},
        "text": "STOP",
        "receivedAt": "2026-12-01T10:10:00Z",
    }
    return outbox_id, InMobileInbox([report], [stop])


def test_pulled_reports_and_replies_are_applied(world: World) -> None:
    outbox_id, inbox = _inmobile_world(world)
    listeners = _listeners(world, {"inmobile": inbox.factory})
    assert listeners.pull_once() == 2
    [sms1, confirmation] = outbox(world)
    assert (sms1["id"], sms1["status"]) == (outbox_id, "delivered")
    assert sms1["delivered_at"] is not None
    assert confirmation["step_id"] == "reply.stop"
    assert _contact(world)["opted_out_at"] is not None
    # Not due again before CARTBACK_PULL_SECONDS; when forced, nothing new comes.
    assert listeners.pull_once() == 0
    assert len(inbox.calls) == 2
    assert listeners.pull_once(force=True) == 0
    assert len(outbox(world)) == 2


def test_pulled_items_are_kept_when_their_transaction_fails(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    outbox_id, inbox = _inmobile_world(world)
    listeners = _listeners(world, {"inmobile": inbox.factory})
    real = bound.apply_delivery
    failures = iter([OperationalError("UPDATE outbox", {}, Exception("database is locked"))])

    def flaky(*args: Any, **kwargs: Any) -> Any:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return real(*args, **kwargs)

    monkeypatch.setattr(bound, "apply_delivery", flaky)
    clock = [0.0]
    listeners.pulled.monotonic = lambda: clock[0]
    # The report fails; the reply (the next item) is applied all the same.
    assert listeners.pull_once() == 1
    assert outbox(world)[0]["delivered_at"] is None
    assert _contact(world)["opted_out_at"] is not None
    assert len(listeners.pulled.held) == 1
    clock[0] = 1.0  # before its backoff ends: not yet
    assert listeners.pulled.retry() == 0
    clock[0] = 60.0
    assert listeners.pulled.retry() == 1
    assert outbox(world)[0]["id"] == outbox_id
    assert outbox(world)[0]["delivered_at"] is not None
    # inMobile was asked once for each: the held item came from memory, not a second pull.
    assert inbox.calls == ["/v4/sms/outgoing/reports", "/v4/sms/incoming/messages"]


class FakeBind:
    """An SMPP channel's listening side: events queued as the bind thread would queue them."""

    built: ClassVar[list[FakeBind]] = []

    def __init__(self, config: ProviderConfig) -> None:
        self.config = config
        self.events: queue.Queue[DeliveryUpdate | InboundReply] = queue.Queue()
        self.started = self.closed = False
        FakeBind.built.append(self)

    def start(self) -> None:
        self.started = True

    def drain(self, limit: int) -> list[DeliveryUpdate | InboundReply]:
        taken: list[DeliveryUpdate | InboundReply] = []
        while len(taken) < limit and not self.events.empty():
            taken.append(self.events.get_nowait())
        return taken

    def close(self) -> None:
        self.closed = True

    def send(self, message: Any) -> Any:
        raise AssertionError("not sent here")

    def lookup(self, key: str) -> Any:
        raise AssertionError("not looked up here")


def _receipt(outbox_id: int, status: DeliveryStatus, **fields: Any) -> DeliveryUpdate:
    return DeliveryUpdate("smpp", status, f"5a00{outbox_id}", f"cb-{outbox_id}", **fields)


def test_smpp_binds_are_opened_and_drained_even_when_nothing_is_sent(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bound, "REFRESH_SECONDS", 0.0)
    FakeBind.built = []
    outbox_id = _sent_sms(world)
    _use(world, "smpp", host="127.0.0.1", system_id="cb")
    listeners = _listeners(world, {"smpp": FakeBind})
    assert listeners.drain_once() == 0
    [first] = FakeBind.built
    assert first.started and not first.closed
    first.events.put(_receipt(outbox_id, DeliveryStatus.DELIVERED))
    first.events.put(InboundReply("smpp", Channel.SMS, PHONE, "stop", to="Shop"))
    assert listeners.drain_once() == 2
    assert outbox(world)[0]["delivered_at"] is not None
    assert _contact(world)["opted_out_at"] is not None

    # New settings: a new bind; the old one is drained through its grace, then closed.
    _use(world, "smpp", host="127.0.0.1", system_id="cb2")
    listeners.grace_seconds = 3600
    listeners.drain_once()
    old, new = FakeBind.built
    assert new.started and not old.closed
    old.events.put(InboundReply("smpp", Channel.SMS, PHONE, "help", to="Shop"))
    assert listeners.drain_once() == 1
    listeners.grace_seconds = 0
    listeners._retiring = [(0.0, store, channel) for _, store, channel in listeners._retiring]
    listeners.drain_once()
    assert old.closed and not new.closed

    # At shutdown the bind closes first, then what it queued meanwhile is applied.
    new.events.put(InboundReply("smpp", Channel.SMS, PHONE, "info please", to="Shop"))
    listeners.finish()
    assert new.closed
    steps = [row["step_id"] for row in outbox(world)]
    assert steps == ["sms1", "reply.stop", "reply.help", "reply.help"]


def test_settings_read_before_a_change_never_build_the_old_bind_again(world: World) -> None:
    FakeBind.built = []
    _use(world, "smpp", host="127.0.0.1", system_id="cb")
    listeners = _listeners(world, {"smpp": FakeBind})
    with world.app.engine.connect() as conn:
        [old] = list_providers(conn)
    _use(world, "smpp", host="127.0.0.1", system_id="cb2")
    with world.app.engine.connect() as conn:
        [new] = list_providers(conn)
    first = listeners.resolver.build(old)
    current = listeners.resolver.build(new)
    # A dispatcher batch that read the settings before the change asks for the old version.
    assert listeners.resolver.build(old) is current is not first
    assert len(FakeBind.built) == 2


def test_an_item_that_keeps_failing_is_given_up_and_blocks_nothing(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bound, "REFRESH_SECONDS", 0.0)
    FakeBind.built = []
    outbox_id = _sent_sms(world)
    _use(world, "smpp", host="127.0.0.1", system_id="cb")
    listeners = _listeners(world, {"smpp": FakeBind})
    listeners.drain_once()
    [channel] = FakeBind.built
    # A receipt naming a store's message, but with a status no database can hold.
    poison = DeliveryUpdate("smpp", "x" * 10_000, None, f"cb-{outbox_id}")  # type: ignore[arg-type]
    channel.events.put(poison)
    channel.events.put(_receipt(outbox_id, DeliveryStatus.FAILED, error_code="001"))
    clock = [0.0]
    listeners.drained.monotonic = lambda: clock[0]
    listeners.drain_once()
    row = outbox(world)[0]
    assert (row["status"], row["error_code"]) == ("failed", "001")
    for _ in range(bound.MAX_ATTEMPTS + 1):
        clock[0] += bound.MAX_BACKOFF_SECONDS + 1
        listeners.drain_once()
    assert not listeners.drained.held


def test_a_store_whose_bind_cannot_be_built_is_logged_once(
    world: World, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(bound, "REFRESH_SECONDS", 0.0)
    with world.app.engine.begin() as conn:
        set_provider(
            conn,
            store_id=world.store.id,
            kind=Channel.SMS,
            provider="smpp",
            options={"host": "127.0.0.1", "system_id": "cb"},
            secrets={"password": "env:CB_TEST_UNSET_SMPP_PASSWORD"},
            now=world.now,
            known=["smpp"],
        )
    listeners = _listeners(world, {"smpp": FakeBind})
    with caplog.at_level("ERROR", logger="cartback.bound"):
        for _ in range(3):
            assert listeners.drain_once() == 0
    said = [record.getMessage() for record in caplog.records]
    assert len(said) == 1 and "CB_TEST_UNSET_SMPP_PASSWORD" in said[0]


def test_log_lines_name_ids_only() -> None:
    reply = InboundReply("smpp", Channel.SMS, PHONE, "stop texting me", provider_id="m1")
    report = DeliveryUpdate("smpp", DeliveryStatus.FAILED, "5a001", "cb-7", error="stat:UNDELIV")
    said = json.dumps([bound.describe(reply), bound.describe(report)])
    assert PHONE not in said and "stop" not in said
    assert "cb-7" in said and "5a001" in said and "m1" in said


def test_a_running_worker_pulls_inmobile_on_its_interval(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INMOBILE_KEY", "key-1")
    with (
        make_world(database_url, pull_seconds=1.0, worker_poll_seconds=0.05) as world,
        _inmobile_server() as (server_url, calls),
    ):
        outbox_id = _sent_sms(world)
        _use(world, "inmobile", **{"from": "Shop", "base_url": server_url})
        calls.reports.append(
            {"messageId": f"cb-{outbox_id}", "deliveryInfo": {"stateCode": -1, "errorCode": "7"}}
        )
        worker = Worker(world.app)
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        try:
            wait_for(lambda: outbox(world)[0]["failed_at"] is not None, 20, "the pulled report")
            # Polled again on its interval, though nothing more is waiting.
            wait_for(lambda: calls.asked >= 4, 20, "a second pull")
        finally:
            worker.stop.set()
            thread.join(timeout=30)
        assert not thread.is_alive()
        assert outbox(world)[0]["error_code"] == "7"


@dataclass
class _Waiting:
    reports: list[dict[str, Any]] = field(default_factory=list)
    asked: int = 0


@contextmanager
def _inmobile_server() -> Iterator[tuple[str, _Waiting]]:
    """inMobile's pull endpoints on loopback: what is waiting, handed out once."""
    waiting = _Waiting()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            waiting.asked += 1
            if self.path.startswith("/v4/sms/outgoing/reports"):
                body = {"reports": waiting.reports}
                waiting.reports = []
            else:
                body = {"messages": []}
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", waiting
    finally:
        server.shutdown()
        server.server_close()
