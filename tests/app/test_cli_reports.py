"""`cartback why` and `cartback consent show`: what a merchant asks about one cart or shopper."""

from __future__ import annotations

from datetime import timedelta

from typer.testing import CliRunner

from cartback.cli import cli
from cartback.services.ingest import ingest
from cartback.services.tick import tick
from tests.support.events import checkout
from tests.support.world import World

runner = CliRunner()


def _env(world: World) -> dict[str, str]:
    return {"CARTBACK_DATABASE_URL": world.app.settings.database_url, "COLUMNS": "200"}


def test_why_lists_every_decision_with_its_rule(world: World) -> None:
    flow = world.app.registry.current("default")
    with world.app.engine.begin() as conn:
        ingest(conn, world.store, flow, [checkout("c1", world.now, sms=False)], world.now)
    for wait in (timedelta(minutes=25), timedelta(minutes=45)):
        world.clock.advance(wait)
        tick(world.app.engine, world.app.registry, world.now)
    result = runner.invoke(cli, ["why", "c1"], env=_env(world))
    assert result.exit_code == 0, result.output
    assert "sms1" in result.stdout and "skip" in result.stdout and "when" in result.stdout
    assert "email1" in result.stdout and "send" in result.stdout


def test_why_names_an_unknown_cart(world: World) -> None:
    result = runner.invoke(cli, ["why", "nope"], env=_env(world))
    assert result.exit_code == 2
    assert "no cart with token 'nope'" in result.stderr


def test_consent_show_prints_state_and_history(world: World) -> None:
    flow = world.app.registry.current("default")
    with world.app.engine.begin() as conn:
        ingest(conn, world.store, flow, [checkout("c1", world.now)], world.now)
    result = runner.invoke(cli, ["consent", "show", "+4791234567"], env=_env(world))
    assert result.exit_code == 0, result.output
    assert "sms: marketing" in result.stdout
    assert result.stdout.count("checkout") == 2
    missing = runner.invoke(cli, ["consent", "show", "+4700000000"], env=_env(world))
    assert missing.exit_code == 2
