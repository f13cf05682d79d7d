"""A body over the cap gets 413 problem+json: before reading when its length is declared, and
as soon as the cap is passed when it is streamed. Nothing holds more than the cap in memory."""

from __future__ import annotations

import asyncio
import json
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from cartback.web.app import create_app
from cartback.web.limits import EVENTS_BODY_BYTES, OTHER_BODY_BYTES
from tests.support.procs import cartback_env, free_port, start_cartback, stop, wait_for
from tests.support.world import World, make_world

CHUNK = 1024 * 1024


def _run(app: Any, method: str, path: str, headers: list[tuple[bytes, bytes]], body: Any) -> Any:
    """Drive the ASGI app by hand; `body` is an iterator of chunks (it counts what is read)."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        try:
            chunk = next(body)
        except StopIteration:
            return {"type": "http.request", "body": b"", "more_body": False}
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), *headers],
        "client": ("127.0.0.1", 1234),
        "server": ("testserver", 80),
    }
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    content = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), content


class _Endless:
    """An endless body that counts how many bytes were taken from it."""

    def __init__(self) -> None:
        self.taken = 0

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        self.taken += CHUNK
        return b"x" * CHUNK


AUTH = [(b"authorization", b"Bearer cbk_test_key"), (b"content-type", b"application/json")]


@pytest.fixture
def sqlite_world(tmp_path: Path) -> Iterator[World]:
    with make_world(f"sqlite:///{tmp_path / 'cartback.db'}") as world:
        yield world


def test_a_declared_length_over_the_cap_is_refused_before_reading(sqlite_world: World) -> None:
    body = _Endless()
    headers = [*AUTH, (b"content-length", str(400 * CHUNK).encode())]
    status, response_headers, content = _run(
        create_app(sqlite_world.app), "POST", "/v1/events", headers, body
    )
    assert status == 413
    assert response_headers[b"content-type"] == b"application/problem+json"
    assert json.loads(content)["field"] == "body"
    assert body.taken == 0


def test_a_streamed_body_is_cut_off_at_the_cap(sqlite_world: World) -> None:
    body = _Endless()
    status, _headers, content = _run(create_app(sqlite_world.app), "POST", "/v1/events", AUTH, body)
    assert status == 413
    assert json.loads(content)["type"] == "/problems/too-large"
    assert body.taken <= EVENTS_BODY_BYTES + CHUNK


@pytest.mark.parametrize("path", ["/u/abcdefghijklmnop", "/healthz", "/v1/carts/c1/decisions"])
def test_other_routes_have_a_small_cap(sqlite_world: World, path: str) -> None:
    with TestClient(create_app(sqlite_world.app)) as client:
        response = client.post(path, content=b"x" * (OTHER_BODY_BYTES + 1))
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _send_chunked(port: int, total: int) -> tuple[bytes, int]:
    """POST a chunked body of up to `total` bytes; stop when the server answers."""
    head = (
        b"POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer cbk_test_key\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    chunk = f"{CHUNK:x}\r\n".encode() + b" " * CHUNK + b"\r\n"
    sent = 0
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        pending = b""
        while sent < total and not answer:
            readable, writable, _ = select.select([sock], [sock], [], 10)
            if readable:
                answer = sock.recv(65536)
                break
            if writable:
                if not pending:
                    pending, sent = chunk, sent + CHUNK
                try:
                    pending = pending[sock.send(pending) :]
                except (BrokenPipeError, ConnectionResetError):
                    break
        deadline = time.monotonic() + 10
        while b"\r\n\r\n" not in answer and time.monotonic() < deadline:
            try:
                more = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not more:
                break
            answer += more
    return answer, sent


@pytest.mark.slow
def test_a_real_server_answers_413_to_a_huge_chunked_body_without_growing(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'cartback.db'}"
    with make_world(url):
        pass  # migrated, with the store and its key
    port = free_port()
    env = cartback_env(url, CARTBACK_PORT=str(port), CARTBACK_SMS_CHANNEL="null")
    server = start_cartback(["web"], env, tmp_path, tmp_path / "web.log")
    try:

        def _up() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            except OSError:
                return False
            return True

        wait_for(_up, 30, "the web server")
        before = _rss_kib(server.pid)
        answer, sent = _send_chunked(port, 200 * CHUNK)
        grown_mib = (_rss_kib(server.pid) - before) / 1024
    finally:
        stop(server)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"application/problem+json" in answer
    # The server stopped reading at the cap: the rest never left the client's socket buffers.
    assert sent < 100 * CHUNK, sent
    assert grown_mib < 40, f"the server grew by {grown_mib:.0f} MiB"
