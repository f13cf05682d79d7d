"""A store's history as the backtest reads it: the event API's JSON lines (one event, or one
`{"events": [...]}` batch, per line), or the CSV files `cartback import checkouts` reads, each
validated as the API validates it. Events are gathered per cart and carts per shopper."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cartback.core.events import CartEmptied, CheckoutUpdated, ContactInfo, OrderPlaced, ShopEvent
from cartback.imports import run as importer
from cartback.imports.drafts import FormatError, Rejection
from cartback.web.intake import parse_event_document
from cartback.web.problems import Problem
from cartback.web.schemas import EventWindow

FORMATS = ("jsonl", *importer.FORMATS)
# History has no age limit: any time since 1970 and up to a century ahead is taken.
_ANY_TIME = EventWindow(
    datetime(2000, 1, 1, tzinfo=UTC),
    max_age=timedelta(days=365 * 30),
    max_ahead=timedelta(days=36500),
)

CartHistory = list[ShopEvent]
Shopper = list[CartHistory]


@dataclass
class History:
    shoppers: list[Shopper] = field(default_factory=list)
    events: int = 0
    rejections: list[Rejection] = field(default_factory=list)
    # Orders and emptied carts that name no cart of the file and no known shopper.
    unmatched: int = 0

    @property
    def carts(self) -> int:
        return sum(len(shopper) for shopper in self.shoppers)

    @property
    def main_currency(self) -> str | None:
        """The currency most carts are in."""
        counts = Counter(
            cart[0].currency
            for shopper in self.shoppers
            for cart in shopper
            if isinstance(cart[0], CheckoutUpdated)
        )
        return counts.most_common(1)[0][0] if counts else None


def guess_format(path: Path) -> str:
    return "jsonl" if path.suffix.lower() in (".jsonl", ".ndjson", ".json") else "shopify"


def read(path: Path, fmt: str) -> History:
    """FormatError when the file cannot be read as the format at all; a bad event is a
    rejection (line, field, message) and the others are still read."""
    events: list[ShopEvent] = []
    rejections: list[Rejection] = []
    if fmt == "jsonl":
        _read_jsonl(path, events, rejections)
    else:
        _, drafts = importer.load(path, fmt)
        for draft in drafts:
            found = importer.validate(draft, _ANY_TIME)
            if isinstance(found, list):
                rejections.extend(found)
            else:
                events.append(found)
    history = gather(events)
    history.rejections = rejections
    return history


def _read_jsonl(path: Path, events: list[ShopEvent], rejections: list[Rejection]) -> None:
    try:
        handle = path.open("rb")
    except OSError as error:
        raise FormatError(1, "file", error.strerror or str(error)) from None
    with handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                events.extend(parse_event_document(line))
            except Problem as problem:
                found = problem.errors or [{"field": "body", "message": problem.detail}]
                rejections.extend(
                    Rejection(number, item["field"], item["message"]) for item in found
                )


def gather(events: Sequence[ShopEvent]) -> History:
    """Events per cart token, carts per shopper (by email, else phone). An order without a
    known cart goes to every cart of its shopper that started before it, as orders from
    another device end the shopper's flows."""
    carts: dict[str, CartHistory] = {}
    owner: dict[str, str] = {}
    loose: list[OrderPlaced | CartEmptied] = []
    kept = 0
    for event in sorted(events, key=lambda item: item.occurred_at):
        if isinstance(event, CheckoutUpdated):
            carts.setdefault(event.cart_token, []).append(event)
            owner.setdefault(event.cart_token, _shopper_key(event.contact) or event.cart_token)
            kept += 1
        elif isinstance(event, OrderPlaced | CartEmptied):
            loose.append(event)
            kept += 1
    shoppers: dict[str, Shopper] = {}
    for token, history in carts.items():
        shoppers.setdefault(owner[token], []).append(history)
    unmatched = 0
    for event in loose:
        if event.cart_token in carts:
            carts[event.cart_token].append(event)
            continue
        contact = event.contact if isinstance(event, OrderPlaced) else None
        key = _shopper_key(contact) if contact is not None else None
        targets = [
            history
            for history in shoppers.get(key or "", [])
            if history[0].occurred_at < event.occurred_at
        ]
        for history in targets:
            history.append(event)
        unmatched += not targets
    return History(shoppers=list(shoppers.values()), events=kept, unmatched=unmatched)


def _shopper_key(contact: ContactInfo | None) -> str | None:
    if contact is None:
        return None
    if contact.email:
        return "email:" + contact.email.strip().lower()
    if contact.phone:
        return "phone:" + contact.phone
    return None
