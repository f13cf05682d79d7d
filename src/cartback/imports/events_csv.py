"""The generic event format: one `checkout.updated` per row, its columns named after the event
API's fields (docs/shops.md, "Importing checkouts"). Lines come as a JSON array in `lines`, or
one per row in the `line_*` columns, rows of one event sharing `cart_token` and `occurred_at`
(and `id`, when given)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from cartback.imports.drafts import Draft, Rejection, Row, event_id, flag, prune, whole

REQUIRED = ("cart_token", "occurred_at", "currency")
CONTACT = ("phone", "email", "first_name", "last_name", "locale", "zone")
SHIPPING = ("country", "region", "postal_code")
CONSENT = ("sms_marketing", "email_marketing", "cart_reminders")
LINE = ("title", "quantity", "price", "sku", "product_id", "image_url")
OPTIONAL = (
    "id",
    *CONTACT,
    *SHIPPING,
    "value",
    "restore_url",
    *CONSENT,
    "consent_wording",
    "tags",
    "lines",
    *(f"line_{name}" for name in LINE),
)
_COLUMNS = {
    **{f"contact.{name}": name for name in CONTACT},
    "contact": "phone",
    **{f"shipping.{name}": name for name in SHIPPING},
    **{f"consent.{name}": name for name in CONSENT},
    "consent.wording": "consent_wording",
    **{name: name for name in ("id", "cart_token", "occurred_at", "currency", "value")},
    "restore_url": "restore_url",
    "tags": "tags",
}


def drafts(rows: Iterable[Row]) -> list[Draft]:
    groups: dict[tuple[str, str, str], list[Row]] = {}
    for row in rows:
        key = (row.get("id"), row.get("cart_token"), row.get("occurred_at"))
        groups.setdefault(key, []).append(row)
    return [_draft(group) for group in groups.values()]


def _draft(group: list[Row]) -> Draft:
    head = group[0]
    document: dict[str, Any] = prune(
        {
            "type": "checkout.updated",
            "occurred_at": head.get("occurred_at"),
            "cart_token": head.get("cart_token"),
            "contact": {name: head.get(name) for name in CONTACT},
            "shipping": {name: head.get(name) for name in SHIPPING},
            "currency": head.get("currency"),
            "value": head.get("value"),
            "restore_url": head.get("restore_url"),
            "consent": {
                **{name: flag(head.get(name)) for name in CONSENT},
                "wording": head.get("consent_wording"),
            },
        }
    )
    tags = [tag.strip() for tag in head.get("tags").split("|") if tag.strip()]
    if tags:
        document["tags"] = tags
    columns = dict(_COLUMNS)
    rejection = None
    if head.get("lines"):
        columns.update({"lines": "lines", **{f"lines[].{name}": "lines" for name in LINE}})
        item_lines = [head.line]
        try:
            document["lines"] = json.loads(head.get("lines"))
        except json.JSONDecodeError as error:
            rejection = Rejection(head.line, "lines", f"not a JSON array of lines: {error}")
    else:
        columns.update({"lines": "line_title", **{f"lines[].{n}": f"line_{n}" for n in LINE}})
        items = [row for row in group if row.get("line_title") or row.get("line_price")]
        item_lines = [row.line for row in items]
        document["lines"] = [_line(row) for row in items]
    given = head.get("id")
    document["id"] = given or event_id("import", head.get("cart_token"), document)
    return Draft(
        document=document,
        lines=[row.line for row in group],
        item_lines=item_lines,
        columns=columns,
        rejection=rejection,
    )


def _line(row: Row) -> dict[str, Any]:
    line = {name: row.get(f"line_{name}") for name in LINE}
    return prune({**line, "quantity": whole(line["quantity"])})
