"""The operator's first hour: the README's commands, `--help`, and the first answers a new user
reads from `migrate`, `flows check` and `flows test`."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer
from typer.testing import CliRunner

from cartback.cli import cli
from tests.support.events import checkout_payload

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _env(tmp_path: Path) -> dict[str, str]:
    return {"CARTBACK_DATABASE_URL": f"sqlite:///{tmp_path / 'new.db'}", "COLUMNS": "200"}


def _command_paths(group: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and group below `group` (typer's own click: groups have `commands`)."""
    paths = [prefix]
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            paths.extend(_command_paths(command, (*prefix, name)))
        else:
            paths.append((*prefix, name))
    return paths


def test_help_shows_words_not_python_types_or_braces() -> None:
    root: Any = typer.main.get_command(cli)
    for path in _command_paths(root):
        result = runner.invoke(cli, [*path, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, (path, result.output)
        for placeholder in ("<bool>", "<str>", "<list[", "<path>", "<int>", "{"):
            # `{"events": [...]}` in one help text is an example of JSON, not a placeholder.
            text = result.output.replace('{"events": [...]}', "")
            assert placeholder not in text, (path, placeholder, text)


def test_the_summary_names_every_command_and_group() -> None:
    result = runner.invoke(cli, ["--help"], env={"COLUMNS": "400"})
    summary = result.output.split("Options")[0]
    root: Any = typer.main.get_command(cli)
    for name in root.commands:
        assert re.search(rf"\b{re.escape(name)}\b", summary), name
    assert "discounts" in summary and "webhooks" in summary and "export" in summary


def test_flows_check_counts_one_step_in_the_singular(tmp_path: Path) -> None:
    flow = tmp_path / "one.yaml"
    flow.write_text(
        "name: one\nabandon_after: 10m\nsteps:\n"
        "  - id: sms1\n    at: 15m\n    channel: sms\n    body: '{{ brand }}: Hi {{ link }}'\n"
    )
    result = runner.invoke(cli, ["flows", "check", str(flow)])
    assert result.exit_code == 0, result.output
    assert "(one, 1 step, version" in result.output


def test_migrate_says_it_created_the_schema_then_that_it_is_current(tmp_path: Path) -> None:
    first = runner.invoke(cli, ["migrate"], env=_env(tmp_path))
    assert first.exit_code == 0, first.output
    assert "created the schema" in first.stdout and "new database" in first.stdout
    again = runner.invoke(cli, ["migrate"], env=_env(tmp_path))
    assert "already at the latest schema" in again.stdout
    assert "created the schema" not in again.stdout


def test_flows_test_shows_the_shoppers_local_time_beside_utc(tmp_path: Path) -> None:
    at = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
    event = checkout_payload("c1", at, id="e1")
    event["contact"] = {"phone": "+12125550123", "first_name": "Ann", "zone": "America/New_York"}
    path = tmp_path / "event.json"
    path.write_text(json.dumps(event))
    result = runner.invoke(
        cli, ["flows", "test", "default", "--event", str(path)], env=_env(tmp_path)
    )
    assert result.exit_code == 0, result.output
    assert "shopper's: America/New_York" in result.stdout
    # The enrollment 10 minutes after the checkout: 15:10 UTC is 10:10 in New York.
    assert "2026-11-23 15:10:00" in result.stdout and "2026-11-23 10:10 EST" in result.stdout


def test_the_readme_uses_one_form_of_the_command_and_says_how_to_get_it() -> None:
    assert ".venv/bin/cartback " not in README
    assert "source .venv/bin/activate" in README


def test_the_readme_consent_example_names_the_quickstart_shopper(tmp_path: Path) -> None:
    shown = re.search(r"cartback consent show (\S+)", README)
    assert shown is not None
    who = shown.group(1)
    quickstart = README.split("## Flows")[0]
    assert f'"phone": "{who}"' in quickstart
    # And the command answers for it once the quickstart's checkout is in the demo store.
    env = _env(tmp_path)
    assert runner.invoke(cli, ["migrate"], env=env).exit_code == 0
    assert runner.invoke(cli, ["demo"], env=env).exit_code == 0
    _post_quickstart_checkout(env["CARTBACK_DATABASE_URL"], who)
    result = runner.invoke(cli, ["consent", "show", who], env=env)
    assert result.exit_code == 0, result.output
    assert who in result.stdout


def _post_quickstart_checkout(database_url: str, phone: str) -> None:
    from fastapi.testclient import TestClient

    from cartback.app import build_app, register_flows
    from cartback.cli import DEMO_KEY
    from cartback.config import load_settings
    from cartback.web.app import create_app

    # Applied before the answer, as `cartback serve`'s worker would a moment later.
    app = build_app(load_settings({}, database_url=database_url, inbox_apply_inline=True))
    try:
        register_flows(app)
        body = checkout_payload("cart-123", app.clock.now(), id="evt-1")
        body["contact"] = {"phone": phone, "email": "kari@example.com", "first_name": "Kari"}
        with TestClient(create_app(app)) as client:
            answer = client.post(
                "/v1/events", json=body, headers={"Authorization": f"Bearer {DEMO_KEY}"}
            )
            assert answer.status_code == 200, answer.text
    finally:
        app.close()
