"""A local HTTP server that records every request and answers from a script: the stand-in for
a platform's Admin API in tests."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any
    # The bytes as received: what a signature is computed over.
    raw: bytes = b""


# (method, path, parsed body) → (status, JSON answer)
Script = Callable[[str, str, Any], tuple[int, Any]]


@dataclass
class Reply:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


# The whole request (its query too) → the answer with headers (a `Link` to the next page).
FullScript = Callable[[Recorded], Reply]


@dataclass
class RecordingServer:
    url: str
    requests: list[Recorded] = field(default_factory=list)


@contextmanager
def recording_server(script: Script) -> Iterator[RecordingServer]:
    def full(request: Recorded) -> Reply:
        return Reply(*script(request.method, request.path, request.body))

    with recording_api(full) as server:
        yield server


@contextmanager
def recording_api(script: FullScript) -> Iterator[RecordingServer]:
    server_state = RecordingServer(url="")

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            request = Recorded(
                self.command, parts.path, parse_qs(parts.query), dict(self.headers), body, raw
            )
            server_state.requests.append(request)
            reply = script(request)
            data = json.dumps(reply.body).encode()
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = _answer

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server_state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server_state
    finally:
        server.shutdown()
        server.server_close()
