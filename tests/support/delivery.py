"""A store that sends through (fake) Twilio, its callback routes, and a support webhook."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select

from cartback.channels.twilio import TwilioChannel
from cartback.core.model import Channel
from cartback.services.dispatch import Dispatcher, DispatchStats
from cartback.services.providers import ChannelResolver, set_provider
from cartback.store import tables as t
from cartback.web.app import create_app
from tests.support.twilio import ACCOUNT_SID, AUTH_TOKEN, SENDER, FakeTwilio, callback
from tests.support.world import World

TOKEN_VARIABLE = "CARTBACK_TEST_TWILIO_TOKEN"
ENVIRON = {TOKEN_VARIABLE: AUTH_TOKEN}


def use_twilio(world: World) -> None:
    with world.app.engine.begin() as conn:
        set_provider(
            conn,
            store_id=world.store.id,
            kind=Channel.SMS,
            provider="twilio",
            options={"account_sid": ACCOUNT_SID, "from": SENDER},
            secrets={"auth_token": f"env:{TOKEN_VARIABLE}"},
            now=world.now,
        )


def resolver(
    world: World, fake: FakeTwilio, defaults: dict[Channel, Any] | None = None
) -> ChannelResolver:
    return ChannelResolver(
        defaults or {},
        base_url=world.app.settings.base_url,
        timeout=2.0,
        environ=ENVIRON,
        factories={"twilio": lambda config: TwilioChannel(config, transport=fake.transport())},
    )


def dispatch(
    world: World, fake: FakeTwilio, defaults: dict[Channel, Any] | None = None
) -> DispatchStats:
    defaults = defaults or {Channel.SMS: _Unused(), Channel.EMAIL: _Unused(Channel.EMAIL)}
    dispatcher = Dispatcher(
        world.app.engine,
        defaults,
        clock=world.clock.now,
        resolver=resolver(world, fake, defaults),
        send_timeout=timedelta(seconds=5),
    )
    try:
        return dispatcher.run_once(world.now)
    finally:
        dispatcher.close()


class _Unused:
    """The global channel, which a store with its own provider must never reach."""

    name = "unused"

    def __init__(self, kind: Channel = Channel.SMS) -> None:
        self.kind = kind
        self.sent: list[Any] = []

    def send(self, message: Any) -> Any:
        from cartback.ports import SendResult, SendStatus

        self.sent.append(message)
        return SendResult(SendStatus.ACCEPTED, provider_id="global")

    def lookup(self, key: str) -> Any:
        from cartback.ports import LookupStatus

        return LookupStatus.UNKNOWN

    def close(self) -> None:
        return None


@contextmanager
def hooks(world: World) -> Iterator[TestClient]:
    """The web app, its provider callbacks resolving the token from ENVIRON."""
    api = create_app(world.app)
    api.state.channel_resolver.environ = ENVIRON
    with TestClient(api) as client:
        yield client


def hook_url(world: World, kind: str, query: str = "") -> tuple[str, str]:
    """(the path to call, the public URL Twilio signs)."""
    path = f"/hooks/channel/twilio/test/{kind}" + (f"?{query}" if query else "")
    return path, world.app.settings.base_url.rstrip("/") + path


def post_signed(
    client: TestClient, world: World, kind: str, form: dict[str, str], query: str = ""
) -> Any:
    path, url = hook_url(world, kind, query)
    body, headers = callback(url, form)
    return client.post(path, content=body, headers=headers)


def status_form(sid: str, status: str, error_code: str | None = None) -> dict[str, str]:
    form = {
        "MessageSid": sid,
        "SmsSid": sid,
        "AccountSid": ACCOUNT_SID,
        "From": SENDER,
        "To": "+4791234567",
        "MessageStatus": status,
        "SmsStatus": status,
        "ApiVersion": "2010-04-01",
    }
    if error_code:
        form["ErrorCode"] = error_code
    return form


def inbound_form(
    text: str, sid: str = "SM" + "9" * 32, sender: str = "+4791234567"
) -> dict[str, str]:
    return {
        "MessageSid": sid,
        "SmsSid": sid,
        "AccountSid": ACCOUNT_SID,
        "From": sender,
        "To": SENDER,
        "Body": text,
        "NumSegments": "1",
        "ApiVersion": "2010-04-01",
    }


def outbox(world: World) -> list[dict[str, Any]]:
    with world.app.engine.connect() as conn:
        return [
            dict(row) for row in conn.execute(select(t.outbox).order_by(t.outbox.c.id)).mappings()
        ]


@dataclass
class SupportInbox:
    """A store's support webhook on loopback: keeps each JSON body it was sent."""

    received: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""


@contextmanager
def support_webhook() -> Iterator[SupportInbox]:
    inbox = SupportInbox()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            inbox.received.append(json.loads(self.rfile.read(length)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    inbox.url = f"http://127.0.0.1:{server.server_address[1]}/support"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield inbox
    finally:
        server.shutdown()
        server.server_close()
