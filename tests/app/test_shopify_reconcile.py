"""`cartback shops shopify reconcile` against a local server that records the Admin API calls and
answers like Shopify: abandoned checkouts and orders, paged by the `Link` header's page_info,
applied through the webhook path, idempotently."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, func, select
from typer.testing import CliRunner

from cartback.cli import cli
from cartback.services import shopify_reconcile as reconciler
from cartback.services import shops as shop_service
from cartback.shops import shopify
from cartback.shops.shopify_admin import API_VERSION, PAGE_LIMIT, AdminError
from cartback.store import tables as t
from tests.support.recording import Recorded, RecordingServer, Reply, recording_api
from tests.support.shopify import SHOP_DOMAIN, body_of, fixture, headers_for
from tests.support.world import World, make_world

TOKEN_ENV = "TEST_SHOPIFY_RECONCILE_TOKEN"
TOKEN = "shpat_reconcile_token"
CHECKOUTS = f"/admin/api/{API_VERSION}/checkouts.json"
ORDERS = f"/admin/api/{API_VERSION}/orders.json"


def checkout(n: int, updated: datetime, **changes: Any) -> dict[str, Any]:
    payload = copy.deepcopy(fixture("checkouts_create"))
    payload.update(
        id=70000 + n,
        token=f"ck-{n:04d}",
        cart_token=f"ct-{n:04d}",
        email=f"shopper{n}@example.com",
        sms_marketing_phone=f"+47 412 00 {n:03d}",
        updated_at=updated.isoformat(),
    )
    payload["shipping_address"]["phone"] = None
    payload["customer"].update(email=f"shopper{n}@example.com", phone=None)
    payload.update(changes)
    return payload


def order(n: int, at: datetime, checkout_token: str) -> dict[str, Any]:
    payload = copy.deepcopy(fixture("orders_create"))
    payload.update(
        id=880000 + n,
        checkout_token=checkout_token,
        cart_token=None,
        created_at=at.isoformat(),
        processed_at=at.isoformat(),
        updated_at=at.isoformat(),
    )
    return payload


@dataclass
class Shop:
    """The Admin API as recorded: listings cut into pages of `page_size`, the next page named
    by an opaque cursor in the `Link` header; any request may be told to fail."""

    checkouts: list[dict[str, Any]] = field(default_factory=list)
    orders: list[dict[str, Any]] = field(default_factory=list)
    page_size: int = 2
    fail: Callable[[Recorded], Reply | None] = lambda request: None
    url: str = ""

    def __call__(self, request: Recorded) -> Reply:
        failure = self.fail(request)
        if failure is not None:
            return failure
        if request.headers.get("X-Shopify-Access-Token") != TOKEN:
            return Reply(401, {"errors": "[API] Invalid API key or access token"})
        listing, key = {CHECKOUTS: (self.checkouts, "checkouts"), ORDERS: (self.orders, "orders")}[
            request.path
        ]
        cursor = request.query.get("page_info", [""])[0]
        start = int(cursor.removeprefix("cursor-")) if cursor else 0
        page = listing[start : start + self.page_size]
        headers = {}
        if start + self.page_size < len(listing):
            following = f"cursor-{start + self.page_size}"
            link = f"{self.url}{request.path}?limit={PAGE_LIMIT}&page_info={following}"
            headers["Link"] = f'<{link}>; rel="next"'
        return Reply(200, {key: page}, headers)


@pytest.fixture
def world_(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    with make_world(database_url) as world:
        with world.app.engine.begin() as conn:
            shop_service.connect(
                conn,
                world.store.id,
                "shopify",
                SHOP_DOMAIN,
                "env:UNUSED_SECRET",
                None,
                f"env:{TOKEN_ENV}",
                world.now,
            )
        yield world


@pytest.fixture
def shop() -> Iterator[tuple[Shop, RecordingServer]]:
    script = Shop()
    with recording_api(script) as server:
        script.url = server.url
        yield script, server


def reconcile(world: World, server: RecordingServer, since: timedelta = timedelta(hours=6)) -> Any:
    contexts = reconciler.contexts(
        world.app.engine, world.app.registry, world.app.clock.now, timedelta(minutes=5), None
    )
    [run] = reconciler.reconcile_stores(
        world.app.engine, contexts, world.now - since, api_base=server.url
    )
    assert run.error is None, run.error
    return run.report


def deliver(world: World, topic: str, payload: dict[str, Any]) -> None:
    """A webhook delivery, applied as the route applies it."""
    body = body_of(payload)
    headers = headers_for(topic, body)
    ctx = reconciler.contexts(
        world.app.engine, world.app.registry, world.app.clock.now, timedelta(minutes=5), None
    )(world.store)()
    items = shopify.parse(headers, body)
    with world.app.engine.begin() as conn:
        shop_service.handle_delivery(conn, ctx, "shopify", shopify.meta(headers), body, items)


def counts(world: World) -> dict[str, int]:
    tables = (t.carts, t.contacts, t.enrollments, t.orders, t.event_receipts, t.consent_events)
    with world.app.engine.connect() as conn:
        return {
            table.name: int(conn.execute(select(func.count()).select_from(table)).scalar_one())
            for table in tables
        }


def cart(world: World, token: str) -> Any:
    with world.app.engine.connect() as conn:
        return conn.execute(select(t.carts).where(t.carts.c.token == token)).mappings().one()


def states(world: World) -> dict[str, str]:
    with world.app.engine.connect() as conn:
        rows = conn.execute(
            select(t.carts.c.token, t.enrollments.c.state).join(
                t.carts, t.carts.c.id == t.enrollments.c.cart_id
            )
        )
        return {row.token: row.state for row in rows}


def test_pages_are_followed_and_a_second_run_adds_nothing(
    world_: World, shop: tuple[Shop, RecordingServer]
) -> None:
    script, server = shop
    now = world_.now
    script.checkouts = [checkout(n, now - timedelta(minutes=60 - n)) for n in range(1, 6)]
    script.orders = [order(1, now - timedelta(minutes=20), "ck-0002")]
    report = reconcile(world_, server)
    assert (report.checkouts, report.new, report.updated, report.unchanged) == (5, 5, 0, 0)
    assert (report.orders, report.orders_matched, report.orders_unmatched) == (1, 1, 0)
    assert report.rejected == []
    # Three pages of checkouts, then one of orders.
    pages = [(r.path, r.query) for r in server.requests]
    since = (now - timedelta(hours=6)).isoformat(timespec="seconds")
    assert pages[0] == (
        CHECKOUTS,
        {"limit": [str(PAGE_LIMIT)], "updated_at_min": [since]},
    )
    # A cursor request carries nothing but the cursor and the limit, as Shopify requires.
    assert pages[1] == (CHECKOUTS, {"limit": [str(PAGE_LIMIT)], "page_info": ["cursor-2"]})
    assert pages[2] == (CHECKOUTS, {"limit": [str(PAGE_LIMIT)], "page_info": ["cursor-4"]})
    assert pages[3] == (
        ORDERS,
        {"limit": [str(PAGE_LIMIT)], "status": ["any"], "updated_at_min": [since]},
    )
    assert len(pages) == 4
    assert {r.headers["X-Shopify-Access-Token"] for r in server.requests} == {TOKEN}
    found = states(world_)
    assert len(found) == 5 and found.pop("ck-0002") == "exited"
    assert set(found.values()) == {"active"}
    before = counts(world_)

    world_.clock.advance(timedelta(minutes=5))
    again = reconcile(world_, server)
    assert (again.new, again.updated, again.unchanged) == (0, 0, 5)
    assert (again.orders_matched, again.orders_unmatched, again.orders_known) == (0, 0, 1)
    assert counts(world_) == before


def test_a_state_a_webhook_delivered_is_a_no_op_and_an_older_one_is_ignored(
    world_: World, shop: tuple[Shop, RecordingServer]
) -> None:
    script, server = shop
    now = world_.now
    seen = checkout(1, now - timedelta(minutes=30))
    newer = checkout(2, now - timedelta(minutes=10), total_price="999.00")
    deliver(world_, "checkouts/create", seen)
    deliver(world_, "checkouts/update", newer)
    older = checkout(2, now - timedelta(minutes=40), total_price="1.00")
    moved = checkout(3, now - timedelta(minutes=50))
    deliver(world_, "checkouts/create", moved)
    moved_on = checkout(3, now - timedelta(minutes=5), total_price="777.00")
    before = counts(world_)
    script.checkouts = [copy.deepcopy(seen), older, moved_on]
    report = reconcile(world_, server)
    assert (report.new, report.updated, report.unchanged) == (0, 1, 2)
    assert cart(world_, "ck-0002")["value"] == 999  # the stale list entry changed nothing
    assert cart(world_, "ck-0003")["value"] == 777  # what the webhook missed is filled in
    after = counts(world_)
    # Nothing but the receipts of the two states not seen before (the missed and the stale).
    assert after == {**before, "event_receipts": before["event_receipts"] + 2}


def test_a_missed_order_ends_the_enrollment_of_a_cart_a_webhook_brought(
    world_: World, shop: tuple[Shop, RecordingServer]
) -> None:
    script, server = shop
    now = world_.now
    deliver(world_, "checkouts/create", checkout(1, now - timedelta(minutes=30)))
    assert states(world_) == {"ck-0001": "active"}
    script.orders = [order(1, now - timedelta(minutes=3), "ck-0001")]
    report = reconcile(world_, server)
    assert (report.orders_matched, report.new, report.unchanged) == (1, 0, 0)
    assert states(world_) == {"ck-0001": "exited"}
    assert cart(world_, "ck-0001")["status"] == "ordered"
    # The order's own webhook, arriving late, is a duplicate.
    deliver(world_, "orders/create", order(1, now - timedelta(minutes=3), "ck-0001"))
    with world_.app.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(t.orders)).scalar_one() == 1


def test_an_order_of_no_known_cart_is_counted_apart_and_a_bad_checkout_is_reported(
    world_: World, shop: tuple[Shop, RecordingServer]
) -> None:
    script, server = shop
    now = world_.now
    broken = checkout(2, now - timedelta(minutes=20))
    del broken["updated_at"]
    script.checkouts = [checkout(1, now - timedelta(minutes=30)), broken]
    script.orders = [order(9, now - timedelta(minutes=3), "ck-unknown")]
    report = reconcile(world_, server)
    assert (report.new, report.orders_unmatched, report.orders_matched) == (1, 1, 0)
    assert report.rejected == ["checkout 70002: updated_at: is required"]


def test_an_error_on_a_later_page_names_the_page_and_applies_nothing(
    world_: World, shop: tuple[Shop, RecordingServer]
) -> None:
    script, server = shop
    script.checkouts = [checkout(n, world_.now - timedelta(minutes=n)) for n in range(1, 6)]
    script.fail = lambda request: (
        Reply(500, {"errors": "Internal Server Error"})
        if request.query.get("page_info") == ["cursor-2"]
        else None
    )
    contexts = reconciler.contexts(
        world_.app.engine, world_.app.registry, world_.app.clock.now, timedelta(minutes=5), None
    )
    [run] = reconciler.reconcile_stores(
        world_.app.engine, contexts, world_.now - timedelta(hours=6), api_base=server.url
    )
    assert run.report is None
    assert run.error == (
        f'Shopify Admin API: GET {CHECKOUTS} (page 2): 500 {{"errors": "Internal Server Error"}}'
    )
    assert counts(world_)["carts"] == 0


def test_a_next_page_that_repeats_is_refused_rather_than_followed_forever(
    world_: World, shop: tuple[Shop, RecordingServer]
) -> None:
    script, server = shop
    script.checkouts = [checkout(n, world_.now - timedelta(minutes=n)) for n in range(1, 4)]

    def looping(request: Recorded) -> Reply | None:
        if request.path != CHECKOUTS:
            return None
        link = f'<{server.url}{CHECKOUTS}?page_info=same>; rel="next"'
        return Reply(200, {"checkouts": script.checkouts[:1]}, {"Link": link})

    script.fail = looping
    from cartback.shops import shopify_admin

    with (
        shopify_admin.client(server.url, TOKEN.encode()) as http,
        pytest.raises(AdminError, match=r"page 2\): the next page repeats"),
    ):
        list(shopify_admin.abandoned_checkouts(http, world_.now))
    assert len(server.requests) == 2


def test_the_admin_api_is_never_called_inside_a_transaction(
    world_: World, shop: tuple[Shop, RecordingServer]
) -> None:
    script, server = shop
    script.checkouts = [checkout(n, world_.now - timedelta(minutes=n)) for n in range(1, 5)]
    script.orders = [order(1, world_.now, "ck-0001")]
    engine = world_.app.engine
    open_now: set[int] = set()
    seen: list[int] = []
    answer = script.fail
    script.fail = lambda request: seen.append(len(open_now)) or answer(request)
    hooks: list[tuple[str, Callable[[Any], None]]] = [
        ("begin", lambda conn: open_now.add(id(conn))),
        ("commit", lambda conn: open_now.discard(id(conn))),
        ("rollback", lambda conn: open_now.discard(id(conn))),
    ]
    for name, hook in hooks:
        event.listen(engine, name, hook)
    try:
        report = reconcile(world_, server)
    finally:
        for name, hook in hooks:
            event.remove(engine, name, hook)
    assert report.new == 4 and report.orders_matched == 1
    assert seen == [0, 0, 0]


def test_the_worker_reconciles_each_store_and_survives_a_failing_one(
    world_: World, shop: tuple[Shop, RecordingServer], caplog: pytest.LogCaptureFixture
) -> None:
    from cartback.services import admin
    from cartback.worker import Worker

    script, server = shop
    script.checkouts = [checkout(1, world_.now - timedelta(minutes=30))]
    with world_.app.engine.begin() as conn:
        other = admin.create_store(
            conn,
            admin.NewStore(slug="broken", name="Broken", brand="B", flow_name="default"),
            world_.now,
        )
        shop_service.connect(
            conn,
            other.id,
            "shopify",
            "broken.myshopify.com",
            "env:X",
            None,
            "env:NOT_SET_X",
            world_.now,
        )
    caplog.set_level(logging.INFO, logger="cartback.worker")
    Worker(world_.app).reconcile_shopify(api_base=server.url)
    assert "store broken: Shopify reconciliation failed: --api-token:" in caplog.text
    assert "store test: Shopify reconciliation fetched 1: 1 new" in caplog.text
    assert states(world_) == {"ck-0001": "active"}


# The command line, with the real clock: the recorded shop's times are relative to it.


def _cli(world: World, *args: str) -> Any:
    env = {"CARTBACK_DATABASE_URL": world.app.settings.database_url, TOKEN_ENV: TOKEN}
    return CliRunner().invoke(cli, ["shops", "shopify", "reconcile", *args], env=env)


def test_reconcile_from_the_command_line_twice(
    world_: World, shop: tuple[Shop, RecordingServer]
) -> None:
    script, server = shop
    now = datetime.now(UTC)
    script.checkouts = [checkout(n, now - timedelta(minutes=30 + n)) for n in range(1, 4)]
    script.orders = [order(1, now - timedelta(minutes=2), "ck-0003")]
    first = _cli(world_, "--since", "6h", "--store", "test", "--api-base", server.url)
    assert first.exit_code == 0, first.output
    assert (
        "fetched 3 checkouts and 1 orders; checkouts: 3 new, 0 updated, 0 unchanged; "
        "orders: 1 matched, 0 without a known cart, 0 already known; 0 rejected"
    ) in first.stdout
    since = server.requests[0].query["updated_at_min"][0]
    assert abs(datetime.fromisoformat(since) - (now - timedelta(hours=6))) < timedelta(minutes=1)
    second = _cli(world_, "--since", "6h", "--api-base", server.url)
    assert second.exit_code == 0, second.output
    assert "test: since" in second.stdout
    assert "3 checkouts and 1 orders; checkouts: 0 new, 0 updated, 3 unchanged" in second.stdout
    assert "orders: 0 matched, 0 without a known cart, 1 already known" in second.stdout
    assert states(world_) == {"ck-0001": "active", "ck-0002": "active", "ck-0003": "exited"}


def test_an_api_error_exits_1_with_the_request_and_no_traceback(
    world_: World, shop: tuple[Shop, RecordingServer]
) -> None:
    script, server = shop
    script.fail = lambda request: Reply(401, {"errors": "[API] Invalid API key or access token"})
    result = _cli(world_, "--api-base", server.url)
    assert result.exit_code == 1
    assert f"test: Shopify Admin API: GET {CHECKOUTS} (page 1): 401" in result.stderr
    assert "Invalid API key" in result.stderr and "Traceback" not in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "6 hours"], "--since: invalid duration"),
        (["--since", "90d"], "--since: from 1m to 60d"),
        (["--store", "nowhere"], "--store: 'nowhere' is not connected to shopify"),
    ],
)
def test_bad_options_exit_2(world_: World, args: list[str], message: str) -> None:
    result = _cli(world_, *args)
    assert result.exit_code == 2 and message in result.stderr


def test_a_race_with_a_webhook_on_the_same_cart_is_applied_again(
    world_: World, shop: tuple[Shop, RecordingServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy.exc import IntegrityError

    script, server = shop
    script.checkouts = [checkout(1, world_.now - timedelta(minutes=30))]
    real = shop_service.apply_items
    calls: list[int] = []

    def raced(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            # What a concurrent webhook's insert of the same cart makes the first attempt see.
            raise IntegrityError("INSERT INTO carts", {}, Exception("unique"))
        return real(*args, **kwargs)

    monkeypatch.setattr(shop_service, "apply_items", raced)
    report = reconcile(world_, server)
    assert (len(calls), report.new) == (2, 1)
    assert states(world_) == {"ck-0001": "active"}
