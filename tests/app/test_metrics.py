"""GET /metrics: counters from where the work happens, the backlog read from the database, an
optional bearer token, and a worker's own metrics port."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from cartback import metrics
from cartback.app import build_app
from cartback.config import load_settings
from cartback.core.model import Channel
from cartback.ports import LookupStatus, OutboundMessage, SendResult, SendStatus
from cartback.services.dispatch import Dispatcher
from cartback.services.tick import tick
from cartback.store import tables as t
from cartback.web.app import create_app
from cartback.worker import serve_worker_metrics
from tests.support.events import checkout_payload
from tests.support.world import World


@pytest.fixture
def client(world: World) -> Iterator[TestClient]:
    with TestClient(create_app(world.app)) as test_client:
        yield test_client


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(client: TestClient, name: str, **labels: str) -> float:
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    return _samples(response.text).get((name, tuple(sorted(labels.items()))), 0.0)


class Refusing:
    name = "flaky"
    kind = Channel.SMS

    def send(self, message: OutboundMessage) -> SendResult:
        return SendResult(SendStatus.REJECTED, error="busy", retryable=True)

    def lookup(self, key: str) -> LookupStatus:
        return LookupStatus.UNKNOWN

    def close(self) -> None:
        return None


def test_ingested_events_are_counted_by_type_and_status(client: TestClient, world: World) -> None:
    name = "cartback_events_ingested_total"
    accepted = _value(client, name, type="checkout_updated", status="accepted")
    duplicate = _value(client, name, type="checkout_updated", status="duplicate")
    body = checkout_payload("c1", world.now, id="e1")
    for _ in range(2):
        response = client.post(
            "/v1/events", json=body, headers={"Authorization": "Bearer cbk_test_key"}
        )
        assert response.status_code == 200
    assert _value(client, name, type="checkout_updated", status="accepted") == accepted + 1
    assert _value(client, name, type="checkout_updated", status="duplicate") == duplicate + 1


def test_the_backlog_is_read_from_the_database(client: TestClient, world: World) -> None:
    for token in ("c1", "c2"):
        client.post(
            "/v1/events",
            json=checkout_payload(token, world.now, id=f"e-{token}"),
            headers={"Authorization": "Bearer cbk_test_key"},
        )
    assert _value(client, "cartback_due_enrollments") == 0
    world.clock.advance(timedelta(hours=1))
    # A fresh app: the backlog reading of the first one is cached for a few seconds.
    with TestClient(create_app(world.app)) as fresh:
        assert _value(fresh, "cartback_due_enrollments") == 2
        tick(world.app.engine, world.app.registry, world.now)
    with TestClient(create_app(world.app)) as fresh:
        assert _value(fresh, "cartback_due_enrollments") == 0
        with world.app.engine.connect() as conn:
            pending = conn.execute(
                select(func.count()).where(t.outbox.c.status == "pending")
            ).scalar_one()
        assert pending >= 1
        assert _value(fresh, "cartback_outbox_messages", status="pending") == pending
        assert _value(fresh, "cartback_outbox_messages", status="claimed") == 0


def test_sends_and_provider_errors_are_counted(client: TestClient, world: World) -> None:
    client.post(
        "/v1/events",
        json=checkout_payload("c1", world.now, id="e1"),
        headers={"Authorization": "Bearer cbk_test_key"},
    )
    world.clock.advance(timedelta(hours=1))
    tick(world.app.engine, world.app.registry, world.now)
    labels = {"channel": "sms", "provider": "flaky"}
    retried = _value(client, "cartback_sends_total", status="retried", **labels)
    errors = _value(client, "cartback_provider_errors_total", **labels)
    dispatcher = Dispatcher(
        world.app.engine,
        {Channel.SMS: Refusing(), Channel.EMAIL: Refusing()},  # type: ignore[dict-item]
        clock=world.clock.now,
    )
    try:
        dispatcher.run_once(world.now)
    finally:
        dispatcher.close()
    assert _value(client, "cartback_sends_total", status="retried", **labels) == retried + 1
    assert _value(client, "cartback_provider_errors_total", **labels) == errors + 1


def test_lateness_lands_in_the_histogram(client: TestClient) -> None:
    name = "cartback_timer_lateness_seconds_bucket"
    before = _value(client, name, le="60.0") - _value(client, name, le="30.0")
    metrics.observe_lateness([45.0])
    assert _value(client, name, le="60.0") - _value(client, name, le="30.0") == before + 1


def test_a_metrics_token_is_required_when_set(world: World) -> None:
    settings = load_settings(
        {}, database_url=world.app.settings.database_url, metrics_token="s3cret-scrape"
    )
    app = build_app(settings, clock=world.clock)
    try:
        with TestClient(create_app(app)) as guarded:
            assert guarded.get("/metrics").status_code == 401
            wrong = guarded.get("/metrics", headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
            right = guarded.get("/metrics", headers={"Authorization": "Bearer s3cret-scrape"})
            assert right.status_code == 200
            assert "cartback_due_enrollments" in right.text
    finally:
        app.close()


def test_metrics_is_not_in_the_api_schema(client: TestClient) -> None:
    assert "/metrics" not in client.get("/openapi.json").json()["paths"]


def test_a_worker_serves_its_counters_on_its_own_port() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    serve_worker_metrics("127.0.0.1", port)
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    assert "cartback_sends_total" in text or "# TYPE cartback_sends counter" in text
    assert "cartback_timer_lateness_seconds_bucket" in text
