"""`cartback webhooks` and `cartback export`: what leaves cartback for a store's own systems.

Registered on the main command line by cartback.cli, whose helpers these commands share.
"""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cartback.cli import fail, out, running_app
from cartback.core.model import parse_duration

webhooks_cli = typer.Typer(
    no_args_is_help=True,
    help="Signed outbound events (cart.abandoned, cart.recovered, message.sent, "
    "contact.opted_out) to a store's own endpoints.",
)


@webhooks_cli.command("add")
def webhooks_add(
    store: Annotated[str, typer.Argument(help="Store slug")],
    url: Annotated[str, typer.Argument(help="The endpoint's http(s) URL")],
    events: Annotated[
        str,
        typer.Option(
            "--events",
            help="Comma-separated: cart.abandoned, cart.recovered, message.sent, contact.opted_out",
        ),
    ],
    secret: Annotated[
        str,
        typer.Option(
            "--secret", help="The signing secret as env:VARIABLE or file:/path, never the value"
        ),
    ],
) -> None:
    """Send a store's events to an endpoint, signed with HMAC-SHA256."""
    from cartback.services import admin
    from cartback.services.outbound import WebhookSettingsError, add_endpoint

    wanted = [name.strip() for name in events.split(",") if name.strip()]
    with running_app() as app, app.engine.begin() as conn:
        found = admin.store_by_slug(conn, store)
        if found is None:
            raise fail(f"STORE: no store with slug {store!r}")
        try:
            endpoint_id = add_endpoint(conn, found.id, url, wanted, secret, app.clock.now())
        except WebhookSettingsError as error:
            raise fail(str(error)) from None
    out.print(f"webhook {endpoint_id}: {store} sends {', '.join(wanted)} to {url}", markup=False)


@webhooks_cli.command("list")
def webhooks_list() -> None:
    """Each endpoint, its events, its secret's reference, and deliveries waiting or failed."""
    from sqlalchemy import func, select

    from cartback.services.outbound import endpoints
    from cartback.services.shops import mask
    from cartback.store import tables as t

    d = t.webhook_deliveries.c
    with running_app() as app, app.engine.connect() as conn:
        found = endpoints(conn)
        counts = {
            (row.endpoint_id, row.status): row.n
            for row in conn.execute(
                select(d.endpoint_id, d.status, func.count().label("n"))
                .where(d.status.in_(("pending", "sending", "failed")))
                .group_by(d.endpoint_id, d.status)
            )
        }
    if not found:
        out.print("no webhooks yet: cartback webhooks add STORE URL --events ... --secret env:NAME")
        return
    table = Table()
    for column in ("id", "store", "url", "events", "secret", "waiting", "failed"):
        table.add_column(column, overflow="fold")
    for endpoint in found:
        waiting = counts.get((endpoint.id, "pending"), 0) + counts.get((endpoint.id, "sending"), 0)
        table.add_row(
            str(endpoint.id),
            endpoint.store_slug,
            endpoint.url,
            ", ".join(endpoint.events),
            mask(endpoint.secret_ref),
            str(waiting),
            str(counts.get((endpoint.id, "failed"), 0)),
        )
    out.print(table)


@webhooks_cli.command("remove")
def webhooks_remove(endpoint_id: Annotated[int, typer.Argument(help="The webhook's id")]) -> None:
    """Stop sending to an endpoint; its waiting deliveries are dropped."""
    from cartback.services.outbound import remove_endpoint

    with running_app() as app, app.engine.begin() as conn:
        removed = remove_endpoint(conn, endpoint_id)
    if not removed:
        raise fail(f"ID: no webhook {endpoint_id}")
    out.print(f"webhook {endpoint_id} removed")


def export(
    kind: Annotated[str, typer.Argument(help="messages or orders")],
    store: Annotated[str, typer.Option("--store", help="Store slug")],
    since: Annotated[str, typer.Option("--since", help="How far back, e.g. 30d, 12h")] = "30d",
    fmt: Annotated[str, typer.Option("--format", help="csv or json")] = "csv",
    to: Annotated[
        Path | None, typer.Option("--out", help="File to write (default: standard output)")
    ] = None,
    with_addresses: Annotated[
        bool,
        typer.Option("--with-addresses", help="Phone numbers and emails in clear (else masked)"),
    ] = False,
) -> None:
    """Export a store's messages or orders as CSV or JSON, a row at a time."""
    from cartback.services import admin
    from cartback.services.export import FORMATS, KINDS, columns, rows, write

    if kind not in KINDS:
        raise fail(f"KIND: messages or orders, not {kind!r}")
    if fmt not in FORMATS:
        raise fail(f"--format: csv or json, not {fmt!r}")
    try:
        window = parse_duration(since)
    except ValueError as error:
        raise fail(f"--since: {error}") from None
    with running_app() as app, app.engine.connect() as conn:
        found = admin.store_by_slug(conn, store)
        if found is None:
            raise fail(f"--store: no store with slug {store!r}")
        start = app.clock.now() - max(window, timedelta(0))
        records = rows(conn, kind, found.id, start, with_addresses=with_addresses)
        if to is None:
            write(records, columns(kind), fmt, sys.stdout)
            return
        try:
            with to.open("w", encoding="utf-8", newline="") as handle:
                count = write(records, columns(kind), fmt, handle)
        except OSError as error:
            raise fail(f"--out: {to}: {error.strerror}") from None
    out.print(f"{count} {kind} written to {to}", markup=False)
