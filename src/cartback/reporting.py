"""`cartback report`: the flow report as a table, JSON or CSV, and attribution for history."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from cartback.core.attribution import SettingsError, parse_duration

COLUMNS = (
    "enrolled",
    "sent",
    "delivered",
    "failed",
    "clicked",
    "recovered",
    "revenue",
    "recovery_rate",
    "cost",
    "return_on_spend",
    "roi",
    "revenue_per_send",
    "cost_per_recovered",
    "opt_outs",
    "opt_out_rate",
)


def window(since: str, now: datetime) -> datetime:
    """'30d' → now − 30 days; raises SettingsError naming `since`."""
    span: timedelta = parse_duration(since, "since")
    return now - span


def end_of_window(until: str | None, now: datetime) -> datetime:
    if until is None:
        return now
    try:
        end = datetime.fromisoformat(until)
    except ValueError:
        raise SettingsError("until: expected an ISO 8601 time like 2026-05-01T00:00:00Z") from None
    return end.replace(tzinfo=UTC) if end.tzinfo is None else end.astimezone(UTC)


def rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat row per flow total, step, variant and channel."""
    flat = []
    for entry in report["flows"]:
        levels = [("flow", "", entry["totals"])]
        for level in ("step", "variant", "channel"):
            levels += [(level, key, row) for key, row in entry[f"{level}s"].items()]
        for level, key, row in levels:
            flat.append({"flow": entry["flow"], "level": level, "key": key, **row})
    return flat


def as_csv(report: dict[str, Any]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(
        buffer, fieldnames=["flow", "level", "key", *COLUMNS, "opt_out_alert"], lineterminator="\n"
    )
    writer.writeheader()
    for row in rows(report):
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buffer.getvalue()


def as_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, sort_keys=True)


__all__ = ["COLUMNS", "SettingsError", "as_csv", "as_json", "end_of_window", "rows", "window"]
