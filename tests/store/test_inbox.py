"""The inbox: grouped commits that are durable when answered, duplicates by event id, rows
applied in arrival order, and a row that cannot be applied kept with its error."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from sqlalchemy import event, select, text

from cartback.services import inbox
from cartback.services.inbox import Entry, InboxApplier
from cartback.services.inbox_writer import InboxWriter
from cartback.store import tables as t
from cartback.store.db import make_engine
from cartback.web.intake import event_from_stored
from tests.support.events import checkout_payload
from tests.support.world import World


def _entry(payload: dict[str, Any]) -> Entry:
    return Entry(str(payload["id"]), json.dumps(payload))


def _append(world: World, *payloads: dict[str, Any]) -> list[int | None]:
    with world.app.engine.begin() as conn:
        return inbox.append(conn, world.store.id, "api", [_entry(p) for p in payloads], world.now)


def _applier(world: World) -> InboxApplier:
    # A generous budget: one run applies everything appended, whatever the machine's load.
    return InboxApplier(
        world.app.engine, world.app.registry, event_from_stored, world.clock.now, budget_seconds=60
    )


def _rows(world: World) -> list[Any]:
    i = t.inbox.c
    with world.app.engine.connect() as conn:
        return list(
            conn.execute(
                select(i.event_id, i.applied_at, i.status, i.detail, i.error).order_by(i.id)
            ).all()
        )


def test_grouped_commits_are_durable_once_each_request_is_answered(
    world: World, database_url: str
) -> None:
    commits = []
    event.listen(world.app.engine, "commit", lambda _conn: commits.append(1))
    writer = InboxWriter(world.app.engine)
    requests = 40
    try:
        futures = [
            writer.submit(
                world.store.id,
                "api",
                [_entry(checkout_payload(f"c{n}", world.now, id=f"e{n}"))],
                world.now,
            )
            for n in range(requests)
        ]
        answers = [future.result(timeout=30) for future in futures]
    finally:
        writer.close()
    assert all(answer[0] is not None for answer in answers)
    # Concurrent requests shared commits.
    assert 1 <= len(commits) < requests
    # Committed: a connection of another engine (another process) sees every row.
    other = make_engine(database_url)
    try:
        with other.connect() as conn:
            stored = set(conn.execute(select(t.inbox.c.event_id)).scalars())
    finally:
        other.dispose()
    assert stored == {f"e{n}" for n in range(requests)}


def test_a_failed_group_fails_only_the_request_that_broke_it(world: World) -> None:
    writer = InboxWriter(world.app.engine)
    try:
        good = writer.submit(
            world.store.id, "api", [_entry(checkout_payload("c1", world.now))], world.now
        )
        # No such store: the foreign key refuses this request's row.
        bad = writer.submit(
            world.store.id + 999, "api", [_entry(checkout_payload("c2", world.now))], world.now
        )
        assert good.result(timeout=30)[0] is not None
        assert bad.exception(timeout=30) is not None
    finally:
        writer.close()
    assert [row.event_id for row in _rows(world)] == [f"evt-c1-{world.now.timestamp():.0f}"]


def test_a_repeated_event_id_is_a_duplicate_within_and_across_requests(world: World) -> None:
    first = checkout_payload("c1", world.now, id="e1")
    second = checkout_payload("c2", world.now, id="e2")
    assert [row is not None for row in _append(world, first, second, first)] == [
        True,
        True,
        False,
    ]
    assert _append(world, second) == [None]
    assert [row.event_id for row in _rows(world)] == ["e1", "e2"]


def test_rows_are_applied_in_arrival_order_with_staleness_decided_then(world: World) -> None:
    newer = checkout_payload(
        "c1", world.now, id="newer", lines=[{"title": "Hat", "quantity": 1, "price": "9"}]
    )
    older = checkout_payload("c1", world.now - timedelta(minutes=5), id="older")
    order = {
        "id": "order",
        "type": "order.placed",
        "occurred_at": (world.now + timedelta(minutes=1)).isoformat(),
        "order_id": "o1",
        "cart_token": "c1",
        "value": "9",
        "currency": "NOK",
    }
    late = checkout_payload("c1", world.now + timedelta(minutes=2), id="late")
    _append(world, newer, older, order, late)
    world.clock.advance(timedelta(seconds=2))
    assert _applier(world).apply_pending() == inbox.Applied(applied=4)
    rows = _rows(world)
    assert [(row.event_id, row.status) for row in rows] == [
        ("newer", "accepted"),
        ("older", "stale"),
        ("order", "accepted"),
        ("late", "stale"),
    ]
    assert rows[1].detail == "an event as new or newer was applied"
    assert rows[3].detail == "the cart was already ordered"
    assert all(row.applied_at == world.now for row in rows)
    with world.app.engine.connect() as conn:
        # Applied rows keep no shopper's details.
        assert set(conn.execute(select(t.inbox.c.body)).scalars()) == {None}
    with world.app.engine.connect() as conn:
        cart = conn.execute(select(t.carts)).mappings().one()
        enrollment = conn.execute(select(t.enrollments)).mappings().one()
    assert cart["status"] == "ordered"
    assert [line["title"] for line in cart["lines"]] == ["Hat"]
    assert enrollment["exit_reason"] == "order_placed"
    # The stale ones show in the cart's timeline.
    d = t.decisions.c
    with world.app.engine.connect() as conn:
        stale = conn.execute(
            select(d.reason).where(d.rule == inbox.STALE_RULE).order_by(d.id)
        ).scalars()
        assert list(stale) == [
            "event older not applied: an event as new or newer was applied",
            "event late not applied: the cart was already ordered",
        ]
    # Applied as at its receipt: the enrollment is timed from the event, not from the apply.
    assert enrollment["created_at"] == world.now - timedelta(seconds=2)


def test_a_row_that_cannot_be_applied_is_kept_and_never_blocks_the_others(world: World) -> None:
    _append(world, checkout_payload("c1", world.now, id="before"))
    with world.app.engine.begin() as conn:
        inbox.append(
            conn, world.store.id, "api", [Entry("poison", '{"type": "nonsense"}')], world.now
        )
    _append(world, checkout_payload("c2", world.now, id="after"))
    assert _applier(world).apply_pending() == inbox.Applied(applied=2, failed=1)
    rows = {row.event_id: row for row in _rows(world)}
    assert rows["before"].status == rows["after"].status == "accepted"
    assert rows["poison"].applied_at is None
    assert rows["poison"].error.startswith("cannot read the event: ")
    with world.app.engine.connect() as conn:
        kept = conn.execute(select(t.inbox.c.body).where(t.inbox.c.event_id == "poison"))
        assert kept.scalar_one() == '{"type": "nonsense"}'  # kept to be applied when retried
    with world.app.engine.connect() as conn:
        assert [row.event_id for row in inbox.failed(conn)] == ["poison"]
        assert inbox.backlog(conn) == (0, 1)
        tokens = set(conn.execute(select(t.carts.c.token)).scalars())
    assert tokens == {"c1", "c2"}
    # A failed row is not tried again on its own; `retry` queues it (and it fails again).
    assert _applier(world).apply_pending() == inbox.Applied()
    with world.app.engine.begin() as conn:
        assert inbox.retry(conn) == 1
    assert _applier(world).apply_pending() == inbox.Applied(failed=1)


def test_an_error_inside_ingest_rolls_back_that_row_only(world: World, monkeypatch: Any) -> None:
    from cartback.services import inbox as module

    real = module.ingest

    def flaky(conn: Any, store: Any, flow: Any, events: Any, *args: Any, **kwargs: Any) -> Any:
        if events[0].cart_token == "bad":
            # Half-applied, then broken: the savepoint must undo the cart write.
            real(conn, store, flow, events, *args, **kwargs)
            raise ValueError("boom")
        return real(conn, store, flow, events, *args, **kwargs)

    real_batch = module.apply_checkouts

    def flaky_batch(conn: Any, store: Any, lineup: Any, items: Any, **kwargs: Any) -> Any:
        # The same fault in the checkouts' batched path: the whole run is rolled back and its
        # rows are applied one by one, through `ingest`.
        outcomes = real_batch(conn, store, lineup, items, **kwargs)
        if any(item.event.cart_token == "bad" for item in items):
            raise ValueError("boom")
        return outcomes

    monkeypatch.setattr(module, "ingest", flaky)
    monkeypatch.setattr(module, "apply_checkouts", flaky_batch)
    _append(world, checkout_payload("bad", world.now), checkout_payload("good", world.now))
    assert _applier(world).apply_pending() == inbox.Applied(applied=1, failed=1)
    with world.app.engine.connect() as conn:
        tokens = set(conn.execute(select(t.carts.c.token)).scalars())
        (kept,) = inbox.failed(conn)
    assert tokens == {"good"}
    assert kept.error == "ValueError: boom"


def test_one_applier_at_a_time_keeps_arrival_order_across_workers(
    world: World, database_url: str
) -> None:
    if not database_url.startswith("postgresql"):
        return  # SQLite: every transaction holds the one write lock already
    _append(world, checkout_payload("c1", world.now))
    other = make_engine(database_url)
    try:
        with other.begin() as conn:
            # Another worker is applying.
            conn.execute(text(f"SELECT pg_advisory_xact_lock({inbox.APPLY_LOCK})"))
            assert _applier(world).apply_pending() == inbox.Applied()
        assert _applier(world).apply_pending() == inbox.Applied(applied=1)
    finally:
        other.dispose()


def test_the_backlog_and_the_apply_lag_are_exported(world: World) -> None:
    from cartback import metrics

    lags_before = _lag_count()
    _append(world, checkout_payload("c1", world.now))
    with world.app.engine.begin() as conn:
        inbox.append(conn, world.store.id, "api", [Entry("poison", "{}")], world.now)
    _append(world, checkout_payload("c2", world.now, id="waiting"))
    collector = metrics.BacklogCollector(world.app.engine, world.clock.now, cache_seconds=0)
    assert _inbox_gauge(collector) == {"pending": 3, "failed": 0}
    world.clock.advance(timedelta(milliseconds=1500))
    _applier(world).apply_pending()
    assert _inbox_gauge(collector) == {"pending": 0, "failed": 1}
    assert _lag_count() == lags_before + 2


def _inbox_gauge(collector: Any) -> dict[str, float]:
    (family,) = [m for m in collector.collect() if m.name == "cartback_inbox_events"]
    return {sample.labels["status"]: sample.value for sample in family.samples}


def _lag_count() -> float:
    from cartback import metrics

    value = metrics.REGISTRY.get_sample_value("cartback_inbox_apply_lag_seconds_count")
    return value or 0.0


def test_an_erasure_closes_the_shoppers_unapplied_events_and_drops_their_bodies(
    world: World,
) -> None:
    """Events accepted for a shopper who is then erased are never applied later (which would
    store their details again), and no copy of their body stays in the inbox."""
    from cartback.core.events import ContactInfo
    from cartback.services.erasure import erase_shopper

    other = {"phone": "+4798765432", "email": "ola@example.com", "first_name": "Ola"}
    _append(
        world,
        checkout_payload("kari-1", world.now, id="k1"),
        checkout_payload("ola-1", world.now, id="o1", contact=other),
    )
    with world.app.engine.begin() as conn:
        erase_shopper(
            conn,
            world.store.id,
            ContactInfo(email="kari@example.com"),
            "a-suppression-key",
            world.now,
            "request",
        )
    i = t.inbox.c
    with world.app.engine.connect() as conn:
        rows = {
            row.event_id: row
            for row in conn.execute(select(i.event_id, i.body, i.status, i.applied_at))
        }
    assert rows["k1"].body is None and rows["k1"].status == "erased"
    assert rows["k1"].applied_at is not None
    assert rows["o1"].body is not None and rows["o1"].applied_at is None
    _applier(world).apply_pending()
    with world.app.engine.connect() as conn:
        tokens = set(conn.execute(select(t.carts.c.token)).scalars())
    assert tokens == {"ola-1"}
