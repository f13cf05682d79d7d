"""End to end: a flow's email step, rendered by the timer and sent by the dispatcher through
the SMTP channel, arrives at a real SMTP server; its one-click unsubscribe link, POSTed as a
mailbox provider does (RFC 8058), unsubscribes the contact."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from cartback.channels.smtp import SmtpChannel
from cartback.core.model import Channel
from cartback.ports import ProviderConfig
from cartback.services.consent import ledger, views
from cartback.services.dispatch import Dispatcher
from cartback.services.ingest import ingest
from cartback.services.tick import tick
from cartback.store import tables as t
from cartback.web.app import create_app
from tests.support.events import checkout
from tests.support.smtp import PASSWORD, USERNAME, SmtpServer, smtp_server
from tests.support.world import World

BASE_URL = "https://go.example"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[SmtpServer]:
    with smtp_server(tmp_path, tls="starttls", auth=True) as running:
        yield running


def _smtp(server: SmtpServer) -> SmtpChannel:
    assert server.ca_file is not None
    options = {
        "host": server.host,
        "port": str(server.port),
        "starttls": "true",
        "ca_file": server.ca_file,
        "username": USERNAME,
        "password": PASSWORD,
        "from": "hello@shop.example",
        "from_name": "TestShop",
    }
    return SmtpChannel(ProviderConfig("smtp", Channel.EMAIL, "test", options, "", "", timeout=5.0))


def _due_email(world: World) -> None:
    flow = world.app.registry.current("default")
    with world.app.engine.begin() as conn:
        ingest(conn, world.store, flow, [checkout("c1", world.now)], world.now)
    # The default flow: sms1 at 25 minutes, email1 at 70.
    for wait in (timedelta(minutes=25), timedelta(minutes=45)):
        world.clock.advance(wait)
        tick(world.app.engine, world.app.registry, world.now, base_url=BASE_URL)


def _email_consent(world: World) -> tuple[bool, bool]:
    with world.app.engine.connect() as conn:
        contact_id = conn.execute(select(t.contacts.c.id)).scalar_one()
        view = views(ledger(conn, [contact_id])[contact_id])[Channel.EMAIL]
    return view.marketing, view.suppressed


def test_an_email_step_arrives_and_its_one_click_link_unsubscribes(
    world: World, server: SmtpServer
) -> None:
    _due_email(world)
    channel = _smtp(server)
    dispatcher = Dispatcher(
        world.app.engine, {Channel.EMAIL: channel}, clock=world.clock.now, concurrency=2
    )
    try:
        stats = dispatcher.run_once(world.now)
    finally:
        dispatcher.close()
        channel.close()
    assert stats.sent == 1
    with world.app.engine.connect() as conn:
        row = conn.execute(
            select(t.outbox.c.id, t.outbox.c.status).where(t.outbox.c.step_id == "email1")
        ).one()
    assert row.status == "sent"

    [received] = server.handler.received
    assert received.authenticated_as == USERNAME
    assert received.rcpt_tos == ["kari@example.com"]
    mail = received.message
    assert mail["Message-ID"].startswith(f"<cb-{row.id}.")
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert mail.get_body(("plain",)) is not None and mail.get_body(("html",)) is not None
    found = re.fullmatch(r"<https://go\.example(/u/[A-Za-z0-9]+)>", mail["List-Unsubscribe"])
    assert found is not None, mail["List-Unsubscribe"]

    assert _email_consent(world) == (True, False)
    with TestClient(create_app(world.app)) as client:
        # What a mailbox provider sends: the form body, no cookie, no login.
        response = client.post(
            found.group(1),
            content=b"List-Unsubscribe=One-Click",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
    assert response.status_code == 200
    assert _email_consent(world) == (False, True)
