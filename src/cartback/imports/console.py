"""The import's progress bar and final report, on a rich console."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from cartback.imports.run import Report

T = TypeVar("T")
# Rejections printed on the console; all of them go to the rejects file.
SHOWN = 20


def with_progress(console: Console, rows: int, work: Callable[[Callable[[int], None]], T]) -> T:
    """Run `work(advance)` under a progress bar counting rows. Off a terminal, rich draws the
    bar once at the end instead of animating it, so logs and pipes stay readable."""
    progress = Progress(
        TextColumn("importing"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("rows"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
    with progress:
        task = progress.add_task("import", total=rows)
        return work(lambda done: progress.advance(task, done))


def print_report(console: Console, report: Report, rejects: Path | None, dry_run: bool) -> None:
    verb = "would be imported" if dry_run else "imported"
    console.print(f"rows read: {report.rows} ({report.events} checkouts)")
    console.print(f"checkouts {verb}: {report.imported + report.history}", highlight=False)
    if report.history:
        console.print(
            f"  of which history, not enrolled: {report.history} (their first message would "
            "already have been due)",
            highlight=False,
        )
    console.print(
        f"duplicates/skipped: {report.duplicates + report.stale} "
        f"({report.duplicates} already imported or received, {report.stale} older than the "
        "cart's stored state)",
        highlight=False,
    )
    console.print(f"rejected: {report.rejected} checkouts", highlight=False)
    for rejection in report.rejections[:SHOWN]:
        console.print(
            f"  line {rejection.line}: {escape(rejection.column)}: {escape(rejection.message)}",
            highlight=False,
        )
    if len(report.rejections) > SHOWN:
        console.print(f"  … and {len(report.rejections) - SHOWN} more", highlight=False)
    if rejects is not None:
        console.print(f"rejections written to {escape(str(rejects))}", highlight=False)
