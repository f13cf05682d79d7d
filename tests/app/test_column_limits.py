"""Every limit of the event schema equals the limit of the column the value is stored in."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Column, Numeric, String

from cartback.config import load_settings
from cartback.store import tables as t
from cartback.web.schemas import EventBatchIn

# (model, field) → the column its value is written to.
STORED_IN: dict[tuple[str, str], Column[Any]] = {
    ("CheckoutUpdatedIn", "id"): t.event_receipts.c.event_id,
    ("CartUpdatedIn", "id"): t.event_receipts.c.event_id,
    ("OrderPlacedIn", "id"): t.event_receipts.c.event_id,
    ("CartEmptiedIn", "id"): t.event_receipts.c.event_id,
    ("ConsentChangedIn", "id"): t.event_receipts.c.event_id,
    ("CheckoutUpdatedIn", "cart_token"): t.carts.c.token,
    ("CartUpdatedIn", "cart_token"): t.carts.c.token,
    ("OrderPlacedIn", "cart_token"): t.carts.c.token,
    ("CartEmptiedIn", "cart_token"): t.carts.c.token,
    ("OrderPlacedIn", "order_id"): t.orders.c.order_ref,
    ("CheckoutUpdatedIn", "currency"): t.carts.c.currency,
    ("CartUpdatedIn", "currency"): t.carts.c.currency,
    ("OrderPlacedIn", "currency"): t.orders.c.currency,
    ("ContactIn", "email"): t.contacts.c.email,
    ("ContactIn", "first_name"): t.contacts.c.first_name,
    ("ContactIn", "last_name"): t.contacts.c.last_name,
    ("ContactIn", "locale"): t.contacts.c.locale,
    ("ContactIn", "zone"): t.contacts.c.zone,
    ("ShippingIn", "country"): t.contacts.c.country,
    ("ShippingIn", "region"): t.contacts.c.region,
    ("ShippingIn", "postal_code"): t.contacts.c.postal_code,
    ("ConsentIn", "ip"): t.consent_events.c.ip,
    ("ConsentIn", "user_agent"): t.consent_events.c.user_agent,
    ("ConsentChangedIn", "ip"): t.consent_events.c.ip,
    ("ConsentChangedIn", "user_agent"): t.consent_events.c.user_agent,
    ("CheckoutUpdatedIn", "value"): t.carts.c.value,
    ("CartUpdatedIn", "value"): t.carts.c.value,
    ("OrderPlacedIn", "value"): t.orders.c.value,
    # A line's price × quantity, and their sum, become the cart's value.
    ("LineIn", "price"): t.carts.c.value,
}
# Kept in JSON or unbounded Text columns: the schema's own limit is the only one.
UNBOUNDED = {
    ("ContactIn", "phone"),  # stored normalised to E.164, at most 16 characters
    ("ContactIn", "tags"),
    ("CheckoutUpdatedIn", "tags"),
    ("CheckoutUpdatedIn", "restore_url"),
    ("CartUpdatedIn", "tags"),
    ("CartUpdatedIn", "restore_url"),
    ("ConsentIn", "wording"),
    ("ConsentChangedIn", "wording"),
    ("LineIn", "title"),
    ("LineIn", "sku"),
    ("LineIn", "product_id"),
    ("LineIn", "image_url"),
}
EVENT_TIMES = {
    (name, "occurred_at")
    for name in (
        "CheckoutUpdatedIn",
        "CartUpdatedIn",
        "OrderPlacedIn",
        "CartEmptiedIn",
        "ConsentChangedIn",
    )
}


def _variants(spec: dict[str, Any]) -> list[dict[str, Any]]:
    variants = spec.get("anyOf", [spec])
    return [v for v in variants if v.get("type") != "null"]


def _string_fields() -> list[tuple[str, str, dict[str, Any]]]:
    defs = EventBatchIn.model_json_schema()["$defs"]
    found = []
    for model, schema in defs.items():
        for name, spec in schema["properties"].items():
            for variant in _variants(spec):
                item = variant.get("items", variant)
                if item.get("type") == "string" and "enum" not in item and "const" not in item:
                    found.append((model, name, item))
    return found


def _pattern_longest(pattern: str) -> int:
    """The longest match of an anchored one-class pattern like ^[A-Z0-9]{1,3}$."""
    match = re.fullmatch(r"\^\[[^\]]+\]\{(?:\d+,)?(\d+)\}\$", pattern)
    assert match, f"cannot read a length from {pattern!r}"
    return int(match.group(1))


def test_every_string_field_is_either_bounded_by_its_column_or_known_unbounded() -> None:
    fields = _string_fields()
    assert len(fields) > 20
    for model, name, spec in fields:
        key = (model, name)
        if key in EVENT_TIMES:
            assert spec["format"] == "date-time"
            continue
        if key in UNBOUNDED:
            assert "maxLength" in spec, f"{model}.{name} has no length limit"
            continue
        assert key in STORED_IN, f"{model}.{name}: which column stores it? add it to STORED_IN"
        column_type = STORED_IN[key].type
        if isinstance(column_type, Numeric):
            continue  # money as a decimal string: bounded by value, below
        assert isinstance(column_type, String)
        limit = spec.get("maxLength") or _pattern_longest(spec["pattern"])
        assert limit == column_type.length or (
            "maxLength" not in spec and limit <= int(column_type.length or 0)
        ), f"{model}.{name} allows {limit} characters, its column {column_type.length}"


@pytest.mark.parametrize(
    ("model", "name"),
    [key for key, column in STORED_IN.items() if isinstance(column.type, Numeric)],
)
def test_money_bounds_equal_the_numeric_column(model: str, name: str) -> None:
    column_type = STORED_IN[(model, name)].type
    assert isinstance(column_type, Numeric)
    assert column_type.precision is not None and column_type.scale is not None
    largest = Decimal(10) ** (column_type.precision - column_type.scale) - Decimal(1).scaleb(
        -column_type.scale
    )
    spec = EventBatchIn.model_json_schema()["$defs"][model]["properties"][name]
    number = next(v for v in _variants(spec) if v.get("type") == "number")
    assert Decimal(str(number["maximum"])) == largest
    assert number["minimum"] == 0


def test_the_contact_id_parameter_is_bounded_by_the_id_column() -> None:
    from fastapi.testclient import TestClient

    from cartback.web.app import create_app

    class _NoApp:
        # Building the OpenAPI document reads settings only, never the database.
        settings = load_settings({})

    api = create_app(_NoApp())  # type: ignore[arg-type]
    document = TestClient(api).get("/openapi.json").json()
    (parameter,) = document["paths"]["/v1/contacts/{contact_id}/consent"]["get"]["parameters"]
    assert parameter["schema"]["maximum"] == 2**63 - 1  # BIGINT on PostgreSQL
    assert str(t.contacts.c.id.type) == "BIGINT"
