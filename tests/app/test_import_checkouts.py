"""`cartback import checkouts`: Shopify's abandoned-checkout export and the generic event
format, validated as the event API validates, applied once, old checkouts kept as history."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from sqlalchemy import func, select
from typer.testing import CliRunner

from cartback.cli import cli
from cartback.imports.console import with_progress
from cartback.store import tables as t
from tests.support.world import World

runner = CliRunner()
SHOPIFY_HEADER = [
    "Id",
    "Name",
    "Email",
    "Accepts Marketing",
    "Currency",
    "Subtotal",
    "Total",
    "Created at",
    "Updated at",
    "Lineitem quantity",
    "Lineitem name",
    "Lineitem price",
    "Lineitem sku",
    "Billing Name",
    "Billing Country",
    "Shipping Name",
    "Shipping Country",
    "Shipping Province",
    "Abandoned checkout URL",
    "Phone",
]


def _env(world: World) -> dict[str, str]:
    return {"CARTBACK_DATABASE_URL": world.app.settings.database_url, "COLUMNS": "200"}


def _export_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S +0000")


def _checkout_rows(number: int, lines: int, at: datetime) -> list[dict[str, str]]:
    """One checkout as Shopify exports it: its fields on the first row, one row per item."""
    first = {
        "Id": str(30_000_000 + number),
        "Name": f"#{number}",
        "Email": f"shopper{number}@example.com",
        "Accepts Marketing": "yes" if number % 2 else "no",
        "Currency": "NOK",
        "Subtotal": f"{lines * 100}.00",
        "Total": f"{lines * 100}.00",
        "Created at": _export_time(at - timedelta(minutes=5)),
        "Updated at": _export_time(at),
        "Billing Name": f"Kari Nordmann{number}",
        "Billing Country": "NO",
        "Shipping Name": f"Kari Nordmann{number}",
        "Shipping Country": "NO",
        "Shipping Province": "",
        "Abandoned checkout URL": (
            f"https://test-shop.myshopify.com/1/checkouts/ac/tok{number:08d}abc/recover?key=k"
        ),
        "Phone": f"+4741{number:06d}",
    }
    rows = []
    for index in range(lines):
        row = dict.fromkeys(SHOPIFY_HEADER, "") if index else dict(first)
        row.update(
            {
                "Id": first["Id"],
                "Name": first["Name"],
                "Email": first["Email"],
                "Lineitem quantity": "1",
                "Lineitem name": f"Wool sweater {index}",
                "Lineitem price": "100.00",
                "Lineitem sku": f"SKU-{index}",
            }
        )
        rows.append(row)
    return rows


def _write(path: Path, header: list[str], rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _count(world: World, table: Any) -> int:
    with world.app.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def test_an_export_imports_once_and_old_checkouts_never_enroll(
    world: World, tmp_path: Path
) -> None:
    # 10,000 rows on SQLite; PostgreSQL imports 2,000 (800 checkouts, two batches).
    total_rows = 10_000 if world.app.engine.dialect.name == "sqlite" else 2_000
    now = datetime.now(UTC)
    rows: list[dict[str, str]] = []
    number = 0
    recent: set[int] = set()
    while len(rows) < total_rows:
        number += 1
        # Every 50th checkout was abandoned a minute ago; the rest three days ago.
        fresh = number % 50 == 0
        at = now - (timedelta(minutes=1) if fresh else timedelta(days=3))
        lines = min(1 + number % 4, total_rows - len(rows))
        if fresh:
            recent.add(number)
        rows.extend(_checkout_rows(number, lines, at))
    path = _write(tmp_path / "checkouts.csv", SHOPIFY_HEADER, rows)

    first = runner.invoke(cli, ["import", "checkouts", str(path)], env=_env(world))

    assert first.exit_code == 0, first.output
    assert f"rows read: {total_rows} ({number} checkouts)" in first.output
    assert f"checkouts imported: {number}" in first.output
    assert f"of which history, not enrolled: {number - len(recent)}" in first.output
    assert _count(world, t.carts) == number
    assert _count(world, t.event_receipts) == number
    # Only the checkouts whose first message is still ahead entered the flow.
    assert _count(world, t.enrollments) == len(recent)
    with world.app.engine.connect() as conn:
        tokens = set(conn.execute(select(t.carts.c.token)).scalars())
        lines = conn.execute(
            select(t.carts.c.lines).where(t.carts.c.token == "tok00000003abc")
        ).scalar_one()
    assert "tok00000050abc" in tokens  # the checkout token from the recovery link
    assert [line["title"] for line in lines] == [f"Wool sweater {i}" for i in range(4)]

    second = runner.invoke(cli, ["import", "checkouts", str(path)], env=_env(world))

    assert second.exit_code == 0, second.output
    assert "checkouts imported: 0" in second.output
    assert f"duplicates/skipped: {number} ({number} already imported" in second.output
    assert _count(world, t.carts) == number
    assert _count(world, t.event_receipts) == number
    assert _count(world, t.enrollments) == len(recent)
    assert not (tmp_path / "checkouts.rejects.csv").exists()


def test_rejections_name_the_line_column_and_reason_and_spare_the_rest(
    world: World, tmp_path: Path
) -> None:
    now = datetime.now(UTC) - timedelta(hours=2)
    good = _checkout_rows(1, 2, now)  # lines 2-3
    bad_phone = _checkout_rows(2, 1, now)  # line 4
    bad_phone[0]["Phone"] = "12"
    bad_item = _checkout_rows(3, 3, now)  # lines 5-7; the third item is broken
    bad_item[2]["Lineitem name"] = "Sweater\x07"
    bad_item[2]["Lineitem quantity"] = "two"
    too_old = _checkout_rows(4, 1, datetime.now(UTC) - timedelta(days=900))  # line 8
    path = _write(tmp_path / "export.csv", SHOPIFY_HEADER, good + bad_phone + bad_item + too_old)

    result = runner.invoke(cli, ["import", "checkouts", str(path)], env=_env(world))

    assert result.exit_code == 1, result.output
    assert "checkouts imported: 1" in result.output
    assert "rejected: 3 checkouts" in result.output
    assert "line 4: Phone: " in result.output
    with (tmp_path / "export.rejects.csv").open(newline="") as handle:
        rejects = list(csv.DictReader(handle))
    found = {(row["line"], row["column"]) for row in rejects}
    assert found == {
        ("4", "Phone"),
        ("7", "Lineitem name"),
        ("7", "Lineitem quantity"),
        ("8", "Updated at"),
    }
    messages = {row["column"]: row["message"] for row in rejects}
    assert "control character" in messages["Lineitem name"]
    assert "CARTBACK_EVENT_MAX_AGE_DAYS" in messages["Updated at"]
    assert _count(world, t.carts) == 1


def test_a_missing_column_exits_2_naming_file_line_and_column(world: World, tmp_path: Path) -> None:
    header = [name for name in SHOPIFY_HEADER if name != "Lineitem price"]
    rows = [
        {key: value for key, value in row.items() if key != "Lineitem price"}
        for row in _checkout_rows(1, 1, datetime.now(UTC))
    ]
    path = _write(tmp_path / "short.csv", header, rows)

    result = runner.invoke(cli, ["import", "checkouts", str(path)], env=_env(world))

    assert result.exit_code == 2
    assert f"{path}:1: Lineitem price: required column is missing" in " ".join(
        result.output.split()
    )
    assert _count(world, t.carts) == 0


def test_a_dry_run_counts_and_keeps_nothing(world: World, tmp_path: Path) -> None:
    path = _write(tmp_path / "c.csv", SHOPIFY_HEADER, _checkout_rows(1, 2, datetime.now(UTC)))

    result = runner.invoke(cli, ["import", "checkouts", str(path), "--dry-run"], env=_env(world))

    assert result.exit_code == 0, result.output
    assert "checkouts would be imported: 1" in result.output
    assert _count(world, t.carts) == 0
    assert _count(world, t.event_receipts) == 0


EVENTS_HEADER = [
    "cart_token",
    "occurred_at",
    "currency",
    "phone",
    "email",
    "country",
    "sms_marketing",
    "tags",
    "lines",
    "line_title",
    "line_quantity",
    "line_price",
]


def test_the_event_format_takes_lines_as_json_or_as_repeated_rows(
    world: World, tmp_path: Path
) -> None:
    at = (datetime.now(UTC) - timedelta(minutes=2)).isoformat()
    blank = dict.fromkeys(EVENTS_HEADER, "")
    rows = [
        {
            **blank,
            "cart_token": "json-cart",
            "occurred_at": at,
            "currency": "EUR",
            "email": "a@example.com",
            "sms_marketing": "yes",
            "tags": "vip|spring",
            "lines": json.dumps([{"title": "Hat", "quantity": 2, "price": "10.00"}]),
        },
        {
            **blank,
            "cart_token": "row-cart",
            "occurred_at": at,
            "currency": "EUR",
            "phone": "41234567",
            "country": "NO",
            "line_title": "Scarf",
            "line_quantity": "1",
            "line_price": "20.00",
        },
        {
            **blank,
            "cart_token": "row-cart",
            "occurred_at": at,
            "line_title": "Gloves",
            "line_quantity": "3",
            "line_price": "5.00",
        },
        {
            **blank,
            "cart_token": "bad-cart",
            "occurred_at": at,
            "currency": "EUR",
            "email": "b@example.com",
            "line_title": "Socks",
            "line_quantity": "1",
            "line_price": "-1",
        },
    ]
    path = _write(tmp_path / "events.csv", EVENTS_HEADER, rows)

    result = runner.invoke(
        cli, ["import", "checkouts", str(path), "--format", "events"], env=_env(world)
    )

    assert result.exit_code == 1, result.output
    assert "line 5: line_price: " in result.output
    with world.app.engine.connect() as conn:
        carts = {
            row.token: row
            for row in conn.execute(select(t.carts.c.token, t.carts.c.lines, t.carts.c.value))
        }
        phone = conn.execute(
            select(t.contacts.c.phone).where(t.contacts.c.email.is_(None))
        ).scalar_one()
    assert set(carts) == {"json-cart", "row-cart"}
    assert [line["title"] for line in carts["row-cart"].lines] == ["Scarf", "Gloves"]
    assert carts["row-cart"].value == 35
    assert phone == "+4741234567"

    again = runner.invoke(
        cli, ["import", "checkouts", str(path), "--format", "events"], env=_env(world)
    )
    assert "checkouts imported: 0" in again.output
    assert _count(world, t.carts) == 2


@pytest.mark.parametrize("terminal", [True, False])
def test_the_progress_bar_renders_on_a_terminal_and_off_one(terminal: bool) -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=terminal, width=100)

    done = with_progress(console, 3, lambda advance: [advance(1) for _ in range(3)])

    assert done == [None, None, None]
    output = buffer.getvalue()
    assert "importing" in output
    assert "3/3" in output
    assert ("\x1b[" in output) is terminal


def test_an_unreadable_row_exits_2_with_its_line(world: World, tmp_path: Path) -> None:
    path = _write(tmp_path / "c.csv", SHOPIFY_HEADER, _checkout_rows(1, 2, datetime.now(UTC)))
    with path.open("a", encoding="utf-8") as handle:
        handle.write('31,"#9",x' + "y" * 200_000 + "\n")

    result = runner.invoke(cli, ["import", "checkouts", str(path)], env=_env(world))

    assert result.exit_code == 2, result.output
    assert f"{path}:4: row: " in " ".join(result.output.split())
    assert _count(world, t.carts) == 0
