"""The Magento 2 poller against a local recording server: carts and orders changed since the
high-water mark, fetched with the bearer token before any transaction, applied once."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event, func, select
from typer.testing import CliRunner

from cartback.cli import cli
from cartback.services import magento as poller
from cartback.services import shops as shop_service
from cartback.shops import magento
from cartback.store import tables as t
from tests.support.recording import RecordingServer, recording_server
from tests.support.shops import FIXTURES
from tests.support.world import World, make_world

TOKEN = "mg-made-up-integration-token"
TOKEN_ENV = "TEST_MAGENTO_TOKEN"
FILTER = "searchCriteria[filter_groups][0][filters][0]"


def fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / "magento" / f"{name}.json").read_text())
    return data


def api_of(carts: dict[str, Any], orders: dict[str, Any]) -> Any:
    def answer(method: str, path: str, body: Any) -> tuple[int, Any]:
        if path.endswith("/V1/carts/search"):
            return 200, carts
        if path.endswith("/V1/orders"):
            return 200, orders
        return 404, {"message": "not found"}

    return answer


NO_ORDERS = {"items": [], "total_count": 0}


@pytest.fixture
def world_(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    with make_world(database_url) as world:
        yield world


def run(world: World, api: RecordingServer) -> poller.PollReport:
    def context() -> shop_service.Context:
        return shop_service.Context(
            store=world.store,
            flow=world.app.registry.current(world.store.flow_name),
            now=world.now,
            future_skew=timedelta(minutes=5),
            suppression_key=None,
        )

    with magento.client(f"{api.url}/rest/default", TOKEN.encode()) as http:
        return poller.poll(world.app.engine, context, http, first_window=timedelta(hours=24))


def count(world: World, table: Any, *where: Any) -> int:
    with world.app.engine.connect() as conn:
        query = select(func.count()).select_from(table)
        return int(conn.execute(query.where(*where) if where else query).scalar_one())


def states(world: World) -> dict[str, str]:
    with world.app.engine.connect() as conn:
        rows = conn.execute(
            select(t.carts.c.token, t.enrollments.c.state).join(
                t.carts, t.carts.c.id == t.enrollments.c.cart_id
            )
        ).all()
    return {row.token: str(row.state) for row in rows}


def test_a_poll_applies_the_changed_carts_once(world_: World) -> None:
    with recording_server(api_of(fixture("carts_search"), NO_ORDERS)) as api:
        first = run(world_, api)
        assert first.statuses == {"accepted": 2} and first.rejected == []
        assert states(world_) == {"mg-812": "active", "mg-813": "active"}
        with world_.app.engine.connect() as conn:
            cart = conn.execute(select(t.carts).where(t.carts.c.token == "mg-812")).mappings().one()
            contact = (
                conn.execute(select(t.contacts).where(t.contacts.c.id == cart["contact_id"]))
                .mappings()
                .one()
            )
        assert (str(cart["value"]).rstrip("0"), cart["currency"]) == ("598.5", "NOK")
        assert (contact["phone"], contact["email"]) == ("+4791234567", "ingrid.test@example.com")
        # The same answers again: nothing new, and the mark moved to the newest cart.
        second = run(world_, api)
    assert second.statuses == {"duplicate": 2}
    assert second.since_carts.strftime("%Y-%m-%d %H:%M:%S") == "2026-11-23 11:45:00"
    assert count(world_, t.enrollments) == 2 and count(world_, t.carts) == 2
    first_query, later_query = api.requests[0].query, api.requests[2].query
    assert first_query[f"{FILTER}[value]"] == ["2026-11-22 12:00:00"]
    assert first_query[f"{FILTER}[condition_type]"] == ["gteq"]
    assert first_query[f"{FILTER}[field]"] == ["updated_at"]
    assert first_query["searchCriteria[filter_groups][1][filters][0][field]"] == ["is_active"]
    assert later_query[f"{FILTER}[value]"] == ["2026-11-23 11:45:00"]
    assert {r.headers["Authorization"] for r in api.requests} == {f"Bearer {TOKEN}"}
    assert [r.path for r in api.requests[:2]] == [
        "/rest/default/V1/carts/search",
        "/rest/default/V1/orders",
    ]


def test_the_order_of_a_quote_ends_its_enrollment(world_: World) -> None:
    with recording_server(api_of(fixture("carts_search"), NO_ORDERS)) as api:
        run(world_, api)
    with recording_server(api_of({"items": [], "total_count": 0}, fixture("orders"))) as api:
        report = run(world_, api)
        assert report.statuses == {"accepted": 1}
        again = run(world_, api)
    assert again.statuses == {"duplicate": 1}
    assert states(world_) == {"mg-812": "exited", "mg-813": "active"}
    with world_.app.engine.connect() as conn:
        order = conn.execute(select(t.orders)).mappings().one()
    assert (order["order_ref"], str(order["value"]).rstrip("0")) == ("mg-000000301", "647.")
    assert again.since_orders.strftime("%H:%M") == "11:55"


def test_a_cart_that_cannot_be_mapped_is_reported_and_the_others_applied(world_: World) -> None:
    carts = fixture("carts_search")
    del carts["items"][0]["updated_at"]
    carts["items"][1]["extra_field_magento_adds"] = {"x": 1}
    with recording_server(api_of(carts, NO_ORDERS)) as api:
        report = run(world_, api)
    assert report.rejected == ["cart 812: cart[812].updated_at: is required"]
    assert report.statuses == {"accepted": 1}
    assert states(world_) == {"mg-813": "active"}


def test_pages_are_followed_to_the_total(world_: World) -> None:
    whole = fixture("carts_search")
    calls: list[str] = []

    def answer(method: str, path: str, body: Any) -> tuple[int, Any]:
        if path.endswith("/V1/orders"):
            return 200, NO_ORDERS
        calls.append(path)
        page = whole["items"][len(calls) - 1 : len(calls)]
        return 200, {"items": page, "total_count": 2}

    with recording_server(answer) as api:
        report = run(world_, api)
    assert len(calls) == 2 and report.statuses == {"accepted": 2}
    pages = [r.query["searchCriteria[currentPage]"] for r in api.requests if "carts" in r.path]
    assert pages == [["1"], ["2"]]


def test_the_api_is_never_called_inside_a_transaction(world_: World) -> None:
    engine = world_.app.engine
    open_now: set[int] = set()
    seen: list[int] = []
    recorded = api_of(fixture("carts_search"), fixture("orders"))

    def answer(method: str, path: str, body: Any) -> tuple[int, Any]:
        seen.append(len(open_now))
        return recorded(method, path, body)

    hooks = [
        ("begin", lambda conn: open_now.add(id(conn))),
        ("commit", lambda conn: open_now.discard(id(conn))),
        ("rollback", lambda conn: open_now.discard(id(conn))),
    ]
    for name, hook in hooks:
        event.listen(engine, name, hook)
    try:
        with recording_server(answer) as api:
            report = run(world_, api)
    finally:
        for name, hook in hooks:
            event.remove(engine, name, hook)
    assert seen == [0, 0] and report.statuses == {"accepted": 3}


def test_an_api_failure_stops_the_poll_and_writes_nothing(world_: World) -> None:
    refusing = recording_server(lambda m, p, b: (401, {"message": "bad token"}))
    with refusing as api, pytest.raises(magento.MagentoError, match="HTTP 401"):
        run(world_, api)
    assert count(world_, t.carts) == 0


def test_shops_magento_poll_runs_once_from_the_command_line(world_: World) -> None:
    runner = CliRunner()
    env = {"CARTBACK_DATABASE_URL": world_.app.settings.database_url, TOKEN_ENV: TOKEN}
    with recording_server(api_of(fixture("carts_search"), fixture("orders"))) as api:
        connect = ["shops", "connect", "magento", "--store", "test"]
        root = f"{api.url}/rest/default"
        no_token = runner.invoke(cli, [*connect, "--shop-domain", root], env=env)
        assert no_token.exit_code == 2 and "--api-token" in no_token.stderr
        done = runner.invoke(
            cli, [*connect, "--shop-domain", root, "--api-token", f"env:{TOKEN_ENV}"], env=env
        )
        assert done.exit_code == 0, done.output
        # The CLI's clock is the real one: look back far enough to include the fixtures.
        polled = runner.invoke(
            cli,
            ["shops", "magento", "poll", "--store", "test", "--first-window", "999999"],
            env=env,
        )
        assert polled.exit_code == 0, polled.output
        assert "3 fetched" in polled.stdout and "3 accepted" in polled.stdout
        again = runner.invoke(cli, ["shops", "magento", "poll", "--store", "test"], env=env)
    assert again.exit_code == 0 and "3 duplicate" in again.stdout
    assert count(world_, t.orders) == 1


def test_the_worker_polls_each_magento_store_and_survives_a_failing_one(
    world_: World, caplog: pytest.LogCaptureFixture
) -> None:
    from cartback.services import admin
    from cartback.worker import Worker

    with recording_server(api_of(fixture("carts_search"), NO_ORDERS)) as api:
        with world_.app.engine.begin() as conn:
            other = admin.create_store(
                conn,
                admin.NewStore(slug="broken", name="Broken", brand="B", flow_name="default"),
                world_.now,
            )
            for store_id, root in (
                (other.id, "http://127.0.0.1:9/rest"),
                (world_.store.id, api.url),
            ):
                shop_service.connect(
                    conn,
                    store_id,
                    "magento",
                    f"{root}/rest/default" if store_id == world_.store.id else root,
                    f"env:{TOKEN_ENV}",
                    None,
                    f"env:{TOKEN_ENV}",
                    world_.now,
                )
        Worker(world_.app).poll_magento()
    assert "store broken: Magento poll failed" in caplog.text
    assert states(world_) == {"mg-812": "active", "mg-813": "active"}
