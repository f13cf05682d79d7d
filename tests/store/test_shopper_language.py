"""Through the real timer: every message of the default flow in the shopper's language, picked
from the checkout's locale, then the shipping country, then the store's default."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from sqlalchemy import select

from cartback.core.events import CheckoutUpdated
from cartback.services.ingest import ingest
from cartback.services.tick import tick
from cartback.store import tables as t
from tests.support.events import checkout
from tests.support.world import World


def _shopper(event: CheckoutUpdated, *, locale: str | None, country: str | None) -> CheckoutUpdated:
    return replace(event, contact=replace(event.contact, locale=locale, country=country))


def _messages(world: World, *events: CheckoutUpdated) -> dict[str, dict[str, str]]:
    """Per phone number: each step's subject and body, after three days of ticks."""
    flow = world.app.registry.current("default")
    with world.app.engine.begin() as conn:
        ingest(conn, world.store, flow, list(events), world.now)
    for _ in range(100):
        world.clock.advance(timedelta(hours=1))
        tick(world.app.engine, world.app.registry, world.now)
    o = t.outbox.c
    with world.app.engine.connect() as conn:
        rows = conn.execute(select(o.step_id, o.channel, o.subject, o.body, o.contact_id)).all()
        phones = dict(conn.execute(select(t.contacts.c.id, t.contacts.c.phone)).all())
    found: dict[str, dict[str, str]] = {}
    for row in rows:
        text = f"{row.subject or ''}\n{row.body}"
        found.setdefault(phones[row.contact_id], {})[row.step_id] = text
    return found


def test_a_norwegian_checkout_gets_every_message_in_norwegian(world: World) -> None:
    # Shipping to Sweden, but the checkout was in Norwegian: the checkout's locale wins.
    event = _shopper(
        # NOK 1,200: a large cart, so sms3 goes too.
        checkout(
            "nb",
            world.now,
            phone="+4740000001",
            email="kari@x.no",
            title="Ullsokker",
            price="600.00",
        ),
        locale="nb-NO",
        country="SE",
    )
    sent = _messages(world, event)["+4740000001"]
    assert set(sent) == {"sms1", "email1", "sms2", "email2", "sms3", "email3"}
    for step_id, text in sent.items():
        assert any(word in text.lower() for word in ("handlekurv", "rabatt", "påminnelse")), text
        assert "cart" not in text.replace("/cart/", ""), f"{step_id} has English: {text}"
        if step_id.startswith("sms"):
            assert text.endswith("Svar STOPP for å melde deg av")
        else:
            assert "Meld deg av: " in text
    assert "Ullsokker" in sent["sms1"]


def test_without_a_locale_the_shipping_country_decides(world: World) -> None:
    danish = _shopper(
        checkout("dk", world.now, phone="+4520000001", email="a@x.dk"), locale=None, country="DK"
    )
    german = _shopper(
        checkout("at", world.now, phone="+436641234567", email="b@x.at"), locale="", country="AT"
    )
    unknown = _shopper(
        checkout("pl", world.now, phone="+48501234567", email="c@x.pl"), locale="pl", country="PL"
    )
    sent = _messages(world, danish, german, unknown)
    assert "i kurven" in sent["+4520000001"]["sms1"]
    assert "im Warenkorb vergessen" in sent["+436641234567"]["sms1"]
    # Polish is not in the default flow: the store's default (English) speaks for it.
    assert "you left Wool socks in your cart" in sent["+48501234567"]["sms1"]
    assert sent["+48501234567"]["sms1"].endswith("Reply STOP to opt out")
