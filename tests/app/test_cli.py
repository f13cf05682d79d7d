"""The command line: flow checks with file:line errors and exit code 2, the flow timeline,
configuration errors that name the variable."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cartback.cli import cli
from tests.support.events import checkout_payload

runner = CliRunner()
CHECKOUT = checkout_payload(
    "c1",
    datetime.fromisoformat("2026-11-23T10:00:00+01:00"),
    id="e1",
    # 1,200 kroner: a large cart in the default flow, so sms3 goes too.
    lines=[{"title": "Ullsokker", "quantity": 2, "price": "600.00"}],
)


def _event_file(tmp_path: Path, **changes: object) -> Path:
    path = tmp_path / "event.json"
    path.write_text(json.dumps(CHECKOUT | changes))
    return path


def test_flows_check_accepts_the_shipped_flows() -> None:
    shipped = Path(__file__).resolve().parents[2] / "src/cartback/flows"
    result = runner.invoke(cli, ["flows", "check", *map(str, sorted(shipped.glob("*.yaml")))])
    assert result.exit_code == 0, result.output
    assert "default, 6 steps" in result.output


def test_flows_check_reports_file_line_field_and_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: broken\n"
        "abandon_after: 10m\n"
        "steps:\n"
        "  - id: sms1\n"
        "    at: soon\n"
        "    chanel: sms\n"
        "    body: hi\n"
    )
    result = runner.invoke(cli, ["flows", "check", str(bad)])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert f"{bad}:5: steps[0].at: " in lines[0]
    assert any(line.startswith(f"{bad}:6: steps[0].chanel: ") for line in lines)


SAME_TIME = """\
name: same-time
abandon_after: 10m
steps:
  - id: email1
    at: 1h
    channel: email
    subject: s
    body: b
  - id: sms1
    at: {sms_at}
    channel: sms
    when: not email1.opened
    body: hi
"""


def test_flows_check_rejects_a_condition_on_a_step_planned_at_the_same_time(
    tmp_path: Path,
) -> None:
    bad = tmp_path / "same.yaml"
    bad.write_text(SAME_TIME.format(sms_at="1h"))
    result = runner.invoke(cli, ["flows", "check", str(bad)])
    assert result.exit_code == 2
    assert f"{bad}:12: steps[1].when: email1.opened cannot be true yet" in result.stderr


def test_flows_check_warns_on_a_short_gap_and_passes(tmp_path: Path) -> None:
    close = tmp_path / "close.yaml"
    close.write_text(SAME_TIME.format(sms_at="1h20m"))
    result = runner.invoke(cli, ["flows", "check", str(close)])
    assert result.exit_code == 0, result.output
    assert f"warning: {close}:12: steps[1].when: email1.opened is read only 20m" in result.stderr
    quiet = runner.invoke(cli, ["flows", "check", "--min-gap", "15m", str(close)])
    assert quiet.exit_code == 0 and "warning" not in quiet.stderr
    wrong = runner.invoke(cli, ["flows", "check", "--min-gap", "soon", str(close)])
    assert wrong.exit_code == 2 and "--min-gap" in wrong.stderr


def test_flows_check_warns_about_a_locale_some_steps_lack_and_passes(tmp_path: Path) -> None:
    partial = tmp_path / "partial.yaml"
    partial.write_text(
        SAME_TIME.format(sms_at="3h").replace(
            "    body: hi\n", "    body: hi\n    locales:\n      nb: {body: hei}\n"
        )
    )
    result = runner.invoke(cli, ["flows", "check", str(partial)])
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [
        f"warning: {partial}:4: steps[0]: email1 has no wording for nb (another step has it): "
        "those shoppers get this step in the store's default language"
    ]
    assert "ok (same-time, 2 steps" in result.stdout


def test_flows_check_names_a_missing_file(tmp_path: Path) -> None:
    result = runner.invoke(cli, ["flows", "check", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert "nope.yaml:1" in result.stderr


def test_flows_test_prints_the_six_step_timeline(tmp_path: Path) -> None:
    result = runner.invoke(
        cli, ["flows", "test", "default", "--event", str(_event_file(tmp_path)), "--json"]
    )
    assert result.exit_code == 0, result.output
    entries = json.loads(result.stdout)
    sends = [(e["step_id"], e["channel"]) for e in entries if e["outcome"] == "send"]
    assert sends == [
        ("sms1", "sms"),
        ("email1", "email"),
        ("sms2", "sms"),
        ("email2", "email"),
        ("sms3", "sms"),
        ("email3", "email"),
    ]
    sms1 = next(e for e in entries if e["step_id"] == "sms1")
    assert (sms1["at"], sms1["local_at"]) == ("2026-11-23T09:25:00Z", "2026-11-23T10:25:00+01:00")
    assert sms1["zone"] == "Europe/Oslo"
    assert sms1["encoding"] == "GSM-7" and sms1["segments"] == 1
    assert "Ullsokker" in sms1["text"]


def test_flows_test_shows_why_a_step_was_skipped(tmp_path: Path) -> None:
    event = _event_file(tmp_path, consent={"email_marketing": True})
    result = runner.invoke(cli, ["flows", "test", "default", "--event", str(event), "--json"])
    entries = json.loads(result.stdout)
    skipped = {e["step_id"]: e for e in entries if e["outcome"] == "skip"}
    assert set(skipped) == {"sms1", "sms2", "sms3"}
    assert "contact.sms_consent" in skipped["sms1"]["reason"]


def test_flows_test_prints_a_readable_table(tmp_path: Path) -> None:
    result = runner.invoke(cli, ["flows", "test", "default", "--event", str(_event_file(tmp_path))])
    assert result.exit_code == 0
    assert "email3" in result.stdout and "GSM-7, 1 segment" in result.stdout


def test_flows_test_rejects_a_bad_event_with_the_field(tmp_path: Path) -> None:
    event = _event_file(tmp_path, currency="kroner")
    result = runner.invoke(cli, ["flows", "test", "default", "--event", str(event)])
    assert result.exit_code == 2
    assert "currency" in result.stderr


def _flows_test(tmp_path: Path, *options: str, **changes: object) -> list[dict[str, Any]]:
    event = _event_file(tmp_path, **changes)
    result = runner.invoke(
        cli, ["flows", "test", "default", "--event", str(event), "--json", *options]
    )
    assert result.exit_code == 0, result.output
    entries: list[dict[str, Any]] = json.loads(result.stdout)
    return entries


def _by_step(entries: list[dict[str, Any]], outcome: str) -> dict[str, dict[str, Any]]:
    return {e["step_id"]: e for e in entries if e["outcome"] == outcome and e["step_id"]}


def test_flows_test_shows_the_branch_each_condition_takes(tmp_path: Path) -> None:
    quiet = _by_step(_flows_test(tmp_path), "send")
    assert quiet["sms2"]["condition"] == "contact.sms_consent and not email1.opened"
    assert quiet["sms2"]["branch"] is True
    assert quiet["sms2"]["facts"] == {"contact.sms_consent": True, "email1.opened": False}
    entries = _flows_test(tmp_path, "--opened", "email1")
    opened = [e for e in entries if e["outcome"] == "opened"]
    assert [(e["step_id"], e["at"]) for e in opened] == [("email1", quiet["email1"]["at"])]
    sms2 = _by_step(entries, "skip")["sms2"]
    assert (sms2["branch"], sms2["rule"]) == (False, "when")
    assert sms2["facts"] == {"contact.sms_consent": True, "email1.opened": True}
    assert "sms2" not in _by_step(entries, "send")


def test_flows_test_a_click_on_email2_skips_the_discount_text(tmp_path: Path) -> None:
    entries = _flows_test(tmp_path, "--clicked", "email2", "--clicked", "sms1")
    assert [e["step_id"] for e in entries if e["outcome"] == "clicked"] == ["sms1", "email2"]
    sms3 = _by_step(entries, "skip")["sms3"]
    assert sms3["branch"] is False and sms3["facts"]["email2.clicked"] is True
    assert set(_by_step(entries, "send")) == {"sms1", "email1", "sms2", "email2", "email3"}


def test_flows_test_notes_an_open_of_a_message_that_was_never_sent(tmp_path: Path) -> None:
    no_sms = {"sms_marketing": False, "email_marketing": True}
    entries = _flows_test(tmp_path, "--clicked", "sms1", "--opened", "email1", consent=no_sms)
    assert [(e["step_id"], e["outcome"]) for e in entries if e["outcome"] == "opened"] == [
        ("email1", "opened")
    ]
    [note] = [e for e in entries if e["outcome"] == "note"]
    assert note["step_id"] == "sms1"
    assert note["reason"] == "sms1 was not sent, so --clicked sms1 changed nothing"


def test_flows_test_an_order_ends_the_flow_at_its_time(tmp_path: Path) -> None:
    entries = _flows_test(tmp_path, "--ordered-at", "9h")
    # Abandoned at 09:10 UTC; the order 9 hours later.
    assert [(e["outcome"], e["at"]) for e in entries[-2:]] == [
        ("ordered", "2026-11-23T18:10:00Z"),
        ("exit", "2026-11-23T18:10:00Z"),
    ]
    assert "placed an order" in entries[-1]["reason"]
    assert set(_by_step(entries, "send")) == {"sms1", "email1", "sms2"}


def test_flows_test_a_stop_reply_opts_out_and_ends_the_flow(tmp_path: Path) -> None:
    entries = _flows_test(tmp_path, "--replied", "stop please", "--at", "3h")
    replied, ended = entries[-2:]
    assert (replied["outcome"], replied["at"], replied["channel"]) == (
        "replied",
        "2026-11-23T12:10:00Z",
        "sms",
    )
    assert "STOP" in replied["reason"] and "consent withdrawn" in replied["reason"]
    # The confirmation, in the shopper's language.
    assert replied["text"].startswith("Du er meldt av SMS fra DemoShop")
    assert (ended["outcome"], ended["reason"]) == ("exit", "exit: the shopper opted out")
    assert set(_by_step(entries, "send")) == {"sms1", "email1"}


def test_flows_test_a_help_reply_does_not_stop_the_flow(tmp_path: Path) -> None:
    entries = _flows_test(
        tmp_path, "--replied", "HELP", "--at", "3h", "--replied", "thanks!", "--at", "4h"
    )
    replies = [e for e in entries if e["outcome"] == "replied"]
    assert [e["at"] for e in replies] == ["2026-11-23T12:10:00Z", "2026-11-23T13:10:00Z"]
    assert "HELP" in replies[0]["reason"] and "Svar STOPP" in replies[0]["text"]
    assert replies[1]["text"] is None and "the flow goes on" in replies[1]["reason"]
    assert "exit" not in {e["outcome"] for e in entries}
    assert len(_by_step(entries, "send")) == 6


def test_flows_test_prints_branches_and_local_time_in_the_table(tmp_path: Path) -> None:
    event = _event_file(tmp_path)
    result = runner.invoke(
        cli,
        ["flows", "test", "default", "--event", str(event), "--opened", "email1"],
        env={"COLUMNS": "240"},
    )
    assert result.exit_code == 0, result.output
    assert "when contact.sms_consent and not email1.opened -> false" in result.stdout
    assert "(contact.sms_consent = true, email1.opened = true)" in result.stdout
    assert "2026-11-23 09:25:00" in result.stdout and "2026-11-23 10:25 CET" in result.stdout
    assert "the shopper opened email1" in result.stdout


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--opened", "sms1"], "--opened sms1: an SMS has no opens; use --clicked sms1"),
        (["--clicked", "email9"], "--clicked email9: the flow has no such step"),
        (["--replied", "STOP"], "--replied and --at go in pairs: 1 --replied, 0 --at"),
        (["--ordered-at", "soon"], "--ordered-at: invalid duration 'soon'"),
        (["--replied", "STOP", "--at", "-1h"], "--at: "),
    ],
)
def test_flows_test_names_a_bad_option_and_exits_2(
    tmp_path: Path, options: list[str], message: str
) -> None:
    event = _event_file(tmp_path)
    result = runner.invoke(cli, ["flows", "test", "default", "--event", str(event), *options])
    assert result.exit_code == 2
    assert message in " ".join(result.stderr.split())
    assert "Traceback" not in result.output


# Words of each step's Norwegian text that its English text does not have.
NORWEGIAN = {
    "sms1": "du glemte Ullsokker i handlekurven",
    "email1": "Dette ligger igjen i handlekurven din hos DemoShop",
    "sms2": "Tenker du fortsatt på Ullsokker?",
    "email2": "Bare en påminnelse",
    "sms3": "rabatt med koden COMEBACK10, gyldig i 48 timer",
    "email3": "Dette er vår siste påminnelse",
}


def test_a_norwegian_checkout_gets_every_message_in_norwegian(tmp_path: Path) -> None:
    sends = _by_step(_flows_test(tmp_path), "send")
    assert list(sends) == list(NORWEGIAN)
    for step_id, words in NORWEGIAN.items():
        text = sends[step_id]["text"]
        assert words in text, text
        if sends[step_id]["channel"] == "sms":
            assert text.endswith("\nSvar STOPP for å melde deg av")
            assert (sends[step_id]["encoding"], sends[step_id]["segments"]) == ("GSM-7", 1)
        else:
            assert "Meld deg av: " in text and "Vennlig hilsen" in text
            assert sends[step_id]["subject"] and "cart" not in sends[step_id]["subject"]


def test_a_product_name_that_begins_with_an_emoji_still_gets_its_text(tmp_path: Path) -> None:
    title = "🎁 Ullsokker i merinoull, str. 38-40"
    lines = [{"title": title, "quantity": 2, "price": "60.00"}]
    sends = _by_step(_flows_test(tmp_path, lines=lines), "send")
    assert "Ullsokker i merinoull, str. 38-40" in sends["sms1"]["text"]
    assert (sends["sms1"]["encoding"], sends["sms1"]["segments"]) == ("GSM-7", 1)
    assert title in sends["email1"]["text"]  # email keeps the emoji


def test_a_bad_setting_names_the_variable_and_exits_2(tmp_path: Path) -> None:
    result = runner.invoke(
        cli, ["migrate"], env={"CARTBACK_WORKER_BATCH": "lots", "CARTBACK_DATABASE_URL": "x"}
    )
    assert result.exit_code == 2
    assert "CARTBACK_WORKER_BATCH" in result.stderr


def test_flows_check_refuses_nested_huge_ranges_with_file_and_line(tmp_path: Path) -> None:
    heavy = tmp_path / "heavy.yaml"
    heavy.write_text(
        "name: heavy\n"
        "abandon_after: 10m\n"
        "steps:\n"
        "  - id: sms1\n"
        "    at: 0m\n"
        "    channel: sms\n"
        "    body: |\n"
        "      Hi {{ first_name }}\n"
        "      {% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}\n"
        "  - id: email1\n"
        "    at: 1h\n"
        "    channel: email\n"
        "    subject: Your cart\n"
        '    body: "{% for a in items %}{% for b in items %}{% for c in items %}'
        '{% endfor %}{% endfor %}{% endfor %}"\n'
    )
    result = runner.invoke(cli, ["flows", "check", str(heavy)])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"{heavy}:9: steps[0].body: range() of 100000 items; at most 1000",
        f"{heavy}:9: steps[0].body: range() of 100000 items; at most 1000",
        f"{heavy}:14: steps[1].body: loops nested 3 deep; at most 2",
    ]
