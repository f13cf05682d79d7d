"""A message provider on loopback for the webhook channel, with faults switched on demand.

It keeps a history of every message it took (key, address, time received), so a test can
count duplicates and late sends from what a provider really saw, not from what cartback wrote.
Modes:
- ``normal``: take the message, answer 200 ``{"id": ...}``;
- ``hang``: take the message, then answer only after ``delay`` seconds (past the client's
  timeout, so the sender cannot know it was taken);
- ``slow``: wait ``delay`` seconds, then take it and answer 200;
- ``fail``: answer 500 and take nothing;
- ``fail_in_turn``: every other request answers 500 and takes nothing.
``GET /<key>`` answers 200 if a message with that key was taken, else 404.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODES = ("normal", "hang", "slow", "fail", "fail_in_turn")


@dataclass(frozen=True)
class Received:
    key: str
    channel: str
    to: str
    subject: str | None
    headers: dict[str, str]
    at: float  # wall-clock seconds (time.time()) when the provider took it


@dataclass
class FaultProvider:
    host: str = "127.0.0.1"
    port: int = 0
    mode: str = "normal"
    delay: float = 0.0
    history: list[Received] = field(default_factory=list)
    requests: int = 0
    last_request: float = 0.0  # time.monotonic() of the latest request
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/messages"

    def switch(self, mode: str, delay: float = 0.0) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; one of {', '.join(MODES)}")
        with self._lock:
            self.mode, self.delay = mode, delay

    def taken(self) -> list[Received]:
        with self._lock:
            return list(self.history)

    def count(self) -> int:
        with self._lock:
            return len(self.history)

    def idle_for(self) -> float:
        """Seconds since the latest request."""
        with self._lock:
            return time.monotonic() - self.last_request

    def knows(self, key: str) -> bool:
        with self._lock:
            return any(item.key == key for item in self.history)

    def _take(self, payload: dict[str, Any]) -> None:
        with self._lock:
            self.history.append(
                Received(
                    key=str(payload.get("key")),
                    channel=str(payload.get("channel")),
                    to=str(payload.get("to")),
                    subject=payload.get("subject"),
                    headers=dict(payload.get("headers") or {}),
                    at=time.time(),
                )
            )

    def _next(self) -> tuple[str, float, int]:
        with self._lock:
            self.requests += 1
            self.last_request = time.monotonic()
            return self.mode, self.delay, self.requests

    def answer_post(self, payload: dict[str, Any]) -> int:
        mode, delay, number = self._next()
        if mode == "fail" or (mode == "fail_in_turn" and number % 2 == 1):
            return 500
        if mode == "slow":
            time.sleep(delay)
        self._take(payload)
        if mode == "hang":
            time.sleep(delay)
        return 200


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        payload = json.loads(self.rfile.read(length) or b"{}")
        status = self.server.provider.answer_post(payload)
        body = json.dumps({"id": f"prov-{payload.get('key')}"} if status == 200 else {})
        self._reply(status, body)

    def do_GET(self) -> None:
        key = self.path.rstrip("/").rsplit("/", 1)[-1]
        self._reply(200 if self.server.provider.knows(key) else 404, "{}")

    def _reply(self, status: int, body: str) -> None:
        data = body.encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up (a hang past its timeout): nothing to answer to.
            pass

    def log_message(self, format: str, *args: Any) -> None:
        return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Two workers with eight sends in flight each must not meet refused connections.
    request_queue_size = 128
    provider: FaultProvider


@contextmanager
def running_provider(host: str = "127.0.0.1") -> Iterator[FaultProvider]:
    provider = FaultProvider(host=host)
    server = _Server((host, 0), _Handler)
    server.provider = provider
    provider.port = int(server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, name="provider", daemon=True)
    thread.start()
    try:
        yield provider
    finally:
        server.shutdown()
        server.server_close()
