"""The command line: flow checks with file:line errors and exit code 2, the flow timeline,
configuration errors that name the variable."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

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
    assert sms1["at"].startswith("2026-11-23 09:25:00")
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
