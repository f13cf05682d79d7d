"""A migrated cartback with one store and key, on the database a test asks for."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cartback.app import App, build_app, register_flows
from cartback.config import load_settings
from cartback.core.model import Store
from cartback.services import admin
from cartback.store.migrate import upgrade
from tests.support.clock import ManualClock

API_KEY = "cbk_test_key"


@dataclass
class World:
    app: App
    clock: ManualClock
    store: Store
    key: str = API_KEY

    @property
    def now(self) -> datetime:
        return self.clock.now()


@contextmanager
def make_world(database_url: str, *, flow: str = "default", **settings: Any) -> Iterator[World]:
    # The web server applies a request's events before answering, so a test can read the cart
    # right after a POST (production leaves it to the worker's inbox thread).
    settings.setdefault("inbox_apply_inline", True)
    config = load_settings(
        {}, database_url=database_url, sms_channel="null", email_channel="null", **settings
    )
    clock = ManualClock()
    app = build_app(config, clock=clock)
    try:
        upgrade(app.engine)
        register_flows(app)
        with app.engine.begin() as conn:
            store = admin.create_store(
                conn,
                admin.NewStore(
                    slug="test",
                    name="Test Store",
                    brand="TestShop",
                    flow_name=flow,
                    default_zone="Europe/Oslo",
                    domains=("shop.example",),
                    postal_address="1 Test Street, Oslo",
                ),
                clock.now(),
            )
            admin.issue_api_key(conn, store.id, clock.now(), key=API_KEY)
        yield World(app=app, clock=clock, store=store)
    finally:
        app.close()
