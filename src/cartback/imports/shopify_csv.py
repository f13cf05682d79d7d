"""Shopify's abandoned-checkout export (Orders → Abandoned checkouts → Export): one row per line
item, the checkout's own fields on its first row, rows of one checkout sharing its `Id`."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from cartback.imports.drafts import Draft, Row, event_id, flag, prune, whole

# The columns cartback reads; the export's others (taxes, shipping method, street addresses,
# notes, vendor, ...) are ignored.
REQUIRED = ("Id", "Created at", "Currency", "Lineitem name", "Lineitem quantity", "Lineitem price")
OPTIONAL = (
    "Name",
    "Email",
    "Phone",
    "Updated at",
    "Accepts Marketing",
    "Subtotal",
    "Total",
    "Lineitem sku",
    "Abandoned checkout URL",
    "Billing Name",
    "Billing Phone",
    "Billing Country",
    "Billing Province",
    "Shipping Name",
    "Shipping Phone",
    "Shipping Country",
    "Shipping Province",
)
# The recovery link carries the checkout token, the key Shopify's webhooks name the cart by, so
# an imported checkout and a later webhook for it update one cart.
# The event API's postal code: letters, digits, spaces and hyphens, at most 16.
_POSTAL_CODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 -]{0,15}")
_TOKEN_IN_URL = re.compile(r"/checkouts/(?:[a-z]{1,3}/)?([A-Za-z0-9_-]{8,})/recover")
# Shopify's exports write times as "2026-11-23 10:00:00 +0100".
_EXPORT_TIME = re.compile(
    r"^(\d{4}-\d{2}-\d{2}) (\d{2}:\d{2}:\d{2}(?:\.\d+)?) ?([+-]\d{2}):?(\d{2})$"
)


def export_time(value: str) -> str:
    """The export's time as RFC 3339; anything else is passed on for validation to refuse."""
    found = _EXPORT_TIME.match(value.strip())
    if found is None:
        return value.strip()
    day, clock, hours, minutes = found.groups()
    return f"{day}T{clock}{hours}:{minutes}"


def drafts(rows: Iterable[Row]) -> list[Draft]:
    groups: dict[str, list[Row]] = {}
    for row in rows:
        groups.setdefault(row.get("Id"), []).append(row)
    return [_draft(checkout_id, group) for checkout_id, group in groups.items()]


def _first(group: list[Row], *columns: str) -> tuple[str, str]:
    """The first non-empty cell among the columns, over the checkout's rows, and its column."""
    for column in columns:
        for row in group:
            if row.get(column):
                return row.get(column), column
    return "", columns[0]


def _postal_code(cell: str) -> str:
    """The ZIP as the API takes it, or "" (left out): spreadsheets keep a ZIP's leading zero
    behind an apostrophe ('02134), and a malformed code only loses the zone it would pick, so
    it must not reject the checkout."""
    code = cell.strip().lstrip("'").strip()
    return code if _POSTAL_CODE.fullmatch(code) else ""


def _split_name(full: str) -> tuple[str, str]:
    first, _, last = full.strip().partition(" ")
    return first, last.strip()


def _draft(checkout_id: str, group: list[Row]) -> Draft:
    url, _ = _first(group, "Abandoned checkout URL")
    found = _TOKEN_IN_URL.search(url)
    token = found.group(1) if found else (f"shopify-checkout-{checkout_id}" if checkout_id else "")
    when, when_column = _first(group, "Updated at", "Created at")
    phone, phone_column = _first(group, "Phone", "Shipping Phone", "Billing Phone")
    name, name_column = _first(group, "Shipping Name", "Billing Name")
    country, country_column = _first(group, "Shipping Country", "Billing Country")
    region, region_column = _first(group, "Shipping Province", "Billing Province")
    # The postal code of the address the country came from.
    zip_column = "Billing Zip" if country_column.startswith("Billing") else "Shipping Zip"
    postal_code = _postal_code(_first(group, zip_column)[0])
    first_name, last_name = _split_name(name)
    items = [row for row in group if row.get("Lineitem name") or row.get("Lineitem price")]
    accepts = flag(_first(group, "Accepts Marketing")[0])
    document: dict[str, Any] = prune(
        {
            "type": "checkout.updated",
            "occurred_at": export_time(when),
            "cart_token": token,
            "contact": {
                "phone": phone,
                "email": _first(group, "Email")[0],
                "first_name": first_name,
                "last_name": last_name,
            },
            "shipping": {
                "country": country.upper(),
                "region": region.upper(),
                "postal_code": postal_code,
            },
            "currency": _first(group, "Currency")[0],
            "value": _first(group, "Total")[0],
            "restore_url": url,
            # A grant only, as for the webhook's buyer_accepts_marketing: "no" revokes nothing.
            "consent": {"email_marketing": True} if accepts is True else None,
        }
    )
    document["lines"] = [
        prune(
            {
                "title": row.get("Lineitem name"),
                "quantity": whole(row.get("Lineitem quantity")),
                "price": row.get("Lineitem price"),
                "sku": row.get("Lineitem sku"),
            }
        )
        for row in items
    ]
    document["id"] = event_id("shopify-import", checkout_id, document)
    return Draft(
        document=document,
        lines=[row.line for row in group],
        item_lines=[row.line for row in items],
        columns={
            "id": "Id",
            "cart_token": "Id",
            "occurred_at": when_column,
            "contact": "Email",
            "contact.phone": phone_column,
            "contact.email": "Email",
            "contact.first_name": name_column,
            "contact.last_name": name_column,
            "shipping.country": country_column,
            "shipping.region": region_column,
            "shipping.postal_code": zip_column,
            "currency": "Currency",
            "value": "Total",
            "restore_url": "Abandoned checkout URL",
            "lines": "Lineitem name",
            "lines[].title": "Lineitem name",
            "lines[].quantity": "Lineitem quantity",
            "lines[].price": "Lineitem price",
            "lines[].sku": "Lineitem sku",
        },
    )
