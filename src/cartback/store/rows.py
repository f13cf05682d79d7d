"""Mapping between table rows and the core's records."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from cartback.core.model import (
    Cart,
    CartLine,
    CartStatus,
    Contact,
    Enrollment,
    EnrollmentState,
    PhoneFacts,
    StepOutcome,
    Store,
)
from cartback.core.timezones import phone_facts


def store_from_row(row: Mapping[Any, Any]) -> Store:
    return Store(
        id=row["id"],
        name=row["name"],
        brand=row["brand"],
        default_zone=row["default_zone"],
        default_locale=row["default_locale"],
        currency=row["currency"],
        domains=tuple(row["domains"] or ()),
        postal_address=row["postal_address"],
        support_contact=row["support_contact"],
        platform=row["platform"],
        flow_name=row["flow_name"],
        policy=row["policy"] or {},
    )


def lines_to_json(lines: tuple[CartLine, ...]) -> list[dict[str, Any]]:
    return [
        {
            "title": line.title,
            "quantity": line.quantity,
            "price": str(line.price),
            "sku": line.sku,
            "product_id": line.product_id,
            "image_url": line.image_url,
        }
        for line in lines
    ]


def lines_from_json(data: list[dict[str, Any]]) -> tuple[CartLine, ...]:
    return tuple(
        CartLine(
            title=item["title"],
            quantity=int(item["quantity"]),
            price=Decimal(item["price"]),
            sku=item.get("sku"),
            product_id=item.get("product_id"),
            image_url=item.get("image_url"),
        )
        for item in data
    )


def cart_from_row(row: Mapping[Any, Any]) -> Cart:
    return Cart(
        id=row["id"],
        store_id=row["store_id"],
        token=row["token"],
        contact_id=row["contact_id"],
        lines=lines_from_json(row["lines"]),
        value=Decimal(row["value"]),
        currency=row["currency"],
        restore_url=row["restore_url"],
        status=CartStatus(row["status"]),
        updated_at=row["occurred_at"],
        tags=tuple(row["tags"] or ()),
    )


def contact_from_row(row: Mapping[Any, Any]) -> Contact:
    return Contact(
        id=row["id"],
        store_id=row["store_id"],
        phone=row["phone"],
        email=row["email"],
        first_name=row["first_name"],
        last_name=row["last_name"],
        locale=row["locale"],
        zone=row["zone"],
        country=row["country"],
        region=row["region"],
        sms_marketing=bool(row["sms_marketing"]),
        email_marketing=bool(row["email_marketing"]),
        orders_count=row["orders_count"],
        tags=tuple(row["tags"] or ()),
        phone_facts=_phone_facts(row),
        postal_zones=tuple((row.get("postal_zones") or "").split()),
    )


def _phone_facts(row: Mapping[Any, Any]) -> PhoneFacts | None:
    zones = row.get("phone_zones")
    if zones is None or not row["phone"]:
        return None
    return PhoneFacts(row.get("phone_country"), row.get("phone_region"), tuple(zones.split()))


def phone_fact_columns(phone: str | None) -> dict[str, Any]:
    """The contact columns derived from `phone`, to store with it."""
    if not phone:
        return {"phone_country": None, "phone_region": None, "phone_zones": None}
    facts = phone_facts(phone)
    return {
        "phone_country": facts.country,
        "phone_region": facts.region,
        "phone_zones": " ".join(facts.zones),
    }


def enrollment_from_row(
    row: Mapping[Any, Any], history: Mapping[str, StepOutcome] | None = None
) -> Enrollment:
    return Enrollment(
        id=row["id"],
        store_id=row["store_id"],
        cart_id=row["cart_id"],
        flow_name=row["flow_name"],
        flow_version=row["flow_version"],
        step_index=row["step_index"],
        state=EnrollmentState(row["state"]),
        abandoned_at=row["abandoned_at"],
        wake_at=row["wake_at"],
        variant=row["variant"],
        holdout=bool(row["holdout"]),
        held_channel=row["held_channel"],
        exit_reason=row["exit_reason"],
        history=dict(history or {}),
        **holds_from_json(row["holds"]),
    )


def holds_to_json(enrollment: Enrollment) -> dict[str, Any] | None:
    """The enrollment's holds as stored: None when it has none (most enrollments)."""
    if not enrollment.holds and not enrollment.released:
        return None
    return {
        "held": {step_id: until.isoformat() for step_id, until in enrollment.holds.items()},
        "released": sorted(enrollment.released),
    }


def holds_from_json(value: Mapping[str, Any] | None) -> dict[str, Any]:
    """Enrollment fields from the stored holds; a malformed value raises (the timer then
    retries and parks that one enrollment)."""
    if not value:
        return {}
    held = {step_id: _instant(text) for step_id, text in dict(value.get("held") or {}).items()}
    return {"holds": held, "released": frozenset(str(s) for s in value.get("released") or ())}


def _instant(text: object) -> datetime:
    if not isinstance(text, str):
        raise ValueError(f"a hold time must be ISO 8601 text, got {type(text).__name__}")
    at = datetime.fromisoformat(text)
    if at.tzinfo is None:
        raise ValueError("a hold time must carry its UTC offset")
    return at.astimezone(UTC)
