"""Turn a request body into normalised events, or a problem that names every bad field."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from pydantic import TypeAdapter, ValidationError

from cartback.core.events import ShopEvent
from cartback.web import problems
from cartback.web.convert import FieldError, to_event
from cartback.web.limits import EVENTS_BODY_BYTES
from cartback.web.schemas import EVENT_TYPES, MAX_BATCH, EventIn, EventWindow

MAX_BODY_BYTES = EVENTS_BODY_BYTES
# No field takes an integer this long; a longer one reaches validation as a Decimal, which every
# integer field refuses by name (int() itself would refuse more than 4,300 digits, unnamed).
_LONGEST_INT = 40
_event_adapter: TypeAdapter[Any] = TypeAdapter(EventIn)


def parse_event_document(body: bytes, window: EventWindow | None = None) -> list[ShopEvent]:
    """One event, or {"events": [...]}; all of it is valid, or nothing is applied.
    With a window, event times outside it are refused."""
    parsed = _parse_events(body, window)
    try:
        return [to_event(model, prefix, raw) for model, prefix, raw in parsed]
    except FieldError as error:
        field = error.field.lstrip(".")
        raise problems.invalid([{"field": field, "message": error.message}]) from None


def parse_event_rows(
    body: bytes, window: EventWindow | None = None
) -> list[tuple[ShopEvent, dict[str, Any]]]:
    """As `parse_event_document`, with each event's own JSON object beside it: what the inbox
    keeps, to be validated again by `event_from_stored` when the row is applied."""
    parsed = _parse_events(body, window)
    try:
        return [(to_event(model, prefix, raw), raw) for model, prefix, raw in parsed]
    except FieldError as error:
        field = error.field.lstrip(".")
        raise problems.invalid([{"field": field, "message": error.message}]) from None


def event_from_stored(body: str) -> ShopEvent:
    """An inbox row's event. It was valid when accepted; only the age window is not checked
    again, since a row may be applied after a restart."""
    (event,) = parse_event_document(body.encode("utf-8"))
    return event


def _parse_int(digits: str) -> int | Decimal:
    return int(digits) if len(digits) <= _LONGEST_INT else Decimal(digits)


def _load(body: bytes) -> Any:
    try:
        return json.loads(body, parse_int=_parse_int)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        message = f"not valid JSON: {error}"
    except RecursionError:
        message = "not accepted: JSON nested too deep"
    except ValueError as error:
        message = f"not valid JSON: {error}"
    raise problems.invalid([{"field": "body", "message": message}])


def _parse_events(body: bytes, window: EventWindow | None) -> list[tuple[Any, str, dict[str, Any]]]:
    if len(body) > MAX_BODY_BYTES:
        raise problems.too_large(MAX_BODY_BYTES)
    document = _load(body)
    if isinstance(document, dict) and "events" in document:
        raw_events = document["events"]
        if not isinstance(raw_events, list):
            raise problems.invalid([{"field": "events", "message": "must be an array of events"}])
        if not raw_events or len(raw_events) > MAX_BATCH:
            raise problems.invalid(
                [{"field": "events", "message": f"must hold 1 to {MAX_BATCH} events"}]
            )
        extra = sorted(set(document) - {"events"})
        if extra:
            raise problems.invalid([{"field": extra[0], "message": "unknown field"}])
        located = [(event, f"events[{index}]") for index, event in enumerate(raw_events)]
    elif isinstance(document, dict):
        located = [(document, "")]
    else:
        raise problems.invalid(
            [{"field": "body", "message": 'must be an event or {"events": [...]}'}]
        )
    errors: list[dict[str, str]] = []
    parsed: list[tuple[Any, str, dict[str, Any]]] = []
    for raw, prefix in located:
        prefix_parts: tuple[int | str, ...] = ("events", int(prefix[7:-1])) if prefix else ()
        try:
            model = _event_adapter.validate_python(raw, context={"window": window})
        except ValidationError as error:
            errors.extend(problems.from_validation_error(error, prefix_parts, EVENT_TYPES).errors)
            continue
        parsed.append((model, prefix, raw))
    if errors:
        raise problems.invalid(errors)
    return parsed
