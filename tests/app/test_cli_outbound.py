"""`cartback export` (messages and orders, masked unless asked, CSV or JSON) and
`cartback webhooks` (add with a secret reference, list, remove)."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta
from pathlib import Path

from typer.testing import CliRunner

from cartback.cli import cli
from cartback.core.model import Channel
from cartback.ports import LookupStatus, OutboundMessage, SendResult, SendStatus
from cartback.services.dispatch import Dispatcher
from cartback.services.ingest import ingest
from cartback.services.tick import tick
from tests.support.events import checkout, order
from tests.support.world import World

runner = CliRunner()
PHONE = "+4791234567"
# The test clock is fixed; the CLI reads the real one.
SINCE = ("--since", "3650d")


class Accepting:
    name = "recorder"
    kind = Channel.SMS

    def send(self, message: OutboundMessage) -> SendResult:
        return SendResult(SendStatus.ACCEPTED, provider_id="p-1")

    def lookup(self, key: str) -> LookupStatus:
        return LookupStatus.UNKNOWN

    def close(self) -> None:
        return None


def _env(world: World) -> dict[str, str]:
    return {"CARTBACK_DATABASE_URL": world.app.settings.database_url, "COLUMNS": "200"}


def _history(world: World) -> None:
    """Cart c1 gets its first SMS, then is ordered; cart c2 is ordered before any message."""
    flow = world.app.registry.current("default")
    with world.app.engine.begin() as conn:
        ingest(conn, world.store, flow, [checkout("c1", world.now, phone=PHONE)], world.now)
    world.clock.advance(timedelta(minutes=25))
    tick(world.app.engine, world.app.registry, world.now)
    dispatcher = Dispatcher(
        world.app.engine,
        {Channel.SMS: Accepting(), Channel.EMAIL: Accepting()},  # type: ignore[dict-item]
        clock=world.clock.now,
    )
    try:
        dispatcher.run_once(world.now)
    finally:
        dispatcher.close()
    world.clock.advance(timedelta(minutes=5))
    with world.app.engine.begin() as conn:
        ingest(
            conn,
            world.store,
            flow,
            [
                order("c1", world.now),
                checkout("c2", world.now, phone="+4798765432", email="b@example.com"),
                order("c2", world.now + timedelta(minutes=1)),
            ],
            world.now,
        )


def test_messages_export_as_csv_with_addresses_masked(world: World) -> None:
    _history(world)
    result = runner.invoke(
        cli, ["export", "messages", "--store", "test", "--format", "csv", *SINCE], env=_env(world)
    )
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == 1
    assert rows[0]["cart_token"] == "c1" and rows[0]["status"] == "sent"
    assert rows[0]["to"] == "+47******67"
    assert PHONE not in result.stdout

    clear = runner.invoke(
        cli, ["export", "messages", "--store", "test", "--with-addresses", *SINCE], env=_env(world)
    )
    assert clear.exit_code == 0, clear.output
    assert next(csv.DictReader(io.StringIO(clear.stdout)))["to"] == PHONE


def test_orders_export_as_json_says_which_followed_a_message(world: World, tmp_path: Path) -> None:
    _history(world)
    target = tmp_path / "orders.json"
    result = runner.invoke(
        cli,
        ["export", "orders", "--store", "test", "--format", "json", "--out", str(target), *SINCE],
        env=_env(world),
    )
    assert result.exit_code == 0, result.output
    assert f"2 orders written to {target}" in result.stdout
    orders = {row["order_id"]: row for row in json.loads(target.read_text())}
    assert orders["o-c1"]["after_message"] is True
    assert orders["o-c2"]["after_message"] is False
    assert orders["o-c1"]["value"].startswith("120") and orders["o-c1"]["currency"] == "NOK"
    assert orders["o-c2"]["email"] == "b***@example.com"


def test_an_empty_export_still_has_its_header(world: World) -> None:
    result = runner.invoke(cli, ["export", "orders", "--store", "test"], env=_env(world))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0].startswith("order_id,cart_token,value")
    as_json = runner.invoke(
        cli, ["export", "orders", "--store", "test", "--format", "json"], env=_env(world)
    )
    assert json.loads(as_json.stdout) == []


def test_export_answers_bad_input_with_the_option_and_exit_2(world: World) -> None:
    cases = {
        ("export", "carts", "--store", "test"): "KIND: messages or orders",
        ("export", "orders", "--store", "nope"): "--store: no store with slug 'nope'",
        ("export", "orders", "--store", "test", "--format", "xml"): "--format: csv or json",
        ("export", "orders", "--store", "test", "--since", "soon"): "--since: invalid duration",
    }
    for args, message in cases.items():
        result = runner.invoke(cli, list(args), env=_env(world))
        assert result.exit_code == 2, (args, result.output)
        assert message in result.stderr


def test_webhooks_add_list_remove(world: World) -> None:
    env = _env(world)
    literal = runner.invoke(
        cli,
        ["webhooks", "add", "test", "https://hooks.example/x", "--events", "cart.recovered",
         "--secret", "hunter2"],
        env=env,
    )  # fmt: skip
    assert literal.exit_code == 2
    assert "--secret: give env:NAME or file:/path" in literal.stderr
    unknown = runner.invoke(
        cli,
        ["webhooks", "add", "test", "https://hooks.example/x", "--events", "cart.lost",
         "--secret", "env:HOOK"],
        env=env,
    )  # fmt: skip
    assert unknown.exit_code == 2
    assert "--events: unknown cart.lost" in unknown.stderr
    added = runner.invoke(
        cli,
        ["webhooks", "add", "test", "https://hooks.example/x", "--events",
         "cart.recovered,message.sent", "--secret", "env:HOOK"],
        env=env,
    )  # fmt: skip
    assert added.exit_code == 0, added.output
    assert "webhook 1: test sends cart.recovered, message.sent" in added.stdout
    listed = runner.invoke(cli, ["webhooks", "list"], env=env)
    assert "https://hooks.example/x" in listed.stdout and "env:HOOK" in listed.stdout
    assert runner.invoke(cli, ["webhooks", "remove", "1"], env=env).exit_code == 0
    again = runner.invoke(cli, ["webhooks", "remove", "1"], env=env)
    assert again.exit_code == 2 and "no webhook 1" in again.stderr
