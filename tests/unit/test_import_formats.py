"""The CSV formats of `cartback import checkouts`: rows become event-API documents, and a
refusal is traced back to the line and column it came from."""

from __future__ import annotations

import io
from typing import Any

from cartback.imports import events_csv, shopify_csv
from cartback.imports.drafts import Draft, Rejection, read_rows


def _drafts(module: Any, text: str) -> list[Draft]:
    _, rows = read_rows(io.StringIO(text), module.REQUIRED)
    drafts: list[Draft] = module.drafts(list(rows))
    return drafts


def test_shopify_export_times_become_rfc3339() -> None:
    assert shopify_csv.export_time("2026-11-23 10:00:00 +0100") == "2026-11-23T10:00:00+01:00"
    assert shopify_csv.export_time("2026-11-23 10:00:00 -0530") == "2026-11-23T10:00:00-05:30"
    # Anything else reaches validation as it is, to be refused there by name.
    assert shopify_csv.export_time("23/11/2026") == "23/11/2026"


def test_shopify_rows_group_by_id_and_take_the_token_from_the_recovery_link() -> None:
    text = (
        "Id,Email,Currency,Created at,Lineitem name,Lineitem quantity,Lineitem price,"
        "Abandoned checkout URL\n"
        "7,a@x.io,EUR,2026-11-23 10:00:00 +0000,Hat,1,5.00,"
        "https://s.example/1/checkouts/ac/abcdef123456/recover?key=k\n"
        "8,b@x.io,EUR,2026-11-23 10:00:00 +0000,Cap,1,6.00,\n"
        "7,a@x.io,,,Scarf,2,7.50,\n"
    )
    first, second = _drafts(shopify_csv, text)
    assert first.document["cart_token"] == "abcdef123456"
    assert [line["title"] for line in first.document["lines"]] == ["Hat", "Scarf"]
    assert first.item_lines == [2, 4]
    assert second.document["cart_token"] == "shopify-checkout-8"
    # A line item's refusal points at that item's own row and column.
    assert first.locate("lines[1].quantity", "bad") == Rejection(4, "Lineitem quantity", "bad")


def test_event_ids_follow_content_so_a_changed_row_is_a_new_event() -> None:
    head = "cart_token,occurred_at,currency,email,line_title,line_quantity,line_price\n"
    row = "c1,2026-11-23T10:00:00Z,EUR,a@x.io,Hat,1,5.00\n"
    (same,) = _drafts(events_csv, head + row)
    (again,) = _drafts(events_csv, head + row)
    (changed,) = _drafts(events_csv, head + row.replace("5.00", "6.00"))
    assert same.document["id"] == again.document["id"]
    assert same.document["id"] != changed.document["id"]


def test_a_lines_column_that_is_not_json_is_refused_on_its_line() -> None:
    head = "cart_token,occurred_at,currency,email,lines\n"
    (draft,) = _drafts(events_csv, head + 'c1,2026-11-23T10:00:00Z,EUR,a@x.io,"[{oops"\n')
    assert draft.rejection is not None
    assert (draft.rejection.line, draft.rejection.column) == (2, "lines")


def test_shopify_rows_carry_the_postal_code_of_the_address_the_country_came_from() -> None:
    head = (
        "Id,Email,Currency,Created at,Lineitem name,Lineitem quantity,Lineitem price,"
        "Shipping Country,Shipping Province,Shipping Zip,Billing Country,Billing Zip\n"
    )
    rows = (
        "1,a@x.io,USD,2026-11-23 10:00:00 +0000,Hat,1,5.00,US,FL,'33130,US,10001\n"
        "2,b@x.io,USD,2026-11-23 10:00:00 +0000,Hat,1,5.00,,,,US,02134\n"
        "3,c@x.io,USD,2026-11-23 10:00:00 +0000,Hat,1,5.00,US,FL,#33130!,,\n"
    )
    miami, boston, malformed = _drafts(shopify_csv, head + rows)
    assert miami.document["shipping"] == {"country": "US", "region": "FL", "postal_code": "33130"}
    assert boston.document["shipping"] == {"country": "US", "postal_code": "02134"}
    # A malformed code is left out: it only loses the zone it would have picked.
    assert malformed.document["shipping"] == {"country": "US", "region": "FL"}
    assert miami.locate("shipping.postal_code", "bad").column == "Shipping Zip"


def test_the_events_format_takes_a_postal_code_column() -> None:
    head = "cart_token,occurred_at,currency,email,country,region,postal_code,line_title\n"
    (draft,) = _drafts(events_csv, head + "c1,2026-11-23T10:00:00Z,USD,a@x.io,US,FL,33130,Hat\n")
    assert draft.document["shipping"] == {"country": "US", "region": "FL", "postal_code": "33130"}
