"""`cartback enrollments resume`: an operator wakes an enrollment the timer parked."""

from __future__ import annotations

from sqlalchemy import select, update
from typer.testing import CliRunner

from cartback.cli import cli
from cartback.services.ingest import ingest
from cartback.store import tables as t
from tests.support.events import checkout
from tests.support.world import World

runner = CliRunner()


def _env(world: World) -> dict[str, str]:
    return {"CARTBACK_DATABASE_URL": world.app.settings.database_url, "COLUMNS": "200"}


def test_resume_wakes_a_parked_enrollment_and_refuses_anything_else(world: World) -> None:
    flow = world.app.registry.current("default")
    with world.app.engine.begin() as conn:
        ingest(conn, world.store, flow, [checkout("c1", world.now)], world.now)
        enrollment_id = conn.execute(select(t.enrollments.c.id)).scalar_one()
    active = runner.invoke(cli, ["enrollments", "resume", str(enrollment_id)], env=_env(world))
    assert active.exit_code == 2
    assert f"no parked enrollment with id {enrollment_id}" in active.stderr

    with world.app.engine.begin() as conn:
        conn.execute(update(t.enrollments).values(state="parked", wake_at=None))
    done = runner.invoke(cli, ["enrollments", "resume", str(enrollment_id)], env=_env(world))
    assert done.exit_code == 0, done.output
    assert "resumed" in done.stdout
    with world.app.engine.connect() as conn:
        state, wake_at = conn.execute(select(t.enrollments.c.state, t.enrollments.c.wake_at)).one()
        rule = conn.execute(select(t.decisions.c.rule).order_by(t.decisions.c.id.desc())).first()
    assert state == "active" and wake_at is not None
    assert rule is not None and rule.rule == "timer.resumed"
