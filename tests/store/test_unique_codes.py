"""Per-cart unique Shopify codes: issued by the worker through the Admin API (a local recording
server here) ahead of their step, outside any transaction, and only read when the timer composes
the message; a code not there yet defers the step, a few times, then skips it."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import event, select, update

from cartback.core.flows import parse_flow
from cartback.core.model import Store
from cartback.services import shops as shop_service
from cartback.services import unique_codes
from cartback.services.ingest import ingest
from cartback.services.tick import tick
from cartback.shops import shopify_admin
from cartback.shops.shopify_admin import API_VERSION
from cartback.simulate import timeline
from cartback.store import tables as t
from cartback.web.intake import parse_event_document
from tests.support.events import checkout
from tests.support.recording import RecordingServer, recording_server
from tests.support.shopify import SHOP_DOMAIN
from tests.support.world import World

TOKEN_ENV = "TEST_SHOPIFY_CODES_TOKEN"
TOKEN = "shpat_codes_token"
PRICE_RULES = f"/admin/api/{API_VERSION}/price_rules.json"
START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

UNIQUE_FLOW = """
name: unique
abandon_after: 0s
steps:
  - id: sms1
    at: {at}
    channel: sms
    body: "{{{{ brand }}}}: {{{{ discount_text }}}} with {{{{ discount_code }}}}: {{{{ link }}}}"
    discount: {{unique: true, percent: 15, expires_after: 2d}}
"""


class Shopify:
    """Answers like the Admin API: a price rule, then a code under it; or fails when told."""

    def __init__(self) -> None:
        self.failing = False
        # The next this many requests fail.
        self.fail_next = 0
        self.rules = 0
        self.on_call: Callable[[], None] = lambda: None

    def __call__(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        self.on_call()
        if self.failing or self.fail_next > 0:
            self.fail_next = max(0, self.fail_next - 1)
            return 503, {"errors": "unavailable"}
        if path == PRICE_RULES:
            self.rules += 1
            return 201, {"price_rule": {"id": 9000 + self.rules, **body["price_rule"]}}
        return 201, {"discount_code": {"id": 1, "code": body["discount_code"]["code"]}}


@pytest.fixture
def shopify() -> Iterator[tuple[Shopify, RecordingServer]]:
    script = Shopify()
    with recording_server(script) as server:
        yield script, server


def _setup(world: World, monkeypatch: pytest.MonkeyPatch, *, at: str, connected: bool) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    world.app.registry.register_text(UNIQUE_FLOW.format(at=at), "unique.yaml", world.now)
    with world.app.engine.begin() as conn:
        conn.execute(update(t.stores).values(flow_name="unique", platform="shopify"))
        if connected:
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


def _checkouts(world: World, count: int) -> None:
    flow = world.app.registry.current("unique")
    events = [
        checkout(f"u{i}", world.now, phone=f"+47410{i:05d}", email=f"u{i}@example.com")
        for i in range(count)
    ]
    with world.app.engine.begin() as conn:
        ingest(conn, world.store, flow, events, world.now)


def _tick(world: World) -> None:
    tick(world.app.engine, world.app.registry, world.now)


def _issue(world: World, server: RecordingServer) -> unique_codes.IssueStats:
    issuers = unique_codes.shop_issuers(api_base=server.url, clock=world.app.clock.now)
    return unique_codes.issue_due(world.app.engine, world.app.registry, world.now, issuers)


def _bodies(world: World) -> list[str]:
    with world.app.engine.connect() as conn:
        return list(conn.execute(select(t.outbox.c.body).order_by(t.outbox.c.id)).scalars())


def _rules(world: World) -> list[tuple[str, str | None]]:
    d = t.decisions.c
    with world.app.engine.connect() as conn:
        return [
            (row.outcome, row.rule)
            for row in conn.execute(
                select(d.outcome, d.rule).where(d.step_id == "sms1").order_by(d.id)
            )
        ]


def _all_rules(world: World) -> list[tuple[str, str | None]]:
    d = t.decisions.c
    with world.app.engine.connect() as conn:
        return [(r.outcome, r.rule) for r in conn.execute(select(d.outcome, d.rule).order_by(d.id))]


def _state(world: World) -> tuple[str, Any]:
    e = t.enrollments.c
    with world.app.engine.connect() as conn:
        row = conn.execute(select(e.state, e.wake_at)).one()
    return row.state, row.wake_at


def _stored(world: World) -> list[str]:
    d = t.discount_codes.c
    with world.app.engine.connect() as conn:
        return list(
            conn.execute(select(d.code).where(d.pool == unique_codes.UNIQUE_POOL)).scalars()
        )


def test_a_code_is_issued_ahead_through_the_admin_api_and_appears_in_the_message(
    world: World, monkeypatch: pytest.MonkeyPatch, shopify: tuple[Shopify, RecordingServer]
) -> None:
    _, server = shopify
    _setup(world, monkeypatch, at="20m", connected=True)
    _checkouts(world, 1)
    world.clock.advance(timedelta(seconds=1))
    _tick(world)  # the enrollment now waits for sms1, 20 minutes on
    assert _issue(world, server).issued == 0  # not yet within the lead time
    world.clock.advance(timedelta(minutes=11))
    issued_at = world.now
    stats = _issue(world, server)
    assert (stats.issued, stats.failed) == (1, 0)
    assert _issue(world, server).issued == 0  # one code per cart, not one per run
    [rule_call, code_call] = server.requests
    assert (rule_call.method, rule_call.path) == ("POST", PRICE_RULES)
    assert rule_call.headers["X-Shopify-Access-Token"] == TOKEN
    rule = rule_call.body["price_rule"]
    assert rule["value_type"] == "percentage" and rule["value"] == "-15"
    assert (rule["usage_limit"], rule["once_per_customer"]) == (1, True)
    assert rule["starts_at"] == issued_at.isoformat(timespec="seconds")
    assert rule["ends_at"] == (issued_at + timedelta(days=2)).isoformat(timespec="seconds")
    assert (code_call.method, code_call.path) == (
        "POST",
        f"/admin/api/{API_VERSION}/price_rules/9001/discount_codes.json",
    )
    code = code_call.body["discount_code"]["code"]
    assert re.fullmatch(r"CB-[0-9A-F]{10}", code)
    assert _stored(world) == [code]
    world.clock.advance(timedelta(minutes=10))
    _tick(world)
    [body] = _bodies(world)
    assert f"15% off with {code}: " in body
    assert _rules(world) == [("send", None)]


def test_a_step_due_before_its_code_waits_for_it(
    world: World, monkeypatch: pytest.MonkeyPatch, shopify: tuple[Shopify, RecordingServer]
) -> None:
    _, server = shopify
    _setup(world, monkeypatch, at="0s", connected=True)
    _checkouts(world, 1)
    world.clock.advance(timedelta(seconds=1))
    _tick(world)
    assert _bodies(world) == []
    # Only the wait is recorded: the flow is not complete while its last step waits.
    assert _all_rules(world) == [("defer", "discount.pending")]
    assert _state(world) == ("active", world.now + unique_codes.PENDING_WAIT)
    _issue(world, server)
    world.clock.advance(unique_codes.PENDING_WAIT)
    _tick(world)
    [body] = _bodies(world)
    [code] = _stored(world)
    assert f"with {code}: " in body


def test_a_failing_admin_api_defers_then_skips_and_never_blocks_other_carts(
    world: World, monkeypatch: pytest.MonkeyPatch, shopify: tuple[Shopify, RecordingServer]
) -> None:
    script, server = shopify
    _setup(world, monkeypatch, at="0s", connected=True)
    _checkouts(world, 2)
    script.fail_next = 1  # the first cart's price rule
    stats = _issue(world, server)
    assert (stats.issued, stats.failed) == (1, 1)
    script.failing = True
    world.clock.advance(timedelta(seconds=1))
    _tick(world)
    [body] = _bodies(world)
    [code] = _stored(world)
    assert f"with {code}: " in body
    for _ in range(unique_codes.PENDING_LIMIT):
        assert _issue(world, server).failed == 1
        world.clock.advance(unique_codes.PENDING_WAIT)
        _tick(world)
    rules = _rules(world)
    assert rules.count(("send", None)) == 1
    assert rules.count(("defer", "discount.pending")) == unique_codes.PENDING_LIMIT
    assert rules[-1] == ("skip", "discount.unique")
    assert len(_bodies(world)) == 1


def test_a_store_that_cannot_issue_codes_skips_the_step_at_once(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    _setup(world, monkeypatch, at="0s", connected=False)
    _checkouts(world, 1)
    world.clock.advance(timedelta(seconds=1))
    _tick(world)
    assert _bodies(world) == []
    assert _rules(world) == [("skip", "discount.unique")]


def test_the_admin_api_is_never_called_inside_a_transaction(
    world: World, monkeypatch: pytest.MonkeyPatch, shopify: tuple[Shopify, RecordingServer]
) -> None:
    script, server = shopify
    _setup(world, monkeypatch, at="0s", connected=True)
    _checkouts(world, 3)
    engine = world.app.engine
    open_now: set[int] = set()
    seen: list[int] = []
    script.on_call = lambda: seen.append(len(open_now))

    def began(conn: Any) -> None:
        open_now.add(id(conn))

    def ended(conn: Any) -> None:
        open_now.discard(id(conn))

    hooks = [("begin", began), ("commit", ended), ("rollback", ended)]
    for name, hook in hooks:
        event.listen(engine, name, hook)
    try:
        stats = _issue(world, server)
    finally:
        for name, hook in hooks:
            event.remove(engine, name, hook)
    assert stats.issued == 3
    assert len(seen) == 6 and set(seen) == {0}


def test_a_cart_in_two_flows_gets_one_code(
    world: World, monkeypatch: pytest.MonkeyPatch, shopify: tuple[Shopify, RecordingServer]
) -> None:
    _, server = shopify
    _setup(world, monkeypatch, at="0s", connected=True)
    second = UNIQUE_FLOW.format(at="0s").replace("name: unique", "name: unique2")
    flow2 = world.app.registry.register_text(second, "unique2.yaml", world.now)
    _checkouts(world, 1)
    e = t.enrollments.c
    with world.app.engine.begin() as conn:
        row = dict(conn.execute(select(t.enrollments)).mappings().one())
        del row["id"]
        row.update(flow_name="unique2", flow_version=flow2.version)
        conn.execute(t.enrollments.insert().values(**row))
        assert len(conn.execute(select(e.id)).all()) == 2
    assert _issue(world, server).issued == 1
    [code] = _stored(world)
    world.clock.advance(timedelta(seconds=1))
    _tick(world)
    # The shopper's cooldown lets one of the two messages out now; it carries the one code.
    [body] = _bodies(world)
    assert f"with {code}: " in body
    assert len(server.requests) == 2  # one price rule, one code


def test_a_fixed_amount_code_without_expiry_and_a_refusal(
    shopify: tuple[Shopify, RecordingServer],
) -> None:
    script, server = shopify
    with shopify_admin.client(server.url, TOKEN.encode()) as http:
        issuer = shopify_admin.ShopifyDiscountIssuer(http, clock=lambda: START)
        made = issuer.issue(
            cart_token="c1", percent=None, amount=Decimal("5.00"), currency="EUR", expires_at=None
        )
        script.failing = True
        with pytest.raises(shopify_admin.AdminError, match=r"price_rules\.json: 503"):
            issuer.issue(
                cart_token="c2", percent=Decimal(10), amount=None, currency="EUR", expires_at=None
            )
    rule = server.requests[0].body["price_rule"]
    assert (rule["value_type"], rule["value"], rule["ends_at"]) == ("fixed_amount", "-5.00", None)
    assert rule["title"] == f"{made.code} (EUR)"
    assert made.ref == "9001"  # the price rule, which the cleanup removes
    assert rule["starts_at"] == START.isoformat(timespec="seconds")
    # The refused price rule is not followed by a code request.
    assert [r.path for r in server.requests].count(PRICE_RULES) == 2
    assert len(server.requests) == 3


def test_the_issuer_stops_between_carts_when_the_worker_stops(
    world: World, monkeypatch: pytest.MonkeyPatch, shopify: tuple[Shopify, RecordingServer]
) -> None:
    _, server = shopify
    _setup(world, monkeypatch, at="0s", connected=True)
    _checkouts(world, 2)
    stop = threading.Event()
    stop.set()
    issuers = unique_codes.shop_issuers(api_base=server.url)
    stats = unique_codes.issue_due(
        world.app.engine, world.app.registry, world.now, issuers, stop=stop
    )
    assert (stats.issued, len(server.requests)) == (0, 0)


def test_flows_test_shows_where_the_unique_code_goes() -> None:
    flow = parse_flow(UNIQUE_FLOW.format(at="0s"), "unique.yaml")
    store = Store(
        id=1, name="Demo", brand="Demo", domains=("shop.example",), postal_address="1 Demo St"
    )
    event = {
        "id": "e1",
        "type": "checkout.updated",
        "occurred_at": "2026-11-23T10:00:00+01:00",
        "cart_token": "c1",
        "contact": {"phone": "+4791234567", "email": "shopper@example.com"},
        "shipping": {"country": "NO"},
        "lines": [{"title": "Rain jacket", "quantity": 1, "price": "120.00"}],
        "currency": "NOK",
        "restore_url": "https://shop.example/cart/c1",
        "consent": {"sms_marketing": True, "cart_reminders": True, "double_opt_in": True},
    }
    entries = timeline(flow, store, parse_event_document(json.dumps(event).encode()))
    [sent] = [entry for entry in entries if entry.outcome == "send"]
    assert sent.text is not None and "with UNIQUE-SAMPLE: " in sent.text
