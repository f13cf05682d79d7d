"""BigCommerce cart webhooks: `store/cart/abandoned` and `store/cart/converted`.

BigCommerce signs nothing: the subscription is made with a custom header,
`X-Cartback-Token: <secret>`, compared in constant time with the connection's current and
previous secret. A delivery is named by the payload's `hash` (the same event sent twice has
the same hash). The payloads are thin (a cart id, an order id), so the cart or the order is
fetched through the API with the connection's API token (`X-Auth-Token`). `parse` runs before
the delivery's transaction opens: no API call is ever made inside one.

The connection's shop domain is the store hash (`abc123`), or the API root itself
(`https://api.bigcommerce.com/stores/abc123`, or a local server in tests).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from cartback.core.events import CheckoutUpdated, ContactInfo, OrderPlaced
from cartback.core.model import CartLine
from cartback.shops.base import (
    CartRef,
    DeliveryMeta,
    ForCart,
    Headers,
    LinkError,
    PayloadError,
    ShopItem,
    ShopLink,
    amount,
    header,
    obj,
    shop_name,
    text,
    timestamp,
    token_matches,
)
from cartback.web.convert import FieldError, normalize_phone

PLATFORM = "bigcommerce"
ABANDONED = "store/cart/abandoned"
CONVERTED = "store/cart/converted"
TOPICS = frozenset({ABANDONED, CONVERTED})
USES_DOCUMENT = True
PARSE_HEADERS: frozenset[str] = frozenset()
CALLS_API = True
AUTH_HEADER = "X-Cartback-Token"
API_ROOT = "https://api.bigcommerce.com/stores/"
# The webhook waits for our answer: keep every API call short.
TIMEOUT = httpx.Timeout(4.0, connect=2.0)


def ping(headers: Headers, raw_body: bytes) -> bool:
    return False


def verify(
    headers: Headers,
    raw_body: bytes,
    secrets: Sequence[bytes],
    query: Mapping[str, str] | None = None,
) -> bool:
    return token_matches(secrets, header(headers, AUTH_HEADER))


def meta(headers: Headers, raw_body: bytes = b"") -> DeliveryMeta:
    payload = _document(raw_body)
    delivery_id = text(payload, "hash", required=True) or ""
    topic = text(payload, "scope", required=True) or ""
    producer = text(payload, "producer") or ""
    return DeliveryMeta(
        delivery_id=delivery_id.strip()[:200],
        topic=topic.strip().lower(),
        shop_domain=producer.removeprefix("stores/").strip().lower() or None,
    )


def replay_headers(topic: str, received_at: datetime) -> dict[str, str]:
    return {}


def api_base(shop_domain: str) -> str:
    if "://" in shop_domain:
        return shop_domain.rstrip("/")
    return f"{API_ROOT}{shop_name(shop_domain)}"


def parse(headers: Headers, raw_body: bytes, link: ShopLink | None = None) -> list[ShopItem]:
    payload = _document(raw_body)
    scope = (text(payload, "scope", required=True) or "").lower()
    data = obj(payload, "data", "")
    cart_id = text(data, "id", "data", required=True) or ""
    if link is None or link.document is None:
        raise LinkError("the BigCommerce connection has no --api-token to fetch carts with")
    with client(link) as http:
        if scope == ABANDONED:
            return _abandoned(http, cart_id, payload)
        if scope == CONVERTED:
            order_id = text(data, "orderId", "data", required=True) or ""
            return [_converted(http, cart_id, order_id, payload, link)]
    return []


def client(link: ShopLink) -> httpx.Client:
    assert link.document is not None
    return httpx.Client(
        base_url=api_base(link.shop_domain),
        headers={
            "X-Auth-Token": link.document.decode(),
            "Accept": "application/json",
            "Content-Type": "application/json",
        },
        timeout=TIMEOUT,
    )


def _call(http: httpx.Client, method: str, path: str, **options: Any) -> Mapping[str, Any] | None:
    """The API's answer, None for a 404 (the cart is gone), LinkError for anything else that
    is not a success: the delivery is refused with 503 and BigCommerce tries again."""
    try:
        response = http.request(method, path, **options)
    except httpx.HTTPError as error:
        raise LinkError(f"BigCommerce API {method} {path}: {type(error).__name__}") from None
    if response.status_code == 404:
        return None
    if response.status_code >= 300:
        raise LinkError(f"BigCommerce API {method} {path}: HTTP {response.status_code}")
    try:
        answer = response.json()
    except ValueError:
        raise LinkError(f"BigCommerce API {method} {path}: not JSON") from None
    if not isinstance(answer, dict):
        raise LinkError(f"BigCommerce API {method} {path}: not a JSON object")
    return answer


def _abandoned(http: httpx.Client, cart_id: str, payload: Mapping[str, Any]) -> list[ShopItem]:
    answer = _call(http, "GET", f"/v3/checkouts/{cart_id}")
    if answer is None:
        # Converted or deleted since: nothing left to recover.
        return []
    checkout = obj(answer, "data", "checkout")
    cart = obj(checkout, "cart", "checkout.data")
    path = "checkout.data.cart"
    updated = timestamp(cart, "updated_time", path) or _created(payload)
    billing = obj(checkout, "billing_address", "checkout.data")
    links = _call(http, "POST", f"/v3/carts/{cart_id}/redirect_urls") or {}
    restore = text(obj(links, "data", "redirect_urls"), "checkout_url", "redirect_urls.data")
    currency = text(obj(cart, "currency", path), "code", f"{path}.currency", required=True) or ""
    total_key = "grand_total" if checkout.get("grand_total") is not None else None
    value = (
        amount(checkout, total_key, "checkout.data")
        if total_key
        else amount(cart, "cart_amount", path)
    )
    event = CheckoutUpdated(
        event_id=f"bc-cart:{cart_id}:{updated.isoformat()}"[:200],
        occurred_at=updated,
        cart_token=cart_id[:200],
        contact=_contact(billing, text(cart, "email", path)),
        lines=_lines(cart, path),
        value=value,
        currency=currency.upper()[:3],
        restore_url=restore,
        raw={"webhook": payload, "checkout": checkout},
    )
    return [event]


def _converted(
    http: httpx.Client,
    cart_id: str,
    order_id: str,
    payload: Mapping[str, Any],
    link: ShopLink,
) -> ShopItem:
    order = _call(http, "GET", f"/v2/orders/{order_id}") or {}
    billing = obj(order, "billing_address", "order")
    contact = _contact(billing, text(billing, "email", "order.billing_address"))
    currency = text(order, "currency_code", "order") or link.currency
    event = OrderPlaced(
        event_id=f"bc-order:{order_id}"[:200],
        occurred_at=_order_time(order) or _created(payload),
        order_id=f"bc-{order_id}"[:200],
        value=amount(order, "total_inc_tax", "order"),
        currency=currency.upper()[:3],
        contact=contact if (contact.phone or contact.email) else None,
        raw={"webhook": payload, "order": order},
    )
    return ForCart(event, CartRef(token=cart_id[:200]))


def _document(raw_body: bytes) -> Mapping[str, Any]:
    try:
        payload = json.loads(raw_body)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise PayloadError("body", f"not valid JSON: {error}") from None
    if not isinstance(payload, dict):
        raise PayloadError("body", "must be a JSON object")
    return payload


def _created(payload: Mapping[str, Any]) -> datetime:
    raw = payload.get("created_at")
    if isinstance(raw, int) and not isinstance(raw, bool) and raw > 0:
        return datetime.fromtimestamp(raw, UTC)
    if raw is not None:
        raise PayloadError("created_at", "must be a Unix time in seconds")
    return datetime.now(UTC)


def _order_time(order: Mapping[str, Any]) -> datetime | None:
    """The v2 orders API gives RFC 2822 times (`Tue, 24 Nov 2026 11:10:00 +0000`)."""
    raw = order.get("date_created")
    if not isinstance(raw, str) or not raw:
        return None
    try:
        value = parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _contact(billing: Mapping[str, Any], email: str | None) -> ContactInfo:
    path = "billing_address"
    country = text(billing, "country_code", path) or text(billing, "country_iso2", path)
    raw_phone = text(billing, "phone", path)
    phone = None
    if raw_phone:
        try:
            phone = normalize_phone(raw_phone, country, f"{path}.phone")
        except FieldError:
            # A typo in a shopper's phone is data, not a malformed delivery.
            phone = None
    email = email or text(billing, "email", path)
    return ContactInfo(
        phone=phone,
        email=email.strip().lower() if email else None,
        first_name=_short(text(billing, "first_name", path), 100),
        last_name=_short(text(billing, "last_name", path), 100),
        country=country.upper()[:2] if country else None,
        region=_short(text(billing, "state_or_province_code", path), 8),
        postal_code=_short(text(billing, "zip", path), 16),
    )


def _lines(cart: Mapping[str, Any], path: str) -> tuple[CartLine, ...]:
    items = obj(cart, "line_items", path)
    lines = []
    for kind in ("physical_items", "digital_items"):
        raw = items.get(kind) or []
        if not isinstance(raw, list):
            raise PayloadError(f"{path}.line_items.{kind}", "must be an array")
        for index, item in enumerate(raw):
            where = f"{path}.line_items.{kind}[{index}]"
            if not isinstance(item, Mapping):
                raise PayloadError(where, "must be an object")
            quantity = item.get("quantity", 1)
            if isinstance(quantity, bool) or not isinstance(quantity, int) or quantity < 0:
                raise PayloadError(f"{where}.quantity", "must be a non-negative whole number")
            price_key = "sale_price" if item.get("sale_price") is not None else "list_price"
            lines.append(
                CartLine(
                    title=(text(item, "name", where, required=True) or "")[:300],
                    quantity=quantity,
                    price=amount(item, price_key, where, required=True),
                    sku=_short(text(item, "sku", where), 100),
                    product_id=_short(text(item, "product_id", where), 100),
                )
            )
    return tuple(line for line in lines if line.quantity > 0)


def _short(value: str | None, length: int) -> str | None:
    return value[:length] if value else None
