"""The domain records that cross the core's boundary. Frozen: the core never mutates state."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any


class Channel(StrEnum):
    SMS = "sms"
    EMAIL = "email"


class CartStatus(StrEnum):
    OPEN = "open"
    ORDERED = "ordered"
    EMPTIED = "emptied"


class EnrollmentState(StrEnum):
    ACTIVE = "active"
    COMPLETED = "completed"
    EXITED = "exited"
    # Failed in the timer again and again: waits for an operator (`cartback enrollments resume`).
    PARKED = "parked"


@dataclass(frozen=True, slots=True)
class Store:
    id: int
    name: str
    brand: str
    default_zone: str = "UTC"
    default_locale: str = "en"
    currency: str = "USD"
    domains: tuple[str, ...] = ()
    postal_address: str | None = None
    support_contact: str | None = None
    # generic, shopify, woocommerce or bigcommerce: what the shop's restore links can carry.
    platform: str = "generic"
    # The flow new carts of this store enter.
    flow_name: str = "default"
    # The store's checked policy settings (see core.storepolicy); empty for the defaults.
    policy: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True, slots=True)
class CartLine:
    title: str
    quantity: int
    price: Decimal
    sku: str | None = None
    product_id: str | None = None
    image_url: str | None = None

    @property
    def total(self) -> Decimal:
        return self.price * self.quantity


@dataclass(frozen=True, slots=True)
class PhoneFacts:
    """What a phone number says about where the shopper is: derived once, when the number is
    stored, because parsing it for every message is the costliest part of a send decision."""

    country: str | None
    region: str | None
    zones: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Contact:
    id: int
    store_id: int
    phone: str | None = None
    email: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    locale: str | None = None
    zone: str | None = None
    country: str | None = None
    region: str | None = None
    sms_marketing: bool = False
    email_marketing: bool = False
    orders_count: int = 0
    tags: tuple[str, ...] = ()
    # Carts of this shopper that entered a recovery flow this calendar year (UTC), counted when
    # the facts are loaded; 0 when not counted.
    abandoned_count: int = 0
    # Derived from `phone` at ingest; None means work it out from the number now.
    phone_facts: PhoneFacts | None = None
    # The zones the shipping address's postal code settles, looked up at ingest (a Miami ZIP:
    # America/New_York); () when there is no postal code or it settles nothing.
    postal_zones: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Cart:
    id: int
    store_id: int
    token: str
    contact_id: int | None
    lines: tuple[CartLine, ...]
    value: Decimal
    currency: str
    restore_url: str | None
    status: CartStatus
    updated_at: datetime
    tags: tuple[str, ...] = ()

    @property
    def item_count(self) -> int:
        return sum(line.quantity for line in self.lines)


@dataclass(frozen=True, slots=True)
class StepOutcome:
    """What happened to an earlier step of the same enrollment, as flow conditions see it."""

    sent: bool = False
    delivered: bool = False
    opened: bool = False
    clicked: bool = False
    skipped: bool = False
    # When the timer queued this step's message; later steps keep their offsets from it.
    queued_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Enrollment:
    id: int
    store_id: int
    cart_id: int
    flow_name: str
    flow_version: str
    step_index: int
    state: EnrollmentState
    abandoned_at: datetime
    wake_at: datetime | None
    variant: str | None = None
    holdout: bool = False
    exit_reason: str | None = None
    # The flow's channel holdout: this cart gets no steps of this channel.
    held_channel: str | None = None
    history: dict[str, StepOutcome] = field(default_factory=dict)
    # Steps a rule held back (quiet hours, a cooldown, their order): each waits for its own
    # instant while the steps after it keep their own time. Keyed by step id.
    holds: dict[str, datetime] = field(default_factory=dict)
    # Steps that went out of a hold: off their turn, so the steps after them do not keep their
    # distance from them (see core.timing.due_at).
    released: frozenset[str] = frozenset()


def parse_duration(text: str) -> timedelta:
    """`90s`, `15m`, `1h30m`, `2d`: the duration syntax of flow files and configuration."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    cleaned = text.strip().lower().replace(" ", "")
    if not cleaned:
        raise ValueError("empty duration")
    total = 0
    number = ""
    for char in cleaned:
        if char.isdigit():
            number += char
        elif char in units and number:
            total += int(number) * units[char]
            number = ""
        else:
            raise ValueError(f"invalid duration {text!r}: use forms like 30s, 15m, 1h30m, 2d")
    if number:
        if total == 0 and number == "0":
            return timedelta(0)
        raise ValueError(f"invalid duration {text!r}: a number needs a unit (s, m, h, d, w)")
    return timedelta(seconds=total)


def format_duration(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds == 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


class Purpose(StrEnum):
    MARKETING = "marketing"
    CART_REMINDERS = "cart_reminders"
    TRANSACTIONAL = "transactional"


@dataclass(frozen=True, slots=True)
class ConsentView:
    """The current consent of one contact on one channel, folded from the consent ledger."""

    channel: Channel
    marketing: bool = False
    cart_reminders: bool = False
    transactional: bool = False
    double_opt_in: bool = False
    # An opt-out on this channel: blocks every marketing message on it until the shopper opts in.
    suppressed: bool = False
    erased: bool = False
    # "express", "implied_purchase", "implied_inquiry" or "soft_opt_in" (EU/UK/CASL bases).
    basis: str | None = None
    basis_since: datetime | None = None
    opted_out_at: datetime | None = None
