"""POST /v1/events after validation: append to the inbox, answer once the rows are durable."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from cartback import metrics
from cartback.app import App
from cartback.core.events import ShopEvent
from cartback.core.model import Store
from cartback.services.inbox import Entry, InboxApplier
from cartback.services.inbox_writer import InboxWriter
from cartback.services.ingest import EventStatus
from cartback.store import tables as t
from cartback.web.intake import event_from_stored

log = logging.getLogger("cartback.web.events")

ALREADY_RECEIVED = "already received"


@dataclass(frozen=True, slots=True)
class QueuedAnswer:
    """A shop delivery's answer: `accepted` or `duplicate`, and (inline mode, once applied)
    what applying it made of its events."""

    status: str
    results: list[dict[str, Any]] | None = None


class EventIntake:
    """The web server's side of the inbox: one grouped-commit writer, and (inline mode) an
    applier that applies a request's own rows before it is answered."""

    def __init__(self, app: App) -> None:
        self.app = app
        # Made on first use: building the app (for its OpenAPI document, say) opens nothing.
        self._writer: InboxWriter | None = None
        self._applier: InboxApplier | None = None

    @property
    def writer(self) -> InboxWriter:
        if self._writer is None:
            self._writer = InboxWriter(self.app.engine)
        return self._writer

    @property
    def applier(self) -> InboxApplier:
        if self._applier is None:
            app = self.app
            self._applier = InboxApplier(
                app.engine,
                app.registry,
                event_from_stored,
                app.clock.now,
                future_skew=timedelta(seconds=app.settings.future_skew_seconds),
                suppression_key=app.settings.suppression_key,
                batch=app.settings.inbox_batch,
                export_dir=app.settings.export_dir,
            )
        return self._applier

    async def accept(
        self, store: Store, events: list[tuple[ShopEvent, dict[str, Any]]], now: datetime
    ) -> Response:
        """The answer (EventsOut's shape), built as JSON directly: the hot path skips a
        validation of its own output."""
        entries = [
            Entry(event.event_id, json.dumps(raw, separators=(",", ":"), ensure_ascii=False))
            for event, raw in events
        ]
        ids = await asyncio.wrap_future(self.writer.submit(store.id, "api", entries, now))
        if self.app.settings.inbox_apply_inline:
            await self._apply_inline([row for row in ids if row is not None])
        # Accepted events are counted when applied (services.ingest); a repeat stops here.
        metrics.count_events(
            [event for (event, _raw), row in zip(events, ids, strict=True) if row is None],
            [str(EventStatus.DUPLICATE)] * ids.count(None),
        )
        skew = timedelta(seconds=self.app.settings.future_skew_seconds)
        results = [
            {"id": event.event_id, "status": "accepted", "detail": _clamped(event, now, skew)}
            if row is not None
            else {"id": event.event_id, "status": "duplicate", "detail": ALREADY_RECEIVED}
            for (event, _raw), row in zip(events, ids, strict=True)
        ]
        accepted = sum(row is not None for row in ids)
        answer = {"accepted": accepted, "duplicates": len(ids) - accepted, "results": results}
        return Response(
            json.dumps(answer, separators=(",", ":"), ensure_ascii=False),
            media_type="application/json",
        )

    async def append_delivery(
        self, store: Store, platform: str, delivery_id: str, body: str, now: datetime
    ) -> QueuedAnswer:
        """A verified and parsed shop delivery (services/shop_inbox.py): one inbox row whose
        event id is the platform's delivery id, so a redelivery is a duplicate."""
        entries = [Entry(delivery_id, body)]
        (row,) = await asyncio.wrap_future(self.writer.submit(store.id, platform, entries, now))
        if row is None:
            return QueuedAnswer(str(EventStatus.DUPLICATE))
        if not self.app.settings.inbox_apply_inline:
            return QueuedAnswer(str(EventStatus.ACCEPTED))
        await self._apply_inline([row])
        return await run_in_threadpool(self._applied, row)

    def _applied(self, row: int) -> QueuedAnswer:
        i = t.inbox.c
        with self.app.engine.connect() as conn:
            found = conn.execute(
                select(i.status, i.detail).where(i.id == row, i.applied_at.is_not(None))
            ).first()
        if found is None:  # not applied yet (the worker has it), or kept with its error
            return QueuedAnswer(str(EventStatus.ACCEPTED))
        if found.status == EventStatus.DUPLICATE:
            return QueuedAnswer(str(EventStatus.DUPLICATE))
        return QueuedAnswer(str(EventStatus.ACCEPTED), json.loads(found.detail or "[]"))

    async def _apply_inline(self, rows: list[int]) -> None:
        try:
            await run_in_threadpool(self.applier.drain, rows)
        except Exception:
            # The events are stored and answered `accepted`: the worker applies them instead.
            log.exception("inline apply failed; the worker will apply the rows")

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def _clamped(event: ShopEvent, now: datetime, skew: timedelta) -> str | None:
    """Ingest clamps an event stamped further ahead of its receive time than the skew allows
    (services/ingest.py); the answer says so already, with ingest's words."""
    if event.occurred_at <= now + skew:
        return None
    ahead = int((event.occurred_at - now).total_seconds())
    return f"occurred_at was {ahead} s ahead of the receive time; clamped"
