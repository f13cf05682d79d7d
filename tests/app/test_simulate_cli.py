"""`cartback simulate`: a backtest over a generated history, its figures consistent with one
another, reproducible from its seed at any number of processes, and its HTML page complete."""

from __future__ import annotations

import csv
import json
import re
import xml.dom.minidom
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cartback.backtest.synthetic import write_jsonl
from cartback.cli import cli

runner = CliRunner()
PRICES = """\
currency: EUR
rates: {USD: "0.92", NOK: "0.085", SEK: "0.087", DKK: "0.134", GBP: "1.17", CHF: "1.05",
        PLN: "0.23", CAD: "0.68", AUD: "0.61", NZD: "0.56"}
prices:
  sms: {NO: "0.045", US: "0.008", "*": "0.06"}
  email: "0.0005"
"""


# One pytest-xdist worker runs this module, so its module-wide fixture is set up once.
pytestmark = pytest.mark.xdist_group("simulate-sample")


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("history")
    path = folder / "history.jsonl"
    assert write_jsonl(path, seed=11, carts=2000) == 2000
    (folder / "prices.yaml").write_text(PRICES)
    return path


def _simulate(history: Path, *extra: str) -> tuple[dict[str, Any], str]:
    html = history.with_name(f"report-{abs(hash(extra))}.html")
    prices = history.with_name("prices.yaml")
    result = runner.invoke(
        cli,
        ["simulate", str(history), "--json", "--html", str(html), "--prices", str(prices), *extra],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), html.read_text(encoding="utf-8")


def test_every_enrolled_cart_is_accounted_for_at_every_step(sample: Path) -> None:
    data, _ = _simulate(sample)
    summary, steps = data["summary"], data["steps"]
    assert summary["carts"] == 2000 and summary["events refused"] == 0
    flow = data["flows"]["default"]
    # Each cart either ran to the end or left the flow for a named reason.
    assert flow["completed"] + sum(flow["exits"].values()) == flow["enrolled"]
    assert flow["enrolled"] + summary["not enrolled (no flow would take the cart)"] == 2000
    for step in steps:
        # Each enrolled cart was decided on at the step (sent or skipped by a rule) or had left
        # the flow before it was: a text held for the morning counts a cart that left meanwhile.
        assert step["considered"] + step["exits_before"] == flow["enrolled"], step["step"]
        assert step["sent"] + sum(step["skips"].values()) == step["considered"]
    # Carts that ran to the end were decided on at the last step.
    assert steps[-1]["considered"] >= flow["completed"]
    assert sum(map(sum, data["sends_by_hour"].values())) == sum(s["sent"] for s in steps)
    per_step = {}
    for step in steps:
        for rule, count in step["skips"].items():
            per_step[rule] = per_step.get(rule, 0) + count
    assert data["skips_by_rule"] == per_step


def test_figures_follow_the_send_policy_and_the_price_table(sample: Path) -> None:
    data, _ = _simulate(sample)
    steps = {step["step"]: step for step in data["steps"]}
    # Texts go only inside the quiet-hours windows, in the shopper's own time.
    sms_hours = data["sends_by_hour"]["sms"]
    assert sum(sms_hours[:8]) == 0 and sum(sms_hours[22:]) == 0
    # US carriers allow one text per cart: the later texts of US carts are skipped for it.
    assert (
        steps["sms2"]["skips"].get("us.cart_sms_once", 0)
        + steps["sms3"]["skips"].get("us.cart_sms_once", 0)
        > 0
    )
    for step in data["steps"]:
        if step["channel"] == "email":
            assert step["segments"] == 0
            assert step["cost"] == f"{step['sent'] * 0.0005:.2f}"
        else:
            assert step["segments"] >= step["sent"]
            assert float(step["cost"]) >= step["segments"] * 0.008
        low, mid, high = (float(step["recoveries"][k]) for k in ("low", "expected", "high"))
        assert low <= mid <= high
    assert "no rate" not in data["summary"]["expected revenue (95 %)"]


def test_the_same_seed_gives_the_same_report_at_any_number_of_workers(sample: Path) -> None:
    first, _ = _simulate(sample, "--seed", "5")
    again, _ = _simulate(sample, "--seed", "5", "--workers", "2")
    other, _ = _simulate(sample, "--seed", "6")
    for data in (first, again, other):
        data.pop("html")
    assert again == first
    # Another seed draws other shoppers' clicks and orders.
    drawn = [[step["drawn"] for step in data["steps"]] for data in (first, other)]
    assert drawn[0] != drawn[1]


def test_rates_from_options_change_the_expectation(sample: Path) -> None:
    base, _ = _simulate(sample)
    none, _ = _simulate(sample, "--rate", "sms.click=0", "--rate", "email.click=0")
    assert float(base["steps"][0]["recoveries"]["expected"]) > 0
    assert all(float(step["recoveries"]["expected"]) == 0 for step in none["steps"])
    # Nobody clicks, so nobody orders through a message: only organic orders end flows.
    assert all(step["drawn"]["recovered"] == 0 for step in none["steps"])


def test_the_html_report_has_both_charts(sample: Path) -> None:
    data, page = _simulate(sample)
    assert page.startswith("<!doctype html>")
    charts = re.findall(r"<svg.*?</svg>", page, re.S)
    ids = [re.search(r'id="([^"]+)"', chart).group(1) for chart in charts]  # type: ignore[union-attr]
    assert ids == ["sends-by-hour", "skips-by-rule"]
    for chart in charts:
        xml.dom.minidom.parseString(chart)
    hour_bars = re.findall(r"<title>(\d\d):00 (\w+): ([\d,]+)</title>", charts[0])
    for hour, channel, count in hour_bars:
        assert data["sends_by_hour"][channel][int(hour)] == int(count.replace(",", ""))
    for rule, count in data["skips_by_rule"].items():
        assert f"<title>{rule}: {count:,}</title>" in charts[1]
    # Self-contained: nothing is fetched from elsewhere.
    assert "<script" not in page and "http://" not in page.replace("http://www.w3.org", "")


def test_the_table_is_printed_with_the_path_of_the_page(sample: Path, tmp_path: Path) -> None:
    html = tmp_path / "out.html"
    result = runner.invoke(
        cli, ["simulate", str(sample), "--html", str(html)], env={"COLUMNS": "250"}
    )
    assert result.exit_code == 0, result.output
    assert "email1" in result.stdout and "expected recoveries" in result.stdout
    assert f"HTML report: {html}" in result.stdout
    assert html.exists()


def test_a_shopify_export_is_read_as_import_reads_it(tmp_path: Path) -> None:
    path = tmp_path / "abandoned.csv"
    header = [
        "Id",
        "Email",
        "Phone",
        "Currency",
        "Total",
        "Created at",
        "Lineitem name",
        "Lineitem quantity",
        "Lineitem price",
        "Shipping Country",
        "Accepts Marketing",
        "Abandoned checkout URL",
    ]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for n in range(20):
            writer.writerow(
                [
                    n,
                    f"s{n}@example.com",
                    f"+474061{n:04d}",
                    "NOK",
                    "1200.00",
                    "2026-11-23 10:00:00 +0100",
                    "Wool sweater",
                    "1",
                    "1200.00",
                    "NO",
                    "yes",
                    f"https://shop.example/1/checkouts/ac/tok{n:08d}x/recover",
                ]
            )
        writer.writerow([99, "bad", "", "NOK", "1", "yesterday", "X", "1", "1", "NO", "", ""])
    result = runner.invoke(
        cli,
        ["simulate", str(path), "--json", "--html", str(tmp_path / "r.html")],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["summary"]["carts"] == 20 and data["summary"]["events refused"] >= 1
    assert "abandoned.csv:" in result.stderr
    email1 = next(step for step in data["steps"] if step["step"] == "email1")
    # Accepts Marketing is an email grant only: no texts, an email each.
    assert email1["sent"] == 20
    assert all(step["sent"] == 0 for step in data["steps"] if step["channel"] == "sms")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rate", "sms.click=1.5"], "--rate: sms.click: 1.5 is not between 0 and 1"),
        (["--rate", "sms.clicks=0.1"], "--rate: sms.clicks: unknown rate"),
        (["--rate", "email.click=0.9"], "click: 0.9 is more than its open rate"),
        (["--flow", "no-such-flow"], "--flow: no-such-flow"),
        (["--format", "xml"], "--format: one of jsonl, shopify, events"),
        (["--window", "soon"], "--window:"),
        (["--zone", "Mars/Base"], "--zone: 'Mars/Base' is not an IANA time zone"),
        (["--flow", "default@browse"], "--flow: default@browse: the trigger after @"),
        (["--workers", "0"], "--workers: at least 1"),
    ],
)
def test_bad_options_exit_2_naming_them(sample: Path, args: list[str], message: str) -> None:
    result = runner.invoke(cli, ["simulate", str(sample), *args], env={"COLUMNS": "200"})
    assert result.exit_code == 2
    assert message in result.output.replace("\n", " ")
    assert "Traceback" not in result.output


def test_a_rates_file_error_names_its_line(sample: Path, tmp_path: Path) -> None:
    rates = tmp_path / "rates.yaml"
    rates.write_text("sms:\n  click: [0.3, 0.2]\nemail:\n  open: 0.5\n  recover: lots\n")
    result = runner.invoke(cli, ["simulate", str(sample), "--rates", str(rates)])
    assert result.exit_code == 2
    assert f"{rates}:5: email.recover: 'lots' is not a number" in result.output


@pytest.mark.slow
def test_a_ten_thousand_cart_sample(tmp_path: Path) -> None:
    history = tmp_path / "history.jsonl"
    write_jsonl(history, seed=3, carts=10_000)
    (tmp_path / "prices.yaml").write_text(PRICES)
    data, page = _simulate(history, "--workers", "2")
    assert data["summary"]["carts"] == 10_000
    assert data["summary"]["messages"] > 10_000
    assert 'id="sends-by-hour"' in page and 'id="skips-by-rule"' in page
