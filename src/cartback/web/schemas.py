"""The generic event API's request schema. It is also published in the OpenAPI document and
as JSON Schema under docs/."""

from __future__ import annotations

import zoneinfo
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
)

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Name = Annotated[str, StringConstraints(strip_whitespace=True, max_length=100)]
Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
Country = Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")]
Money = Annotated[Decimal, Field(ge=0, max_digits=14, decimal_places=4)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class ContactIn(_Strict):
    phone: Annotated[str, StringConstraints(max_length=32)] | None = Field(
        None, description="E.164 (+4791234567), or national with shipping.country set."
    )
    email: (
        Annotated[str, StringConstraints(max_length=320, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")]
        | None
    ) = None
    first_name: Name | None = None
    last_name: Name | None = None
    locale: (
        Annotated[str, StringConstraints(pattern=r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*$")] | None
    ) = None
    zone: str | None = Field(None, description="IANA time zone, e.g. Europe/Oslo.")
    tags: list[Text] = Field(default_factory=list, max_length=50)

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


class ShippingIn(_Strict):
    country: Country | None = None
    region: Annotated[str, StringConstraints(pattern=r"^[A-Z0-9]{1,3}$")] | None = Field(
        None, description="ISO 3166-2 subdivision code without the country, e.g. FL."
    )


class LineIn(_Strict):
    title: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=300)]
    quantity: int = Field(ge=1, le=100_000)
    price: Money
    sku: Text | None = None
    product_id: Text | None = None
    image_url: Annotated[str, StringConstraints(max_length=2000)] | None = None


class ConsentIn(_Strict):
    sms_marketing: bool | None = None
    email_marketing: bool | None = None
    cart_reminders: bool | None = Field(
        None, description="Consent to cart reminder texts; US carriers require it for cart SMS."
    )
    double_opt_in: bool = False
    wording: Annotated[str, StringConstraints(max_length=4000)] | None = Field(
        None, description="The exact disclosure text the shopper agreed to."
    )
    ip: Annotated[str, StringConstraints(max_length=64)] | None = None
    user_agent: Annotated[str, StringConstraints(max_length=400)] | None = None


class _Event(_Strict):
    id: Text = Field(description="Unique per store; a repeated id is acknowledged and ignored.")
    occurred_at: AwareDatetime


class CheckoutUpdatedIn(_Event):
    type: Literal["checkout.updated"]
    cart_token: Text
    contact: ContactIn
    shipping: ShippingIn | None = None
    lines: list[LineIn] = Field(max_length=500)
    value: Money | None = Field(None, description="Defaults to the sum of the lines.")
    currency: Currency
    restore_url: (
        Annotated[str, StringConstraints(max_length=2000, pattern=r"^https?://")] | None
    ) = None
    consent: ConsentIn | None = None
    tags: list[Text] = Field(default_factory=list, max_length=50)


class OrderPlacedIn(_Event):
    type: Literal["order.placed"]
    order_id: Text
    cart_token: Text | None = None
    contact: ContactIn | None = None
    shipping: ShippingIn | None = None
    value: Money
    currency: Currency


class CartEmptiedIn(_Event):
    type: Literal["cart.emptied"]
    cart_token: Text


class ConsentChangedIn(_Event):
    type: Literal["consent.changed"]
    contact: ContactIn
    shipping: ShippingIn | None = None
    channel: Literal["sms", "email"]
    purpose: Literal["marketing", "cart_reminders", "transactional"] = "marketing"
    granted: bool
    source: Literal["checkout", "form", "import", "admin", "api"] = "api"
    wording: Annotated[str, StringConstraints(max_length=4000)] | None = None
    ip: Annotated[str, StringConstraints(max_length=64)] | None = None
    user_agent: Annotated[str, StringConstraints(max_length=400)] | None = None
    double_opt_in: bool = False


EventIn = Annotated[
    CheckoutUpdatedIn | OrderPlacedIn | CartEmptiedIn | ConsentChangedIn,
    Field(discriminator="type"),
]
EVENT_TYPES = frozenset({"checkout.updated", "order.placed", "cart.emptied", "consent.changed"})
MAX_BATCH = 1000


class EventBatchIn(_Strict):
    events: list[EventIn] = Field(min_length=1, max_length=MAX_BATCH)


class EventResultOut(BaseModel):
    id: str
    status: Literal["accepted", "duplicate", "stale"]
    detail: str | None = None


class EventsOut(BaseModel):
    accepted: int
    duplicates: int
    stale: int
    results: list[EventResultOut]


class DecisionOut(BaseModel):
    at: datetime
    step_id: str | None
    outcome: str
    rule: str | None
    reason: str
