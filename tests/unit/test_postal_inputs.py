"""The address's postal code reaches the contact from the event API and the shop adapters."""

from __future__ import annotations

import json
from typing import Any

from tests.support.shops import FIXTURES

from cartback.core.events import CheckoutUpdated, ContactInfo
from cartback.shops import shopify
from cartback.web.intake import parse_event_document


def _checkout_contact(items: list[Any]) -> ContactInfo:
    found = [item for item in items if isinstance(item, CheckoutUpdated)]
    assert len(found) == 1, items
    return found[0].contact


def test_the_event_api_reads_the_shipping_postal_code() -> None:
    event = {
        "id": "e1",
        "type": "checkout.updated",
        "occurred_at": "2026-06-09T20:30:00-04:00",
        "cart_token": "c1",
        "contact": {"phone": "+13055550143"},
        "shipping": {"country": "US", "region": "FL", "postal_code": "33130-1234"},
        "lines": [{"title": "Rain jacket", "quantity": 1, "price": "120.00"}],
        "currency": "USD",
    }
    contact = _checkout_contact(list(parse_event_document(json.dumps(event).encode())))
    assert (contact.country, contact.region, contact.postal_code) == ("US", "FL", "33130-1234")


def test_shopify_reads_the_shipping_zip() -> None:
    payload = json.loads((FIXTURES / "shopify" / "checkouts_create.json").read_text())
    payload["shipping_address"].update(
        {"country_code": "US", "province_code": "FL", "zip": "33130"}
    )
    items = shopify.parse({"X-Shopify-Topic": "checkouts/update"}, json.dumps(payload).encode())
    contact = _checkout_contact(list(items))
    assert (contact.country, contact.region, contact.postal_code) == ("US", "FL", "33130")
