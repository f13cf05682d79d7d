"""Load never turns into 500s: requests past the concurrency setting and a pool with no
connection left are answered 503 with Retry-After, and the pool is sized from the setting."""

from __future__ import annotations

import asyncio
from contextlib import ExitStack
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from starlette.types import Receive, Scope, Send

from cartback.app import pool_size
from cartback.web.app import create_app
from cartback.web.limits import ConcurrencyLimit
from tests.support.events import checkout_payload
from tests.support.world import make_world


def test_a_request_past_the_limit_is_a_503_with_retry_after() -> None:
    release = asyncio.Event()
    entered = asyncio.Event()

    async def slow(scope: Scope, receive: Receive, send: Send) -> None:
        entered.set()
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def scenario() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=ConcurrencyLimit(slow, limit=1))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            first = asyncio.create_task(client.get("/v1/events"))
            await entered.wait()
            refused = await client.get("/v1/events")
            release.set()
            done = await first
            # The slot is free again.
            again = await client.get("/v1/events")
            return done, refused, again

    done, refused, again = asyncio.run(scenario())
    assert (done.status_code, again.status_code) == (200, 200)
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["title"] == "Busy"


@pytest.mark.postgres
def test_the_pool_is_sized_from_the_concurrency_setting(database_url: str) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite opens a connection per checkout")
    with make_world(database_url, web_concurrency=3) as world:
        assert world.app.engine.pool.size() == pool_size(world.app.settings) == 11  # type: ignore[attr-defined]


@pytest.mark.postgres
def test_an_exhausted_pool_is_a_503_with_retry_after_not_a_500(database_url: str) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite opens a connection per checkout")
    with (
        make_world(database_url, web_concurrency=1, database_connect_timeout_seconds=2) as world,
        TestClient(create_app(world.app)) as client,
        ExitStack() as held,
    ):
        # Every connection is taken, as by requests stuck on a slow database.
        for _ in range(pool_size(world.app.settings)):
            held.enter_context(world.app.engine.connect())
        answer: Any = client.post(
            "/v1/events",
            json=checkout_payload("c1", world.now),
            headers={"Authorization": f"Bearer {world.key}"},
        )
    assert answer.status_code == 503, answer.text
    assert answer.headers["retry-after"]
    assert answer.headers["content-type"] == "application/problem+json"
