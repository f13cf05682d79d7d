"""What every shop adapter shares: the module shape, signature checks, and the few items a
platform's payload carries besides normalised events."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

from cartback.core.events import CartEmptied, OrderPlaced, PrivacyRequest, ShopEvent
from cartback.web.convert import FieldError

Headers = Mapping[str, str]


class PayloadError(FieldError):
    """A payload the adapter cannot map: names the field (422)."""


@dataclass(frozen=True, slots=True)
class CartRef:
    """How a platform names a cart. Carts are keyed by `token` (Shopify's checkout token); thin
    payloads carry only the checkout id or the cart token, so the pairs are remembered."""

    token: str | None = None
    checkout_id: str | None = None
    cart_token: str | None = None


@dataclass(frozen=True, slots=True)
class CheckoutAlias:
    """Remember that `ref.checkout_id` and `ref.cart_token` name the cart `ref.token`."""

    ref: CartRef


@dataclass(frozen=True, slots=True)
class ForCart:
    """An order or a deleted checkout whose cart token is found from `ref` before ingest."""

    event: OrderPlaced | CartEmptied
    ref: CartRef
    # No reference names a cart (a WooCommerce order): end the shopper's newest open cart,
    # found by the order's phone or email.
    by_contact: bool = False


ShopItem = ShopEvent | CheckoutAlias | ForCart | PrivacyRequest


@dataclass(frozen=True, slots=True)
class DeliveryMeta:
    """The transport facts of one delivery, from its headers."""

    delivery_id: str
    topic: str
    event_id: str | None = None
    shop_domain: str | None = None


@dataclass(frozen=True, slots=True)
class ShopLink:
    """The store's connection as `parse` sees it: where the shop lives, the store's currency
    (for payloads that name none), the connection's resolved API token (BigCommerce) or field
    mapping (the generic webhook) when the adapter asks for it, and when the delivery arrived
    (for payloads that carry no time)."""

    shop_domain: str
    currency: str
    document: bytes | None = None
    received_at: datetime | None = None


class LinkError(RuntimeError):
    """The connection's document cannot be used (an unreadable mapping, an API that does not
    answer): nothing is applied and the platform is asked to retry (503)."""


class Adapter(Protocol):
    PLATFORM: str
    # A topic outside this set is answered 200 and otherwise ignored.
    TOPICS: frozenset[str]
    # Whether `parse` needs `ShopLink.document` (the connection's --api-token reference).
    USES_DOCUMENT: bool
    # The headers `parse` reads: kept with a delivery queued in the inbox, so the worker parses
    # it as the request did (nothing else of the request is stored: headers can carry secrets).
    PARSE_HEADERS: frozenset[str]
    # Whether `parse` calls the platform's API (BigCommerce fetches the cart). Such a delivery
    # is applied in its request, after the call; the others are queued in the inbox.
    CALLS_API: bool

    def ping(self, headers: Headers, raw_body: bytes) -> bool:
        """An unsigned hello a platform sends when a webhook is created: answered 200, and
        nothing is written."""
        ...

    def verify(
        self,
        headers: Headers,
        raw_body: bytes,
        secrets: Sequence[bytes],
        query: Mapping[str, str],
    ) -> bool: ...

    def meta(self, headers: Headers, raw_body: bytes) -> DeliveryMeta: ...

    def parse(self, headers: Headers, raw_body: bytes, link: ShopLink) -> list[ShopItem]:
        """Always called outside any database transaction: it may call the platform's API."""
        ...

    def replay_headers(self, topic: str, received_at: datetime) -> dict[str, str]: ...


def header(headers: Headers, name: str) -> str | None:
    """A header by name, whatever its case (HTTP/2 lower-cases them all)."""
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            return value
    return None


def required_header(headers: Headers, name: str) -> str:
    """A header the platform always sends; a delivery without it is answered 422 naming it."""
    value = (header(headers, name) or "").strip()
    if not value:
        raise PayloadError(name, "header is required")
    return value


def base64_hmac_matches(secrets: Sequence[bytes], raw_body: bytes, signature: str | None) -> bool:
    """base64(HMAC-SHA256(secret, raw body)) against the header, in constant time, for each
    accepted secret (the current one and, during a rotation, the previous one)."""
    if not signature:
        return False
    try:
        given = base64.b64decode(signature.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    matched = False
    for secret in secrets:
        expected = hmac.new(secret, raw_body, hashlib.sha256).digest()
        # Every secret is tried, so the time taken does not say which one matched.
        matched = hmac.compare_digest(expected, given) or matched
    return matched


def token_matches(secrets: Sequence[bytes], given: str | None) -> bool:
    """A shared token (a URL parameter, a custom header) against each accepted secret, in
    constant time."""
    if not given:
        return False
    candidate = given.strip().encode()
    matched = False
    for secret in secrets:
        matched = hmac.compare_digest(secret, candidate) or matched
    return matched


def shop_name(shop_domain: str) -> str:
    """The name a delivery gives its shop, from the connection's shop domain: the domain
    itself, or the last part of a URL (BigCommerce's API root ends in the store hash)."""
    if "://" in shop_domain:
        return shop_domain.rstrip("/").rsplit("/", 1)[-1].lower()
    return shop_domain


def body_digest(raw_body: bytes) -> str:
    """A delivery id for platforms that send none: the same body twice is one delivery."""
    return "sha256:" + hashlib.sha256(raw_body).hexdigest()


def sign_base64(secret: bytes, raw_body: bytes) -> str:
    return base64.b64encode(hmac.new(secret, raw_body, hashlib.sha256).digest()).decode()


# Field readers: a missing or malformed required field names itself.


def obj(data: Mapping[str, Any], key: str, path: str) -> Mapping[str, Any]:
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise PayloadError(_join(path, key), "must be an object")
    return value


def text(
    data: Mapping[str, Any], key: str, path: str = "", *, required: bool = False
) -> str | None:
    value = data.get(key)
    if value is None or value == "":
        if required:
            raise PayloadError(_join(path, key), "is required")
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise PayloadError(_join(path, key), "must be a string")
    return str(value)


def decimal(
    data: Mapping[str, Any], key: str, path: str = "", *, required: bool = False
) -> Decimal:
    raw = text(data, key, path, required=required)
    if raw is None:
        return Decimal(0)
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise PayloadError(_join(path, key), f"{raw[:40]!r} is not a decimal amount") from None
    if not value.is_finite() or value < 0:
        raise PayloadError(_join(path, key), "must be a non-negative amount")
    return value


def amount(data: Mapping[str, Any], key: str, path: str = "", *, required: bool = False) -> Decimal:
    """A money amount an API gives as a JSON number (BigCommerce's 598.5) or a string."""
    value = data.get(key)
    if isinstance(value, float):
        value = repr(value)
    return decimal({key: value}, key, path, required=required)


def timestamp(
    data: Mapping[str, Any], key: str, path: str = "", *, required: bool = False
) -> datetime | None:
    raw = text(data, key, path, required=required)
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise PayloadError(_join(path, key), f"{raw[:40]!r} is not an ISO 8601 time") from None
    if value.tzinfo is None:
        raise PayloadError(_join(path, key), "needs a UTC offset")
    return value


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
