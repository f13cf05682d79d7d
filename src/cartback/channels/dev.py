"""Development channels: print to the console, append to a JSON Lines file, or drop.

They are local, so a provider timeout barely applies; each takes one (`timeout`, seconds) as
every channel does, so that the registry builds them all alike."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from cartback.core.model import Channel
from cartback.ports import LookupResult, LookupStatus, OutboundMessage, SendResult, SendStatus


class NullChannel:
    """Accepts everything and keeps nothing: for benchmarks."""

    name = "null"

    def __init__(self, kind: Channel, *, timeout: float = 10.0) -> None:
        self.kind = kind
        self.timeout = timeout

    def send(self, message: OutboundMessage) -> SendResult:
        return SendResult(SendStatus.ACCEPTED, provider_id=f"null-{message.key}")

    def lookup(self, key: str) -> LookupStatus:
        return LookupStatus.UNKNOWN

    def close(self) -> None:
        return None


class ConsoleChannel:
    """Prints each message; the quickstart watches recovery happen here.

    This is a provider stand-in, not a log: it prints whole messages (recipient, subject, body)
    to stdout by design, never through `logging`, and is for local development only."""

    name = "console"

    def __init__(
        self, kind: Channel, write: Callable[[str], None] = print, *, timeout: float = 10.0
    ) -> None:
        self.kind = kind
        self.timeout = timeout
        self._write = write
        self._lock = threading.Lock()

    def send(self, message: OutboundMessage) -> SendResult:
        stamp = datetime.now(UTC).strftime("%H:%M:%S")
        head = f"[{stamp}] {message.channel.upper()} to {message.to}"
        lines = [head]
        if message.subject:
            lines.append(f"  Subject: {message.subject}")
        lines.extend(f"  {line}" for line in message.body.splitlines())
        with self._lock:
            self._write("\n".join(lines))
        return SendResult(SendStatus.ACCEPTED, provider_id=f"console-{message.key}")

    def lookup(self, key: str) -> LookupStatus:
        return LookupStatus.UNKNOWN

    def close(self) -> None:
        return None


class JsonlChannel:
    """Appends one JSON object per message; its keys make `lookup` exact after a crash."""

    name = "jsonl"

    def __init__(self, kind: Channel, path: Path, *, timeout: float = 10.0) -> None:
        self.kind = kind
        self.path = path
        self.timeout = timeout
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)

    def send(self, message: OutboundMessage) -> SendResult:
        record = {
            "key": message.key,
            "channel": str(message.channel),
            "to": message.to,
            "subject": message.subject,
            "body": message.body,
            "html": message.html,
            "headers": dict(message.headers),
            "at": datetime.now(UTC).isoformat(),
        }
        line = json.dumps(record, ensure_ascii=False) + "\n"
        try:
            with self._lock, self.path.open("a", encoding="utf-8") as handle:
                handle.write(line)
                handle.flush()
        except OSError as error:
            return SendResult(SendStatus.REJECTED, error=str(error), retryable=True)
        return SendResult(SendStatus.ACCEPTED, provider_id=_jsonl_id(message.key))

    def lookup(self, key: str) -> LookupResult:
        if not self.path.exists():
            return LookupResult(LookupStatus.NOT_SENT)
        with self.path.open(encoding="utf-8") as handle:
            for line in handle:
                try:
                    if json.loads(line).get("key") == key:
                        return LookupResult(LookupStatus.SENT, provider_id=_jsonl_id(key))
                except json.JSONDecodeError:
                    # A torn last line from a crash mid-write: that message did not go out.
                    continue
        return LookupResult(LookupStatus.NOT_SENT)

    def close(self) -> None:
        return None


def _jsonl_id(key: str) -> str:
    return f"jsonl-{key}"
