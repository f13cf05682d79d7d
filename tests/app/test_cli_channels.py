"""`cartback channels set/list/remove` and `cartback store support-webhook`."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from typer.testing import CliRunner

from cartback.cli import cli
from cartback.store import tables as t
from tests.support.world import World

runner = CliRunner()
TOKEN = "secret-token-value-123"


def _env(world: World, **extra: str) -> dict[str, str]:
    return {"CARTBACK_DATABASE_URL": world.app.settings.database_url, "COLUMNS": "250", **extra}


def _set(world: World, *args: str) -> object:
    command = [
        "channels",
        "set",
        "test",
        "sms",
        "twilio",
        "--option",
        "account_sid=AC123",
        "--option",
        "from=+15550001111",
        *args,
    ]
    return runner.invoke(cli, command, env=_env(world))


def test_set_stores_references_never_secrets(world: World, tmp_path: Path) -> None:
    done = _set(world, "--secret", "auth_token=env:CB_TEST_TWILIO_TOKEN")
    assert done.exit_code == 0, done.output  # type: ignore[attr-defined]
    with world.app.engine.connect() as conn:
        row = conn.execute(select(t.store_providers)).mappings().one()
    assert row["secrets"] == {"auth_token": "env:CB_TEST_TWILIO_TOKEN"}
    assert row["options"] == {"account_sid": "AC123", "from": "+15550001111"}

    in_clear = _set(world, "--secret", f"auth_token={TOKEN}")
    assert in_clear.exit_code == 2  # type: ignore[attr-defined]
    assert "secret auth_token" in in_clear.stderr  # type: ignore[attr-defined]
    unknown = runner.invoke(cli, ["channels", "set", "test", "sms", "nosuch"], env=_env(world))
    assert unknown.exit_code == 2 and "unknown provider" in unknown.stderr


def test_list_masks_secrets_and_names_an_unresolvable_one(world: World, tmp_path: Path) -> None:
    secret_file = tmp_path / "token"
    secret_file.write_text(TOKEN + "\n")
    assert _set(world, "--secret", f"auth_token=file:{secret_file}").exit_code == 0  # type: ignore[attr-defined]
    listed = runner.invoke(cli, ["channels", "list"], env=_env(world))
    assert listed.exit_code == 0, listed.output
    assert "auth_token=file:*** (ok)" in listed.stdout
    assert TOKEN not in listed.output and str(secret_file) not in listed.output
    assert "/hooks/channel/twilio/test/status" in listed.stdout

    assert _set(world, "--secret", "auth_token=env:CB_TEST_UNSET_TOKEN").exit_code == 0  # type: ignore[attr-defined]
    broken = runner.invoke(cli, ["channels", "list"], env=_env(world))
    assert broken.exit_code == 2
    assert "CB_TEST_UNSET_TOKEN" in broken.stderr and "secret auth_token" in broken.stderr

    removed = runner.invoke(cli, ["channels", "remove", "test", "sms"], env=_env(world))
    assert removed.exit_code == 0 and "global channel" in removed.stdout


def test_support_webhook_is_a_store_setting(world: World) -> None:
    url = "https://help.example/cartback"
    done = runner.invoke(cli, ["store", "support-webhook", "test", url], env=_env(world))
    assert done.exit_code == 0, done.output
    with world.app.engine.connect() as conn:
        assert conn.execute(select(t.stores.c.support_webhook_url)).scalar() == url
    bad = runner.invoke(cli, ["store", "support-webhook", "test", "ftp://x"], env=_env(world))
    assert bad.exit_code == 2
