"""What the dashboard's pages show, as plain view-models (dicts and dataclasses).

Each function reads one store's rows; the templates only lay them out. The figures are counts
of what cartback did; attribution (which message earned which order) is a separate report,
and `flow_report_panel` is where its per-flow figures plug in.
"""

from __future__ import annotations

import secrets
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from cartback.core.flows import Flow
from cartback.core.sms import count_segments
from cartback.services import consent as consent_service
from cartback.services.reports import flow_report
from cartback.store import tables as t

WINDOW = timedelta(days=30)
# An opt-out rate per send above this, for any step, raises the alert.
OPT_OUT_ALERT = Decimal("0.005")
_CHANNELS = ("sms", "email")
TEST_SUBJECT = "cartback test message"


@dataclass(frozen=True)
class ChannelCounts:
    channel: str
    sent: int = 0
    delivered: int = 0
    failed: int = 0
    clicked: int = 0


@dataclass(frozen=True)
class DayBar:
    day: date
    value: int
    x: float
    y: float
    height: float


@dataclass(frozen=True)
class Chart:
    title: str
    bars: list[DayBar]
    maximum: int
    width: int = 600
    height: int = 120


@dataclass(frozen=True)
class OptOutStep:
    flow: str
    step: str
    sends: int
    opt_outs: int

    @property
    def rate(self) -> Decimal:
        return Decimal(self.opt_outs) / Decimal(self.sends) if self.sends else Decimal(0)

    @property
    def alert(self) -> bool:
        return self.rate > OPT_OUT_ALERT


@dataclass
class Overview:
    since: datetime
    until: datetime
    channels: list[ChannelCounts]
    sends_chart: Chart
    orders_chart: Chart
    funnel: list[tuple[str, int]]
    opt_outs: int
    opt_out_steps: list[OptOutStep]
    revenue: dict[str, Decimal]
    flows: list[str] = field(default_factory=list)

    @property
    def alerts(self) -> list[OptOutStep]:
        return [step for step in self.opt_out_steps if step.alert]


def _sent_messages(store_id: int, since: datetime) -> Any:
    """Marketing messages (those of an enrollment) that went out since `since`."""
    o, e = t.outbox.c, t.enrollments.c
    return (
        select(
            o.id, o.channel, o.step_id, o.contact_id, o.sent_at, o.delivered_at, o.clicked_at,
            o.status, e.cart_id, e.flow_name,
        )
        .join(t.enrollments, e.id == o.enrollment_id)
        .where(o.store_id == store_id, o.sent_at.is_not(None), o.sent_at >= since)
    )  # fmt: skip


def overview(conn: Connection, store_id: int, now: datetime) -> Overview:
    since = now - WINDOW
    sent = list(conn.execute(_sent_messages(store_id, since)).all())
    o = t.outbox.c
    failed = Counter(
        row.channel
        for row in conn.execute(
            select(o.channel).where(
                o.store_id == store_id,
                o.enrollment_id.is_not(None),
                o.status == "failed",
                o.updated_at >= since,
            )
        )
    )
    channels = [
        ChannelCounts(
            channel,
            sent=sum(1 for r in sent if r.channel == channel),
            delivered=sum(1 for r in sent if r.channel == channel and r.delivered_at),
            failed=failed[channel],
            clicked=sum(1 for r in sent if r.channel == channel and r.clicked_at),
        )
        for channel in _CHANNELS
    ]
    orders = _orders(conn, store_id, since)
    days = [(since + timedelta(days=i + 1)).date() for i in range(WINDOW.days)]
    sends_chart = _chart("Messages sent per day", days, Counter(r.sent_at.date() for r in sent))
    orders_chart = _chart("Orders per day", days, Counter(r.occurred_at.date() for r in orders))
    e = t.enrollments.c
    enrolled = conn.execute(
        select(func.count(func.distinct(e.cart_id))).where(
            e.store_id == store_id, e.created_at >= since
        )
    ).scalar_one()
    first_send = _first_send_per_cart(sent)
    recovered = [
        r for r in orders if r.cart_id in first_send and r.occurred_at >= first_send[r.cart_id]
    ]
    funnel = [
        ("Carts enrolled", int(enrolled)),
        ("Messages sent", len(sent)),
        ("Carts with a click", len({r.cart_id for r in sent if r.clicked_at})),
        ("Orders on carts that got a message", len(recovered)),
    ]
    revenue: dict[str, Decimal] = defaultdict(Decimal)
    for row in recovered:
        revenue[row.currency] += Decimal(row.value)
    steps, opt_outs = _opt_out_steps(conn, store_id, since, sent)
    flows = sorted({r.flow_name for r in sent})
    return Overview(
        since, now, channels, sends_chart, orders_chart, funnel, opt_outs, steps,
        dict(revenue), flows,
    )  # fmt: skip


def _first_send_per_cart(sent: list[Any]) -> dict[int, datetime]:
    first: dict[int, datetime] = {}
    for row in sent:
        if row.cart_id not in first or row.sent_at < first[row.cart_id]:
            first[row.cart_id] = row.sent_at
    return first


def _orders(conn: Connection, store_id: int, since: datetime) -> list[Any]:
    r = t.orders.c
    return list(
        conn.execute(
            select(r.cart_id, r.value, r.currency, r.occurred_at).where(
                r.store_id == store_id, r.occurred_at >= since
            )
        ).all()
    )


def _chart(title: str, days: list[date], counts: Counter[date]) -> Chart:
    width, height = 600, 120
    maximum = max((counts[d] for d in days), default=0)
    step = width / len(days)
    bars = []
    for i, day in enumerate(days):
        value = counts[day]
        bar = (height - 16) * value / maximum if maximum else 0
        bars.append(
            DayBar(day, value, round(i * step + 1, 1), round(height - bar, 1), round(bar, 1))
        )
    return Chart(title, bars, maximum, width, height)


def _opt_out_steps(
    conn: Connection, store_id: int, since: datetime, sent: list[Any]
) -> tuple[list[OptOutStep], int]:
    """Each marketing opt-out is laid on the last message the contact got before it."""
    c = t.consent_events.c
    outs = conn.execute(
        select(c.contact_id, c.received_at).where(
            c.store_id == store_id,
            c.granted.is_(False),
            c.purpose == "marketing",
            c.received_at >= since,
        )
    ).all()
    by_contact: dict[int, list[Any]] = defaultdict(list)
    for row in sent:
        by_contact[row.contact_id].append(row)
    sends = Counter((r.flow_name, r.step_id) for r in sent)
    blamed: Counter[tuple[str, str]] = Counter()
    for out in outs:
        before = [r for r in by_contact.get(out.contact_id, []) if r.sent_at <= out.received_at]
        if before:
            last = max(before, key=lambda r: r.sent_at)
            blamed[(last.flow_name, last.step_id)] += 1
    steps = [
        OptOutStep(flow, step, count, blamed[(flow, step)])
        for (flow, step), count in sorted(sends.items())
    ]
    return steps, len(outs)


@dataclass(frozen=True)
class StepRow:
    id: str
    channel: str
    offset: str
    condition: str
    sent: int
    skipped: dict[str, int]
    delivered: int
    clicked: int


def flow_page(conn: Connection, store_id: int, flow: Flow, now: datetime) -> dict[str, Any]:
    since = now - WINDOW
    sent = [
        r for r in conn.execute(_sent_messages(store_id, since)).all() if r.flow_name == flow.name
    ]
    d, e = t.decisions.c, t.enrollments.c
    skipped: dict[str, Counter[str]] = defaultdict(Counter)
    for row in conn.execute(
        select(d.step_id, d.rule, func.count())
        .join(t.enrollments, e.id == d.enrollment_id)
        .where(
            d.store_id == store_id,
            d.outcome == "skip",
            d.at >= since,
            e.flow_name == flow.name,
        )
        .group_by(d.step_id, d.rule)
    ):
        skipped[row[0] or ""][row[1] or "(no rule)"] += int(row[2])
    steps = [
        StepRow(
            step.id,
            str(step.channel),
            _offset(step.at),
            step.when.source if step.when is not None else "always",
            sent=sum(1 for r in sent if r.step_id == step.id),
            skipped=dict(skipped[step.id]),
            delivered=sum(1 for r in sent if r.step_id == step.id and r.delivered_at),
            clicked=sum(1 for r in sent if r.step_id == step.id and r.clicked_at),
        )
        for step in flow.steps
    ]
    groups = conn.execute(
        select(e.variant, e.holdout, func.count())
        .where(e.store_id == store_id, e.flow_name == flow.name, e.created_at >= since)
        .group_by(e.variant, e.holdout)
    ).all()
    variants: Counter[str] = Counter()
    holdout = 0
    for variant, held, count in groups:
        if held:
            holdout += int(count)
        else:
            variants[variant or "(none)"] += int(count)
    return {
        "flow": flow,
        "since": since,
        "steps": steps,
        "variants": sorted(variants.items()),
        "configured_variants": [(v.name, v.weight) for v in flow.variants],
        "holdout": holdout,
        "holdout_percent": flow.holdout_percent,
        "enrolled": holdout + sum(variants.values()),
        "report": flow_report_panel(conn, store_id, flow.name, since, now),
    }


def flow_report_panel(
    conn: Connection, store_id: int, flow_name: str, since: datetime, now: datetime
) -> dict[str, Any] | None:
    """The attribution report's figures for one flow (services/reports.py): per flow, step,
    variant and channel, then the alerts and the holdout readout as notes. Shaped as
    {"title", "columns", "rows", "notes"} for the `report_panel` block of flow.html; None when
    no cart of this flow was abandoned in the period."""
    report = flow_report(conn, store_id, since=since, until=now, flow=flow_name)
    if not report["flows"]:
        return None
    entry = report["flows"][0]
    rows = [["flow", *_report_cells(entry["totals"])]]
    for level in ("steps", "variants", "channels"):
        rows += [
            [f"{level[:-1]} {name}", *_report_cells(figures)]
            for name, figures in entry[level].items()
        ]
    notes = list(entry["alerts"])
    holdout = entry["experiments"]["holdout"]
    if holdout is not None:
        lift = holdout["lift"]
        notes.append(
            "Holdout: "
            + (
                "too few carts to tell yet"
                if holdout["too_small_to_tell"]
                else f"recovery {lift['diff']:+.1%} against held-out carts "
                f"(95 % interval {lift['low']:+.1%} to {lift['high']:+.1%})"
            )
        )
    notes += [f"Revenue in {cur} left out: no rate for it" for cur in report["unconverted"]]
    return {
        "title": f"Attributed results ({report['currency']})",
        "columns": ["", *_REPORT_COLUMNS.values()],
        "rows": rows,
        "notes": notes,
    }


_REPORT_COLUMNS = {
    "sent": "Sent",
    "delivered": "Delivered",
    "clicked": "Clicked",
    "recovered": "Recovered",
    "revenue": "Revenue",
    "cost": "Cost",
    "return_on_spend": "Return on spend",
    "opt_out_rate": "Opt-outs per send",
}


def _report_cells(figures: dict[str, Any]) -> list[Any]:
    return ["–" if figures[key] is None else figures[key] for key in _REPORT_COLUMNS]


def _offset(at: timedelta) -> str:
    seconds = int(at.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def mask_address(address: str | None) -> str:
    """`k•••@example.com`, `+47•••••567`: enough to tell two apart, not enough to reach one."""
    if not address:
        return ""
    if "@" in address:
        local, _, domain = address.partition("@")
        return f"{local[:1]}•••@{domain}"
    return f"{address[:3]}•••••{address[-3:]}" if len(address) > 6 else "•••••"


def search_key(query: str) -> tuple[str, str]:
    """('email', ...), ('phone', ...) or ('cart', ...): how the message log reads a search."""
    text = query.strip()
    if "@" in text:
        return "email", text.lower()
    compact = "".join(ch for ch in text if ch not in " -().")
    if compact.startswith("+") and compact[1:].isdigit():
        return "phone", compact
    return "cart", text


def message_log(conn: Connection, store_id: int, query: str, limit: int = 200) -> dict[str, Any]:
    kind, key = search_key(query)
    c, k, o, e = t.contacts.c, t.carts.c, t.outbox.c, t.enrollments.c
    if kind == "cart":
        carts = conn.execute(
            select(k.id, k.token).where(k.store_id == store_id, k.token == key)
        ).all()
    else:
        column = c.email if kind == "email" else c.phone
        carts = conn.execute(
            select(k.id, k.token)
            .join(t.contacts, c.id == k.contact_id)
            .where(k.store_id == store_id, column == key)
            .order_by(k.id.desc())
        ).all()
    tokens = {row.id: row.token for row in carts}
    rows = conn.execute(
        select(
            o.id, o.created_at, o.sent_at, o.step_id, o.channel, o.to_address, o.status,
            e.cart_id,
        )
        .join(t.enrollments, e.id == o.enrollment_id)
        .where(o.store_id == store_id, e.cart_id.in_(list(tokens)))
        .order_by(o.created_at.desc(), o.id.desc())
        .limit(limit)
    ).all()  # fmt: skip
    messages = [
        {
            "at": row.sent_at or row.created_at,
            "step": row.step_id,
            "channel": row.channel,
            "to": mask_address(row.to_address),
            "status": row.status,
            "cart": tokens[row.cart_id],
        }
        for row in rows
    ]
    return {"kind": kind, "carts": sorted(tokens.values()), "messages": messages}


def cart_timeline(conn: Connection, store_id: int, token: str) -> dict[str, Any] | None:
    k = t.carts.c
    cart = conn.execute(
        select(k.id, k.token, k.status, k.value, k.currency, k.created_at).where(
            k.store_id == store_id, k.token == token
        )
    ).first()
    if cart is None:
        return None
    d, o, e = t.decisions.c, t.outbox.c, t.enrollments.c
    decisions = conn.execute(
        select(d.at, d.step_id, d.outcome, d.rule, d.reason)
        .where(d.cart_id == cart.id)
        .order_by(d.at, d.id)
    ).all()
    enrollments = conn.execute(
        select(e.flow_name, e.variant, e.holdout, e.state, e.exit_reason).where(
            e.cart_id == cart.id
        )
    ).all()
    messages = conn.execute(
        select(
            o.step_id, o.channel, o.to_address, o.status, o.sent_at, o.delivered_at, o.clicked_at
        )
        .join(t.enrollments, e.id == o.enrollment_id)
        .where(e.cart_id == cart.id)
        .order_by(o.created_at, o.id)
    ).all()
    return {
        "cart": cart,
        "decisions": decisions,
        "enrollments": enrollments,
        "messages": [{**row._asdict(), "to": mask_address(row.to_address)} for row in messages],
    }


def consent_lookup(conn: Connection, store_id: int, query: str) -> dict[str, Any] | None:
    kind, key = search_key(query)
    if kind == "cart":
        return None
    c = t.contacts.c
    column = c.email if kind == "email" else c.phone
    contact_id = conn.execute(select(c.id).where(c.store_id == store_id, column == key)).scalar()
    if contact_id is None:
        return None
    history = consent_service.contact_history(conn, store_id, int(contact_id))
    if history is None:
        return None
    history["phone"] = mask_address(history["phone"])
    history["email"] = mask_address(history["email"])
    return history


def test_contacts(conn: Connection, store_id: int) -> list[dict[str, Any]]:
    x = t.test_contacts.c
    rows = conn.execute(
        select(x.id, x.channel, x.address).where(x.store_id == store_id).order_by(x.id)
    ).all()
    return [{"id": r.id, "channel": r.channel, "to": mask_address(r.address)} for r in rows]


def queue_test_send(
    conn: Connection, store_id: int, test_contact_id: int, store_name: str, now: datetime
) -> int | None:
    """One service message to a listed test contact, through the outbox; None when the id is
    not one of this store's test contacts (an arbitrary address is never reached)."""
    x = t.test_contacts.c
    target = conn.execute(
        select(x.channel, x.address).where(x.id == test_contact_id, x.store_id == store_id)
    ).first()
    if target is None:
        return None
    body = f"{store_name}: a test message from the cartback dashboard. No action needed."
    info = count_segments(body)
    result = conn.execute(
        t.outbox.insert().values(
            store_id=store_id,
            enrollment_id=None,
            contact_id=None,
            step_id="dashboard-test",
            service_key=f"test:{secrets.token_hex(16)}",
            channel=target.channel,
            to_address=target.address,
            subject=TEST_SUBJECT if target.channel == "email" else None,
            body=body,
            encoding=info.encoding if target.channel == "sms" else None,
            segments=info.segments if target.channel == "sms" else None,
            status="pending",
            attempts=0,
            available_at=now,
            created_at=now,
            updated_at=now,
        )
    )
    return int(result.inserted_primary_key[0])  # type: ignore[index]


def add_test_contact(
    conn: Connection, store_id: int, channel: str, address: str, now: datetime
) -> bool:
    """False when the store already lists the address."""
    x = t.test_contacts.c
    listed = conn.execute(
        select(x.id).where(x.store_id == store_id, x.channel == channel, x.address == address)
    ).first()
    if listed is not None:
        return False
    conn.execute(
        t.test_contacts.insert().values(
            store_id=store_id, channel=channel, address=address, created_at=now
        )
    )
    return True
