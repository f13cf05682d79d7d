"""Event times in ingest: a time stamped too far ahead is clamped to the receive time and marked;
the consent ledger records the receive time beside the shop's. SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import select

from cartback.config import ConfigError, load_settings
from cartback.core.events import ConsentChanged, ContactInfo, ShopEvent
from cartback.core.model import Channel, Purpose
from cartback.services.ingest import EventResult, EventStatus, ingest
from cartback.store import tables as t
from cartback.store.db import make_engine
from cartback.store.migrate import upgrade
from tests.support.events import checkout
from tests.support.world import World


def _ingest(world: World, *events: ShopEvent, **options: Any) -> list[EventResult]:
    flow = world.app.registry.current("default")
    with world.app.engine.begin() as conn:
        return ingest(conn, world.store, flow, list(events), world.now, **options)


def _receipt(world: World, event_id: str) -> int | None:
    r = t.event_receipts.c
    with world.app.engine.connect() as conn:
        value = conn.execute(select(r.clamped_seconds).where(r.event_id == event_id)).scalar_one()
    return None if value is None else int(value)


def test_a_checkout_ten_minutes_ahead_is_clamped_and_marked(world: World) -> None:
    [result] = _ingest(world, checkout("c1", world.now + timedelta(minutes=10), event_id="e1"))
    assert result == EventResult(
        "e1", EventStatus.ACCEPTED, "occurred_at was 600 s ahead of the receive time; clamped"
    )
    assert _receipt(world, "e1") == 600
    with world.app.engine.connect() as conn:
        cart_time = conn.execute(select(t.carts.c.occurred_at)).scalar_one()
        abandoned = conn.execute(select(t.enrollments.c.abandoned_at)).scalar_one()
        grant = conn.execute(select(t.consent_events)).mappings().first()
    assert cart_time == world.now
    # The abandonment wait runs from the receive time, not from the shop's future.
    assert abandoned == world.now + timedelta(minutes=10)
    assert grant is not None
    assert grant["at"] == world.now and grant["received_at"] == world.now
    assert grant["evidence"]["clamped_from"] == (world.now + timedelta(minutes=10)).isoformat()


def test_a_time_within_the_window_is_kept_and_not_marked(world: World) -> None:
    ahead = world.now + timedelta(minutes=4)
    [result] = _ingest(world, checkout("c1", ahead, event_id="e1"))
    assert result == EventResult("e1", EventStatus.ACCEPTED)
    assert _receipt(world, "e1") is None
    with world.app.engine.connect() as conn:
        assert conn.execute(select(t.carts.c.occurred_at)).scalar_one() == ahead


def test_the_window_is_configurable(world: World) -> None:
    late = checkout("c1", world.now + timedelta(seconds=2), event_id="e1")
    [result] = _ingest(world, late, future_skew=timedelta(0))
    assert result.detail == "occurred_at was 2 s ahead of the receive time; clamped"


def test_a_stale_clamped_event_says_both(world: World) -> None:
    _ingest(world, checkout("c1", world.now, event_id="e1"))
    [result] = _ingest(world, checkout("c1", world.now + timedelta(hours=1), event_id="e2"))
    assert result.status is EventStatus.STALE
    assert result.detail == (
        "an event as new or newer was applied; "
        "occurred_at was 3600 s ahead of the receive time; clamped"
    )


def test_a_far_future_time_with_an_offset_is_clamped_without_overflow(world: World) -> None:
    end_of_time = datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone(timedelta(hours=-5)))
    [result] = _ingest(world, checkout("c1", end_of_time, event_id="e1"))
    assert result.status is EventStatus.ACCEPTED and "clamped" in str(result.detail)
    assert _receipt(world, "e1") == int((end_of_time - world.now).total_seconds())


def test_a_consent_event_keeps_the_shops_time_beside_the_receive_time(world: World) -> None:
    shop_time = world.now - timedelta(minutes=3)
    grant = ConsentChanged(
        event_id="c-1",
        occurred_at=shop_time,
        contact=ContactInfo(phone="+4791234567"),
        channel=Channel.SMS,
        purpose=Purpose.MARKETING,
        granted=True,
        source="form",
    )
    _ingest(world, grant)
    with world.app.engine.connect() as conn:
        row = conn.execute(select(t.consent_events)).mappings().one()
    assert (row["at"], row["received_at"]) == (shop_time, world.now)


def test_the_future_skew_setting_has_bounds() -> None:
    settings = load_settings({"CARTBACK_FUTURE_SKEW_SECONDS": "120"})
    assert settings.future_skew_seconds == 120
    assert load_settings({}).future_skew_seconds == 300
    with pytest.raises(ConfigError, match="CARTBACK_FUTURE_SKEW_SECONDS"):
        load_settings({"CARTBACK_FUTURE_SKEW_SECONDS": "-1"})
    with pytest.raises(ConfigError, match="CARTBACK_FUTURE_SKEW_SECONDS"):
        load_settings({"CARTBACK_FUTURE_SKEW_SECONDS": "86400"})


def test_the_migration_backfills_the_receive_time_from_the_shops_time(database_url: str) -> None:
    engine = make_engine(database_url)
    at = datetime(2025, 3, 1, 9, 30, tzinfo=UTC)
    try:
        upgrade(engine, "0007")
        with engine.begin() as conn:
            conn.execute(
                t.stores.insert().values(
                    id=1,
                    slug="s",
                    name="S",
                    brand="S",
                    default_zone="UTC",
                    default_locale="en",
                    currency="EUR",
                    domains=[],
                    flow_name="default",
                    created_at=at,
                )
            )
            conn.execute(
                t.contacts.insert().values(
                    id=1,
                    store_id=1,
                    tags=[],
                    sms_marketing=False,
                    email_marketing=False,
                    orders_count=0,
                    created_at=at,
                    updated_at=at,
                )
            )
            # Written as it was before 0008: no receive time (the column does not exist yet).
            conn.execute(
                t.consent_events.insert().values(
                    store_id=1,
                    contact_id=1,
                    channel="sms",
                    purpose="marketing",
                    granted=True,
                    source="form",
                    at=at,
                )
            )
        upgrade(engine)
        with engine.connect() as conn:
            row = conn.execute(select(t.consent_events.c.at, t.consent_events.c.received_at)).one()
        assert row.received_at == row.at == at
    finally:
        engine.dispose()
