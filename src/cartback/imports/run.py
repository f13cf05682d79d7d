"""Validate drafts exactly as `POST /v1/events` does (web/schemas.py, web/convert.py), then apply
them through services.ingest in batches, one transaction each."""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError, OperationalError

from cartback.core.events import ShopEvent
from cartback.core.flows import Flow
from cartback.core.lineup import Lineup
from cartback.core.model import Store
from cartback.imports import events_csv, shopify_csv
from cartback.imports.drafts import Draft, FormatError, Rejection, open_csv, read_rows
from cartback.services.ingest import HISTORY, EventStatus, ingest
from cartback.store.migrate import analyze
from cartback.web import problems
from cartback.web.convert import FieldError, to_event
from cartback.web.schemas import EVENT_TYPES, EventIn, EventWindow

FORMATS = {"shopify": shopify_csv, "events": events_csv}
BATCH = 500
# Receipts of imported events are kept apart from the API's: an import's ids never collide
# with a shop's own.
SOURCE = "import"
_adapter: TypeAdapter[Any] = TypeAdapter(EventIn)
_RACES = frozenset({"40001", "40P01"})


@dataclass
class Report:
    rows: int = 0
    events: int = 0
    imported: int = 0
    history: int = 0
    duplicates: int = 0
    stale: int = 0
    rejected: int = 0
    rejections: list[Rejection] = field(default_factory=list)


def load(path: Path, fmt: str) -> tuple[int, list[Draft]]:
    """(rows read, drafts). FormatError for an unreadable file or a missing column."""
    module = FORMATS[fmt]
    try:
        with open_csv(path) as handle:
            _, rows = read_rows(handle, module.REQUIRED)
            read = list(rows)
    except UnicodeDecodeError as error:
        raise FormatError(1, "file", f"not UTF-8 text: {error.reason}") from None
    except csv.Error as error:
        raise FormatError(1, "file", f"not a readable CSV file: {error}") from None
    return len(read), module.drafts(read)


def validate(draft: Draft, window: EventWindow) -> ShopEvent | list[Rejection]:
    if draft.rejection is not None:
        return [draft.rejection]
    try:
        model = _adapter.validate_python(draft.document, context={"window": window})
        return to_event(model, "", draft.document)
    except ValidationError as error:
        found = problems.from_validation_error(error, (), EVENT_TYPES).errors
        return [draft.locate(item["field"], item["message"]) for item in found]
    except FieldError as error:
        return [draft.locate(error.field.lstrip("."), error.message)]


def run(
    engine: Engine,
    store: Store,
    flow: Flow | Lineup,
    drafts: Sequence[Draft],
    *,
    now: datetime,
    max_age: timedelta,
    max_ahead: timedelta,
    future_skew: timedelta,
    suppression_key: str | None,
    dry_run: bool = False,
    advance: Callable[[int], None] = lambda _rows: None,
    batch: int = BATCH,
) -> Report:
    """Apply every valid draft; `advance(rows)` after each batch. Checkouts whose first message
    would already have been due are stored as history, without enrolling."""
    report = Report(events=len(drafts))
    window = EventWindow(now=now, max_age=max_age, max_ahead=max_ahead)
    pending: list[tuple[ShopEvent, int]] = []

    def flush() -> None:
        events = [event for event, _ in pending]
        applied = _apply(engine, store, flow, events, now, future_skew, suppression_key, dry_run)
        for result in applied:
            if result.status is EventStatus.DUPLICATE:
                report.duplicates += 1
            elif result.status is EventStatus.STALE:
                report.stale += 1
            elif result.detail == HISTORY:
                report.history += 1
            else:
                report.imported += 1
        advance(sum(rows for _, rows in pending))
        pending.clear()

    for draft in drafts:
        checked = validate(draft, window)
        if isinstance(checked, list):
            report.rejected += 1
            report.rejections.extend(checked)
            advance(len(draft.lines))
            continue
        pending.append((checked, len(draft.lines)))
        if len(pending) >= batch:
            flush()
    if pending:
        flush()
    if report.imported and not dry_run:
        # The planner's statistics still describe the tables before the import.
        analyze(engine)
    report.rejections.sort(key=lambda rejection: rejection.line)
    return report


def _apply(
    engine: Engine,
    store: Store,
    flow: Flow | Lineup,
    events: list[ShopEvent],
    now: datetime,
    future_skew: timedelta,
    suppression_key: str | None,
    dry_run: bool,
) -> list[Any]:
    attempts = 3
    for attempt in range(1, attempts + 1):
        try:
            with engine.connect() as conn:
                transaction = conn.begin()
                results = ingest(
                    conn,
                    store,
                    flow,
                    events,
                    now,
                    source=SOURCE,
                    future_skew=future_skew,
                    suppression_key=suppression_key,
                    history_before=now,
                )
                # A dry run does all the work, so its counts are the real ones, and keeps none.
                if dry_run:
                    transaction.rollback()
                else:
                    transaction.commit()
                return results
        except (IntegrityError, OperationalError) as error:
            # A webhook raced this batch on one cart or contact: the batch is retried whole.
            raced = isinstance(error, IntegrityError) or (
                getattr(error.orig, "sqlstate", None) in _RACES
            )
            if attempt == attempts or not raced:
                raise
    raise AssertionError("unreachable: the last attempt returns or raises")


def write_rejects(path: Path, rejections: Sequence[Rejection]) -> None:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["line", "column", "message"])
        for rejection in rejections:
            writer.writerow([rejection.line, rejection.column, rejection.message])
