"""Promote an A/B winner: new carts of the flow get the variant; enrolled carts keep theirs.

A store opts a flow in with `auto_promote: [flow]` in its measurement settings. `cartback report
promote` (daily from cron, say) names a winner only when the two-proportion test is significant,
and records it under `promoted`; ingest reads it when it enrolls a new cart.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select, update

from cartback.services.reports import flow_report
from cartback.store import tables as t


def _measurement(conn: Connection, store_id: int) -> dict[str, Any]:
    raw = conn.execute(select(t.stores.c.measurement).where(t.stores.c.id == store_id)).scalar()
    return dict(raw) if isinstance(raw, dict) else {}


def promoted_variant(conn: Connection, store_id: int, flow_name: str) -> str | None:
    promoted = _measurement(conn, store_id).get("promoted")
    if not isinstance(promoted, dict):
        return None
    value = promoted.get(flow_name)
    return value if isinstance(value, str) else None


def promote_winners(
    conn: Connection, store_id: int, *, since: datetime, until: datetime
) -> dict[str, str | None]:
    """For each auto-promote flow: the significant winner now promoted, or None (no winner yet;
    an earlier promotion stays)."""
    settings = _measurement(conn, store_id)
    flows = settings.get("auto_promote") or []
    if not isinstance(flows, list) or not flows:
        return {}
    report = flow_report(conn, store_id, since=since, until=until)
    winners: dict[str, str | None] = {str(name): None for name in flows}
    for entry in report["flows"]:
        ab = entry["experiments"]["ab"]
        if entry["flow"] in winners and ab is not None and ab["winner"] is not None:
            winners[entry["flow"]] = ab["winner"]
    promoted = dict(settings.get("promoted") or {})
    promoted.update({flow: winner for flow, winner in winners.items() if winner is not None})
    if promoted != (settings.get("promoted") or {}):
        conn.execute(
            update(t.stores)
            .where(t.stores.c.id == store_id)
            .values(measurement={**settings, "promoted": promoted})
        )
    return winners
