"""Normalised inputs from shops and the event API. Each keeps the raw payload it came from."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
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
    # The shipping (else billing) address's postal code, as the shop sent it.
    postal_code: str | None = None
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
    # The event type, for the flows it can start: "checkout.updated", or "cart.updated" for a
    # cart seen before checkout (its contact, if any, comes from the shop's customer account,
    # and it carries no consent).
    trigger: str = "checkout.updated"


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
    # Where the shop says the consent came from (Shopify's `consent_collected_from`, its
    # `opt_in_level`): kept in the ledger entry's evidence.
    evidence: Mapping[str, str] | None = None
    raw: Mapping[str, Any] = field(default_factory=dict)


ShopEvent = CheckoutUpdated | OrderPlaced | CartEmptied | ConsentChanged


@dataclass(frozen=True, slots=True)
class ContactErasureRequested:
    """The shop asks that everything held about one shopper be erased (GDPR art. 17)."""

    event_id: str
    occurred_at: datetime
    contact: ContactInfo
    raw: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DataRequested:
    """The shop asks for a copy of what is held about one shopper (GDPR art. 15)."""

    event_id: str
    occurred_at: datetime
    contact: ContactInfo
    request_id: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StoreErasureRequested:
    """The shop has left: erase every shopper's data held for it."""

    event_id: str
    occurred_at: datetime
    raw: Mapping[str, Any] = field(default_factory=dict)


PrivacyRequest = ContactErasureRequested | DataRequested | StoreErasureRequested


class DeliveryStatus(StrEnum):
    """What a provider reports about one message. Forward only: sent → delivered | failed."""

    # The provider handed it on (accepted by the carrier, buffered, en route).
    SENT = "sent"
    DELIVERED = "delivered"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class DeliveryUpdate:
    """One delivery report. `message_key` is our `cb-<outbox id>` where the provider echoes it
    (a callback URL parameter, a client reference); otherwise the message is found by
    `provider_id`."""

    provider: str
    status: DeliveryStatus
    provider_id: str | None = None
    message_key: str | None = None
    at: datetime | None = None
    # The provider's or carrier's own code, kept as text (Twilio 30003, Vonage err-code 9,
    # SMPP message_state 5, a DLR status 16).
    error_code: str | None = None
    error: str | None = None
    # A failure that no retry can fix: an invalid number, a landline, a closed mailbox.
    permanent: bool = False
    # The carrier or provider says the recipient opted out (Twilio 21610, Vonage 9 on a US
    # number): the address is suppressed for marketing.
    opted_out: bool = False
    segments: int | None = None
    cost: Decimal | None = None
    raw: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class InboundReply:
    """A message a shopper sent us: an SMS reply (MO) or, later, an email reply."""

    provider: str
    channel: Channel
    # The shopper's address: E.164 for SMS. `to` is our sender (long code, short code, id).
    sender: str
    text: str
    to: str | None = None
    provider_id: str | None = None
    at: datetime | None = None
    raw: Mapping[str, Any] = field(default_factory=dict)
