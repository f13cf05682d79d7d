"""The flows a store runs: assign them with a trigger and a priority, list them, and build the
lineup ingest enrolls carts with."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine, delete, select, update

from cartback.core.lineup import (
    CHECKOUT_UPDATED,
    DEFAULT_SUPPRESSION,
    TRIGGERS,
    AssignedFlow,
    Lineup,
)
from cartback.core.model import Store, format_duration, parse_duration
from cartback.services.flows import FlowRegistry, UnknownFlow
from cartback.store import tables as t

MAX_PRIORITY = 1000
MAX_SUPPRESSION = timedelta(days=365)


class AssignmentError(ValueError):
    """A flow assignment that cannot be accepted; `field` names the input at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class Assignment:
    flow_name: str
    priority: int
    trigger: str = CHECKOUT_UPDATED


def assignments(conn: Connection, store: Store) -> list[Assignment]:
    """The store's flows, best priority first; a store that never assigned any runs its
    `flow_name` on checkouts."""
    f = t.store_flows.c
    rows = conn.execute(
        select(f.flow_name, f.priority, f.trigger)
        .where(f.store_id == store.id)
        .order_by(f.priority, f.flow_name)
    ).all()
    if not rows:
        return [Assignment(store.flow_name, 1, CHECKOUT_UPDATED)]
    return [Assignment(row.flow_name, row.priority, row.trigger) for row in rows]


def suppression(conn: Connection, store_id: int) -> timedelta:
    seconds = conn.execute(
        select(t.stores.c.flow_suppression_seconds).where(t.stores.c.id == store_id)
    ).scalar()
    return DEFAULT_SUPPRESSION if seconds is None else timedelta(seconds=seconds)


def lineup(conn: Connection, registry: FlowRegistry, store: Store) -> Lineup:
    flows = [
        AssignedFlow(registry.current(a.flow_name, conn), a.priority, a.trigger)
        for a in assignments(conn, store)
    ]
    return Lineup.of(flows, suppression(conn, store.id))


def check(
    conn: Connection, registry: FlowRegistry, assignment: Assignment, field: str = ""
) -> None:
    prefix = f"{field}." if field else ""
    if assignment.trigger not in TRIGGERS:
        raise AssignmentError(
            f"{prefix}trigger",
            f"{assignment.trigger!r} is not a trigger: use {' or '.join(TRIGGERS)}",
        )
    if not 1 <= assignment.priority <= MAX_PRIORITY:
        raise AssignmentError(
            f"{prefix}priority", f"must be a whole number from 1 (first) to {MAX_PRIORITY}"
        )
    try:
        registry.current(assignment.flow_name, conn)
    except UnknownFlow:
        raise AssignmentError(
            f"{prefix}name",
            f"no flow named {assignment.flow_name!r} is loaded (see CARTBACK_FLOWS_DIR)",
        ) from None


def assign(
    conn: Connection, registry: FlowRegistry, store: Store, assignment: Assignment, now: datetime
) -> None:
    """Add the flow to the store's flows, or change its priority and trigger."""
    check(conn, registry, assignment)
    current = assignments(conn, store)
    if not _stored(conn, store.id):
        # The first assignment keeps the flow the store ran until now.
        _insert(conn, store.id, current, now)
    f = t.store_flows.c
    changed = conn.execute(
        update(t.store_flows)
        .where(f.store_id == store.id, f.flow_name == assignment.flow_name)
        .values(priority=assignment.priority, trigger=assignment.trigger, updated_at=now)
    ).rowcount
    if not changed:
        _insert(conn, store.id, [assignment], now)


def unassign(conn: Connection, store: Store, flow_name: str, now: datetime) -> None:
    current = assignments(conn, store)
    if flow_name not in {a.flow_name for a in current}:
        raise AssignmentError("name", f"the store does not run a flow named {flow_name!r}")
    if len(current) == 1:
        raise AssignmentError("name", "a store runs at least one flow; assign another first")
    if not _stored(conn, store.id):
        _insert(conn, store.id, current, now)
    f = t.store_flows.c
    conn.execute(delete(t.store_flows).where(f.store_id == store.id, f.flow_name == flow_name))


def replace_all(
    conn: Connection,
    registry: FlowRegistry,
    store: Store,
    wanted: Sequence[Assignment],
    window: timedelta | None,
    now: datetime,
) -> None:
    """Set the store's whole list of flows (and, when given, its suppression window)."""
    if not wanted:
        raise AssignmentError("flows", "a store runs at least one flow")
    seen: set[str] = set()
    for index, assignment in enumerate(wanted):
        check(conn, registry, assignment, f"flows[{index}]")
        if assignment.flow_name in seen:
            raise AssignmentError(f"flows[{index}].name", "this flow is listed twice")
        seen.add(assignment.flow_name)
    conn.execute(delete(t.store_flows).where(t.store_flows.c.store_id == store.id))
    _insert(conn, store.id, wanted, now)
    if window is not None:
        set_suppression(conn, store.id, window)


def parse_window(text: str) -> timedelta:
    """A suppression window as written (`3d`, `12h`, `0` for none)."""
    try:
        window = parse_duration(text)
    except (ValueError, OverflowError) as error:
        raise AssignmentError("suppression_window", str(error)) from None
    _check_window(window)
    return window


def _check_window(window: timedelta) -> None:
    if not timedelta(0) <= window <= MAX_SUPPRESSION:
        raise AssignmentError(
            "suppression_window", f"must be from 0 to {format_duration(MAX_SUPPRESSION)}"
        )


def set_suppression(conn: Connection, store_id: int, window: timedelta) -> None:
    _check_window(window)
    conn.execute(
        update(t.stores)
        .where(t.stores.c.id == store_id)
        .values(flow_suppression_seconds=int(window.total_seconds()))
    )


def _stored(conn: Connection, store_id: int) -> bool:
    f = t.store_flows.c
    return conn.execute(select(f.id).where(f.store_id == store_id).limit(1)).first() is not None


def _insert(conn: Connection, store_id: int, rows: Sequence[Assignment], now: datetime) -> None:
    for a in rows:
        conn.execute(
            t.store_flows.insert().values(
                store_id=store_id,
                flow_name=a.flow_name,
                priority=a.priority,
                trigger=a.trigger,
                created_at=now,
                updated_at=now,
            )
        )


def lineup_for(engine: Engine, registry: FlowRegistry, store: Store) -> Lineup:
    """The store's lineup, read on a connection of its own (before the ingest transaction)."""
    with engine.connect() as conn:
        return lineup(conn, registry, store)
