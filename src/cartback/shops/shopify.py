"""Shopify webhooks: base64 HMAC-SHA256 of the raw body in `X-Shopify-Hmac-Sha256`, de-duplicated
by `X-Shopify-Webhook-Id`. Carts are keyed by the checkout `token` (orders name it
`checkout_token`); the thin `checkouts/delete` payload is matched through the checkout id and
`cart_token` remembered from earlier checkouts."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from cartback.core.consent import ConsentSource
from cartback.core.events import (
    CartEmptied,
    CheckoutUpdated,
    ConsentChanged,
    ConsentFlags,
    ContactErasureRequested,
    ContactInfo,
    DataRequested,
    OrderPlaced,
    StoreErasureRequested,
)
from cartback.core.model import CartLine, Channel, Purpose
from cartback.shops.base import (
    CartRef,
    CheckoutAlias,
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
    timestamp,
)
from cartback.web.convert import FieldError, normalize_phone

PLATFORM = "shopify"
CHECKOUT_TOPICS = frozenset({"checkouts/create", "checkouts/update"})
ORDER_TOPICS = frozenset({"orders/create", "orders/paid"})
CONSENT_TOPICS = frozenset(
    {
        "customers/update",
        "customers_marketing_consent/update",
        "customers_email_marketing_consent/update",
    }
)
PRIVACY_TOPICS = frozenset({"customers/data_request", "customers/redact", "shop/redact"})
TOPICS = (
    CHECKOUT_TOPICS
    | ORDER_TOPICS
    | CONSENT_TOPICS
    | PRIVACY_TOPICS
    | {"checkouts/delete", "orders/cancelled"}
)
# Where Shopify says consent was collected → the ledger's source. SHOPIFY is the storefront or
# checkout, where the shopper ticked the box themself; anything else (the merchant in the admin,
# an app, an import) is second-hand and cannot lift an opt-out.
COLLECTED_FROM = {"SHOPIFY": ConsentSource.CHECKOUT}
OTHER_SOURCE = ConsentSource.IMPORT
USES_DOCUMENT = False
PARSE_HEADERS: frozenset[str] = frozenset(
    {"X-Shopify-Topic", "X-Shopify-Triggered-At", "X-Shopify-Shop-Domain"}
)
CALLS_API = False


def ping(headers: Headers, raw_body: bytes) -> bool:
    return False


def verify(
    headers: Headers,
    raw_body: bytes,
    secrets: Sequence[bytes],
    query: Mapping[str, str] | None = None,
) -> bool:
    return base64_hmac_matches(secrets, raw_body, header(headers, "X-Shopify-Hmac-Sha256"))


def meta(headers: Headers, raw_body: bytes = b"") -> DeliveryMeta:
    return DeliveryMeta(
        delivery_id=required_header(headers, "X-Shopify-Webhook-Id")[:200],
        topic=required_header(headers, "X-Shopify-Topic").lower(),
        event_id=(header(headers, "X-Shopify-Event-Id") or "").strip()[:200] or None,
        shop_domain=(header(headers, "X-Shopify-Shop-Domain") or "").strip().lower() or None,
    )


def replay_headers(topic: str, received_at: datetime) -> dict[str, str]:
    """What `parse` needs to read a kept payload again: its topic and its original time."""
    return {
        "X-Shopify-Topic": topic,
        "X-Shopify-Webhook-Id": "replay",
        "X-Shopify-Triggered-At": received_at.isoformat(),
    }


def parse(headers: Headers, raw_body: bytes, link: ShopLink | None = None) -> list[ShopItem]:
    topic = (header(headers, "X-Shopify-Topic") or "").strip().lower()
    payload = _document(raw_body)
    received = _triggered_at(headers)
    if topic in CHECKOUT_TOPICS:
        return _checkout(topic, payload)
    if topic == "checkouts/delete":
        return [_checkout_deleted(payload, received)]
    if topic in ORDER_TOPICS:
        return [_order(topic, payload, received)]
    if topic in CONSENT_TOPICS:
        return _consent(topic, payload, received)
    if topic in PRIVACY_TOPICS:
        return [_privacy(topic, payload, headers, received)]
    # orders/cancelled and topics Shopify may add: nothing to change.
    return []


def checkout_items(payload: Mapping[str, Any]) -> list[ShopItem]:
    """An abandoned checkout as the Admin API lists it: the same object a checkout webhook
    carries, so the same items, with the same event id for the same `updated_at`."""
    return _checkout("checkouts/update", payload)


def order_item(payload: Mapping[str, Any], received: datetime) -> ForCart:
    """An order as the Admin API lists it: the same object an order webhook carries."""
    return _order("orders/create", payload, received)


def _document(raw_body: bytes) -> Mapping[str, Any]:
    try:
        payload = json.loads(raw_body)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise PayloadError("body", f"not valid JSON: {error}") from None
    if not isinstance(payload, dict):
        raise PayloadError("body", "must be a JSON object")
    return payload


def _triggered_at(headers: Headers) -> datetime:
    raw = header(headers, "X-Shopify-Triggered-At")
    if raw:
        try:
            value = datetime.fromisoformat(raw.strip())
        except ValueError:
            value = None
        if value is not None and value.tzinfo is not None:
            return value
    return datetime.now(UTC)


def _phone(raw: str | None, country: str | None, field: str) -> str | None:
    """E.164, or None for a number that is not one: a typo in a shopper's phone is data, not a
    malformed delivery, and must not make Shopify retry the whole checkout."""
    if not raw:
        return None
    try:
        return normalize_phone(raw, country, field)
    except FieldError:
        return None


def _contact(payload: Mapping[str, Any], path: str = "") -> ContactInfo:
    shipping = obj(payload, "shipping_address", path)
    billing = obj(payload, "billing_address", path)
    customer = obj(payload, "customer", path)
    address = shipping or billing
    country = text(address, "country_code") or None
    email = text(payload, "email", path) or text(customer, "email", "customer")
    # The number the shopper gave for SMS marketing first, then any the checkout carries.
    phone_field, raw_phone = next(
        (
            (field, value)
            for field, value in (
                ("sms_marketing_phone", text(payload, "sms_marketing_phone", path)),
                ("phone", text(payload, "phone", path)),
                ("shipping_address.phone", text(shipping, "phone")),
                ("billing_address.phone", text(billing, "phone")),
                ("customer.phone", text(customer, "phone")),
            )
            if value
        ),
        ("phone", None),
    )
    locale = text(payload, "customer_locale", path)
    return ContactInfo(
        phone=_phone(raw_phone, country, phone_field),
        email=email.strip().lower() if email else None,
        first_name=_short(text(address, "first_name") or text(customer, "first_name"), 100),
        last_name=_short(text(address, "last_name") or text(customer, "last_name"), 100),
        locale=_short(locale, 16),
        country=country.upper()[:2] if country else None,
        region=_short(text(address, "province_code"), 8),
        postal_code=_short(text(address, "zip"), 16),
    )


def _short(value: str | None, length: int) -> str | None:
    return value[:length] if value else None


def _lines(payload: Mapping[str, Any]) -> tuple[CartLine, ...]:
    raw = payload.get("line_items") or []
    if not isinstance(raw, list):
        raise PayloadError("line_items", "must be an array")
    lines = []
    for index, item in enumerate(raw):
        path = f"line_items[{index}]"
        if not isinstance(item, Mapping):
            raise PayloadError(path, "must be an object")
        quantity = item.get("quantity", 1)
        if isinstance(quantity, bool) or not isinstance(quantity, int) or quantity < 0:
            raise PayloadError(f"{path}.quantity", "must be a non-negative whole number")
        title = text(item, "title", path, required=True) or ""
        variant = text(item, "variant_title", path)
        lines.append(
            CartLine(
                title=(f"{title} ({variant})" if variant else title)[:300],
                quantity=quantity,
                price=decimal(item, "price", path, required=True),
                sku=_short(text(item, "sku", path), 100),
                product_id=_short(text(item, "product_id", path), 100),
            )
        )
    return tuple(line for line in lines if line.quantity > 0)


def _money(payload: Mapping[str, Any]) -> tuple[Decimal, str]:
    """The total the shopper saw: the presentment amount where Shopify gives one, else the
    shop-currency `total_price`."""
    presentment = obj(obj(payload, "total_price_set", ""), "presentment_money", "total_price_set")
    if presentment.get("amount") is not None and presentment.get("currency_code"):
        path = "total_price_set.presentment_money"
        currency = text(presentment, "currency_code", path, required=True) or ""
        return decimal(presentment, "amount", path), currency.upper()[:3]
    # `total_price` is in the shop's currency; `presentment_currency` alone would mislabel it.
    currency = text(payload, "currency", required=True) or ""
    return decimal(payload, "total_price"), currency.upper()[:3]


def _checkout(topic: str, payload: Mapping[str, Any]) -> list[ShopItem]:
    token = text(payload, "token", required=True) or ""
    updated_at = timestamp(payload, "updated_at", required=True)
    assert updated_at is not None
    value, currency = _money(payload)
    consent = ConsentFlags(
        sms_marketing=bool(payload.get("buyer_accepts_sms_marketing")) or None,
        email_marketing=bool(payload.get("buyer_accepts_marketing")) or None,
    )
    event = CheckoutUpdated(
        # One id per state of the checkout: a retry or a second subscription is a duplicate,
        # a newer update is not.
        event_id=f"checkout:{token}:{updated_at.isoformat()}"[:200],
        occurred_at=updated_at,
        cart_token=token[:200],
        contact=_contact(payload),
        lines=_lines(payload),
        value=value,
        currency=currency,
        restore_url=text(payload, "abandoned_checkout_url"),
        consent=consent,
        raw=payload,
    )
    ref = CartRef(
        token=token[:200],
        checkout_id=_short(text(payload, "id"), 100),
        cart_token=_short(text(payload, "cart_token"), 200),
    )
    return [CheckoutAlias(ref), event]


def _checkout_deleted(payload: Mapping[str, Any], received: datetime) -> ShopItem:
    checkout_id = _short(text(payload, "id"), 100)
    cart_token = _short(text(payload, "cart_token"), 200)
    token = _short(text(payload, "token"), 200)
    if not (checkout_id or cart_token or token):
        raise PayloadError("id", "is required (or cart_token)")
    at = timestamp(payload, "updated_at") or received
    name = token or checkout_id or cart_token
    event = CartEmptied(
        event_id=f"checkout-deleted:{name}"[:200], occurred_at=at, cart_token="", raw=payload
    )
    return ForCart(event, CartRef(token=token, checkout_id=checkout_id, cart_token=cart_token))


def _order(topic: str, payload: Mapping[str, Any], received: datetime) -> ForCart:
    order_id = text(payload, "id", required=True) or ""
    at = timestamp(payload, "processed_at") or timestamp(payload, "created_at") or received
    value, currency = _money(payload)
    contact = _contact(payload)
    event = OrderPlaced(
        event_id=f"order:{order_id}"[:200],
        occurred_at=at,
        order_id=order_id[:200],
        value=value,
        currency=currency,
        contact=contact if (contact.phone or contact.email) else None,
        raw=payload,
    )
    ref = CartRef(
        token=_short(text(payload, "checkout_token"), 200),
        cart_token=_short(text(payload, "cart_token"), 200),
    )
    return ForCart(event, ref)


def _consent(topic: str, payload: Mapping[str, Any], received: datetime) -> list[ShopItem]:
    if topic == "customers_email_marketing_consent/update":
        customer_id = text(payload, "customer_id", required=True)
        address = text(payload, "email_address", required=True) or ""
        contact = ContactInfo(email=address.strip().lower())
        objects = [(Channel.EMAIL, "email_marketing_consent")]
    else:
        customer_id = text(payload, "id", required=True)
        email = text(payload, "email")
        country = text(obj(payload, "default_address", ""), "country_code")
        phone = _phone(text(payload, "phone"), country, "phone")
        contact = ContactInfo(
            phone=phone,
            email=email.strip().lower() if email else None,
            first_name=_short(text(payload, "first_name"), 100),
            last_name=_short(text(payload, "last_name"), 100),
        )
        objects = [(Channel.SMS, "sms_marketing_consent")]
        if topic == "customers/update":
            objects.append((Channel.EMAIL, "email_marketing_consent"))
    items: list[ShopItem] = []
    for channel, key in objects:
        consent = obj(payload, key, "")
        change = _consent_change(consent, key)
        if change is None:
            continue
        if (channel is Channel.SMS and not contact.phone) or (
            channel is Channel.EMAIL and not contact.email
        ):
            continue
        granted, at_text = change
        at = timestamp(consent, "consent_updated_at", key) or timestamp(payload, "updated_at")
        at = at or received
        collected = (text(consent, "consent_collected_from", key) or "").upper()
        evidence = {"platform": PLATFORM, "state": str(consent.get("state"))}
        if collected:
            evidence["consent_collected_from"] = collected
        level = text(consent, "opt_in_level", key)
        if level:
            evidence["opt_in_level"] = level
        items.append(
            ConsentChanged(
                event_id=f"consent:{customer_id}:{channel}:{at_text or at.isoformat()}:{granted}",
                occurred_at=at,
                contact=contact,
                channel=channel,
                purpose=Purpose.MARKETING,
                granted=granted,
                source=str(COLLECTED_FROM.get(collected, OTHER_SOURCE)),
                double_opt_in=granted and level == "confirmed_opt_in",
                evidence=evidence,
                raw=payload,
            )
        )
    return items


def _consent_change(consent: Mapping[str, Any], path: str) -> tuple[bool, str | None] | None:
    """subscribed → a grant, unsubscribed → a revoke; other states (not_subscribed, pending,
    redacted, invalid) say nothing new."""
    state = text(consent, "state", path)
    if state is None:
        return None
    state = state.lower()
    if state not in ("subscribed", "unsubscribed"):
        return None
    return state == "subscribed", text(consent, "consent_updated_at", path)


def _privacy(
    topic: str, payload: Mapping[str, Any], headers: Headers, received: datetime
) -> ShopItem:
    name = text(payload, "shop_domain") or header(headers, "X-Shopify-Shop-Domain") or ""
    if topic == "shop/redact":
        return StoreErasureRequested(event_id=f"shop-redact:{name}", occurred_at=received)
    customer = obj(payload, "customer", "")
    if not customer:
        raise PayloadError("customer", "is required")
    email = text(customer, "email", "customer")
    phone = _phone(text(customer, "phone", "customer"), None, "customer.phone")
    if not (phone or email):
        raise PayloadError("customer.email", "a phone or an email is required to find the shopper")
    contact = ContactInfo(phone=phone, email=email.strip().lower() if email else None)
    customer_id = text(customer, "id", "customer") or "unknown"
    if topic == "customers/redact":
        return ContactErasureRequested(
            event_id=f"customer-redact:{customer_id}", occurred_at=received, contact=contact
        )
    request = obj(payload, "data_request", "")
    return DataRequested(
        event_id=f"data-request:{customer_id}",
        occurred_at=received,
        contact=contact,
        request_id=text(request, "id", "data_request"),
    )
