"""`cartback inbox failed` shows events kept with their error; `retry` queues them again."""

from __future__ import annotations

import json

from sqlalchemy import select
from typer.testing import CliRunner

from cartback.cli import cli
from cartback.services import inbox
from cartback.services.inbox import Entry, InboxApplier
from cartback.store import tables as t
from cartback.web.intake import event_from_stored
from tests.support.events import checkout_payload
from tests.support.world import World

runner = CliRunner()


def _env(world: World) -> dict[str, str]:
    return {"CARTBACK_DATABASE_URL": world.app.settings.database_url, "COLUMNS": "200"}


def test_failed_events_are_listed_and_retried(world: World) -> None:
    good = checkout_payload("c1", world.now, id="good")
    with world.app.engine.begin() as conn:
        inbox.append(
            conn,
            world.store.id,
            "api",
            [Entry("bad", '{"type": "nonsense"}'), Entry("good", json.dumps(good))],
            world.now,
        )
    applier = InboxApplier(
        world.app.engine, world.app.registry, event_from_stored, world.clock.now, budget_seconds=60
    )
    assert applier.apply_pending() == inbox.Applied(applied=1, failed=1)

    shown = runner.invoke(cli, ["inbox", "failed"], env=_env(world))
    assert shown.exit_code == 0, shown.output
    assert "bad" in shown.output and "cannot read the event" in shown.output
    assert "1 failed, 0 waiting to be applied" in shown.output

    again = runner.invoke(cli, ["inbox", "retry", "--now"], env=_env(world))
    assert again.exit_code == 0, again.output
    assert "1 queued again" in again.output
    assert "0 applied, 1 failed again" in again.output
    with world.app.engine.connect() as conn:
        attempts = conn.execute(
            select(t.inbox.c.attempts).where(t.inbox.c.event_id == "bad")
        ).scalar_one()
    assert attempts == 1  # retry starts the count again
