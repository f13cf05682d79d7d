"""Magento 2 / Adobe Commerce: no abandoned-cart webhook in the open-source edition, so carts
(quotes) and orders are polled through the REST API with an integration's bearer token.

`GET /V1/carts/search` and `GET /V1/orders`, each filtered by `updated_at` at or after the
high-water mark and sorted by it, page by page. A quote becomes `CheckoutUpdated` keyed
`mg-<quote id>`; an order `OrderPlaced` for the quote it was made from (`quote_id`). Magento's
times are UTC without an offset (`2026-11-23 11:40:00`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx

from cartback.core.events import CheckoutUpdated, ContactInfo, OrderPlaced
from cartback.core.model import CartLine
from cartback.shops.base import (
    CartRef,
    ForCart,
    PayloadError,
    amount,
    obj,
    text,
)
from cartback.web.convert import FieldError, normalize_phone

PLATFORM = "magento"
PAGE_SIZE = 100
# A poll that finds more than this many pages stops there; the next poll goes on from the mark.
MAX_PAGES = 50
TIMEOUT = httpx.Timeout(30.0, connect=5.0)
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


class MagentoError(RuntimeError):
    """The API refused or failed; the message says which request and why."""


def client(base_url: str, token: bytes) -> httpx.Client:
    """`base_url` is the REST root, e.g. https://shop.example/rest/default."""
    return httpx.Client(
        base_url=base_url.rstrip("/"),
        headers={"Authorization": f"Bearer {token.decode()}", "Accept": "application/json"},
        timeout=TIMEOUT,
    )


def search_params(since: datetime, page: int, active_only: bool) -> dict[str, str | int]:
    """searchCriteria: updated_at >= since (AND is_active = 1 for carts), oldest first."""
    prefix = "searchCriteria"
    params: dict[str, str | int] = {
        f"{prefix}[filter_groups][0][filters][0][field]": "updated_at",
        f"{prefix}[filter_groups][0][filters][0][value]": magento_time(since),
        f"{prefix}[filter_groups][0][filters][0][condition_type]": "gteq",
        f"{prefix}[sortOrders][0][field]": "updated_at",
        f"{prefix}[sortOrders][0][direction]": "ASC",
        f"{prefix}[pageSize]": PAGE_SIZE,
        f"{prefix}[currentPage]": page,
    }
    if active_only:
        params[f"{prefix}[filter_groups][1][filters][0][field]"] = "is_active"
        params[f"{prefix}[filter_groups][1][filters][0][value]"] = 1
        params[f"{prefix}[filter_groups][1][filters][0][condition_type]"] = "eq"
    return params


def magento_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(TIME_FORMAT)


def search(
    http: httpx.Client, path: str, since: datetime, *, active_only: bool = False
) -> Iterator[Mapping[str, Any]]:
    """Every item updated since the mark, page by page."""
    seen = 0
    for page in range(1, MAX_PAGES + 1):
        answer = _get(http, path, search_params(since, page, active_only))
        items = answer.get("items") or []
        if not isinstance(items, list):
            raise MagentoError(f"GET {path}: items is not an array")
        for item in items:
            if isinstance(item, Mapping):
                yield item
        seen += len(items)
        total = answer.get("total_count")
        if not items or not isinstance(total, int) or seen >= total:
            return


def _get(http: httpx.Client, path: str, params: Mapping[str, Any]) -> Mapping[str, Any]:
    try:
        response = http.get(path, params=dict(params))
    except httpx.HTTPError as error:
        raise MagentoError(f"GET {path}: {type(error).__name__}") from None
    if response.status_code >= 300:
        raise MagentoError(f"GET {path}: HTTP {response.status_code}")
    try:
        answer = response.json()
    except ValueError:
        raise MagentoError(f"GET {path}: not JSON") from None
    if not isinstance(answer, dict):
        raise MagentoError(f"GET {path}: not a JSON object")
    return answer


def parse_time(data: Mapping[str, Any], key: str, path: str) -> datetime:
    raw = text(data, key, path, required=True) or ""
    try:
        value = datetime.fromisoformat(raw.replace(" ", "T"))
    except ValueError:
        raise PayloadError(f"{path}.{key}", f"{raw[:40]!r} is not a time") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def cart_token(quote_id: str) -> str:
    return f"mg-{quote_id}"


def quote_event(quote: Mapping[str, Any], store_currency: str) -> CheckoutUpdated:
    quote_id = text(quote, "id", "cart", required=True) or ""
    path = f"cart[{quote_id}]"
    updated = parse_time(quote, "updated_at", path)
    currency = obj(quote, "currency", path)
    code = text(currency, "quote_currency_code", f"{path}.currency") or store_currency
    lines = _lines(quote, path)
    return CheckoutUpdated(
        event_id=f"mg-cart:{quote_id}:{updated.isoformat()}"[:200],
        occurred_at=updated,
        cart_token=cart_token(quote_id),
        contact=_contact(quote, path),
        lines=lines,
        value=sum((line.price * line.quantity for line in lines), Decimal(0)),
        currency=code.upper()[:3],
        raw=quote,
    )


def order_item(order: Mapping[str, Any], store_currency: str) -> ForCart:
    order_id = text(order, "entity_id", "order", required=True) or ""
    path = f"order[{order_id}]"
    quote_id = text(order, "quote_id", path)
    billing = obj(order, "billing_address", path)
    email = text(order, "customer_email", path) or text(billing, "email", path)
    contact = _person(billing, email, path)
    code = text(order, "order_currency_code", path) or store_currency
    event = OrderPlaced(
        event_id=f"mg-order:{order_id}"[:200],
        occurred_at=parse_time(order, "created_at", path),
        order_id=f"mg-{text(order, 'increment_id', path) or order_id}"[:200],
        value=amount(order, "grand_total", path),
        currency=code.upper()[:3],
        contact=contact if (contact.phone or contact.email) else None,
        raw=order,
    )
    ref = CartRef(token=cart_token(quote_id) if quote_id else None)
    return ForCart(event, ref, by_contact=quote_id is None)


def _contact(quote: Mapping[str, Any], path: str) -> ContactInfo:
    customer = obj(quote, "customer", path)
    billing = obj(quote, "billing_address", path)
    email = text(customer, "email", f"{path}.customer") or text(billing, "email", path)
    person = _person(billing, email, path)
    if person.first_name or not text(customer, "firstname", path):
        return person
    return ContactInfo(
        phone=person.phone,
        email=person.email,
        first_name=_short(text(customer, "firstname", path), 100),
        last_name=_short(text(customer, "lastname", path), 100),
        country=person.country,
        postal_code=person.postal_code,
    )


def _person(address: Mapping[str, Any], email: str | None, path: str) -> ContactInfo:
    country = text(address, "country_id", f"{path}.billing_address")
    raw_phone = text(address, "telephone", f"{path}.billing_address")
    phone = None
    if raw_phone:
        try:
            phone = normalize_phone(raw_phone, country, "telephone")
        except FieldError:
            # A typo in a shopper's phone is data: the cart is kept without it.
            phone = None
    return ContactInfo(
        phone=phone,
        email=email.strip().lower() if email else None,
        first_name=_short(text(address, "firstname", path), 100),
        last_name=_short(text(address, "lastname", path), 100),
        country=country.upper()[:2] if country else None,
        postal_code=_short(text(address, "postcode", f"{path}.billing_address"), 16),
    )


def _lines(quote: Mapping[str, Any], path: str) -> tuple[CartLine, ...]:
    raw = quote.get("items") or []
    if not isinstance(raw, list):
        raise PayloadError(f"{path}.items", "must be an array")
    lines = []
    for index, item in enumerate(raw):
        where = f"{path}.items[{index}]"
        if not isinstance(item, Mapping):
            raise PayloadError(where, "must be an object")
        quantity = item.get("qty", 1)
        if isinstance(quantity, float) and quantity.is_integer():
            quantity = int(quantity)
        if isinstance(quantity, bool) or not isinstance(quantity, int) or quantity < 0:
            raise PayloadError(f"{where}.qty", "must be a non-negative whole number")
        lines.append(
            CartLine(
                title=(text(item, "name", where, required=True) or "")[:300],
                quantity=quantity,
                price=amount(item, "price", where, required=True),
                sku=_short(text(item, "sku", where), 100),
            )
        )
    return tuple(line for line in lines if line.quantity > 0)


def _short(value: str | None, length: int) -> str | None:
    return value[:length] if value else None
