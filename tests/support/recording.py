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
class RecordingServer:
    url: str
    requests: list[Recorded] = field(default_factory=list)


@contextmanager
def recording_server(script: Script) -> Iterator[RecordingServer]:
    server_state = RecordingServer(url="")

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            server_state.requests.append(
                Recorded(
                    self.command, parts.path, parse_qs(parts.query), dict(self.headers), body, raw
                )
            )
            status, answer = script(self.command, parts.path, body)
            data = json.dumps(answer).encode()
            self.send_response(status)
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
