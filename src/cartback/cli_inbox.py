"""`cartback inbox`: accepted events the worker could not apply, and applying them again.

Registered on the main command line by cartback.cli, whose helpers these commands share.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from cartback.cli import out, running_app

inbox_cli = typer.Typer(
    no_args_is_help=True,
    help="Accepted events waiting to be applied: the failed ones, and retrying them.",
)


@inbox_cli.command("failed")
def inbox_failed(
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many, oldest first")] = 100,
) -> None:
    """Events kept with the error that stopped them being applied; the others went on."""
    from cartback.services import inbox

    with running_app() as app, app.engine.connect() as conn:
        rows = inbox.failed(conn, limit)
        pending, kept = inbox.backlog(conn)
    table = Table("row", "store", "source", "event id", "received", "attempts", "error")
    for row in rows:
        table.add_row(
            str(row.id),
            str(row.store_id),
            row.source,
            row.event_id,
            row.received_at.isoformat(timespec="seconds"),
            str(row.attempts),
            row.error,
        )
    if rows:
        out.print(table)
    out.print(f"{kept} failed, {pending} waiting to be applied")


@inbox_cli.command("retry")
def inbox_retry(
    rows: Annotated[
        list[int] | None, typer.Argument(help="Row numbers from `inbox failed`; none: all")
    ] = None,
    now: Annotated[
        bool, typer.Option("--now", help="Apply them here rather than leave them to the worker")
    ] = False,
) -> None:
    """Queue failed events again (after fixing their cause); the worker applies them."""
    from datetime import timedelta

    from cartback.services import inbox
    from cartback.web.intake import event_from_stored

    with running_app() as app:
        with app.engine.begin() as conn:
            count = inbox.retry(conn, rows or None)
        out.print(f"{count} queued again")
        if not now or count == 0:
            return
        applier = inbox.InboxApplier(
            app.engine,
            app.registry,
            event_from_stored,
            app.clock.now,
            future_skew=timedelta(seconds=app.settings.future_skew_seconds),
            suppression_key=app.settings.suppression_key,
            export_dir=app.settings.export_dir,
        )
        total = inbox.Applied()
        while True:
            done = applier.apply_pending(rows or None)
            if done == inbox.Applied():
                break
            total = inbox.Applied(
                total.applied + done.applied,
                total.failed + done.failed,
                total.retried + done.retried,
            )
        out.print(f"{total.applied} applied, {total.failed} failed again")
