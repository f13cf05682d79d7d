"""Synthetic checkouts across 20 countries, for the benchmark, the tests and a first look at a
flow before a store has history of its own. Seeded: the same seed and index give the same
shopper, so a sample can be cut into shards that each process makes for itself."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from cartback.core.events import CheckoutUpdated, ConsentFlags, ContactInfo, OrderPlaced, ShopEvent
from cartback.core.model import CartLine


@dataclass(frozen=True, slots=True)
class Country:
    code: str
    # An E.164 prefix under which any 4 more digits make a valid mobile number.
    phone_prefixes: tuple[str, ...]
    regions: tuple[str | None, ...]
    locale: str
    currency: str
    # A typical price level, in the currency: 1 for USD.
    scale: int


COUNTRIES = (
    Country(
        "US",
        ("+1305555", "+1212555", "+1415555", "+1512555", "+1206555"),
        ("FL", "NY", "CA", "TX", "WA"),
        "en",
        "USD",
        1,
    ),
    Country("CA", ("+1506555", "+1416555"), ("NB", "ON"), "en", "CAD", 1),
    Country("GB", ("+44740012",), (None,), "en", "GBP", 1),
    Country("IE", ("+35385012",), (None,), "en", "EUR", 1),
    Country("NO", ("+474061",), (None,), "nb", "NOK", 10),
    Country("SE", ("+4670123",), (None,), "sv", "SEK", 10),
    Country("DK", ("+453441",), (None,), "da", "DKK", 7),
    Country("FI", ("+35841234",), (None,), "fi", "EUR", 1),
    Country("DE", ("+491512345",), (None,), "de", "EUR", 1),
    Country("FR", ("+3361234",), (None,), "fr", "EUR", 1),
    Country("ES", ("+3461234",), (None,), "es", "EUR", 1),
    Country("IT", ("+39312345",), (None,), "en", "EUR", 1),
    Country("NL", ("+3161234",), (None,), "nl", "EUR", 1),
    Country("BE", ("+3245000",), (None,), "nl", "EUR", 1),
    Country("AT", ("+4366412",), (None,), "de", "EUR", 1),
    Country("CH", ("+4178123",), (None,), "de", "CHF", 1),
    Country("PL", ("+4851234",), (None,), "en", "PLN", 4),
    Country("PT", ("+35191234",), (None,), "en", "EUR", 1),
    Country("AU", ("+6141234",), (None,), "en", "AUD", 1),
    Country("NZ", ("+6421123",), (None,), "en", "NZD", 1),
)
FIRST_NAMES = (
    "Emma",
    "Noah",
    "Olivia",
    "Liam",
    "Nora",
    "Jakob",
    "Ingrid",
    "Lars",
    "Sofia",
    "Lucas",
    "Maja",
    "Elias",
    "Léa",
    "Hugo",
    "Lucía",
    "Mateo",
    "Anna",
    "Jan",
    "Aino",
    "Mia",
)
PRODUCTS = (
    ("Wool socks", 12),
    ("Rain jacket", 120),
    ("Trail runners", 140),
    ("Linen shirt", 55),
    ("Leather belt", 40),
    ("Merino beanie", 30),
    ("Down vest", 160),
    ("Canvas tote", 25),
    ("🧦 Holiday socks", 15),
    ("Waterproof hiking boots with Vibram sole", 210),
    ("Cashmere scarf", 95),
    ("Sunglasses", 80),
)
START = datetime(2026, 9, 1, tzinfo=UTC)
SPAN = timedelta(days=30)


def shopper(seed: int, index: int) -> list[list[ShopEvent]]:
    """Shopper `index`: one cart, or two; some update their cart, some order on their own."""
    return [[_event(document) for document in cart] for cart in shopper_documents(seed, index)]


def shopper_documents(seed: int, index: int) -> list[list[dict[str, Any]]]:
    """The same shopper as event API documents (what a JSON-lines history holds)."""
    rng = random.Random(seed * 1_000_003 + index)
    country = COUNTRIES[index % len(COUNTRIES)]
    slot = rng.randrange(len(country.phone_prefixes))
    has_phone, has_email = rng.random() < 0.8, rng.random() < 0.85
    if not (has_phone or has_email):
        has_email = True
    first = rng.choice(FIRST_NAMES)
    contact = {
        "phone": f"{country.phone_prefixes[slot]}{rng.randrange(10_000):04d}"
        if has_phone
        else None,
        "email": f"shopper{index}@example.com" if has_email else None,
        "first_name": first if rng.random() < 0.9 else None,
        "locale": country.locale,
    }
    sms = rng.random() < 0.6
    consent = {
        "sms_marketing": sms,
        "email_marketing": rng.random() < 0.8,
        "cart_reminders": sms and rng.random() < 0.7,
        "double_opt_in": rng.random() < 0.5,
    }
    shipping = {"country": country.code, "region": country.regions[slot % len(country.regions)]}
    carts = []
    for number in range(2 if rng.random() < 0.1 else 1):
        token = f"s{seed}-{index}-{number}"
        at = START + timedelta(seconds=rng.randrange(int(SPAN.total_seconds())))
        lines = [
            {
                "title": title,
                "quantity": rng.choice((1, 1, 1, 2)),
                "price": f"{price * country.scale}.00",
            }
            for title, price in rng.sample(PRODUCTS, rng.choice((1, 1, 2, 3)))
        ]
        checkout = {
            "id": f"{token}-c",
            "type": "checkout.updated",
            "occurred_at": at.isoformat(),
            "cart_token": token,
            "contact": {key: value for key, value in contact.items() if value is not None},
            "shipping": {key: value for key, value in shipping.items() if value is not None},
            "lines": lines,
            "currency": country.currency,
            "restore_url": f"https://shop.example/cart/{token}",
            "consent": consent,
        }
        cart = [checkout]
        if rng.random() < 0.1:
            later = at + timedelta(minutes=rng.randrange(1, 30))
            cart.append(
                {
                    **checkout,
                    "id": f"{token}-u",
                    "occurred_at": later.isoformat(),
                    "lines": lines[:1],
                }
            )
        if rng.random() < 0.05:
            ordered = at + timedelta(hours=rng.randrange(1, 96))
            total = sum(
                (Decimal(str(line["price"])) * int(line["quantity"]) for line in lines), Decimal(0)
            )
            cart.append(
                {
                    "id": f"{token}-o",
                    "type": "order.placed",
                    "occurred_at": ordered.isoformat(),
                    "order_id": f"o-{token}",
                    "cart_token": token,
                    "value": str(total),
                    "currency": country.currency,
                }
            )
        carts.append(cart)
    return carts


def write_jsonl(path: Path, seed: int, carts: int) -> int:
    """Write shoppers until `carts` carts are written; the number of carts written."""
    written = 0
    index = 0
    with path.open("w", encoding="utf-8") as handle:
        while written < carts:
            for cart in shopper_documents(seed, index)[: carts - written]:
                for document in cart:
                    handle.write(json.dumps(document, ensure_ascii=False) + "\n")
                written += 1
            index += 1
    return written


def shoppers(seed: int, start: int, stop: int) -> Iterator[list[list[ShopEvent]]]:
    for index in range(start, stop):
        yield shopper(seed, index)


def _event(document: dict[str, Any]) -> ShopEvent:
    """The document as the event API turns it into an event (web/convert.py), without the
    validation a generated document does not need."""
    at = datetime.fromisoformat(document["occurred_at"]).astimezone(UTC)
    if document["type"] == "order.placed":
        return OrderPlaced(
            event_id=document["id"],
            occurred_at=at,
            order_id=document["order_id"],
            value=Decimal(document["value"]),
            currency=document["currency"],
            cart_token=document["cart_token"],
        )
    shipping = document.get("shipping", {})
    lines = tuple(
        CartLine(line["title"], line["quantity"], Decimal(line["price"]))
        for line in document["lines"]
    )
    consent = document["consent"]
    return CheckoutUpdated(
        event_id=document["id"],
        occurred_at=at,
        cart_token=document["cart_token"],
        contact=ContactInfo(
            **document["contact"], country=shipping.get("country"), region=shipping.get("region")
        ),
        lines=lines,
        value=sum((line.total for line in lines), start=Decimal(0)),
        currency=document["currency"],
        restore_url=document["restore_url"],
        consent=ConsentFlags(**consent),
    )
