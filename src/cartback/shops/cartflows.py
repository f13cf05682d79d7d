"""The CartFlows "Cart Abandonment Recovery" plugin for WooCommerce: its webhook posts the
captured checkout form-encoded and unsigned, so the URL carries a secret token
(`/hooks/shop/cartflows/STORE?token=...`), compared in constant time with the connection's
secret.

`order_status=abandoned` becomes `CheckoutUpdated`, `completed` (the cart was recovered or
bought) `OrderPlaced`. The plugin sends no delivery id and no times: a delivery is named by
the digest of its body, and its time is when it arrived. The cart is keyed by the session token
in `checkout_url` (`wcf_ac_token`), else by the shopper's email or phone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cartback.core.events import CheckoutUpdated, ContactInfo, OrderPlaced
from cartback.core.model import CartLine
from cartback.shops.base import (
    CartRef,
    DeliveryMeta,
    ForCart,
    Headers,
    PayloadError,
    ShopItem,
    ShopLink,
    body_digest,
    decimal,
    text,
    token_matches,
)
from cartback.web.convert import FieldError, normalize_phone

PLATFORM = "cartflows"
TOPICS = frozenset({"abandoned", "completed"})
USES_DOCUMENT = False
PARSE_HEADERS: frozenset[str] = frozenset()
CALLS_API = False
TOKEN_PARAM = "token"
SESSION_PARAM = "wcf_ac_token"


def ping(headers: Headers, raw_body: bytes) -> bool:
    return False


def verify(
    headers: Headers,
    raw_body: bytes,
    secrets: Sequence[bytes],
    query: Mapping[str, str] | None = None,
) -> bool:
    return token_matches(secrets, (query or {}).get(TOKEN_PARAM))


def meta(headers: Headers, raw_body: bytes = b"") -> DeliveryMeta:
    status = text(form(raw_body), "order_status", required=True) or ""
    return DeliveryMeta(delivery_id=body_digest(raw_body), topic=status.strip().lower())


def replay_headers(topic: str, received_at: datetime) -> dict[str, str]:
    return {}


def form(raw_body: bytes) -> dict[str, str]:
    try:
        fields = parse_qs(raw_body.decode("utf-8"), keep_blank_values=True)
    except (UnicodeDecodeError, ValueError) as error:
        raise PayloadError("body", f"not a form-encoded body: {error}") from None
    return {key: values[-1] for key, values in fields.items()}


def parse(headers: Headers, raw_body: bytes, link: ShopLink | None = None) -> list[ShopItem]:
    fields = form(raw_body)
    status = (text(fields, "order_status", required=True) or "").lower()
    received = (link.received_at if link else None) or datetime.now(UTC)
    currency = link.currency if link else "USD"
    value = decimal(fields, "cart_total", required=status == "abandoned")
    contact = _contact(fields)
    token = _token(fields, contact)
    if status == "completed":
        order = OrderPlaced(
            event_id=f"cartflows-completed:{token}"[:200],
            occurred_at=received,
            order_id=f"cartflows-{token}"[:200],
            value=value,
            currency=currency,
            contact=contact if (contact.phone or contact.email) else None,
            raw=fields,
        )
        return [ForCart(order, CartRef(token=token), by_contact=True)]
    if status != "abandoned":
        return []
    checkout = CheckoutUpdated(
        # The plugin may send the same cart again after the shopper changed it: one id per
        # content, so a changed cart is news and the same one is a duplicate.
        event_id=f"cartflows:{token}:{body_digest(raw_body)[7:23]}"[:200],
        occurred_at=received,
        cart_token=token,
        contact=contact,
        lines=_lines(fields),
        value=value,
        currency=currency,
        restore_url=text(fields, "checkout_url"),
        raw=_without_html(fields),
    )
    return [checkout]


def _contact(fields: Mapping[str, Any]) -> ContactInfo:
    email = text(fields, "email")
    raw_phone = text(fields, "phone_number")
    phone = None
    if raw_phone:
        try:
            # The plugin sends the number as typed, with no country: only an international
            # number (+47..., 0047...) can be read; another is dropped, not refused.
            phone = normalize_phone(raw_phone, None, "phone_number")
        except FieldError:
            phone = None
    return ContactInfo(
        phone=phone,
        email=email.strip().lower() if email else None,
        first_name=_short(text(fields, "first_name"), 100),
        last_name=_short(text(fields, "last_name"), 100),
    )


def _token(fields: Mapping[str, Any], contact: ContactInfo) -> str:
    url = text(fields, "checkout_url")
    if url:
        session = parse_qs(urlsplit(url).query).get(SESSION_PARAM)
        if session and session[-1].strip():
            return f"cf-{session[-1].strip()}"[:200]
    who = contact.email or contact.phone
    if not who:
        raise PayloadError("email", "an email, a phone_number or a checkout_url is required")
    return "cf-" + hashlib.sha256(who.encode()).hexdigest()[:32]


def _lines(fields: Mapping[str, Any]) -> tuple[CartLine, ...]:
    """The plugin sends product names only (`product_names`, comma separated), no prices."""
    names = text(fields, "product_names") or ""
    return tuple(
        CartLine(title=name.strip()[:300], quantity=1, price=Decimal(0))
        for name in names.split(",")
        if name.strip()
    )


def _without_html(fields: Mapping[str, str]) -> dict[str, str]:
    """`product_table` is the cart as an HTML table: bulky, and nothing reads it."""
    return {key: value for key, value in fields.items() if key != "product_table"}


def _short(value: str | None, length: int) -> str | None:
    return value[:length] if value else None
