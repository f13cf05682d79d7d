"""`cartback simulate`: a backtest of flows over a store's historical checkouts, in memory.

Registered on the main command line by cartback.cli, whose helpers it shares.
"""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cartback.cli import (
    USAGE_ERROR,
    _measurement_file_or_exit,
    _policy_file_or_exit,
    err,
    fail,
    out,
    settings_or_exit,
)
from cartback.core.flows import Flow, FlowError, load_flow
from cartback.core.model import Store, parse_duration


def simulate(
    history: Annotated[
        Path,
        typer.Argument(
            metavar="HISTORY",
            help="Events as JSON lines (.jsonl), Shopify's abandoned-checkout CSV export, or "
            "the events CSV of `cartback import checkouts`",
        ),
    ],
    flow: Annotated[
        list[str] | None,
        typer.Option(
            help="Flow file or loaded flow's name, with @cart.updated for a cart flow; repeat "
            "for several, best priority first"
        ),
    ] = None,
    fmt: Annotated[
        str | None,
        typer.Option("--format", help="jsonl, shopify or events; default from the extension"),
    ] = None,
    rates: Annotated[
        Path | None, typer.Option(help="Engagement rates YAML (docs/flows.md)")
    ] = None,
    rate: Annotated[
        list[str] | None,
        typer.Option(help="One rate, like sms.click=0.3 or steps.sms3.recover=0.4 (repeatable)"),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the engagement draws")] = 1,
    prices: Annotated[
        Path | None,
        typer.Option(help="Measurement YAML with currency, rates and prices (docs/measurement.md)"),
    ] = None,
    currency: Annotated[
        str | None, typer.Option(help="Report currency when --prices names none")
    ] = None,
    policy: Annotated[
        Path | None, typer.Option(help="Store policy YAML (cooldowns, caps, stricter rules)")
    ] = None,
    window: Annotated[
        str, typer.Option(help="Suppression window between flows for one shopper")
    ] = "3d",
    brand: Annotated[str, typer.Option(help="Brand shown at the start of each SMS")] = "DemoShop",
    domain: Annotated[
        list[str] | None, typer.Option(help="Store domain for links (repeatable)")
    ] = None,
    address: Annotated[
        str, typer.Option(help="Postal address for email footers")
    ] = "1 Demo Street, 0150 Oslo",
    zone: Annotated[str, typer.Option(help="The store's default time zone")] = "UTC",
    locale: Annotated[str, typer.Option(help="The store's default language")] = "en",
    workers: Annotated[int, typer.Option(help="Processes replaying carts")] = 1,
    html: Annotated[
        Path | None, typer.Option(help="Where to write the HTML report; default HISTORY.html")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON")] = False,
) -> None:
    """Backtest flows over historical checkouts: every cart replayed in virtual time through the
    worker's engine and send policy, shoppers' opens, clicks, orders and opt-outs drawn from a
    seeded model. Nothing is stored and nothing is sent."""
    from cartback.backtest import html as page
    from cartback.backtest import source
    from cartback.backtest.engagement import EngagementError, load_engagement
    from cartback.backtest.replay import Setup
    from cartback.backtest.report import step_figures, totals
    from cartback.backtest.run import backtest
    from cartback.core.attribution import SettingsError
    from cartback.core.lineup import CHECKOUT_UPDATED, TRIGGERS, AssignedFlow, Lineup
    from cartback.core.timezones import valid_zone
    from cartback.imports.drafts import FormatError
    from cartback.services.reports import money_from

    chosen_format = fmt or source.guess_format(history)
    if chosen_format not in source.FORMATS:
        raise fail(f"--format: one of {', '.join(source.FORMATS)}, not {chosen_format!r}")
    if not history.is_file():
        raise fail(f"{history}: no such file")
    if workers < 1:
        raise fail("--workers: at least 1")
    if valid_zone(zone) is None:
        raise fail(f"--zone: {zone!r} is not an IANA time zone, like Europe/Oslo")
    try:
        suppression = timedelta(0) if window.strip() == "0" else parse_duration(window)
    except ValueError as error:
        raise fail(f"--window: {error}") from None
    settings = settings_or_exit()
    entries: list[AssignedFlow] = []
    for priority, given in enumerate(flow or ["default"], start=1):
        name, _, trigger = given.partition("@")
        if (trigger or CHECKOUT_UPDATED) not in TRIGGERS:
            raise fail(f"--flow: {given}: the trigger after @ is one of {', '.join(TRIGGERS)}")
        loaded_flow = _flow_or_exit(name, settings.flows_dir)
        entries.append(AssignedFlow(loaded_flow, priority, trigger or CHECKOUT_UPDATED))
    flows = [entry.flow for entry in entries]
    lineup = Lineup.of(entries, suppression)
    try:
        engagement = load_engagement(
            _read_or_exit(rates) if rates is not None else None, str(rates), rate or ()
        )
        for assigned in lineup.flows:
            for step in assigned.flow.steps:
                engagement.rates_for(assigned.flow, step)
    except EngagementError as error:
        for issue in error.issues:
            err.print(issue, highlight=False, markup=False)
        raise typer.Exit(USAGE_ERROR) from None
    measurement = _measurement_file_or_exit(prices) if prices is not None else {}
    if currency is not None:
        measurement = {**measurement, "currency": currency}
    try:
        loaded = source.read(history, chosen_format)
    except FormatError as error:
        raise fail(f"{history}:{error.line}: {error.column}: {error.message}") from None
    try:
        # Without a currency named, the one most carts of the history are in.
        money = money_from(measurement, loaded.main_currency or "USD")
    except SettingsError as error:
        raise fail(f"{prices or '--currency'}: {error}") from None
    store = Store(
        id=1,
        name=brand,
        brand=brand,
        domains=tuple(domain or ("shop.example",)),
        postal_address=address,
        default_zone=zone,
        default_locale=locale,
        currency=money.currency,
        policy=_policy_file_or_exit(policy) if policy is not None else {},
    )
    for rejection in loaded.rejections[:5]:
        err.print(
            f"warning: {history}:{rejection.line}: {rejection.column}: {rejection.message}",
            highlight=False,
            markup=False,
        )
    if len(loaded.rejections) > 5:
        err.print(f"warning: {len(loaded.rejections) - 5} more events refused", highlight=False)
    setup = Setup(lineup, store, engagement, money, seed, settings.base_url)
    with Progress(
        TextColumn("replaying carts"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task("carts", total=loaded.carts)
        tally = backtest(
            loaded.shoppers,
            setup,
            workers=workers,
            progress=lambda carts: bar.advance(task, carts),
        )
    rows = step_figures(tally, setup)
    total = totals(rows)
    summary = {
        "history": str(history),
        "carts": tally.carts,
        "shoppers": tally.shoppers,
        "events refused": len(loaded.rejections),
        "not enrolled (no flow would take the cart)": tally.not_enrolled,
        **{f"flow {name}": _flow_line(counts) for name, counts in tally.flows.items()},
        "messages": total["sent"],
        "SMS segments": total["segments"],
        "currency": money.currency,
        "cost": f"{total['cost']}"
        + (f" ({total['unpriced']} without a price)" if total["unpriced"] else ""),
        "expected recoveries (95 %)": str(total["recoveries"]),
        "expected revenue (95 %)": str(total["revenue"])
        + _unconverted(tally.unconverted, money.currency),
        "expected opt-outs (95 %)": str(total["opt_outs"]),
        "seed": seed,
    }
    target = html or history.with_suffix(".html")
    document = page.page(
        f"Backtest of {', '.join(f.name for f in flows)}",
        summary,
        rows,
        tally.by_hour,
        dict(tally.skips_by_rule()),
    )
    try:
        target.write_text(document, encoding="utf-8")
    except OSError as error:
        raise fail(f"--html: {target}: {error.strerror}") from None
    if as_json:
        data = {
            "summary": summary,
            "steps": [row.as_dict() for row in rows],
            "flows": {name: _flow_dict(counts) for name, counts in tally.flows.items()},
            "sends_by_hour": tally.by_hour,
            "skips_by_rule": dict(tally.skips_by_rule()),
            "html": str(target),
        }
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
        return
    _print(rows, summary)
    out.print(f"HTML report: {target}", highlight=False)


def _unconverted(currencies: Any, currency: str) -> str:
    if not currencies:
        return ""
    named = ", ".join(f"{code} {n}" for code, n in currencies.most_common())
    return f"; not counted, no rate to {currency}: messages to carts in {named}"


def _flow_line(counts: Any) -> str:
    exits = ", ".join(f"{reason} {n}" for reason, n in counts.exits.most_common())
    skipped = ", ".join(f"{rule} {n}" for rule, n in counts.not_enrolled.most_common())
    return (
        f"{counts.enrolled} enrolled ({counts.holdout} held out), {counts.completed} completed"
        + (f", exits: {exits}" if exits else "")
        + (f", not enrolled: {skipped}" if skipped else "")
    )


def _flow_dict(counts: Any) -> dict[str, Any]:
    return {
        "enrolled": counts.enrolled,
        "holdout": counts.holdout,
        "completed": counts.completed,
        "exits": dict(counts.exits),
        "not_enrolled": dict(counts.not_enrolled),
    }


def _print(rows: list[Any], summary: dict[str, Any]) -> None:
    table = Table(title=f"backtest, money in {summary['currency']}")
    columns = (
        "flow",
        "step",
        "channel",
        "considered",
        "sent",
        "segments",
        "cost",
        "skips by rule",
        "recoveries (95 %)",
        "revenue (95 %)",
        "opt-outs (95 %)",
    )
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            row.flow,
            row.step,
            row.channel,
            str(row.considered),
            str(row.sent),
            str(row.segments),
            f"{row.cost:.2f}",
            "\n".join(
                [f"{rule} {count}" for rule, count in row.skips.items()]
                + [f"(deferred: {rule} {count})" for rule, count in row.defers.items()]
            )
            or "-",
            str(row.recoveries),
            str(row.revenue),
            str(row.opt_outs),
        )
    out.print(table)
    for key, value in summary.items():
        out.print(f"{key}: {value}", highlight=False, markup=False)


def _flow_or_exit(name: str, flows_dir: Path | None) -> Flow:
    from cartback.app import SHIPPED_FLOWS

    candidates = [Path(name)] + [
        folder / f"{name}.yaml" for folder in (flows_dir, SHIPPED_FLOWS) if folder is not None
    ]
    path = next((found for found in candidates if found.is_file()), None)
    if path is None:
        raise fail(f"--flow: {name}: no such file, and no shipped or loaded flow of that name")
    try:
        return load_flow(path)
    except FlowError as error:
        for issue in error.issues:
            err.print(str(issue), highlight=False, markup=False)
        raise typer.Exit(USAGE_ERROR) from None
    except OSError as error:
        raise fail(f"--flow: {name}: {error.strerror}") from None


def _read_or_exit(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise fail(f"{path}:1: file: cannot read: {error}") from None
