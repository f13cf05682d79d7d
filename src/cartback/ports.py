"""The boundaries between the application and the world: clocks and message channels."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Protocol
from urllib.parse import parse_qsl

from cartback.core.events import DeliveryUpdate, InboundReply
from cartback.core.model import Channel


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    """One rendered message, ready for a provider. `key` is stable across retries."""

    key: str
    channel: Channel
    to: str
    body: str
    subject: str | None = None
    html: str | None = None
    sender: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    # Quiet hours or the rule's deadline begin here: a provider that can drop a message still
    # queued by then (Twilio's ValidityPeriod, an SMPP validity period) is told so.
    send_before: datetime | None = None


class SendStatus(StrEnum):
    ACCEPTED = "accepted"
    # Definitely not accepted; `retryable` says whether trying again may help.
    REJECTED = "rejected"
    # The provider may or may not have accepted it (a timeout after the request went out).
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class SendResult:
    status: SendStatus
    provider_id: str | None = None
    error: str | None = None
    retryable: bool = False
    cost: Decimal | None = None
    segments: int | None = None
    # The provider's own code for a refusal (Twilio 21610, Vonage 9), kept as text.
    error_code: str | None = None
    # The provider refused because the recipient opted out with it (Twilio 21610): never
    # retried, and the address is suppressed for marketing.
    opted_out: bool = False
    # The provider that answered, when a channel can send through more than one (failover);
    # None means the channel's own `name`.
    provider: str | None = None


class LookupStatus(StrEnum):
    SENT = "sent"
    NOT_SENT = "not_sent"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class LookupResult:
    """A lookup's answer with the provider's id for the message, where the provider gives it."""

    status: LookupStatus
    provider_id: str | None = None


class MessageChannel(Protocol):
    """A provider adapter. `send` must never raise for a provider's answer; it reports it.

    The adapter is built with the provider timeout (`CARTBACK_SEND_TIMEOUT_SECONDS`) and must
    give up on a call after it, answering `UNKNOWN` if the request may have gone out: the
    dispatcher's lease per message assumes no call outlives it. `message.key` (`cb-<outbox
    id>`) is stable across retries and crashes; where the provider supports idempotency keys,
    the adapter sends it as one, so a repeated request can never become a second message.
    """

    name: str
    kind: Channel

    def send(self, message: OutboundMessage) -> SendResult: ...

    def lookup(self, key: str) -> LookupStatus | LookupResult:
        """After a crash mid-send: did the provider take the message with this key?"""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class WebhookRequest:
    """A provider's callback as received: the raw bytes, so signatures can be checked over
    exactly what was sent. `url` is the public URL the provider called (from
    `CARTBACK_BASE_URL`, not the Host header), which is what Twilio signs. Header names are
    lower case."""

    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes
    query: Mapping[str, str] = field(default_factory=dict)

    def form(self) -> dict[str, str]:
        """The body as an HTML form (application/x-www-form-urlencoded), last value wins."""
        return dict(parse_qsl(self.body.decode("utf-8", "replace"), keep_blank_values=True))


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    """One store's settings for one provider, secrets already resolved from the environment or
    the config file (never stored in the database in clear). `status_url` and `inbound_url`
    are this store's callback routes, for providers that take them per request."""

    provider: str
    kind: Channel
    store: str
    options: Mapping[str, str]
    status_url: str
    inbound_url: str
    timeout: float = 10.0


class ProviderChannel(MessageChannel, Protocol):
    """A real provider: it sends, and it reads its own callbacks (delivery reports, replies).

    `verify` checks a callback's signature or shared secret in constant time; a callback that
    fails it is answered 401 and changes nothing. `parse_status` and `parse_inbound` never
    raise for a payload they do not understand: they answer an empty list (a ping, a report
    of a kind cartback does not track) or raise `ValueError` naming the field for a payload
    that is malformed (answered 422)."""

    def verify(self, request: WebhookRequest) -> bool: ...

    def parse_status(self, request: WebhookRequest) -> list[DeliveryUpdate]: ...

    def parse_inbound(self, request: WebhookRequest) -> list[InboundReply]: ...


@dataclass(frozen=True, slots=True)
class IssuedCode:
    """A code a shop created for one cart, and the shop's name for what holds it (Shopify's
    price rule id, WooCommerce's coupon id), by which it is removed again."""

    code: str
    ref: str


class DiscountIssuer(Protocol):
    """A shop integration that creates a single-use code for one cart (`discount.unique`), and
    removes it again once it expired unused.

    Shop adapters implement it where the platform's API allows (`ShopifyDiscountIssuer`,
    `WooCouponIssuer`). The worker calls it with no transaction open
    (`services/unique_codes.py`); a store without one skips steps that ask for unique codes
    with the rule `discount.unique`."""

    def issue(
        self,
        *,
        cart_token: str,
        percent: Decimal | None,
        amount: Decimal | None,
        currency: str,
        expires_at: datetime | None,
        email: str | None = None,
    ) -> IssuedCode: ...

    def remove(self, ref: str) -> bool:
        """Delete the code named by `ref`; True when it was there, False when it was already
        gone (both leave it gone)."""
        ...
