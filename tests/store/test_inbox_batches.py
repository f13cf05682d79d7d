"""Inbox rows applied in batches (services.ingest_batch) leave the database exactly as applying
them one by one through `ingest` does: random event streams over a few carts and shoppers,
with repeats, late events, shared phones and emails, consent, orders and an erasure, on
SQLite and PostgreSQL."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, select

from cartback.core.events import ContactInfo
from cartback.core.flows import default_flow_path
from cartback.core.lineup import CART_UPDATED, CHECKOUT_UPDATED
from cartback.services import inbox, store_flows
from cartback.services.erasure import erase_shopper
from cartback.services.inbox import Entry, InboxApplier
from cartback.services.store_flows import Assignment
from cartback.services.tick import tick
from cartback.store import tables as t
from cartback.web.intake import event_from_stored
from tests.support.pg import acquire_server, temporary_database
from tests.support.world import World, make_world

KEY = "a-suppression-key-for-tests"
TOKENS = [f"cart-{n}" for n in range(7)]
# Shoppers whose phones and emails overlap: an event can name one shopper's phone and
# another's email.
PHONES = ["+4791234567", "+4791234568", "+4791234569", None]
EMAILS = ["kari@example.com", "ola@example.com", "per@example.com", None]


@pytest.fixture
def flows_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "flows"
    folder.mkdir()
    for name in ("second", "carts"):
        text = default_flow_path().read_text().replace("name: default", f"name: {name}", 1)
        (folder / f"{name}.yaml").write_text(text)
    return folder


@contextmanager
def _twin_url(database_url: str, tmp_path: Path) -> Iterator[str]:
    if database_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'twin.db'}"
        return
    with temporary_database(acquire_server()) as url:
        yield url


@contextmanager
def _world(url: str, flows_dir: Path) -> Iterator[World]:
    with make_world(url, flows_dir=flows_dir) as world:
        with world.app.engine.begin() as conn:
            store_flows.replace_all(
                conn,
                world.app.registry,
                world.store,
                [
                    Assignment("default", 1, CHECKOUT_UPDATED),
                    Assignment("second", 2, CHECKOUT_UPDATED),
                    Assignment("carts", 3, CART_UPDATED),
                ],
                None,
                world.now,
            )
        yield world


def _contact(rng: random.Random) -> dict[str, Any]:
    contact: dict[str, Any] = {}
    phone, email = rng.choice(PHONES), rng.choice(EMAILS)
    if phone is None and email is None:
        phone = PHONES[0]
    if phone:
        contact["phone"] = phone
    if email:
        contact["email"] = email
    if rng.random() < 0.5:
        contact["first_name"] = rng.choice(["Kari", "Ola", "Per"])
    if rng.random() < 0.3:
        contact["tags"] = [rng.choice(["vip", "new", "b2b"])]
    return contact


def _event(rng: random.Random, number: int, base: datetime) -> dict[str, Any]:
    at = (base + timedelta(minutes=rng.randint(-40, 40))).isoformat()
    kind = rng.choices(["checkout", "cart", "order", "emptied", "consent"], [60, 10, 10, 6, 14])[0]
    event: dict[str, Any] = {"id": f"e{number}", "occurred_at": at}
    if kind in ("checkout", "cart"):
        lines = [
            {"title": "Wool socks", "quantity": rng.randint(1, 3), "price": "60.00"}
            for _ in range(rng.choice([0, 1, 1, 1, 2]))
        ]
        event |= {
            "type": "checkout.updated" if kind == "checkout" else "cart.updated",
            "cart_token": rng.choice(TOKENS),
            "lines": lines,
            "currency": "NOK",
            "restore_url": f"https://shop.example/cart/{number}",
        }
        if kind == "checkout" or rng.random() < 0.5:
            event["contact"] = _contact(rng)
        if kind == "checkout" and rng.random() < 0.6:
            event["consent"] = {
                "sms_marketing": rng.random() < 0.6,
                "email_marketing": rng.random() < 0.6,
                "cart_reminders": rng.random() < 0.5,
                "wording": "Yes, text me",
            }
        if rng.random() < 0.3:
            event["shipping"] = {"country": rng.choice(["NO", "SE"]), "postal_code": "0150"}
    elif kind == "order":
        event |= {
            "type": "order.placed",
            "order_id": f"o{rng.randint(0, 12)}",
            "value": "120.00",
            "currency": "NOK",
        }
        if rng.random() < 0.7:
            event["cart_token"] = rng.choice(TOKENS)
        else:
            event["contact"] = _contact(rng)
    elif kind == "emptied":
        event |= {"type": "cart.emptied", "cart_token": rng.choice(TOKENS)}
    else:
        event |= {
            "type": "consent.changed",
            "contact": _contact(rng),
            "channel": rng.choice(["sms", "email"]),
            "purpose": rng.choice(["marketing", "cart_reminders"]),
            "granted": rng.random() < 0.4,
        }
    return event


def _applier(world: World, *, batched: bool) -> InboxApplier:
    return InboxApplier(
        world.app.engine,
        world.app.registry,
        event_from_stored,
        world.clock.now,
        suppression_key=KEY,
        budget_seconds=60,
        batched=batched,
    )


def _drain(applier: InboxApplier) -> None:
    while applier.apply_pending() != inbox.Applied():
        pass


def _snapshot(conn: Connection) -> dict[str, Any]:
    """Every table ingest writes, by natural keys (row ids differ with the order of inserts)."""

    def rows(table: Any) -> list[dict[str, Any]]:
        return [dict(row) for row in conn.execute(select(table)).mappings()]

    contacts = {row["id"]: (row["phone"], row["email"]) for row in rows(t.contacts)}
    carts = {row["id"]: row["token"] for row in rows(t.carts)}
    enrollments = {
        row["id"]: (carts[row["cart_id"]], row["flow_name"]) for row in rows(t.enrollments)
    }
    swap = {
        "contact_id": contacts.get,
        "cart_id": carts.get,
        "enrollment_id": enrollments.get,
    }

    def natural(table: Any, *drop: str) -> list[str]:
        found = []
        for row in rows(table):
            for column in drop:
                del row[column]
            for column, lookup in swap.items():
                if column in row and row[column] is not None:
                    row[column] = lookup(row[column])
            for column in ("id", "order_id"):
                row.pop(column, None)
            found.append(json.dumps(row, sort_keys=True, default=_plain))
        return sorted(found)

    return {
        "contacts": natural(t.contacts),
        "carts": natural(t.carts),
        "consent_events": natural(t.consent_events),
        "enrollments": natural(t.enrollments),
        "decisions": natural(t.decisions),
        "orders": natural(t.orders),
        "event_receipts": natural(t.event_receipts),
        # Messages carry link tokens drawn at random: what was queued for whom, and its fate.
        "outbox": natural(t.outbox, "body", "html", "headers", "subject"),
        "inbox": natural(t.inbox),
    }


def _plain(value: object) -> str:
    if isinstance(value, datetime | Decimal):
        return str(value)
    raise TypeError(type(value).__name__)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_batches_leave_the_same_database_as_one_by_one(
    database_url: str, tmp_path: Path, flows_dir: Path, seed: int, monkeypatch: Any
) -> None:
    rng = random.Random(seed)

    def fell_back(*_args: Any) -> Any:
        raise AssertionError("a batch fell back to applying its rows one by one")

    # No row fails in these streams: a fallback would hide a batch that applied differently.
    monkeypatch.setattr(InboxApplier, "_apply_row", fell_back)
    with (
        _twin_url(database_url, tmp_path) as twin_url,
        _world(database_url, flows_dir) as one_by_one,
        _world(twin_url, flows_dir) as batched,
    ):
        worlds = ((one_by_one, False), (batched, True))
        number = 0
        for stream in range(4):
            base = one_by_one.now
            for _ in range(rng.randint(20, 60)):
                number += 1
                payload = _event(rng, number, base)
                pause = timedelta(seconds=rng.randint(0, 3))
                for world, _batched in worlds:
                    with world.app.engine.begin() as conn:
                        inbox.append(
                            conn,
                            world.store.id,
                            "api",
                            [Entry(payload["id"], json.dumps(payload))],
                            world.now,
                        )
                    world.clock.advance(pause)
            for world, is_batched in worlds:
                _drain(_applier(world, batched=is_batched))
            if stream % 2 == 0:
                # First messages go out: enrollments that started are no longer moved later.
                for world, _batched in worlds:
                    tick(world.app.engine, world.app.registry, world.now + timedelta(hours=3))
            if stream == 1:
                for world, _batched in worlds:
                    with world.app.engine.begin() as conn:
                        erase_shopper(
                            conn,
                            world.store.id,
                            ContactInfo(email=EMAILS[1]),
                            KEY,
                            world.now,
                            "request",
                        )
            for world, _batched in worlds:
                world.clock.advance(timedelta(minutes=30))
            with one_by_one.app.engine.connect() as a, batched.app.engine.connect() as b:
                expected, got = _snapshot(a), _snapshot(b)
            for table, want in expected.items():
                assert got[table] == want, f"{table} differs after stream {stream}"
        with batched.app.engine.connect() as conn:
            statuses = set(conn.execute(select(t.inbox.c.status)).scalars())
        # The streams did reach the paths being compared.
        assert {"accepted", "stale"} <= statuses


def _append_all(world: World, *payloads: dict[str, Any]) -> None:
    with world.app.engine.begin() as conn:
        entries = [Entry(payload["id"], json.dumps(payload)) for payload in payloads]
        inbox.append(conn, world.store.id, "api", entries, world.now)


def _checkout(token: str, at: datetime, number: int, kind: str = "checkout.updated") -> Any:
    return {
        "id": f"{token}-{number}",
        "type": kind,
        "occurred_at": at.isoformat(),
        "cart_token": token,
        "contact": {"phone": PHONES[0], "email": EMAILS[0]},
        "lines": [{"title": "Wool socks", "quantity": 1, "price": "60.00"}],
        "currency": "NOK",
    }


def test_a_batch_explains_a_suppressed_cart_once_and_leaves_started_enrollments(
    database_url: str, flows_dir: Path
) -> None:
    """Two rules the random streams seldom reach: a skip is recorded once per cart, also when
    its repeats are in one batch; an enrollment with a decision is no longer moved later."""
    with _world(database_url, flows_dir) as world:
        applier = _applier(world, batched=True)
        start = world.now - timedelta(minutes=30)
        _append_all(world, _checkout("c1", start, 1), _checkout("c3", start, 1))
        _drain(applier)
        # The shopper is in `default`: a cart of theirs does not start `carts` for 3 days.
        later = [_checkout("c2", start + timedelta(minutes=n), n, "cart.updated") for n in (1, 2)]
        _append_all(world, *later)
        _drain(applier)
        _append_all(world, _checkout("c2", start + timedelta(minutes=3), 3, "cart.updated"))
        _drain(applier)
        e, c, d = t.enrollments.c, t.carts.c, t.decisions.c
        with world.app.engine.begin() as conn:
            skips = conn.execute(
                select(d.reason).join(t.carts, c.id == d.cart_id).where(c.token == "c2")
            ).all()
            assert len(skips) == 1 and "the shopper is in flow default" in skips[0].reason
            enrolled = {
                row.token: row
                for row in conn.execute(
                    select(c.token, e.id, e.cart_id, e.abandoned_at).join(
                        t.carts, c.id == e.cart_id
                    )
                )
            }
            conn.execute(
                t.decisions.insert().values(
                    store_id=world.store.id,
                    enrollment_id=enrolled["c1"].id,
                    cart_id=enrolled["c1"].cart_id,
                    step_id=None,
                    outcome="skip",
                    rule="when",
                    reason="outside the sending window",
                    at=world.now,
                )
            )
        moved = start + timedelta(minutes=10)
        _append_all(world, _checkout("c1", moved, 2), _checkout("c3", moved, 2))
        _drain(applier)
        with world.app.engine.connect() as conn:
            after = {
                row.token: row.abandoned_at
                for row in conn.execute(
                    select(c.token, e.abandoned_at).join(t.carts, c.id == e.cart_id)
                )
            }
        assert after["c1"] == enrolled["c1"].abandoned_at  # it started: it stays
        assert after["c3"] == enrolled["c3"].abandoned_at + timedelta(minutes=10)
