"""The generic webhook: any JSON a shop, Zapier or Make can post, signed with HMAC-SHA256 of the
raw body under the store's secret (`X-Cartback-Signature: sha256=<hex>`, base64 accepted too).

A field mapping says where cartback's fields are in the incoming JSON, as dotted paths
(`checkout.customer.email`, `items.0.name`). It is a small YAML or JSON file given to
`cartback shops connect generic --mapping FILE`; keys it leaves out keep their default path,
the field's own name. `type` says what happened: its value, through `types`, is a checkout
(abandoned or updated: `CheckoutUpdated`) or an order (`OrderPlaced`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import yaml

from cartback.core.events import CheckoutUpdated, ConsentFlags, ContactInfo, OrderPlaced
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
    body_digest,
    header,
    text,
    timestamp,
)
from cartback.web.convert import FieldError, normalize_phone

PLATFORM = "generic"
# Every delivery is one topic; what it is comes from the mapped `type` in `parse`.
TOPICS = frozenset({"webhook"})
KINDS = frozenset({"checkout", "order"})
USES_DOCUMENT = True
PARSE_HEADERS: frozenset[str] = frozenset()
CALLS_API = False
SIGNATURE_HEADER = "X-Cartback-Signature"
DELIVERY_HEADER = "X-Cartback-Delivery-Id"
# Our fields, each read from a dotted path; `lines.*` are read inside each line.
FIELDS = (
    "type",
    "cart_token",
    "occurred_at",
    "order_id",
    "email",
    "phone",
    "first_name",
    "last_name",
    "country",
    "postal_code",
    "locale",
    "value",
    "currency",
    "restore_url",
    "sms_consent",
    "email_consent",
    "lines",
    "lines.title",
    "lines.quantity",
    "lines.price",
    "lines.sku",
    "lines.product_id",
)
DEFAULT_PATHS = {name: name.removeprefix("lines.") for name in FIELDS}
DEFAULT_TYPES = {
    "checkout": "checkout",
    "abandoned": "checkout",
    "checkout_updated": "checkout",
    "order": "order",
    "completed": "order",
    "order_placed": "order",
}


class MappingError(ValueError):
    """A mapping file that cannot be used: where, which key, and why."""

    def __init__(self, line: int, field: str, message: str) -> None:
        super().__init__(f"{line}: {field}: {message}")
        self.line = line
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class FieldMapping:
    paths: Mapping[str, str]
    types: Mapping[str, str]


DEFAULT = FieldMapping(DEFAULT_PATHS, DEFAULT_TYPES)


def load_mapping(source: bytes | str) -> FieldMapping:
    """Read and check a mapping; a MappingError names the line and the key."""
    try:
        root = yaml.compose(source, Loader=yaml.SafeLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        raise MappingError(line, "mapping", f"not YAML or JSON: {error}") from None
    if root is None:
        return DEFAULT
    if not isinstance(root, yaml.MappingNode):
        raise MappingError(_line(root), "mapping", "must be a mapping of field: path")
    paths = dict(DEFAULT_PATHS)
    types: dict[str, str] | None = None
    for key_node, value_node in root.value:
        key = key_node.value
        if key == "types":
            types = _types(value_node)
            continue
        if key not in FIELDS:
            raise MappingError(
                _line(key_node), str(key), f"not a field cartback maps; one of {', '.join(FIELDS)}"
            )
        if not isinstance(value_node, yaml.ScalarNode) or not str(value_node.value).strip():
            raise MappingError(_line(value_node), key, "must be a dotted path such as a.b.c")
        path = str(value_node.value).strip()
        if any(part == "" for part in path.split(".")):
            raise MappingError(_line(value_node), key, f"{path!r} has an empty part")
        paths[key] = path
    return FieldMapping(paths, types if types is not None else DEFAULT_TYPES)


def _types(node: yaml.Node) -> dict[str, str]:
    if not isinstance(node, yaml.MappingNode):
        raise MappingError(_line(node), "types", "must map incoming values to checkout or order")
    types = {}
    for key_node, value_node in node.value:
        value = getattr(value_node, "value", None)
        if value not in KINDS:
            raise MappingError(
                _line(value_node), f"types.{key_node.value}", "must be checkout or order"
            )
        types[str(key_node.value).lower()] = str(value)
    return types


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def mapping_of(link: ShopLink | None) -> FieldMapping:
    if link is None or link.document is None:
        return DEFAULT
    try:
        return load_mapping(link.document)
    except MappingError as error:
        # It was checked at connect time: the file changed since.
        raise LinkError(f"the generic connection's mapping is unusable: line {error}") from None


def ping(headers: Headers, raw_body: bytes) -> bool:
    return False


def verify(
    headers: Headers,
    raw_body: bytes,
    secrets: Sequence[bytes],
    query: Mapping[str, str] | None = None,
) -> bool:
    given = _signature(header(headers, SIGNATURE_HEADER))
    if given is None:
        return False
    matched = False
    for secret in secrets:
        expected = hmac.new(secret, raw_body, hashlib.sha256).digest()
        matched = hmac.compare_digest(expected, given) or matched
    return matched


def _signature(raw: str | None) -> bytes | None:
    """`sha256=<hex>` (or base64, or either without the prefix) as bytes."""
    if not raw:
        return None
    value = raw.strip().removeprefix("sha256=")
    if len(value) == 64:
        try:
            return bytes.fromhex(value)
        except ValueError:
            pass
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None


def meta(headers: Headers, raw_body: bytes = b"") -> DeliveryMeta:
    """The topic is read again by `parse` through the mapping; here, only the delivery id."""
    delivery_id = (header(headers, DELIVERY_HEADER) or "").strip()
    return DeliveryMeta(delivery_id=(delivery_id or body_digest(raw_body))[:200], topic="webhook")


def replay_headers(topic: str, received_at: datetime) -> dict[str, str]:
    return {}


def parse(headers: Headers, raw_body: bytes, link: ShopLink | None = None) -> list[ShopItem]:
    mapping = mapping_of(link)
    payload = _document(raw_body)
    reader = _Reader(payload, mapping.paths)
    raw_type = reader.text("type", required=True) or ""
    kind = mapping.types.get(raw_type.strip().lower())
    if kind is None:
        # A kind of event cartback does not use: answered, and nothing changes.
        return []
    received = (link.received_at if link else None) or datetime.now(UTC)
    contact = reader.contact()
    currency = (reader.text("currency") or (link.currency if link else "")).upper()[:3]
    if not currency:
        raise PayloadError(mapping.paths["currency"], "is required")
    if kind == "order":
        order_id = reader.text("order_id", required=True) or ""
        token = reader.text("cart_token")
        order = OrderPlaced(
            event_id=f"generic-order:{order_id}"[:200],
            occurred_at=reader.time("occurred_at") or received,
            order_id=order_id[:200],
            value=reader.amount("value"),
            currency=currency,
            contact=contact if (contact.phone or contact.email) else None,
            raw=payload,
        )
        return [ForCart(order, CartRef(token=token[:200] if token else None), token is None)]
    token = (reader.text("cart_token", required=True) or "")[:200]
    at = reader.time("occurred_at", required=True)
    assert at is not None
    return [
        CheckoutUpdated(
            event_id=f"generic:{token}:{at.isoformat()}"[:200],
            occurred_at=at,
            cart_token=token,
            contact=contact,
            lines=reader.lines(),
            value=reader.amount("value"),
            currency=currency,
            restore_url=reader.text("restore_url"),
            consent=ConsentFlags(
                sms_marketing=reader.flag("sms_consent"),
                email_marketing=reader.flag("email_consent"),
            ),
            raw=payload,
        )
    ]


def _document(raw_body: bytes) -> Mapping[str, Any]:
    try:
        payload = json.loads(raw_body)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise PayloadError("body", f"not valid JSON: {error}") from None
    if not isinstance(payload, dict):
        raise PayloadError("body", "must be a JSON object")
    return payload


MISSING = object()


def lookup(data: Any, path: str) -> Any:
    """The value at a dotted path (`a.b.0.c`), or MISSING."""
    for part in path.split("."):
        if isinstance(data, Mapping) and part in data:
            data = data[part]
        elif isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        else:
            return MISSING
    return data


class _Reader:
    """Our fields out of one JSON document; errors name the incoming path."""

    def __init__(self, data: Any, paths: Mapping[str, str], prefix: str = "") -> None:
        self.data = data
        self.paths = paths
        self.prefix = prefix

    def _get(self, name: str) -> tuple[str, Any]:
        path = self.paths[name]
        value = lookup(self.data, path)
        return f"{self.prefix}{path}", None if value is MISSING else value

    def text(self, name: str, *, required: bool = False) -> str | None:
        where, value = self._get(name)
        return text({where: value}, where, required=required)

    def amount(self, name: str, *, required: bool = False) -> Decimal:
        where, value = self._get(name)
        return amount({where: value}, where, required=required)

    def time(self, name: str, *, required: bool = False) -> datetime | None:
        where, value = self._get(name)
        return timestamp({where: value}, where, required=required)

    def flag(self, name: str) -> bool | None:
        """A grant only: an unticked box or an absent field changes nothing."""
        _, value = self._get(name)
        if value is True or (isinstance(value, str) and value.lower() in ("true", "yes", "1")):
            return True
        return None

    def contact(self) -> ContactInfo:
        email = self.text("email")
        country = self.text("country")
        raw_phone = self.text("phone")
        phone = None
        if raw_phone:
            try:
                phone = normalize_phone(raw_phone, country, self.paths["phone"])
            except FieldError:
                # A typo in a shopper's phone is data, not a malformed delivery.
                phone = None
        locale = self.text("locale")
        return ContactInfo(
            phone=phone,
            email=email.strip().lower() if email else None,
            first_name=_short(self.text("first_name"), 100),
            last_name=_short(self.text("last_name"), 100),
            locale=_short(locale, 16),
            country=country.upper()[:2] if country else None,
            postal_code=_short(self.text("postal_code"), 16),
        )

    def lines(self) -> tuple[CartLine, ...]:
        where, raw = self._get("lines")
        if raw is None:
            return ()
        if not isinstance(raw, list):
            raise PayloadError(where, "must be an array")
        inner = {name.removeprefix("lines."): path for name, path in self.paths.items()}
        lines = []
        for index, item in enumerate(raw):
            line = _Reader(item, inner, f"{where}[{index}].")
            quantity_at, quantity = line._get("quantity")
            if quantity is None:
                quantity = 1
            if isinstance(quantity, bool) or not isinstance(quantity, int) or quantity < 0:
                raise PayloadError(quantity_at, "must be a non-negative whole number")
            lines.append(
                CartLine(
                    title=(line.text("title", required=True) or "")[:300],
                    quantity=quantity,
                    price=line.amount("price", required=True),
                    sku=_short(line.text("sku"), 100),
                    product_id=_short(line.text("product_id"), 100),
                )
            )
        return tuple(line for line in lines if line.quantity > 0)


def _short(value: str | None, length: int) -> str | None:
    return value[:length] if value else None
