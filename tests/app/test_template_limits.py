"""A template past the sandbox's limits skips its step with a rule; the batch goes on.
Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import time
from datetime import timedelta

from sqlalchemy import select, update

from cartback.services.ingest import ingest
from cartback.services.tick import tick
from cartback.store import tables as t
from tests.support.events import checkout
from tests.support.world import World

# Passes the static check (the range sizes come from a variable) but would print 650 MB.
HEAVY_FLOW = """
name: heavy
abandon_after: 0s
steps:
  - id: email1
    at: 0s
    channel: email
    subject: Your cart
    body: |
      {% set n = 1000 %}{% for i in range(n) %}{% for j in range(n) %}{{ product }} is waiting
      for you, {{ first_name }}; this line is long so that the total passes 650 MB: {{ link }}
      {% endfor %}{% endfor %}
"""


def test_an_output_heavy_template_is_skipped_with_a_rule_and_the_batch_goes_on(
    world: World,
) -> None:
    world.app.registry.register_text(HEAVY_FLOW, "heavy.yaml", world.now)
    with world.app.engine.begin() as conn:
        conn.execute(update(t.stores).values(flow_name="heavy"))
    flow = world.app.registry.current("heavy")
    events = [
        checkout(f"c{i}", world.now, phone=f"+47400{i:05d}", email=f"s{i}@example.com")
        for i in range(3)
    ]
    with world.app.engine.begin() as conn:
        ingest(conn, world.store, flow, events, world.now)
    world.clock.advance(timedelta(seconds=1))
    started = time.monotonic()
    stats = tick(world.app.engine, world.app.registry, world.now)
    assert time.monotonic() - started < 5
    assert (stats.claimed, stats.skipped) == (3, 3)
    with world.app.engine.connect() as conn:
        decisions = conn.execute(
            select(t.decisions.c.step_id, t.decisions.c.rule, t.decisions.c.reason).where(
                t.decisions.c.outcome == "skip"
            )
        ).all()
        assert conn.execute(select(t.outbox.c.id)).all() == []
    assert [(row.step_id, row.rule) for row in decisions] == [("email1", "template")] * 3
    assert all("longer than 100000 characters" in row.reason for row in decisions)
