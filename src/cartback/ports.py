"""The boundaries between the application and the world: clocks and message channels."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Protocol

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


class DiscountIssuer(Protocol):
    """A shop integration that creates a single-use code for one cart (`discount.unique`).

    Shop adapters implement it where the platform's API allows; until a store has one, steps
    that ask for unique codes are skipped with the rule `discount.unique`."""

    def issue(
        self,
        *,
        cart_token: str,
        percent: Decimal | None,
        amount: Decimal | None,
        currency: str,
        expires_at: datetime | None,
    ) -> str: ...
