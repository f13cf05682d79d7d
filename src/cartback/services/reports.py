"""What each flow, step, variant and channel recovered, cost and provoked, and how much of it the
holdout says would have happened anyway.

A report covers the carts that entered a flow in a window (enrollments by abandonment time) and
everything that followed from them: their messages, the orders credited to those messages
(`attributions`, written when each order arrived), their carts' orders, and opt-outs.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, and_, select

from cartback.core import experiments as ex
from cartback.core.attribution import SettingsError, parse_decimal, settings_from
from cartback.core.consent import OPT_OUT_SOURCES
from cartback.services import report_summary as daily
from cartback.services.report_facts import CohortKey, Facts, gather
from cartback.store import tables as t

# A step whose opt-outs exceed this share of its sends is flagged.
OPT_OUT_ALERT = Decimal("0.005")
# An opt-out counts against the shopper's latest message on that channel this long before it.
OPT_OUT_LOOKBACK = timedelta(days=7)
CENTS = Decimal("0.01")


@dataclass(frozen=True, slots=True)
class Money:
    """How revenue is converted and messages priced: from the store's measurement settings."""

    currency: str
    # 1 unit of the key currency = this many units of `currency`.
    rates: Mapping[str, Decimal] = field(default_factory=dict)
    # Per SMS segment by destination country (ISO code; "*" for any other); per email.
    sms_prices: Mapping[str, Decimal] = field(default_factory=dict)
    email_price: Decimal | None = None

    def convert(self, amount: Decimal, currency: str) -> Decimal | None:
        if currency == self.currency:
            return amount
        rate = self.rates.get(currency)
        return None if rate is None else amount * rate

    def sms_price(self, country: str | None) -> Decimal | None:
        return self.sms_prices.get(country or "", self.sms_prices.get("*"))


def money_from(raw: Mapping[str, Any] | None, store_currency: str) -> Money:
    section = raw or {}
    currency = section.get("currency", store_currency)
    if not isinstance(currency, str) or len(currency) != 3 or not currency.isalpha():
        raise SettingsError("currency: expected a three-letter ISO 4217 code")
    rates_raw = section.get("rates") or {}
    prices = section.get("prices") or {}
    if not isinstance(rates_raw, Mapping) or not isinstance(prices, Mapping):
        raise SettingsError("rates, prices: expected mappings")
    rates = {str(k).upper(): parse_decimal(v, f"rates.{k}") for k, v in rates_raw.items()}
    sms_raw = prices.get("sms") or {}
    if not isinstance(sms_raw, Mapping):
        raise SettingsError("prices.sms: expected country: price per segment")
    sms = {str(k).upper(): parse_decimal(v, f"prices.sms.{k}") for k, v in sms_raw.items()}
    email = prices.get("email")
    return Money(
        currency=currency.upper(),
        rates=rates,
        sms_prices=sms,
        email_price=None if email is None else parse_decimal(email, "prices.email"),
    )


def check_settings(raw: Mapping[str, Any], store_currency: str) -> None:
    """Raise SettingsError naming the field when a store's measurement settings are wrong."""
    unknown = set(raw) - {"attribution", "currency", "rates", "prices", "auto_promote", "promoted"}
    if unknown:
        raise SettingsError(f"{sorted(unknown)[0]}: unknown setting")
    flows = raw.get("auto_promote", [])
    if not isinstance(flows, list) or not all(isinstance(f, str) for f in flows):
        raise SettingsError("auto_promote: expected a list of flow names")
    promoted = raw.get("promoted", {})
    if not isinstance(promoted, Mapping) or not all(isinstance(v, str) for v in promoted.values()):
        raise SettingsError("promoted: expected flow: variant")
    settings_from(raw)
    money_from(raw, store_currency)


@dataclass
class Figures:
    """One row of a report: a flow, or one of its steps, variants or channels."""

    enrolled: int | None = None
    sent: int = 0
    delivered: int = 0
    failed: int = 0
    clicked: int = 0
    segments: int = 0
    recovered: int = 0
    revenue: Decimal = Decimal(0)
    # Sum of the squared credited order values: the spread behind revenue per send's interval.
    squares: Decimal = Decimal(0)
    cost: Decimal | None = Decimal(0)
    opt_outs: int = 0
    base_carts: int = 0  # the carts recovery_rate divides by

    def as_dict(self) -> dict[str, Any]:
        def ratio(a: Decimal | int, b: Decimal | int | None) -> Decimal | None:
            return None if not b else (Decimal(a) / Decimal(b))

        cost = self.cost
        opt_rate = ratio(self.opt_outs, self.sent)
        return {
            "enrolled": self.enrolled,
            "sent": self.sent,
            "delivered": self.delivered,
            "failed": self.failed,
            "clicked": self.clicked,
            "recovered": self.recovered,
            "revenue": _round(self.revenue),
            "recovery_rate": _round(ratio(self.recovered, self.base_carts), 4),
            "cost": _round(cost),
            "return_on_spend": _round(ratio(self.revenue, cost) if cost else None),
            "roi": _round(ratio(self.revenue - cost, cost) if cost else None),
            "revenue_per_send": _round(ratio(self.revenue, self.sent)),
            "cost_per_recovered": _round(ratio(cost, self.recovered) if cost is not None else None),
            "opt_outs": self.opt_outs,
            "opt_out_rate": _round(opt_rate, 4),
            "opt_out_alert": opt_rate is not None and opt_rate > OPT_OUT_ALERT,
        }


def _round(value: Decimal | None, places: int = 2) -> str | None:
    if value is None:
        return None
    return str(value.quantize(Decimal(1).scaleb(-places)))


@dataclass
class Cohort:
    """Per (flow, variant, holdout): carts, carts with an order, and those orders' value."""

    carts: int = 0
    converted: int = 0
    value: float = 0.0
    squares: float = 0.0


def flow_report(
    conn: Connection,
    store_id: int,
    *,
    since: datetime,
    until: datetime,
    flow: str | None = None,
    summary: bool = True,
) -> dict[str, Any]:
    """The report for the carts abandoned in [since, until). With `summary` (the default) whole
    days come from the daily summary where it is fresh and the rest is read live; without it
    everything is read live. Both give the same figures."""
    store = conn.execute(
        select(t.stores.c.currency, t.stores.c.measurement).where(t.stores.c.id == store_id)
    ).one()
    try:
        money = money_from(store.measurement, store.currency)
    except SettingsError:
        money = Money(currency=store.currency)
    cohort = _cohort(store_id, since, until, flow)
    unconverted: dict[str, Decimal] = defaultdict(Decimal)

    groups: dict[tuple[str, str, str], Figures] = defaultdict(Figures)

    def rows_for(flow_name: str, step: str, variant: str | None, channel: str) -> list[Figures]:
        rows = [
            groups[(flow_name, "flow", "")],
            groups[(flow_name, "step", step)],
            groups[(flow_name, "channel", channel)],
        ]
        # A flow without an A/B test has no variant rows.
        return rows if variant is None else [*rows, groups[(flow_name, "variant", variant)]]

    facts = _summed_facts(conn, store_id, since, until, flow) if summary else gather(conn, cohort)
    cohorts = _cohorts(facts, money, unconverted)
    for (flow_name, variant, holdout, _held), c in cohorts.items():
        if holdout:
            continue
        keys = [(flow_name, "flow", "")]
        if variant is not None:
            keys.append((flow_name, "variant", variant))
        for key in keys:
            figures = groups[key]
            figures.enrolled = (figures.enrolled or 0) + c.carts
    treated: dict[tuple[str, str], int] = defaultdict(int)
    for (flow_name, variant, holdout, _held), c in cohorts.items():
        if not holdout:
            treated[(flow_name, "")] += c.carts
            if variant is not None:
                treated[(flow_name, variant)] += c.carts

    _messages(facts, money, rows_for)
    _credited(facts, money, unconverted, rows_for)
    _opt_outs(conn, store_id, cohort, since, until, rows_for)
    flows: dict[str, dict[str, Any]] = {}
    for (flow_name, level, label), figures in sorted(groups.items()):
        figures.base_carts = (
            treated[(flow_name, label)] if level == "variant" else treated[(flow_name, "")]
        )
        entry = flows.setdefault(
            flow_name, {"flow": flow_name, "steps": {}, "variants": {}, "channels": {}}
        )
        if level == "flow":
            entry["totals"] = figures.as_dict()
        else:
            entry[f"{level}s"][label] = figures.as_dict()
    for flow_name, entry in flows.items():
        entry.setdefault("totals", Figures().as_dict())
        entry["alerts"] = [
            f"step {step}: {row['opt_out_rate']} opt-outs per send is over "
            f"{OPT_OUT_ALERT} ({row['opt_outs']} of {row['sent']})"
            for step, row in entry["steps"].items()
            if row["opt_out_alert"]
        ]
        entry["experiments"] = _experiments(flow_name, cohorts)
        ab = entry["experiments"]["ab"]
        for name, readout in (ab or {}).get("variants", {}).items():
            # Attributed revenue per send, each send's credited revenue as one observation.
            sent = groups[(flow_name, "variant", name)]
            mean, low, high = ex.mean_interval(float(sent.revenue), float(sent.squares), sent.sent)
            readout["sends"] = sent.sent
            readout["revenue_per_send"] = {
                "mean": round(mean, 2),
                "low": round(low, 2),
                "high": round(high, 2),
            }
    return {
        "since": since.isoformat(),
        "until": until.isoformat(),
        "currency": money.currency,
        "unconverted": {cur: _round(amount) for cur, amount in sorted(unconverted.items())},
        "flows": [flows[name] for name in sorted(flows)],
    }


def _cohort(store_id: int, since: datetime, until: datetime, flow: str | None) -> Any:
    e = t.enrollments.c
    cohort = and_(e.store_id == store_id, e.abandoned_at >= since, e.abandoned_at < until)
    return cohort if flow is None else and_(cohort, e.flow_name == flow)


def _summed_facts(
    conn: Connection, store_id: int, since: datetime, until: datetime, flow: str | None
) -> Facts:
    """Whole days from the summary where it is fresh; the edges and the other days live."""
    first = daily.day_of(since)
    if daily.day_start(first) < since:
        first += daily.DAY
    end = daily.day_of(until)
    fresh = []
    if first < end:
        covered = daily.coverage(conn, store_id, first, end).fresh
        fresh = [day for day in daily.days_between(first, end) if day in covered]
    facts = daily.read(conn, store_id, fresh, flow)
    start = since
    for day in fresh:
        if start < daily.day_start(day):
            facts.add(gather(conn, _cohort(store_id, start, daily.day_start(day), flow)))
        start = daily.day_start(day + daily.DAY)
    if start < until:
        facts.add(gather(conn, _cohort(store_id, start, until, flow)))
    return facts


def _ordered(items: Any) -> list[Any]:
    """A fixed order for float sums, whatever order the database grouped in."""
    return sorted(items, key=lambda item: repr(item[0]))


def _cohorts(
    facts: Facts, money: Money, unconverted: dict[str, Decimal]
) -> dict[CohortKey, Cohort]:
    """Per (flow, variant, holdout, held channel)."""
    found: dict[CohortKey, Cohort] = defaultdict(Cohort)
    for key, carts in _ordered(facts.carts.items()):
        found[key].carts = carts
    for (flow_name, variant, holdout, held, currency), sums in _ordered(facts.orders.items()):
        group = found[(flow_name, variant, holdout, held)]
        group.converted += sums.count
        rate = money.convert(Decimal(1), currency)
        if rate is None:
            unconverted[currency] += sums.value
            continue
        group.value += float(sums.value * rate)
        group.squares += float(sums.squares * rate * rate)
    return found


def _messages(facts: Facts, money: Money, rows_for: Any) -> None:
    for (flow_name, step, variant, channel, country), sends in _ordered(facts.messages.items()):
        if channel == "sms":
            price = money.sms_price(country)
            cost = None if price is None else price * sends.segments
        else:
            cost = None if money.email_price is None else money.email_price * sends.sent
        if sends.sent == 0:
            cost = Decimal(0)
        for figures in rows_for(flow_name, step, variant, channel):
            figures.sent += sends.sent
            figures.delivered += sends.delivered
            figures.failed += sends.failed
            figures.clicked += sends.clicked
            figures.segments += sends.segments
            figures.cost = None if figures.cost is None or cost is None else figures.cost + cost


def _credited(facts: Facts, money: Money, unconverted: dict[str, Decimal], rows_for: Any) -> None:
    for (flow_name, step, variant, channel, currency), sums in _ordered(facts.credits.items()):
        rate = money.convert(Decimal(1), currency)
        if rate is None:
            unconverted[currency] += sums.value
        for figures in rows_for(flow_name, step, variant, channel):
            figures.recovered += sums.count
            if rate is not None:
                figures.revenue += sums.value * rate
                figures.squares += sums.squares * rate * rate


def _opt_outs(
    conn: Connection,
    store_id: int,
    cohort: Any,
    since: datetime,
    until: datetime,
    rows_for: Any,
) -> None:
    """Each opt-out counts against the shopper's latest cohort message on that channel sent
    before it (within OPT_OUT_LOOKBACK): the message they were answering, as near as we know."""
    ce, e, o = t.consent_events.c, t.enrollments.c, t.outbox.c
    events = conn.execute(
        select(ce.contact_id, ce.channel, ce.received_at).where(
            ce.store_id == store_id,
            ce.granted.is_(False),
            ce.purpose == "marketing",
            ce.source.in_([str(s) for s in OPT_OUT_SOURCES]),
            ce.received_at >= since,
            ce.received_at < until + OPT_OUT_LOOKBACK,
        )
    ).all()
    if not events:
        return
    contacts = sorted({row.contact_id for row in events})
    sent: dict[tuple[int, str], list[tuple[datetime, str, str, str | None]]] = defaultdict(list)
    for row in conn.execute(
        select(o.contact_id, o.channel, o.sent_at, e.flow_name, o.step_id, e.variant)
        .select_from(t.enrollments.join(t.outbox, o.enrollment_id == e.id))
        .where(cohort, o.contact_id.in_(contacts), o.sent_at.is_not(None))
    ):
        sent[(row[0], row[1])].append((row[2], row[3], row[4], row[5]))
    for event in events:
        before = [
            m
            for m in sent.get((event.contact_id, event.channel), ())
            if m[0] <= event.received_at and event.received_at - m[0] <= OPT_OUT_LOOKBACK
        ]
        if before:
            _at, flow_name, step, variant = max(before, key=lambda m: m[0])
            for figures in rows_for(flow_name, step, variant, event.channel):
                figures.opt_outs += 1


def _add(target: Cohort, c: Cohort) -> None:
    target.carts += c.carts
    target.converted += c.converted
    target.value += c.value
    target.squares += c.squares


def _experiments(flow_name: str, cohorts: Mapping[CohortKey, Cohort]) -> dict[str, Any]:
    treated, held = Cohort(), Cohort()
    by_variant: dict[str, Cohort] = defaultdict(Cohort)
    # Treated carts that got every channel, and those that had one channel held out.
    full = Cohort()
    without: dict[str, Cohort] = defaultdict(Cohort)
    for (flow, variant, holdout, held_channel), c in cohorts.items():
        if flow != flow_name:
            continue
        _add(held if holdout else treated, c)
        if holdout:
            continue
        if variant is not None:
            _add(by_variant[variant], c)
        _add(full if held_channel is None else without[held_channel], c)
    channel_holdout = None
    for channel, group in sorted(without.items()):
        readout = _holdout(full, group)
        if readout is not None:
            channel_holdout = {"channel": channel, **readout}
    return {
        "ab": _ab(by_variant),
        "holdout": _holdout(treated, held),
        "channel_holdout": channel_holdout,
    }


def _interval(p: ex.Proportion) -> dict[str, float]:
    return {"rate": round(p.rate, 6), "low": round(p.low, 6), "high": round(p.high, 6)}


def _ab(by_variant: Mapping[str, Cohort]) -> dict[str, Any] | None:
    if len(by_variant) < 2:
        return None
    props = {name: ex.proportion(c.converted, c.carts) for name, c in sorted(by_variant.items())}
    variants = {}
    for name, c in sorted(by_variant.items()):
        mean, low, high = ex.mean_interval(c.value, c.squares, c.carts)
        variants[name] = {
            "carts": c.carts,
            "converted": c.converted,
            "conversion": _interval(props[name]),
            "revenue_per_cart": {
                "mean": round(mean, 2),
                "low": round(low, 2),
                "high": round(high, 2),
            },
        }
    ranked = sorted(props, key=lambda name: (props[name].rate, name), reverse=True)
    best, runner_up = ranked[0], ranked[1]
    test = ex.difference(props[runner_up], props[best])
    return {
        "variants": variants,
        "leader": best,
        "runner_up": runner_up,
        "difference": {
            "diff": round(test.diff, 6),
            "low": round(test.low, 6),
            "high": round(test.high, 6),
            "p_value": round(test.p_value, 6),
        },
        "winner": best if test.significant and test.diff > 0 else None,
        "probability_leader_is_better": round(
            ex.probability_b_beats_a(props[runner_up], props[best]), 4
        ),
    }


def _holdout(treated: Cohort, held: Cohort) -> dict[str, Any] | None:
    if held.carts == 0:
        return None
    t_prop = ex.proportion(treated.converted, treated.carts)
    h_prop = ex.proportion(held.converted, held.carts)
    lift = ex.difference(h_prop, t_prop)
    rev, rev_low, rev_high = ex.mean_difference(
        (held.value, held.squares, held.carts), (treated.value, treated.squares, treated.carts)
    )
    n = treated.carts
    return {
        "treated": {"carts": treated.carts, "converted": treated.converted, **_interval(t_prop)},
        "held_out": {"carts": held.carts, "converted": held.converted, **_interval(h_prop)},
        "lift": {
            "diff": round(lift.diff, 6),
            "low": round(lift.low, 6),
            "high": round(lift.high, 6),
            "p_value": round(lift.p_value, 6),
        },
        "incremental_carts": {
            "estimate": round(lift.diff * n, 1),
            "low": round(lift.low * n, 1),
            "high": round(lift.high * n, 1),
        },
        "incremental_revenue": {
            "estimate": round(rev * n, 2),
            "low": round(rev_low * n, 2),
            "high": round(rev_high * n, 2),
        },
        "too_small_to_tell": ex.too_small(t_prop, h_prop),
        "probability_messages_help": round(ex.probability_b_beats_a(h_prop, t_prop), 4),
    }
