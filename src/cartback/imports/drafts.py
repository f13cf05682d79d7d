"""What both CSV formats produce: checkout events in the event API's JSON shape, each with the
CSV lines and columns its fields came from, so a refusal can name them."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

# A line item's field in an event path, e.g. "lines[2].price".
_LINE_FIELD = re.compile(r"^lines\[(\d+)\]\.?(.*)$")
# The event id column's width (event_receipts.event_id).
EVENT_ID_LENGTH = 200


class FormatError(ValueError):
    """The file cannot be read as the format at all: exit code 2, file:line: column: message."""

    def __init__(self, line: int, column: str, message: str) -> None:
        super().__init__(f"{line}: {column}: {message}")
        self.line = line
        self.column = column
        self.message = message


@dataclass(frozen=True, slots=True)
class Rejection:
    line: int
    column: str
    message: str


@dataclass(slots=True)
class Draft:
    """One checkout event. `columns` maps an event path ("contact.phone", "lines[].price") to
    the CSV column it was read from."""

    document: dict[str, Any]
    lines: list[int]
    item_lines: list[int] = field(default_factory=list)
    columns: Mapping[str, str] = field(default_factory=dict)
    rejection: Rejection | None = None

    def locate(self, path: str, message: str) -> Rejection:
        """The CSV line and column behind an event field path."""
        found = _LINE_FIELD.match(path)
        if found is not None:
            index, rest = int(found.group(1)), found.group(2)
            line = self.item_lines[index] if index < len(self.item_lines) else self.lines[0]
            column = self.columns.get(f"lines[].{rest}", self.columns.get("lines", path))
            return Rejection(line, column, message)
        return Rejection(self.lines[0], self.columns.get(path, path or "row"), message)


@dataclass(frozen=True, slots=True)
class Row:
    line: int
    values: dict[str, str]

    def get(self, column: str) -> str:
        return (self.values.get(column) or "").strip()


def read_rows(handle: TextIO, required: tuple[str, ...]) -> tuple[list[str], Iterator[Row]]:
    """The header (line 1) and the data rows with the line each starts on. A missing required
    column is a FormatError naming it."""
    reader = csv.reader(handle)
    try:
        header = [name.strip() for name in next(reader)]
    except StopIteration:
        message = "the file is empty; the first line must name the columns"
        raise FormatError(1, "header", message) from None
    for column in required:
        if column not in header:
            raise FormatError(1, column, "required column is missing from the header")

    def rows() -> Iterator[Row]:
        while True:
            start = reader.line_num + 1
            try:
                record = next(reader)
            except StopIteration:
                return
            except csv.Error as error:
                raise FormatError(start, "row", f"not readable as CSV: {error}") from None
            except UnicodeDecodeError as error:
                raise FormatError(start, "file", f"not UTF-8 text: {error.reason}") from None
            if not any(cell.strip() for cell in record):
                continue
            if len(record) > len(header):
                raise FormatError(
                    start, "row", f"has {len(record)} fields but the header names {len(header)}"
                )
            yield Row(start, dict(zip(header, record, strict=False)))

    return header, rows()


def open_csv(path: Path) -> TextIO:
    # utf-8-sig: spreadsheet programs (and Shopify's export) may start the file with a BOM.
    return path.open(encoding="utf-8-sig", newline="")


def event_id(prefix: str, key: str, document: Mapping[str, Any]) -> str:
    """Derived from the event's content: the same row imported twice has the same id, so the
    second import is a duplicate; a changed row is a new event (and ingest's stale check
    decides whether it is newer)."""
    digest = hashlib.sha256(json.dumps(document, sort_keys=True, default=str).encode()).hexdigest()[
        :24
    ]
    head = f"{prefix}:{key[:120]}:"
    return (head + digest)[:EVENT_ID_LENGTH]


def flag(value: str) -> bool | str | None:
    """A CSV yes/no cell: empty is unknown; anything unreadable stays text so validation names
    it."""
    lowered = value.strip().lower()
    if not lowered:
        return None
    if lowered in ("yes", "true", "1", "y"):
        return True
    if lowered in ("no", "false", "0", "n"):
        return False
    return value


def whole(value: str) -> int | str:
    """A quantity: digits become an integer; anything else stays text for validation to name."""
    text = value.strip()
    return int(text) if text.isdigit() and len(text) < 12 else text


def prune(document: dict[str, Any]) -> dict[str, Any]:
    """Drop empty values, so a blank optional cell is an absent field, not an invalid one."""
    cleaned: dict[str, Any] = {}
    for key, value in document.items():
        if isinstance(value, dict):
            value = prune(value)
            if not value:
                continue
        if value is None or value == "":
            continue
        cleaned[key] = value
    return cleaned
