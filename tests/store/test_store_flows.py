"""Several flows on one store: triggers, priority, the suppression window, cooldowns across
flows, and the migration of `stores.flow_name`. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import Result
from sqlalchemy import select
from typer.testing import CliRunner

from cartback.cli import cli
from cartback.core.flows import default_flow_path
from cartback.core.lineup import CART_UPDATED, CHECKOUT_UPDATED
from cartback.services import store_flows
from cartback.services.ingest import ingest
from cartback.services.store_flows import Assignment, AssignmentError
from cartback.services.tick import tick
from cartback.store import tables as t
from cartback.store.db import make_engine
from cartback.store.migrate import upgrade
from tests.support.events import checkout
from tests.support.world import World, make_world


@pytest.fixture
def flows_dir(tmp_path: Path) -> Path:
    """A `carts` flow (cart abandonment) beside the shipped ones."""
    folder = tmp_path / "flows"
    folder.mkdir()
    text = default_flow_path().read_text().replace("name: default", "name: carts", 1)
    (folder / "carts.yaml").write_text(text)
    return folder


@pytest.fixture
def two_flows(database_url: str, flows_dir: Path) -> Iterator[World]:
    """Checkout abandonment (default) at priority 1, cart abandonment (carts) at priority 2."""
    with make_world(database_url, flows_dir=flows_dir) as world:
        with world.app.engine.begin() as conn:
            store_flows.replace_all(
                conn,
                world.app.registry,
                world.store,
                [Assignment("default", 1, CHECKOUT_UPDATED), Assignment("carts", 2, CART_UPDATED)],
                None,
                world.now,
            )
        yield world


def _ingest(world: World, *events: object) -> None:
    lineup = store_flows.lineup_for(world.app.engine, world.app.registry, world.store)
    with world.app.engine.begin() as conn:
        ingest(conn, world.store, lineup, list(events), world.now)  # type: ignore[arg-type]


def _enrolled(world: World) -> list[tuple[str, str, str]]:
    e, c = t.enrollments.c, t.carts.c
    with world.app.engine.connect() as conn:
        rows = conn.execute(
            select(c.token, e.flow_name, e.state).join(t.carts, c.id == e.cart_id).order_by(e.id)
        ).all()
    return [tuple(row) for row in rows]  # type: ignore[misc]


def _skips(world: World) -> list[tuple[str, str]]:
    d = t.decisions.c
    with world.app.engine.connect() as conn:
        rows = conn.execute(
            select(d.rule, d.reason).where(d.outcome == "skip", d.step_id.is_(None))
        ).all()
    return [(row.rule, row.reason) for row in rows]


def test_a_checkout_matching_both_flows_is_enrolled_once_in_the_first(two_flows: World) -> None:
    world = two_flows
    _ingest(world, checkout("c1", world.now))
    world.clock.advance(timedelta(minutes=1))
    _ingest(world, checkout("c1", world.now))  # a repeat update explains the skip once
    assert _enrolled(world) == [("c1", "default", "active")]
    assert _skips(world) == [
        (
            "flow_priority",
            "not enrolled in flow carts (priority 2): the cart is in flow default "
            "(priority 1), and a cart is in one recovery flow at a time",
        )
    ]


def test_a_cart_event_starts_only_the_cart_flow(two_flows: World) -> None:
    world = two_flows
    _ingest(world, replace(checkout("c1", world.now), trigger=CART_UPDATED))
    assert _enrolled(world) == [("c1", "carts", "active")]
    # The checkout that follows finds the cart in a flow already: it never starts a second.
    world.clock.advance(timedelta(minutes=2))
    _ingest(world, checkout("c1", world.now))
    assert _enrolled(world) == [("c1", "carts", "active")]


def test_priority_decides_not_the_order_of_assignment(database_url: str, flows_dir: Path) -> None:
    with make_world(database_url, flows_dir=flows_dir) as world:
        with world.app.engine.begin() as conn:
            registry, store = world.app.registry, world.store
            store_flows.assign(conn, registry, store, Assignment("carts", 1), world.now)
            store_flows.assign(conn, registry, store, Assignment("default", 5), world.now)
            listed = store_flows.assignments(conn, store)
        assert listed == [Assignment("carts", 1), Assignment("default", 5)]
        _ingest(world, checkout("c1", world.now))
        assert _enrolled(world) == [("c1", "carts", "active")]
        assert [rule for rule, _ in _skips(world)] == ["flow_priority"]


def test_a_shopper_in_one_flow_is_kept_out_of_another_within_the_window(
    two_flows: World,
) -> None:
    world = two_flows
    _ingest(world, checkout("c1", world.now))
    world.clock.advance(timedelta(hours=1))
    _ingest(world, replace(checkout("c2", world.now), trigger=CART_UPDATED))
    assert _enrolled(world) == [("c1", "default", "active")]
    [(_rule, reason)] = [skip for skip in _skips(world) if skip[0] == "flow_suppressed"]
    assert reason == (
        "not enrolled in flow carts (priority 2): the shopper is in flow default, which "
        "started less than 72 h ago (the store's suppression window)"
    )
    # After the window the other flow takes the shopper's next cart.
    world.clock.advance(timedelta(days=3))
    _ingest(world, replace(checkout("c3", world.now), trigger=CART_UPDATED))
    assert ("c3", "carts", "active") in _enrolled(world)


def test_cooldowns_count_across_flows(two_flows: World) -> None:
    world = two_flows
    with world.app.engine.begin() as conn:
        store_flows.set_suppression(conn, world.store.id, timedelta(0))
    _ingest(
        world, checkout("c1", world.now), replace(checkout("c2", world.now), trigger=CART_UPDATED)
    )
    assert sorted(flow for _, flow, _ in _enrolled(world)) == ["carts", "default"]
    world.clock.advance(timedelta(minutes=25))
    tick(world.app.engine, world.app.registry, world.now)
    with world.app.engine.connect() as conn:
        sms = conn.execute(select(t.outbox.c.id).where(t.outbox.c.channel == "sms")).all()
        deferred = (
            conn.execute(select(t.decisions.c.rule).where(t.decisions.c.outcome == "defer"))
            .scalars()
            .all()
        )
    assert len(sms) == 1
    assert deferred == ["store.sms_cooldown"]


def test_assignments_are_checked(two_flows: World) -> None:
    world = two_flows
    with world.app.engine.begin() as conn:
        registry, store = world.app.registry, world.store
        with pytest.raises(AssignmentError) as unknown:
            store_flows.assign(conn, registry, store, Assignment("nope", 1), world.now)
        assert unknown.value.field == "name"
        with pytest.raises(AssignmentError) as trigger:
            store_flows.assign(conn, registry, store, Assignment("carts", 1, "browse"), world.now)
        assert trigger.value.field == "trigger"
        with pytest.raises(AssignmentError) as twice:
            store_flows.replace_all(
                conn,
                registry,
                store,
                [Assignment("carts", 1), Assignment("carts", 2)],
                None,
                world.now,
            )
        assert twice.value.field == "flows[1].name"
        store_flows.unassign(conn, store, "carts", world.now)
        with pytest.raises(AssignmentError, match="at least one flow"):
            store_flows.unassign(conn, store, "default", world.now)


def test_the_migration_gives_each_store_its_flow(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        upgrade(engine, "0011")
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "INSERT INTO stores (slug, name, brand, default_zone, default_locale, currency, "
                "domains, flow_name, platform, created_at) VALUES ('old', 'Old', 'Old', 'UTC', "
                "'en', 'USD', '[]', 'demo', 'generic', '2026-01-01 00:00:00+00:00')"
            )
        upgrade(engine)
        with engine.connect() as conn:
            rows = conn.execute(
                select(t.store_flows.c.flow_name, t.store_flows.c.priority, t.store_flows.c.trigger)
            ).all()
        assert [tuple(row) for row in rows] == [("demo", 1, "checkout.updated")]
    finally:
        engine.dispose()


def _cli(world: World, flows_dir: Path, *args: str) -> Result:
    env = {
        "CARTBACK_DATABASE_URL": world.app.settings.database_url,
        "CARTBACK_FLOWS_DIR": str(flows_dir),
        "COLUMNS": "200",
    }
    return CliRunner().invoke(cli, ["store", "flows", "test", *args], env=env)


def _rows(output: str) -> list[list[str]]:
    return [
        [cell.strip() for cell in line.strip("│").split("│")]
        for line in output.splitlines()
        if line.startswith("│")
    ]


def test_the_cli_assigns_lists_and_removes_flows(database_url: str, flows_dir: Path) -> None:
    with make_world(database_url, flows_dir=flows_dir) as world:
        listed = _cli(world, flows_dir, "list")
        assert listed.exit_code == 0, listed.output
        assert _rows(listed.output) == [["1", "default", "checkout.updated"]]
        added = _cli(
            world, flows_dir, "set", "carts", "--priority", "2", "--trigger", "cart.updated"
        )
        assert added.exit_code == 0, added.output
        assert _rows(added.output) == [
            ["1", "default", "checkout.updated"],
            ["2", "carts", "cart.updated"],
        ]
        window = _cli(world, flows_dir, "window", "12h")
        assert window.exit_code == 0 and "suppression window 12h" in window.output
        with world.app.engine.connect() as conn:
            assert store_flows.suppression(conn, world.store.id) == timedelta(hours=12)
        too_long = _cli(world, flows_dir, "window", "9999999999999999w")
        assert too_long.exit_code == 2 and "suppression_window: " in too_long.stderr
        wrong = _cli(world, flows_dir, "set", "carts", "--trigger", "browse")
        assert wrong.exit_code == 2 and "trigger: 'browse' is not a trigger" in wrong.stderr
        unknown = _cli(world, flows_dir, "set", "nope")
        assert unknown.exit_code == 2 and "name: no flow named 'nope'" in unknown.stderr
        removed = _cli(world, flows_dir, "remove", "carts")
        assert removed.exit_code == 0
        assert _rows(removed.output) == [["1", "default", "checkout.updated"]]
