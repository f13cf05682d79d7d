"""Outage answers: 503 with Retry-After when the database is out of reach or stuck, never 500,
never a hang; HEAD on the unsubscribe page; 405 with Allow; problems in the OpenAPI document."""

from __future__ import annotations

import socket
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from cartback.app import build_app
from cartback.config import load_settings
from cartback.services.ingest import ingest
from cartback.services.tick import tick
from cartback.store import tables as t
from cartback.web.app import create_app
from tests.support.events import checkout, checkout_payload
from tests.support.pg import acquire_server, temporary_database
from tests.support.procs import free_port
from tests.support.world import World, make_world

AUTH = {"Authorization": "Bearer cbk_test_key"}


def _assert_unavailable(response: Any) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert int(response.headers["retry-after"]) > 0
    assert response.json()["type"] == "/problems/unavailable"


def _client_for(url: str, **settings: Any) -> TestClient:
    config = load_settings(
        {}, database_url=url, sms_channel="null", email_channel="null", **settings
    )
    return TestClient(create_app(build_app(config)), raise_server_exceptions=False)


@pytest.mark.postgres
def test_postgres_that_refuses_connections_answers_503() -> None:
    payload = checkout_payload("c1", datetime.now(UTC))
    nowhere = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/cartback"
    client = _client_for(nowhere)
    _assert_unavailable(client.post("/v1/events", json=payload, headers=AUTH))
    _assert_unavailable(client.get("/healthz"))
    _assert_unavailable(client.get("/v1/carts/c1/decisions", headers=AUTH))


@pytest.mark.postgres
def test_postgres_that_accepts_but_never_answers_times_out_with_503() -> None:
    with socket.socket() as frozen:
        frozen.bind(("127.0.0.1", 0))
        frozen.listen(8)  # the kernel completes the handshake; nobody ever answers
        port = frozen.getsockname()[1]
        client = _client_for(
            f"postgresql+psycopg://postgres@127.0.0.1:{port}/cartback",
            database_connect_timeout_seconds=2,
        )
        started = time.monotonic()
        response = client.post("/v1/events", json={"id": "x"}, headers=AUTH)
        elapsed = time.monotonic() - started
    _assert_unavailable(response)
    assert elapsed < 10


@pytest.mark.postgres
def test_a_statement_stuck_on_a_lock_ends_in_503_after_the_statement_timeout() -> None:
    with (
        temporary_database(acquire_server()) as url,
        make_world(url, database_statement_timeout_seconds=1) as world,
        TestClient(create_app(world.app), raise_server_exceptions=False) as client,
    ):
        parsed = make_url(url)
        with psycopg.connect(
            host=parsed.host, port=parsed.port, user=parsed.username, dbname=parsed.database
        ) as holder:
            # An event is stored by one append to the inbox; it is applied later.
            holder.execute("LOCK TABLE inbox IN ACCESS EXCLUSIVE MODE")
            started = time.monotonic()
            response = client.post(
                "/v1/events", json=checkout_payload("c1", world.now), headers=AUTH
            )
            elapsed = time.monotonic() - started
            holder.rollback()
        _assert_unavailable(response)
        assert elapsed < 5
        # Once the lock is gone the same event goes through: nothing half-applied.
        again = client.post("/v1/events", json=checkout_payload("c1", world.now), headers=AUTH)
        assert again.status_code == 200 and again.json()["accepted"] == 1


@pytest.mark.postgres
def test_terminated_connections_are_replaced_without_an_error() -> None:
    with (
        temporary_database(acquire_server()) as url,
        make_world(url) as world,
        TestClient(create_app(world.app), raise_server_exceptions=False) as client,
    ):
        assert client.post("/v1/events", json=checkout_payload("c1", world.now), headers=AUTH)
        server = acquire_server()
        with server.connect_admin() as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (make_url(url).database,),
            )
        response = client.post("/v1/events", json=checkout_payload("c2", world.now), headers=AUTH)
        assert response.status_code == 200, response.text


def test_a_locked_sqlite_database_answers_503_after_the_busy_timeout(tmp_path: Path) -> None:
    path = tmp_path / "cartback.db"
    with (
        make_world(f"sqlite:///{path}", database_statement_timeout_seconds=0.5) as world,
        TestClient(create_app(world.app), raise_server_exceptions=False) as client,
    ):
        holder = sqlite3.connect(path, isolation_level=None)
        try:
            holder.execute("BEGIN IMMEDIATE")
            started = time.monotonic()
            response = client.post(
                "/v1/events", json=checkout_payload("c1", world.now), headers=AUTH
            )
            elapsed = time.monotonic() - started
        finally:
            holder.close()
        _assert_unavailable(response)
        assert elapsed < 5


def test_the_engines_carry_the_configured_timeouts(database_url: str) -> None:
    config = load_settings(
        {},
        database_url=database_url,
        database_connect_timeout_seconds=3,
        database_statement_timeout_seconds=7,
    )
    app = build_app(config)
    try:
        with app.engine.connect() as conn:
            if app.engine.dialect.name == "sqlite":
                assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 7000
            else:
                assert conn.exec_driver_sql("SHOW statement_timeout").scalar() == "7s"
    finally:
        app.close()


def _unsubscribe_token(world: World) -> str:
    flow = world.app.registry.current("default")
    with world.app.engine.begin() as conn:
        ingest(conn, world.store, flow, [checkout("c1", world.now)], world.now)
    # One message per tick: the first text, then the first email, each at its own time.
    for _ in range(2):
        with world.app.engine.connect() as conn:
            wake = conn.execute(select(func.min(t.enrollments.c.wake_at))).scalar_one()
        world.clock.set(wake)
        tick(world.app.engine, world.app.registry, world.now, base_url="https://go.example")
    with world.app.engine.connect() as conn:
        return str(
            conn.execute(
                select(t.links.c.token).where(
                    t.links.c.step_id == "email1", t.links.c.purpose == "unsubscribe"
                )
            ).scalar_one()
        )


@pytest.fixture
def client(world: World) -> Iterator[TestClient]:
    with TestClient(create_app(world.app), raise_server_exceptions=False) as test_client:
        yield test_client


def test_head_on_the_unsubscribe_page_is_200_and_changes_nothing(
    client: TestClient, world: World
) -> None:
    token = _unsubscribe_token(world)
    response = client.head(f"/u/{token}")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert client.head("/u/AAAAAAAAAAAAAAAAA").status_code == 404
    with world.app.engine.connect() as conn:
        assert conn.execute(select(t.contacts.c.email_marketing)).scalar_one() is True
        assert conn.execute(select(func.count()).select_from(t.consent_events)).scalar() == 2


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [("DELETE", "/v1/events", "POST"), ("PUT", "/u/AAAAAAAAAAAAAAAAA", "GET, HEAD, POST")],
)
def test_a_405_names_the_allowed_methods(
    client: TestClient, method: str, path: str, allow: str
) -> None:
    response = client.request(method, path)
    assert response.status_code == 405
    assert response.headers["content-type"] == "application/problem+json"
    assert sorted(response.headers["allow"].split(", ")) == sorted(allow.split(", "))


def test_the_openapi_document_lists_the_problem_answers(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    expected = {
        ("/v1/events", "post"): {"401", "405", "413", "422", "503"},
        ("/v1/carts/{token}/decisions", "get"): {"401", "404", "405", "422", "503"},
        ("/v1/contacts/{contact_id}/consent", "get"): {"401", "404", "405", "422", "503"},
        ("/healthz", "get"): {"405", "503"},
    }
    for (path, method), statuses in expected.items():
        responses = document["paths"][path][method]["responses"]
        assert statuses <= set(responses), (path, set(responses))
        for status in statuses:
            content = responses[status]["content"]
            assert set(content) == {"application/problem+json"}, (path, status)
            assert content["application/problem+json"]["schema"] == {
                "$ref": "#/components/schemas/ProblemOut"
            }
    assert "ProblemOut" in document["components"]["schemas"]
    assert document["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
