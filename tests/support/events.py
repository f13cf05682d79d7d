"""Builders for shop events and API payloads used across the tests."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from cartback.core.events import (
    CartEmptied,
    CheckoutUpdated,
    ConsentFlags,
    ContactInfo,
    OrderPlaced,
)
from cartback.core.model import CartLine


def checkout(
    token: str,
    at: datetime,
    *,
    event_id: str | None = None,
    phone: str | None = "+4791234567",
    email: str | None = "kari@example.com",
    sms: bool = True,
    email_ok: bool = True,
    title: str = "Wool socks",
    price: str = "60.00",
    quantity: int = 2,
    first_name: str = "Kari",
) -> CheckoutUpdated:
    lines = (CartLine(title=title, quantity=quantity, price=Decimal(price)),) if quantity else ()
    return CheckoutUpdated(
        event_id=event_id or f"co-{token}-{at.isoformat()}",
        occurred_at=at,
        cart_token=token,
        contact=ContactInfo(phone=phone, email=email, first_name=first_name, country="NO"),
        lines=lines,
        value=sum((line.total for line in lines), start=Decimal(0)),
        currency="NOK",
        restore_url=f"https://shop.example/cart/{token}",
        consent=ConsentFlags(sms_marketing=sms, email_marketing=email_ok),
    )


def order(
    token: str | None,
    at: datetime,
    *,
    order_id: str | None = None,
    value: str = "120",
    email: str | None = None,
    phone: str | None = None,
) -> OrderPlaced:
    """An order; with `email` or `phone` it names the shopper (an order from another device
    passes a token the store never saw, or None)."""
    contact = ContactInfo(email=email, phone=phone) if (email or phone) else None
    return OrderPlaced(
        event_id=f"order-{order_id or token}",
        occurred_at=at,
        order_id=order_id or f"o-{token}",
        value=Decimal(value),
        currency="NOK",
        cart_token=token,
        contact=contact,
    )


def emptied(token: str, at: datetime) -> CartEmptied:
    return CartEmptied(event_id=f"empty-{token}-{at.isoformat()}", occurred_at=at, cart_token=token)


def checkout_payload(token: str, at: datetime, **overrides: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "id": f"evt-{token}-{at.timestamp():.0f}",
        "type": "checkout.updated",
        "occurred_at": at.isoformat(),
        "cart_token": token,
        "contact": {
            "phone": "+4791234567",
            "email": "kari@example.com",
            "first_name": "Kari",
            "locale": "nb",
        },
        "shipping": {"country": "NO"},
        "lines": [{"title": "Wool socks", "quantity": 2, "price": "60.00"}],
        "currency": "NOK",
        "restore_url": f"https://shop.example/cart/{token}",
        "consent": {"sms_marketing": True, "email_marketing": True},
    }
    payload.update(overrides)
    return payload
