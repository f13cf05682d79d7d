"""Validated API payloads → the core's normalised events. Phone numbers become E.164 here."""

from __future__ import annotations

from datetime import UTC
from decimal import Decimal
from typing import Any

import phonenumbers

from cartback.core.events import (
    CartEmptied,
    CheckoutUpdated,
    ConsentChanged,
    ConsentFlags,
    ContactInfo,
    OrderPlaced,
    ShopEvent,
)
from cartback.core.lineup import CART_UPDATED
from cartback.core.model import CartLine, Channel, Purpose
from cartback.web.schemas import (
    MONEY_MAX,
    CartEmptiedIn,
    CartUpdatedIn,
    CheckoutUpdatedIn,
    ConsentChangedIn,
    ContactIn,
    LineIn,
    OrderPlacedIn,
    ShippingIn,
)


class FieldError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def normalize_phone(raw: str, country: str | None, field: str) -> str:
    try:
        number = phonenumbers.parse(raw, country)
    except phonenumbers.NumberParseException as error:
        hint = "" if country else " (give it in E.164, like +4791234567, or set shipping.country)"
        raise FieldError(field, f"not a phone number: {error}{hint}") from None
    if not phonenumbers.is_valid_number(number):
        raise FieldError(field, f"{raw!r} is not a valid phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _contact(contact: ContactIn, shipping: ShippingIn | None, prefix: str) -> ContactInfo:
    country = shipping.country if shipping else None
    phone = normalize_phone(contact.phone, country, f"{prefix}.phone") if contact.phone else None
    return ContactInfo(
        phone=phone,
        email=contact.email.lower() if contact.email else None,
        first_name=contact.first_name or None,
        last_name=contact.last_name or None,
        locale=contact.locale.replace("_", "-") if contact.locale else None,
        zone=contact.zone,
        country=country,
        region=shipping.region if shipping else None,
        postal_code=shipping.postal_code if shipping else None,
        tags=tuple(contact.tags),
    )


def _check_totals(lines: tuple[CartLine, ...], prefix: str) -> None:
    """Each line's total and their sum must fit the cart's value column."""
    for index, line in enumerate(lines):
        if line.total > MONEY_MAX:
            raise FieldError(
                f"{prefix}.lines[{index}].price",
                f"the line's total (price × quantity = {line.total}) is over {MONEY_MAX}",
            )
    if sum((line.total for line in lines), start=Decimal(0)) > MONEY_MAX:
        raise FieldError(f"{prefix}.lines", f"the lines' total is over {MONEY_MAX}")


def _lines(lines: list[LineIn], prefix: str) -> tuple[CartLine, ...]:
    converted = tuple(
        CartLine(
            title=line.title,
            quantity=line.quantity,
            price=line.price,
            sku=line.sku,
            product_id=line.product_id,
            image_url=line.image_url,
        )
        for line in lines
    )
    _check_totals(converted, prefix)
    return converted


def _cart_updated(model: CartUpdatedIn, prefix: str, raw: dict[str, Any]) -> CheckoutUpdated:
    """A cart event is stored as a cart like a checkout's, without consent; its trigger lets
    only cart-abandonment flows start from it."""
    lines = _lines(model.lines, prefix)
    contact = (
        ContactInfo()
        if model.contact is None
        else _contact(model.contact, model.shipping, f"{prefix}.contact")
    )
    return CheckoutUpdated(
        event_id=model.id,
        occurred_at=model.occurred_at.astimezone(UTC),
        cart_token=model.cart_token,
        contact=contact,
        lines=lines,
        value=model.value
        if model.value is not None
        else sum((line.total for line in lines), start=Decimal(0)),
        currency=model.currency,
        restore_url=model.restore_url,
        tags=tuple(model.tags),
        raw=raw,
        trigger=CART_UPDATED,
    )


def to_event(
    model: CheckoutUpdatedIn | CartUpdatedIn | OrderPlacedIn | CartEmptiedIn | ConsentChangedIn,
    prefix: str,
    raw: dict[str, Any],
) -> ShopEvent:
    if isinstance(model, CartUpdatedIn):
        return _cart_updated(model, prefix, raw)
    if isinstance(model, CheckoutUpdatedIn):
        lines = tuple(
            CartLine(
                title=line.title,
                quantity=line.quantity,
                price=line.price,
                sku=line.sku,
                product_id=line.product_id,
                image_url=line.image_url,
            )
            for line in model.lines
        )
        _check_totals(lines, prefix)
        contact = _contact(model.contact, model.shipping, f"{prefix}.contact")
        if not (contact.phone or contact.email):
            raise FieldError(f"{prefix}.contact", "needs a phone or an email to reach the shopper")
        consent = None
        if model.consent is not None:
            consent = ConsentFlags(**model.consent.model_dump())
        return CheckoutUpdated(
            event_id=model.id,
            occurred_at=model.occurred_at.astimezone(UTC),
            cart_token=model.cart_token,
            contact=contact,
            lines=lines,
            value=model.value
            if model.value is not None
            else sum((line.total for line in lines), start=Decimal(0)),
            currency=model.currency,
            restore_url=model.restore_url,
            consent=consent,
            tags=tuple(model.tags),
            raw=raw,
        )
    if isinstance(model, OrderPlacedIn):
        return OrderPlaced(
            event_id=model.id,
            occurred_at=model.occurred_at.astimezone(UTC),
            order_id=model.order_id,
            value=model.value,
            currency=model.currency,
            cart_token=model.cart_token,
            contact=_contact(model.contact, model.shipping, f"{prefix}.contact")
            if model.contact
            else None,
            raw=raw,
        )
    if isinstance(model, CartEmptiedIn):
        return CartEmptied(
            event_id=model.id,
            occurred_at=model.occurred_at.astimezone(UTC),
            cart_token=model.cart_token,
            raw=raw,
        )
    contact = _contact(model.contact, model.shipping, f"{prefix}.contact")
    if model.channel == "sms" and not contact.phone:
        raise FieldError(f"{prefix}.contact.phone", "an SMS consent change needs the phone number")
    if model.channel == "email" and not contact.email:
        raise FieldError(f"{prefix}.contact.email", "an email consent change needs the email")
    return ConsentChanged(
        event_id=model.id,
        occurred_at=model.occurred_at.astimezone(UTC),
        contact=contact,
        channel=Channel(model.channel),
        purpose=Purpose(model.purpose),
        granted=model.granted,
        source=model.source,
        wording=model.wording,
        ip=model.ip,
        user_agent=model.user_agent,
        double_opt_in=model.double_opt_in,
        raw=raw,
    )
