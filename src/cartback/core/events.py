"""Normalised inputs from shops and the event API. Each keeps the raw payload it came from."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from cartback.core.model import CartLine, Channel, Purpose


@dataclass(frozen=True, slots=True)
class ContactInfo:
    phone: str | None = None
    email: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    locale: str | None = None
    zone: str | None = None
    country: str | None = None
    region: str | None = None
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ConsentFlags:
    """Consent given at checkout. None means the shop did not say, which changes nothing."""

    sms_marketing: bool | None = None
    email_marketing: bool | None = None
    cart_reminders: bool | None = None
    double_opt_in: bool = False
    wording: str | None = None
    ip: str | None = None
    user_agent: str | None = None


@dataclass(frozen=True, slots=True)
class CheckoutUpdated:
    event_id: str
    occurred_at: datetime
    cart_token: str
    contact: ContactInfo
    lines: tuple[CartLine, ...]
    value: Decimal
    currency: str
    restore_url: str | None = None
    consent: ConsentFlags | None = None
    tags: tuple[str, ...] = ()
    raw: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class OrderPlaced:
    event_id: str
    occurred_at: datetime
    order_id: str
    value: Decimal
    currency: str
    cart_token: str | None = None
    contact: ContactInfo | None = None
    raw: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CartEmptied:
    event_id: str
    occurred_at: datetime
    cart_token: str
    raw: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ConsentChanged:
    event_id: str
    occurred_at: datetime
    contact: ContactInfo
    channel: Channel
    purpose: Purpose
    granted: bool
    source: str = "api"
    wording: str | None = None
    ip: str | None = None
    user_agent: str | None = None
    double_opt_in: bool = False
    raw: Mapping[str, Any] = field(default_factory=dict)


ShopEvent = CheckoutUpdated | OrderPlaced | CartEmptied | ConsentChanged
