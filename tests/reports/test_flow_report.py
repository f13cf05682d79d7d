"""Every figure of the seeded scenario (tests/reports/scenario.py), on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from datetime import timedelta
from pathlib import Path

from scipy import stats
from typer.testing import CliRunner

from cartback.cli import cli
from cartback.services.reports import flow_report
from tests.reports import scenario
from tests.support.world import World

runner = CliRunner()


def _seeded(world: World) -> dict[str, object]:
    base = world.now - timedelta(days=5)
    with world.app.engine.begin() as conn:
        scenario.seed(conn, world.store.id, base)
    with world.app.engine.connect() as conn:
        return flow_report(
            conn, world.store.id, since=world.now - timedelta(days=30), until=world.now
        )


def _wilson(k: int, n: int) -> tuple[float, float]:
    z = 1.959963984540054
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def test_attribution_credits_each_order_once(world: World) -> None:
    _seeded(world)
    with world.app.engine.connect() as conn:
        rows = scenario.attribution_rows(conn)
    # 60 A clicks, 100 B clicks, shopper 3 by contact; cart 4 and the holdout earn nothing.
    assert len(rows) == 161
    assert len({row["order_id"] for row in rows}) == 161
    first = rows[0]  # cart 1: an SMS click, then an email open, then the order
    assert (first["channel"], first["step_id"], first["touch"], first["matched_by"]) == (
        "sms",
        "sms1",
        "click",
        "cart",
    )
    assert not [row for row in rows if row["channel"] == "email"]
    by_contact = [row for row in rows if row["matched_by"] == "contact"]
    assert [(r["touch"], str(r["revenue"]), r["variant"]) for r in by_contact] == [
        ("delivery", "80.0000", "A")
    ]


def test_every_figure_of_the_seeded_scenario(world: World) -> None:
    report = _seeded(world)
    assert report["currency"] == "USD" and report["unconverted"] == {}
    (entry,) = report["flows"]  # type: ignore[misc]
    assert entry["totals"] == {
        "enrolled": 900,
        "sent": 1800,
        "delivered": 890,
        "failed": 10,
        "clicked": 200,
        "recovered": 161,
        "revenue": "11580.00",
        "recovery_rate": "0.1789",
        "cost": "659.00",
        "return_on_spend": "17.57",
        "roi": "16.57",
        "revenue_per_send": "6.43",
        "cost_per_recovered": "4.09",
        "opt_outs": 6,
        "opt_out_rate": "0.0033",
        "opt_out_alert": False,
    }
    sms, email = entry["steps"]["sms1"], entry["steps"]["email1"]
    assert (sms["sent"], sms["delivered"], sms["failed"], sms["clicked"]) == (900, 890, 10, 200)
    assert (sms["recovered"], sms["revenue"], sms["cost"]) == (161, "11580.00", "650.00")
    assert (sms["opt_outs"], sms["opt_out_rate"], sms["opt_out_alert"]) == (5, "0.0056", True)
    assert (email["sent"], email["clicked"], email["recovered"], email["revenue"]) == (
        900,
        0,
        0,
        "0.00",
    )
    assert (email["cost"], email["opt_outs"], email["opt_out_alert"]) == ("9.00", 1, False)
    assert entry["channels"]["sms"] == sms and entry["channels"]["email"] == email
    assert entry["alerts"] == ["step sms1: 0.0056 opt-outs per send is over 0.005 (5 of 900)"]
    a, b = entry["variants"]["A"], entry["variants"]["B"]
    assert (a["enrolled"], a["sent"], a["delivered"], a["clicked"]) == (500, 1000, 490, 100)
    assert (a["recovered"], a["revenue"], a["recovery_rate"], a["cost"]) == (
        61,
        "6080.00",
        "0.1220",
        "255.00",
    )
    assert (b["enrolled"], b["sent"], b["recovered"], b["revenue"], b["cost"]) == (
        400,
        800,
        100,
        "5500.00",
        "404.00",
    )
    assert (a["opt_outs"], b["opt_outs"]) == (0, 6)  # shoppers 7..47 and 8 are all in B


def test_ab_and_holdout_readouts(world: World) -> None:
    report = _seeded(world)
    experiments = report["flows"][0]["experiments"]  # type: ignore[index]
    ab = experiments["ab"]
    assert ab["variants"]["A"]["carts"] == 500 and ab["variants"]["A"]["converted"] == 61
    assert ab["variants"]["B"]["converted"] == 100
    low, high = _wilson(61, 500)
    assert math.isclose(ab["variants"]["A"]["conversion"]["low"], low, abs_tol=1e-6)
    assert math.isclose(ab["variants"]["A"]["conversion"]["high"], high, abs_tol=1e-6)
    assert (ab["leader"], ab["winner"]) == ("B", "B")
    assert ab["difference"]["p_value"] < 0.001 and ab["difference"]["low"] > 0
    assert ab["probability_leader_is_better"] > 0.999
    # Revenue per send: A's 1,000 sends carry 60 × 100.00 and one 80.00 credit, B's 800 carry
    # 100 × 55.00; the interval is the t interval of those per-send values.
    sends_a = [100.0] * 60 + [80.0] + [0.0] * 939
    half = stats.t.ppf(0.975, 999) * statistics.stdev(sends_a) / math.sqrt(1000)
    assert ab["variants"]["A"]["sends"] == 1000
    assert ab["variants"]["A"]["revenue_per_send"] == {
        "mean": 6.08,
        "low": round(6.08 - half, 2),
        "high": round(6.08 + half, 2),
    }
    assert ab["variants"]["B"]["revenue_per_send"]["mean"] == 6.88
    holdout = experiments["holdout"]
    assert holdout["held_out"] == {
        "carts": 100,
        "converted": 10,
        "rate": 0.1,
        "low": round(_wilson(10, 100)[0], 6),
        "high": round(_wilson(10, 100)[1], 6),
    }
    assert (holdout["treated"]["carts"], holdout["treated"]["converted"]) == (900, 161)
    assert math.isclose(holdout["lift"]["diff"], 161 / 900 - 0.1, abs_tol=1e-6)
    assert holdout["lift"]["low"] < holdout["lift"]["diff"] < holdout["lift"]["high"]
    assert holdout["incremental_carts"]["estimate"] == 71.0
    assert holdout["incremental_revenue"]["estimate"] == 2570.0
    assert not holdout["too_small_to_tell"]


def test_a_small_holdout_is_too_small_to_tell(world: World) -> None:
    base = world.now - timedelta(days=5)
    with world.app.engine.begin() as conn:
        scenario.seed(conn, world.store.id, base)
        from cartback.store import tables as t

        # Keep 20 of the 100 held-out carts: too few to say anything.
        conn.execute(
            t.enrollments.delete().where(
                t.enrollments.c.holdout.is_(True), t.enrollments.c.id > 200
            )
        )
    with world.app.engine.connect() as conn:
        report = flow_report(conn, world.store.id, since=base - timedelta(days=1), until=world.now)
    assert report["flows"][0]["experiments"]["holdout"]["too_small_to_tell"] is True


def _env(world: World) -> dict[str, str]:
    return {"CARTBACK_DATABASE_URL": world.app.settings.database_url, "COLUMNS": "250"}


def test_cli_prints_json_csv_and_a_table(world: World) -> None:
    expected = _seeded(world)
    until = world.now.isoformat()
    result = runner.invoke(cli, ["report", "--json", "--until", until], env=_env(world))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["flows"] == json.loads(json.dumps(expected["flows"]))
    result = runner.invoke(
        cli, ["report", "--csv", "--until", until, "--flow", "recover"], env=_env(world)
    )
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    step = next(row for row in rows if row["level"] == "step" and row["key"] == "sms1")
    assert (step["sent"], step["revenue"], step["opt_out_alert"]) == ("900", "11580.00", "True")
    assert len(rows) == 1 + 2 + 2 + 2
    result = runner.invoke(cli, ["report", "--until", until], env=_env(world))
    assert result.exit_code == 0, result.output
    assert "11580.00" in result.stdout and "alert:" in result.stdout
    assert "winner B" in result.stdout
    bad = runner.invoke(cli, ["report", "--since", "soon"], env=_env(world))
    assert bad.exit_code == 2 and "--since" in bad.stderr


def test_report_attribute_recomputes_history(world: World) -> None:
    _seeded(world)
    from cartback.store import tables as t

    with world.app.engine.begin() as conn:
        conn.execute(t.attributions.delete())
    result = runner.invoke(cli, ["report", "attribute", "--since", "3650d"], env=_env(world))
    assert result.exit_code == 0, result.output
    assert "172 orders" in result.stdout and "161 credited" in result.stdout


def test_api_reports_flows_and_steps(world: World) -> None:
    from fastapi.testclient import TestClient

    from cartback.web.app import create_app

    expected = _seeded(world)
    client = TestClient(create_app(world.app))
    auth = {"Authorization": f"Bearer {world.key}"}
    answer = client.get("/v1/reports/flows", params={"since": "30d"}, headers=auth)
    assert answer.status_code == 200
    assert answer.json()["flows"] == json.loads(json.dumps(expected["flows"]))
    steps = client.get("/v1/reports/flows/recover/steps", headers=auth)
    assert steps.status_code == 200 and steps.json()["steps"]["sms1"]["sent"] == 900
    bad = client.get("/v1/reports/flows", params={"since": "yesterday"}, headers=auth)
    assert bad.status_code == 422
    assert bad.headers["content-type"].startswith("application/problem+json")
    assert bad.json()["field"] == "since"
    assert client.get("/v1/reports/flows").status_code == 401
    assert client.get("/v1/reports/flows/nope/steps", headers=auth).status_code == 404


def test_channel_holdout_readout_compares_carts_without_sms(world: World) -> None:
    from cartback.store import tables as t

    base = world.now - timedelta(days=5)
    with world.app.engine.begin() as conn:
        scenario.seed(conn, world.store.id, base)
        # Carts i % 10 in (3, 8) as if drawn into an SMS holdout: 200 carts, no cart orders.
        for n in range(1, 1001):
            if (n - 1) % 10 in (3, 8):
                conn.execute(
                    t.enrollments.update().where(t.enrollments.c.id == n).values(held_channel="sms")
                )
    with world.app.engine.connect() as conn:
        report = flow_report(conn, world.store.id, since=base - timedelta(days=1), until=world.now)
    split = report["flows"][0]["experiments"]["channel_holdout"]
    assert split["channel"] == "sms"
    assert (split["held_out"]["carts"], split["held_out"]["converted"]) == (200, 0)
    assert (split["treated"]["carts"], split["treated"]["converted"]) == (700, 161)
    assert math.isclose(split["lift"]["diff"], 161 / 700, abs_tol=1e-6)
    assert 0 < split["lift"]["low"] < split["lift"]["diff"]
    assert split["too_small_to_tell"] is True  # no held-out cart converted: nothing to compare


def test_promote_records_the_significant_winner_for_new_carts(world: World, tmp_path: Path) -> None:
    from cartback.services.experiments import promoted_variant

    _seeded(world)
    settings = tmp_path / "measurement.yaml"
    settings.write_text(
        "auto_promote: [recover]\nrates: {EUR: '1.10'}\n"
        "prices: {sms: {NO: '0.50', '*': '0.60'}, email: '0.01'}\n"
    )
    done = runner.invoke(cli, ["report", "settings", "test", str(settings)], env=_env(world))
    assert done.exit_code == 0, done.output
    result = runner.invoke(cli, ["report", "promote", "--since", "3650d"], env=_env(world))
    assert result.exit_code == 0, result.output
    assert "recover: B promoted" in result.stdout
    with world.app.engine.connect() as conn:
        assert promoted_variant(conn, world.store.id, "recover") == "B"
    bad = tmp_path / "bad.yaml"
    bad.write_text("rates: {EUR: 1.1}\n")
    refused = runner.invoke(cli, ["report", "settings", "test", str(bad)], env=_env(world))
    assert refused.exit_code == 2 and "rates.EUR" in refused.stderr


def test_a_flow_without_variants_has_no_variant_rows(world: World) -> None:
    from cartback.store import tables as t

    base = world.now - timedelta(days=5)
    with world.app.engine.begin() as conn:
        scenario.seed(conn, world.store.id, base)
        conn.execute(t.enrollments.update().values(variant=None))
        conn.execute(t.attributions.update().values(variant=None))
    with world.app.engine.connect() as conn:
        report = flow_report(conn, world.store.id, since=base - timedelta(days=1), until=world.now)
    entry = report["flows"][0]
    assert entry["variants"] == {} and entry["experiments"]["ab"] is None
    totals = entry["totals"]
    assert (totals["enrolled"], totals["recovered"], totals["recovery_rate"]) == (
        900,
        161,
        "0.1789",
    )
