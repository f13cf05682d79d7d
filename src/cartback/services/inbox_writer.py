"""Grouped commits for inbox appends.

Every request hands its rows to one writer thread and waits for them to be committed. The
thread takes whatever has queued up while the previous commit ran (up to `max_rows`) and commits
it in one transaction, one INSERT per request: under load one fsync serves many requests, and
an idle server commits a lone request at once, with no timer to wait for. If a group's
transaction fails, each request in it is tried alone, so one bad request fails only itself.
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Engine

from cartback.services.inbox import Entry, append
from cartback.services.wakeups import Topic, notify

log = logging.getLogger("cartback.inbox")

# Rows one commit takes at most: a bound on how long the first request of a group waits.
MAX_GROUP_ROWS = 2000


@dataclass(slots=True)
class _Append:
    store_id: int
    source: str
    entries: list[Entry]
    received_at: datetime
    done: Future[list[int | None]] = field(default_factory=Future)


class InboxWriter:
    def __init__(self, engine: Engine, *, max_rows: int = MAX_GROUP_ROWS) -> None:
        self.engine = engine
        self.max_rows = max_rows
        self._queue: queue.SimpleQueue[_Append | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False

    def submit(
        self, store_id: int, source: str, entries: list[Entry], received_at: datetime
    ) -> Future[list[int | None]]:
        """The future's result: per entry, its inbox row's id, or None for a duplicate; it is
        set once the rows are committed (or fails with the database's error)."""
        request = _Append(store_id, source, entries, received_at)
        with self._lock:
            if self._closed:
                raise RuntimeError("the inbox writer is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="inbox-writer", daemon=True)
                self._thread.start()
            self._queue.put(request)
        return request.done

    def close(self, timeout: float = 5.0) -> None:
        """Commit what is queued, then stop."""
        with self._lock:
            self._closed = True
            thread = self._thread
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                return
            group, rows = [first], len(first.entries)
            while rows < self.max_rows:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                    break
                group.append(more)
                rows += len(more.entries)
            self._commit(group)

    def _commit(self, group: list[_Append]) -> None:
        try:
            with self.engine.begin() as conn:
                results = [
                    append(conn, r.store_id, r.source, r.entries, r.received_at) for r in group
                ]
                # Workers of other processes apply it at once, not at their next poll.
                notify(conn, Topic.INBOX)
        except Exception as error:
            if len(group) == 1:
                group[0].done.set_exception(error)
                return
            log.warning("a grouped inbox commit failed (%s); each request alone", type(error))
            for request in group:
                self._commit([request])
            return
        for request, result in zip(group, results, strict=True):
            request.done.set_result(result)
