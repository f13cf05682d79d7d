"""The generic event API's request schema. It is also published in the OpenAPI document and
as JSON Schema under docs/.

Every limit that guards a database column is read from that column in store/tables.py, so a
value the API accepts always fits on both backends."""

from __future__ import annotations

import re
import zoneinfo
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StrictBool,
    StringConstraints,
    ValidationInfo,
    field_validator,
)
from sqlalchemy import BigInteger, Column, Integer, Numeric, SmallInteger, String

from cartback.store import tables as t


def column_length(column: Column[Any]) -> int:
    """The most characters a String column holds."""
    kind = column.type
    if not isinstance(kind, String) or kind.length is None:
        raise TypeError(f"{column} has no length")
    return kind.length


def column_max_int(column: Column[Any]) -> int:
    """The largest value an integer column holds on PostgreSQL (SQLite's are all 64-bit)."""
    kind = column.type
    for sql_type, bits in ((BigInteger, 64), (SmallInteger, 16), (Integer, 32)):
        if isinstance(kind, sql_type):
            return int(2 ** (bits - 1) - 1)
    raise TypeError(f"{column} is not an integer column")


def column_money(column: Column[Any]) -> tuple[int, int, Decimal]:
    """(digits, decimal places, largest value) of a Numeric column."""
    kind = column.type
    if not isinstance(kind, Numeric) or kind.precision is None or kind.scale is None:
        raise TypeError(f"{column} is not a Numeric(precision, scale) column")
    largest = Decimal(10) ** (kind.precision - kind.scale) - Decimal(1).scaleb(-kind.scale)
    return kind.precision, kind.scale, largest


# C0 and C1 controls, DEL, and lone surrogates (which no database can encode). PostgreSQL cannot
# store NUL at all; the others only ever arrive by mistake or by malice.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
# Free text (a consent disclosure) may keep its tabs and line breaks.
_CONTROL_IN_PROSE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


def _refuse(pattern: re.Pattern[str], value: str) -> str:
    found = pattern.search(value)
    if found is not None:
        raise ValueError(
            f"contains a control character or lone surrogate (U+{ord(found.group()):04X}) "
            f"at position {found.start()}"
        )
    return value


def _no_controls(value: str) -> str:
    return _refuse(_CONTROL, value)


def _no_controls_in_prose(value: str) -> str:
    return _refuse(_CONTROL_IN_PROSE, value)


# Every string field of the API ends in one of these two checks (after its length and pattern).
LINE = AfterValidator(_no_controls)
PROSE = AfterValidator(_no_controls_in_prose)


def _bounded(
    max_length: int | None, *, min_length: int | None = None, pattern: str | None = None
) -> StringConstraints:
    return StringConstraints(
        strip_whitespace=True, min_length=min_length, max_length=max_length, pattern=pattern
    )


# Limits of values kept in JSON or unbounded Text columns: the API's own choice.
TAG_LENGTH = 200
TITLE_LENGTH = 300
PHONE_INPUT_LENGTH = 32
URL_LENGTH = 2000
WORDING_LENGTH = 4000
MAX_QUANTITY = 100_000
MAX_LINES = 500
MAX_TAGS = 50
MAX_BATCH = 1000

MONEY_DIGITS, MONEY_PLACES, MONEY_MAX = column_money(t.carts.c.value)
ID_MAX = column_max_int(t.contacts.c.id)

Text = Annotated[str, _bounded(TAG_LENGTH, min_length=1), LINE]
Token = Annotated[str, _bounded(column_length(t.carts.c.token), min_length=1), LINE]
Name = Annotated[str, _bounded(column_length(t.contacts.c.first_name)), LINE]
Currency = Annotated[str, _bounded(None, pattern=r"^[A-Z]{3}$"), LINE]
Country = Annotated[str, _bounded(None, pattern=r"^[A-Z]{2}$"), LINE]
Money = Annotated[
    Decimal, Field(ge=0, le=MONEY_MAX, max_digits=MONEY_DIGITS, decimal_places=MONEY_PLACES)
]
IpAddress = Annotated[str, _bounded(column_length(t.consent_events.c.ip)), LINE]
UserAgent = Annotated[str, _bounded(column_length(t.consent_events.c.user_agent)), LINE]
Wording = Annotated[str, _bounded(WORDING_LENGTH), PROSE]

# RFC 3339: a date, "T", a time; the offset is checked by AwareDatetime for a clearer message.
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})?")


def _rfc3339_string(value: object) -> object:
    # Epoch numbers, booleans and bare dates are refused: a shop that sends them has a bug.
    if not isinstance(value, str) or not _RFC3339.fullmatch(value):
        raise ValueError(
            "must be an RFC 3339 date-time string with an offset, like 2026-11-23T10:00:00+01:00"
        )
    return value


def _in_utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("is out of range once converted to UTC") from None


EventTime = Annotated[AwareDatetime, BeforeValidator(_rfc3339_string), AfterValidator(_in_utc)]


class EventWindow:
    """How far from the server's clock an event's time may be: validation context key "window".
    Events up to `max_ahead` in the future are accepted (ingest clamps them to the receive
    time); older than `max_age` or further ahead, they are refused."""

    def __init__(self, now: datetime, max_age: timedelta, max_ahead: timedelta) -> None:
        self.now = now
        self.max_age = max_age
        self.max_ahead = max_ahead

    def check(self, when: datetime) -> datetime:
        if when < self.now - self.max_age:
            raise ValueError(
                f"is more than {_span(self.max_age)} in the past (the limit is set by "
                "CARTBACK_EVENT_MAX_AGE_DAYS)"
            )
        if when > self.now + self.max_ahead:
            raise ValueError(f"is more than {_span(self.max_ahead)} ahead of the server's clock")
        return when


def _span(delta: timedelta) -> str:
    days = delta / timedelta(days=1)
    return f"{days:g} days" if days != 1 else "1 day"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class ContactIn(_Strict):
    phone: Annotated[str, _bounded(PHONE_INPUT_LENGTH), LINE] | None = Field(
        None, description="E.164 (+4791234567), or national with shipping.country set."
    )
    email: (
        Annotated[
            str,
            _bounded(column_length(t.contacts.c.email), pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$"),
            LINE,
        ]
        | None
    ) = None
    first_name: Name | None = None
    last_name: Annotated[str, _bounded(column_length(t.contacts.c.last_name)), LINE] | None = None
    locale: (
        Annotated[
            str,
            _bounded(
                column_length(t.contacts.c.locale),
                pattern=r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*$",
            ),
            LINE,
        ]
        | None
    ) = None
    zone: Annotated[str, _bounded(column_length(t.contacts.c.zone)), LINE] | None = Field(
        None, description="IANA time zone, e.g. Europe/Oslo."
    )
    tags: list[Text] = Field(default_factory=list, max_length=MAX_TAGS)

    @field_validator("zone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown IANA time zone {value!r}") from None
        return value


PostalCode = Annotated[str, _bounded(16, pattern=r"^[A-Za-z0-9][A-Za-z0-9 -]*$"), LINE]


class ShippingIn(_Strict):
    country: Country | None = None
    region: Annotated[str, _bounded(None, pattern=r"^[A-Z0-9]{1,3}$"), LINE] | None = Field(
        None, description="ISO 3166-2 subdivision code without the country, e.g. FL."
    )
    postal_code: PostalCode | None = Field(
        None,
        description=(
            "The address's postal code (33130, K1A 0B1). A US ZIP or a Canadian postal code "
            "picks the time zone where the state or province has several."
        ),
    )


class LineIn(_Strict):
    title: Annotated[str, _bounded(TITLE_LENGTH, min_length=1), LINE]
    quantity: Annotated[int, Strict(), Field(ge=1, le=MAX_QUANTITY)]
    price: Money
    sku: Text | None = None
    product_id: Text | None = None
    image_url: Annotated[str, _bounded(URL_LENGTH), LINE] | None = None


class ConsentIn(_Strict):
    sms_marketing: StrictBool | None = None
    email_marketing: StrictBool | None = None
    cart_reminders: StrictBool | None = Field(
        None, description="Consent to cart reminder texts; US carriers require it for cart SMS."
    )
    double_opt_in: StrictBool = False
    wording: Wording | None = Field(
        None, description="The exact disclosure text the shopper agreed to."
    )
    ip: IpAddress | None = None
    user_agent: UserAgent | None = None


class _Event(_Strict):
    id: Annotated[str, _bounded(column_length(t.event_receipts.c.event_id), min_length=1), LINE] = (
        Field(description="Unique per store; a repeated id is acknowledged and ignored.")
    )
    occurred_at: EventTime = Field(
        description="RFC 3339 with an offset. At most CARTBACK_EVENT_MAX_AGE_DAYS old and at "
        "most one day ahead of the server's clock."
    )

    @field_validator("occurred_at")
    @classmethod
    def _plausible(cls, value: datetime, info: ValidationInfo) -> datetime:
        window = (info.context or {}).get("window")
        return window.check(value) if isinstance(window, EventWindow) else value


class CheckoutUpdatedIn(_Event):
    type: Literal["checkout.updated"]
    cart_token: Token
    contact: ContactIn
    shipping: ShippingIn | None = None
    lines: list[LineIn] = Field(max_length=MAX_LINES)
    value: Money | None = Field(None, description="Defaults to the sum of the lines.")
    currency: Currency
    restore_url: Annotated[str, _bounded(URL_LENGTH, pattern=r"^https?://"), LINE] | None = None
    consent: ConsentIn | None = None
    tags: list[Text] = Field(default_factory=list, max_length=MAX_TAGS)


class CartUpdatedIn(_Event):
    """A cart before checkout. It can start cart-abandonment flows (trigger `cart.updated`)
    once the shopper is known: by `contact` (a signed-in customer) or by an earlier checkout of
    the same cart. It carries no consent: that is given at checkout or by `consent.changed`."""

    type: Literal["cart.updated"]
    cart_token: Token
    contact: ContactIn | None = None
    shipping: ShippingIn | None = None
    lines: list[LineIn] = Field(max_length=MAX_LINES)
    value: Money | None = Field(None, description="Defaults to the sum of the lines.")
    currency: Currency
    restore_url: Annotated[str, _bounded(URL_LENGTH, pattern=r"^https?://"), LINE] | None = None
    tags: list[Text] = Field(default_factory=list, max_length=MAX_TAGS)


class OrderPlacedIn(_Event):
    type: Literal["order.placed"]
    order_id: Annotated[str, _bounded(column_length(t.orders.c.order_ref), min_length=1), LINE]
    cart_token: Token | None = None
    contact: ContactIn | None = None
    shipping: ShippingIn | None = None
    value: Money
    currency: Currency


class CartEmptiedIn(_Event):
    type: Literal["cart.emptied"]
    cart_token: Token


class ConsentChangedIn(_Event):
    type: Literal["consent.changed"]
    contact: ContactIn
    shipping: ShippingIn | None = None
    channel: Literal["sms", "email"]
    purpose: Literal["marketing", "cart_reminders", "transactional"] = "marketing"
    granted: StrictBool
    source: Literal["checkout", "form", "import", "admin", "api"] = "api"
    wording: Wording | None = None
    ip: IpAddress | None = None
    user_agent: UserAgent | None = None
    double_opt_in: StrictBool = False


EventIn = Annotated[
    CheckoutUpdatedIn | CartUpdatedIn | OrderPlacedIn | CartEmptiedIn | ConsentChangedIn,
    Field(discriminator="type"),
]
EVENT_TYPES = frozenset(
    {"checkout.updated", "cart.updated", "order.placed", "cart.emptied", "consent.changed"}
)


class EventBatchIn(_Strict):
    events: list[EventIn] = Field(min_length=1, max_length=MAX_BATCH)


class EventResultOut(BaseModel):
    """`accepted`: durably queued, applied shortly (stale or not is decided then and shows in
    the cart's timeline); `duplicate`: this event id was already received."""

    id: str
    status: Literal["accepted", "duplicate"]
    detail: str | None = None


class EventsOut(BaseModel):
    accepted: int
    duplicates: int
    results: list[EventResultOut]


class DecisionOut(BaseModel):
    at: datetime
    step_id: str | None
    outcome: str
    rule: str | None
    reason: str


class FieldErrorOut(BaseModel):
    field: str
    message: str


class ProblemOut(BaseModel):
    """RFC 9457 problem details, as every refusal is answered."""

    type: str = Field(examples=["/problems/invalid-event"])
    title: str
    status: int
    detail: str
    instance: str | None = None
    field: str | None = Field(None, description="The first invalid field, as a path.")
    errors: list[FieldErrorOut] | None = None


class FlowAssignmentIn(_Strict):
    """One flow the store runs: the event type that enrolls a cart, and its priority."""

    name: str = Field(min_length=1, max_length=column_length(t.store_flows.c.flow_name))
    priority: int = Field(ge=1, le=1000, description="1 is tried first")
    trigger: Literal["checkout.updated", "cart.updated"] = "checkout.updated"


class StoreFlowsIn(_Strict):
    """The store's whole list of flows (it replaces the current list)."""

    flows: list[FlowAssignmentIn] = Field(min_length=1, max_length=50)
    suppression_window: str | None = Field(
        default=None,
        max_length=16,
        description="How long a shopper in one flow is kept out of the others, like 3d or 12h",
    )


class FlowAssignmentOut(BaseModel):
    name: str
    priority: int
    trigger: str


class StoreFlowsOut(BaseModel):
    flows: list[FlowAssignmentOut]
    suppression_window: str
