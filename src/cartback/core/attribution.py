"""Which message earned an order: one touch per order, never two channels.

Pure: the caller passes the order's time and the candidate touches it found (by the order's cart
first, then by the shopper); nothing here reads a clock or a database.

A touch is one message with the times the shopper reacted to it. Each (channel, event) has a
window: an event counts when it happened at most that long before the order. A click beats an
open and an open beats a delivery; within the best kind, the latest event wins (last touch) or
the earliest (first touch).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any


class TouchKind(StrEnum):
    CLICK = "click"
    OPEN = "open"
    DELIVERY = "delivery"


class Model(StrEnum):
    LAST_TOUCH = "last_touch"
    FIRST_TOUCH = "first_touch"


class MatchedBy(StrEnum):
    CART = "cart"
    CONTACT = "contact"


# Higher wins: a click says more about the order than an open, an open more than a delivery.
RANK = {TouchKind.CLICK: 3, TouchKind.OPEN: 2, TouchKind.DELIVERY: 1}

DEFAULT_WINDOWS: Mapping[tuple[str, TouchKind], timedelta] = {
    ("sms", TouchKind.CLICK): timedelta(days=5),
    ("sms", TouchKind.DELIVERY): timedelta(hours=24),
    ("email", TouchKind.CLICK): timedelta(days=5),
    ("email", TouchKind.OPEN): timedelta(hours=24),
}


class SettingsError(ValueError):
    """A store's measurement settings are invalid; the message names the field."""


@dataclass(frozen=True, slots=True)
class Touch:
    """One message and the shopper's reactions to it (human clicks and opens only)."""

    message_id: int
    enrollment_id: int | None
    flow: str
    step_id: str
    variant: str | None
    channel: str
    delivered_at: datetime | None = None
    opens: tuple[datetime, ...] = ()
    clicks: tuple[datetime, ...] = ()


@dataclass(frozen=True, slots=True)
class Credit:
    touch: Touch
    kind: TouchKind
    at: datetime
    matched_by: MatchedBy


@dataclass(frozen=True, slots=True)
class AttributionSettings:
    windows: Mapping[tuple[str, TouchKind], timedelta] = field(
        default_factory=lambda: dict(DEFAULT_WINDOWS)
    )
    model: Model = Model.LAST_TOUCH


def _events(touch: Touch) -> Iterable[tuple[TouchKind, datetime]]:
    for at in touch.clicks:
        yield TouchKind.CLICK, at
    for at in touch.opens:
        yield TouchKind.OPEN, at
    if touch.delivered_at is not None:
        yield TouchKind.DELIVERY, touch.delivered_at


def _best(
    order_at: datetime, touches: Sequence[Touch], settings: AttributionSettings
) -> tuple[Touch, TouchKind, datetime] | None:
    found: list[tuple[Touch, TouchKind, datetime]] = []
    for touch in touches:
        for kind, at in _events(touch):
            window = settings.windows.get((touch.channel, kind))
            if window is not None and at <= order_at and order_at - at <= window:
                found.append((touch, kind, at))
    if not found:
        return None
    if settings.model is Model.FIRST_TOUCH:
        # Best kind first, then the earliest; the message id breaks exact ties the same way.
        return min(found, key=lambda c: (-RANK[c[1]], c[2], c[0].message_id))
    return max(found, key=lambda c: (RANK[c[1]], c[2], c[0].message_id))


def attribute(
    order_at: datetime,
    by_cart: Sequence[Touch],
    by_contact: Sequence[Touch],
    settings: AttributionSettings,
) -> Credit | None:
    """The one touch an order is credited to, or None: the order's own cart's messages first,
    the shopper's other messages only when none of those qualifies."""
    for matched_by, touches in ((MatchedBy.CART, by_cart), (MatchedBy.CONTACT, by_contact)):
        best = _best(order_at, touches, settings)
        if best is not None:
            return Credit(touch=best[0], kind=best[1], at=best[2], matched_by=matched_by)
    return None


# --- a store's settings -----------------------------------------------------------------------

_UNITS = {"m": timedelta(minutes=1), "h": timedelta(hours=1), "d": timedelta(days=1)}


def parse_duration(text: str, where: str) -> timedelta:
    """'5d', '24h', '90m' → timedelta; anything else names `where`."""
    raw = text.strip() if isinstance(text, str) else ""
    unit = _UNITS.get(raw[-1:])
    if unit is None or not raw[:-1].isdigit() or int(raw[:-1]) <= 0:
        raise SettingsError(f"{where}: expected a positive duration like 24h, 5d or 90m")
    return int(raw[:-1]) * unit


def parse_decimal(value: object, where: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise SettingsError(f"{where}: expected a decimal number as a string, like '0.05'")
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise SettingsError(f"{where}: not a decimal number") from None
    if not number.is_finite() or number < 0:
        raise SettingsError(f"{where}: must be zero or more")
    return number


def settings_from(raw: Mapping[str, Any] | None) -> AttributionSettings:
    """`attribution:` of a store's measurement settings: `model` and `windows`, where windows
    maps channel → event → duration (or `off`). Unnamed windows keep their defaults."""
    section = (raw or {}).get("attribution") or {}
    if not isinstance(section, Mapping):
        raise SettingsError("attribution: expected a mapping")
    unknown = set(section) - {"model", "windows"}
    if unknown:
        raise SettingsError(f"attribution.{sorted(unknown)[0]}: unknown setting")
    model_text = section.get("model", Model.LAST_TOUCH.value)
    try:
        model = Model(model_text)
    except ValueError:
        raise SettingsError("attribution.model: expected last_touch or first_touch") from None
    windows = dict(DEFAULT_WINDOWS)
    given = section.get("windows") or {}
    if not isinstance(given, Mapping):
        raise SettingsError("attribution.windows: expected a mapping of channel to events")
    for channel, events in given.items():
        if channel not in ("sms", "email"):
            raise SettingsError(f"attribution.windows.{channel}: expected sms or email")
        if not isinstance(events, Mapping):
            raise SettingsError(f"attribution.windows.{channel}: expected event: duration")
        for event, duration in events.items():
            where = f"attribution.windows.{channel}.{event}"
            try:
                kind = TouchKind(event)
            except ValueError:
                raise SettingsError(f"{where}: expected click, open or delivery") from None
            if duration in ("off", None, False):
                windows.pop((channel, kind), None)
            else:
                windows[(channel, kind)] = parse_duration(duration, where)
    return AttributionSettings(windows=windows, model=model)
