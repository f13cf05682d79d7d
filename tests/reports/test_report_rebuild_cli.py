"""`cartback report rebuild`: the backfill of the report summary, and its input errors."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select
from typer.testing import CliRunner

from cartback.cli import cli
from cartback.services import report_summary
from cartback.services.reports import flow_report
from cartback.store import tables as t
from tests.reports import scenario
from tests.support.world import World

runner = CliRunner()


def _env(world: World) -> dict[str, str]:
    return {"CARTBACK_DATABASE_URL": world.app.settings.database_url, "COLUMNS": "200"}


def test_rebuild_summarises_every_ended_day_and_the_report_reads_them(world: World) -> None:
    base = world.now - timedelta(days=5)
    with world.app.engine.begin() as conn:
        scenario.seed(conn, world.store.id, base, summarise=False)
    with world.app.engine.connect() as conn:
        window = {"since": world.now - timedelta(days=30), "until": world.now}
        live = flow_report(conn, world.store.id, summary=False, **window)
        assert (
            report_summary.coverage(conn, world.store.id, base.date(), world.now.date()).fresh
            == frozenset()
        )

    result = runner.invoke(cli, ["report", "rebuild"], env=_env(world))
    assert result.exit_code == 0, result.output
    with world.app.engine.connect() as conn:
        days = set(conn.execute(select(t.report_days.c.day)).scalars())
        fresh = report_summary.coverage(conn, world.store.id, base.date(), world.now.date()).fresh
        assert flow_report(conn, world.store.id, **window) == live
    # Every day from the first cart to the day before the (real) clock's today.
    assert min(days) == base.date() and len(days) >= 6
    assert result.output.strip() == f"test: {len(days)} days summarised"
    assert base.date() in fresh

    again = runner.invoke(
        cli, ["report", "rebuild", "--store", "test", "--since", str(max(days))], env=_env(world)
    )
    assert again.exit_code == 0, again.output
    assert again.output.strip() == "test: 1 day summarised"


def test_rebuild_names_a_wrong_option(world: World) -> None:
    bad_date = runner.invoke(cli, ["report", "rebuild", "--since", "yesterday"], env=_env(world))
    assert bad_date.exit_code == 2
    assert "--since: expected a date, YYYY-MM-DD" in bad_date.output
    unknown = runner.invoke(cli, ["report", "rebuild", "--store", "nope"], env=_env(world))
    assert unknown.exit_code == 2
    assert "--store: no store 'nope'" in unknown.output
