"""Discounts: static codes, single-use pools, and restore links that apply the code."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import select, update
from typer.testing import CliRunner

from cartback.cli import cli
from cartback.core.model import CartLine
from cartback.services.compose import discount_link
from cartback.services.discounts import clean_codes, load_pool, pool_sizes
from cartback.services.ingest import ingest
from cartback.services.tick import tick
from cartback.store import tables as t
from tests.support.events import checkout
from tests.support.world import World

POOLED_FLOW = """
name: pooled
abandon_after: 0s
steps:
  - id: sms1
    at: 0s
    channel: sms
    body: "{{ brand }}: {{ discount_text }} with {{ discount_code }}: {{ link }}"
    discount: {pool: spring, percent: 15}
"""


def _pooled(world: World) -> None:
    world.app.registry.register_text(POOLED_FLOW, "pooled.yaml", world.now)
    with world.app.engine.begin() as conn:
        conn.execute(update(t.stores).values(flow_name="pooled"))


def _checkouts(world: World, count: int) -> None:
    flow = world.app.registry.current("pooled")
    events = [
        checkout(f"c{i}", world.now, phone=f"+47400{i:05d}", email=f"s{i}@example.com")
        for i in range(count)
    ]
    with world.app.engine.begin() as conn:
        ingest(conn, world.store, flow, events, world.now)
    world.clock.advance(timedelta(seconds=1))
    tick(world.app.engine, world.app.registry, world.now)


def test_each_pooled_code_goes_to_one_cart_only(world: World) -> None:
    _pooled(world)
    with world.app.engine.begin() as conn:
        load = load_pool(
            conn, world.store.id, "spring", ["A1", "B2", "C3", "A1", "# x", ""], world.now
        )
    assert (load.added, load.already_there) == (3, 0)
    _checkouts(world, 4)
    with world.app.engine.connect() as conn:
        bodies = conn.execute(select(t.outbox.c.body)).scalars().all()
        reasons = (
            conn.execute(select(t.decisions.c.rule).where(t.decisions.c.outcome == "skip"))
            .scalars()
            .all()
        )
        sizes = pool_sizes(conn, world.store.id)
    # Read the code where the template puts it: the random link token may contain "C3".
    codes = sorted(m.group(1) for body in bodies if (m := re.search(r" with (\S+): ", body)))
    assert codes == ["A1", "B2", "C3"]
    assert all("15% off" in body for body in bodies)
    # The fourth cart found the pool empty: no message with a code it does not have.
    assert reasons == ["discount.pool_empty"]
    assert sizes == {"spring": (0, 3)}


def test_loading_the_same_codes_again_adds_nothing(world: World) -> None:
    with world.app.engine.begin() as conn:
        load_pool(conn, world.store.id, "spring", ["A1", "B2"], world.now)
        again = load_pool(conn, world.store.id, "spring", ["A1", "B2", "D4"], world.now)
    assert (again.added, again.already_there) == (1, 2)


def test_clean_codes_drops_comments_blanks_and_repeats() -> None:
    assert clean_codes(["A1  # first", "", "  B2", "A1", "#only a comment"]) == ["A1", "B2"]


def test_the_static_code_of_the_default_flow_reaches_big_carts_only(world: World) -> None:
    flow = world.app.registry.current("default")
    with world.app.engine.begin() as conn:
        ingest(
            conn,
            world.store,
            flow,
            [
                checkout("big", world.now, price="600", phone="+4740000001", email="a@x.no"),
                checkout("small", world.now, price="200", phone="+4740000002", email="b@x.no"),
            ],
            world.now,
        )
    # A timer that runs every hour reaches every step within its grace.
    for _ in range(80):
        world.clock.advance(timedelta(hours=1))
        tick(world.app.engine, world.app.registry, world.now)
    with world.app.engine.connect() as conn:
        sms3 = (
            conn.execute(select(t.outbox.c.body).where(t.outbox.c.step_id == "sms3"))
            .scalars()
            .all()
        )
    assert len(sms3) == 1 and "COMEBACK10" in sms3[0]


@pytest.mark.parametrize(
    ("platform", "expected"),
    [
        ("generic", "https://shop.example/cart/c1?utm_source=x"),
        (
            "shopify",
            "https://shop.example/discount/SAVE%2010?redirect=%2Fcart%2Fc1%3Futm_source%3Dx",
        ),
    ],
)
def test_restore_links_apply_the_code_where_the_platform_can(platform: str, expected: str) -> None:
    assert (
        discount_link("https://shop.example/cart/c1?utm_source=x", "SAVE 10", platform) == expected
    )


def test_the_cli_loads_a_pool_file_and_reports_bad_lines(world: World, tmp_path: Path) -> None:
    runner = CliRunner()
    env = {"CARTBACK_DATABASE_URL": world.app.settings.database_url}
    good = tmp_path / "codes.txt"
    good.write_text("SPRING-1\nSPRING-2  # second\n\n")
    result = runner.invoke(
        cli, ["discounts", "load", "spring", str(good), "--store", "test"], env=env
    )
    assert result.exit_code == 0, result.output
    assert "2 codes added" in result.stdout
    bad = tmp_path / "bad.txt"
    bad.write_text("OK-1\nnot one word\n")
    result = runner.invoke(
        cli, ["discounts", "load", "spring", str(bad), "--store", "test"], env=env
    )
    assert result.exit_code == 2
    assert f"{bad}:2: code:" in result.stderr
    listed = runner.invoke(cli, ["discounts", "list", "--store", "test"], env=env)
    assert "spring" in listed.stdout


def test_the_default_flow_gives_no_code_to_a_cart_made_only_of_excluded_products(
    world: World,
) -> None:
    flow = world.app.registry.current("default")
    excluded = replace(
        checkout("gift", world.now, price="600", phone="+4740000001", email="a@x.no"),
        tags=("no-discount",),
    )
    plain = checkout("plain", world.now, price="600", phone="+4740000002", email="b@x.no")
    with world.app.engine.begin() as conn:
        ingest(conn, world.store, flow, [excluded, plain], world.now)
    for _ in range(80):
        world.clock.advance(timedelta(hours=1))
        tick(world.app.engine, world.app.registry, world.now)
    with world.app.engine.connect() as conn:
        rows = conn.execute(
            select(t.outbox.c.to_address, t.outbox.c.body).where(t.outbox.c.step_id == "sms3")
        ).all()
    sms3 = {row.to_address: row.body for row in rows}
    assert "COMEBACK10" in sms3["+4740000002"]
    # The message still goes, without a code.
    assert "COMEBACK10" not in sms3["+4740000001"]
    # In Norwegian: the checkout ships to Norway and names no other language.
    assert "Handlekurven din er fortsatt lagret" in sms3["+4740000001"]


def test_the_stores_excluded_skus_keep_the_default_flows_code_off_a_gift_card_cart(
    world: World,
) -> None:
    # NOK carts over the default flow's large-cart threshold (NOK 1,000), so sms3 goes.
    with world.app.engine.begin() as conn:
        conn.execute(update(t.stores).values(policy={"discount_exclusions": {"skus": ["GIFT-50"]}}))
    flow = world.app.registry.current("default")
    gift = replace(
        checkout("gift", world.now, phone="+4740000001", email="a@x.no"),
        lines=(CartLine("Gift card", 1, Decimal("1500"), sku="GIFT-50"),),
        value=Decimal("1500"),
    )
    mixed = replace(
        checkout("mixed", world.now, phone="+4740000002", email="b@x.no"),
        lines=(
            CartLine("Gift card", 1, Decimal("1500"), sku="GIFT-50"),
            CartLine("Wool socks", 1, Decimal("60"), sku="SOCK-1"),
        ),
        value=Decimal("1560"),
    )
    with world.app.engine.begin() as conn:
        ingest(conn, world.store, flow, [gift, mixed], world.now)
    for _ in range(80):
        world.clock.advance(timedelta(hours=1))
        tick(world.app.engine, world.app.registry, world.now)
    with world.app.engine.connect() as conn:
        rows = conn.execute(
            select(t.outbox.c.to_address, t.outbox.c.body).where(t.outbox.c.step_id == "sms3")
        ).all()
    sms3 = {row.to_address: row.body for row in rows}
    # Only gift cards: sms3 goes, without a code. Gift card and socks: the code applies.
    assert "COMEBACK10" not in sms3["+4740000001"]
    assert "Handlekurven din er fortsatt lagret" in sms3["+4740000001"]
    assert "COMEBACK10" in sms3["+4740000002"]
