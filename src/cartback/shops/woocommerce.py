"""WooCommerce order webhooks: base64 HMAC-SHA256 of the raw body in `X-WC-Webhook-Signature`,
de-duplicated by `X-WC-Webhook-Delivery-ID`.

WooCommerce has no abandoned-checkout event (carts live in PHP sessions): checkouts come from
the CartFlows plugin (`shops/cartflows.py`) or the event API. Orders here only end recovery: a
`processing` or `completed` order becomes `OrderPlaced`, matched to its cart by the cart token a
storefront snippet may put in the order's meta data, else by the shopper's phone or email.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cartback.core.events import ContactInfo, OrderPlaced
from cartback.shops.base import (
    CartRef,
    DeliveryMeta,
    ForCart,
    Headers,
    PayloadError,
    ShopItem,
    ShopLink,
    base64_hmac_matches,
    decimal,
    header,
    obj,
    required_header,
    text,
)
from cartback.web.convert import FieldError, normalize_phone

PLATFORM = "woocommerce"
TOPICS = frozenset({"order.created", "order.updated"})
USES_DOCUMENT = False
PARSE_HEADERS: frozenset[str] = frozenset({"X-WC-Webhook-Topic"})
CALLS_API = False
# Paid, or paid and shipped: the shopper bought. `pending`, `on-hold` and `failed` have not.
PLACED = frozenset({"processing", "completed"})
# Meta data keys under which a storefront snippet keeps cartback's cart token on the order.
CART_TOKEN_KEYS = ("cartback_cart_token", "_cartback_cart_token")


def ping(headers: Headers, raw_body: bytes) -> bool:
    """WooCommerce's hello when a webhook is saved: the form body `webhook_id=N`, unsigned."""
    if header(headers, "X-WC-Webhook-Signature"):
        return False
    try:
        form = parse_qs(raw_body.decode("ascii"), strict_parsing=True)
    except (UnicodeDecodeError, ValueError):
        return False
    values = form.get("webhook_id", [])
    return set(form) == {"webhook_id"} and len(values) == 1 and values[0].isdigit()


def verify(
    headers: Headers,
    raw_body: bytes,
    secrets: Sequence[bytes],
    query: Mapping[str, str] | None = None,
) -> bool:
    return base64_hmac_matches(secrets, raw_body, header(headers, "X-WC-Webhook-Signature"))


def meta(headers: Headers, raw_body: bytes = b"") -> DeliveryMeta:
    return DeliveryMeta(
        delivery_id=required_header(headers, "X-WC-Webhook-Delivery-ID")[:200],
        topic=required_header(headers, "X-WC-Webhook-Topic").lower(),
        event_id=(header(headers, "X-WC-Webhook-ID") or "").strip()[:200] or None,
        shop_domain=site_host(header(headers, "X-WC-Webhook-Source")),
    )


def site_host(source: str | None) -> str | None:
    """`X-WC-Webhook-Source` is the site's URL; the connection names the site by its host."""
    if not source:
        return None
    host = urlsplit(source.strip()).hostname
    return host.lower() if host else None


def replay_headers(topic: str, received_at: datetime) -> dict[str, str]:
    return {"X-WC-Webhook-Topic": topic, "X-WC-Webhook-Delivery-ID": "replay"}


def parse(headers: Headers, raw_body: bytes, link: ShopLink | None = None) -> list[ShopItem]:
    payload = document(raw_body)
    order_id = text(payload, "id", required=True) or ""
    status = (text(payload, "status", required=True) or "").lower()
    if status not in PLACED:
        # A pending, failed or cancelled order has not ended anything.
        return []
    currency = text(payload, "currency", required=True) or ""
    at = _gmt(payload, "date_paid_gmt") or _gmt(payload, "date_created_gmt") or datetime.now(UTC)
    contact = _contact(payload)
    event = OrderPlaced(
        event_id=f"wc-order:{order_id}"[:200],
        occurred_at=at,
        order_id=f"wc-{order_id}"[:200],
        value=decimal(payload, "total", required=True),
        currency=currency.upper()[:3],
        contact=contact if (contact.phone or contact.email) else None,
        raw=payload,
    )
    token = _cart_token(payload)
    return [ForCart(event, CartRef(token=token), by_contact=token is None)]


def document(raw_body: bytes) -> Mapping[str, Any]:
    try:
        payload = json.loads(raw_body)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise PayloadError("body", f"not valid JSON: {error}") from None
    if not isinstance(payload, dict):
        raise PayloadError("body", "must be a JSON object")
    return payload


def _gmt(payload: Mapping[str, Any], key: str) -> datetime | None:
    """WooCommerce's `*_gmt` times are UTC without an offset."""
    raw = text(payload, key)
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise PayloadError(key, f"{raw[:40]!r} is not an ISO 8601 time") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _contact(payload: Mapping[str, Any]) -> ContactInfo:
    billing = obj(payload, "billing", "")
    shipping = obj(payload, "shipping", "")
    billing_country = text(billing, "country", "billing")
    country = billing_country or text(shipping, "country", "shipping")
    # The postcode of the address the country came from.
    postcode = text(billing, "postcode", "billing") if billing_country else None
    if not billing_country:
        postcode = text(shipping, "postcode", "shipping")
    email = text(billing, "email", "billing")
    raw_phone = text(billing, "phone", "billing") or text(shipping, "phone", "shipping")
    phone = None
    if raw_phone:
        try:
            phone = normalize_phone(raw_phone, country, "billing.phone")
        except FieldError:
            # A typo in a shopper's phone is data, not a malformed delivery.
            phone = None
    return ContactInfo(
        phone=phone,
        email=email.strip().lower() if email else None,
        first_name=_short(text(billing, "first_name", "billing"), 100),
        last_name=_short(text(billing, "last_name", "billing"), 100),
        country=country.upper()[:2] if country else None,
        postal_code=_short(postcode, 16),
    )


def _cart_token(payload: Mapping[str, Any]) -> str | None:
    entries = payload.get("meta_data") or []
    if not isinstance(entries, list):
        raise PayloadError("meta_data", "must be an array")
    for entry in entries:
        if isinstance(entry, Mapping) and entry.get("key") in CART_TOKEN_KEYS:
            value = entry.get("value")
            if isinstance(value, str) and value.strip():
                return value.strip()[:200]
    return None


def _short(value: str | None, length: int) -> str | None:
    return value[:length] if value else None
