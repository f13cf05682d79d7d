"""The backtest's figures per flow and step, from a tally and the engagement rates.

Expected recoveries, revenue and opt-outs are the model's expectation over the messages the
replay sent (rate × sends; rate × the carts' values), with a 95 % interval from the spread of
that many independent shoppers (normal approximation). The draws themselves, which decided what
each replayed shopper did next, are reported beside them as `drawn`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from cartback.backtest.engagement import StepRates
from cartback.backtest.replay import Setup
from cartback.backtest.tally import StepTally, Tally

Z95 = Decimal("1.96")
CENTS = Decimal("0.01")
TENTHS = Decimal("0.1")


@dataclass(frozen=True, slots=True)
class Interval:
    expected: Decimal
    low: Decimal
    high: Decimal
    # Unrounded, so that the intervals of independent steps can be added.
    variance: Decimal = Decimal(0)
    exact: Decimal = Decimal(0)

    @classmethod
    def around(cls, expected: Decimal, variance: Decimal, places: Decimal) -> Interval:
        spread = Z95 * variance.sqrt() if variance > 0 else Decimal(0)
        return cls(
            expected.quantize(places),
            max(Decimal(0), expected - spread).quantize(places),
            (expected + spread).quantize(places),
            variance,
            expected,
        )

    def __str__(self) -> str:
        return f"{self.expected} [{self.low}–{self.high}]"

    def as_dict(self) -> dict[str, str]:
        return {"expected": str(self.expected), "low": str(self.low), "high": str(self.high)}


@dataclass(frozen=True, slots=True)
class StepFigures:
    flow: str
    step: str
    channel: str
    considered: int
    sent: int
    segments: int
    cost: Decimal
    unpriced: int
    skips: dict[str, int]
    defers: dict[str, int]
    exits_before: int
    recoveries: Interval
    revenue: Interval
    opt_outs: Interval
    drawn: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "flow": self.flow,
            "step": self.step,
            "channel": self.channel,
            "considered": self.considered,
            "sent": self.sent,
            "segments": self.segments,
            "cost": str(self.cost.quantize(CENTS)),
            "unpriced": self.unpriced,
            "skips": self.skips,
            "defers": self.defers,
            "exits_before": self.exits_before,
            "recoveries": self.recoveries.as_dict(),
            "revenue": self.revenue.as_dict(),
            "opt_outs": self.opt_outs.as_dict(),
            "drawn": self.drawn,
        }


def step_figures(tally: Tally, setup: Setup) -> list[StepFigures]:
    rows = []
    for assigned in setup.lineup.flows:
        flow = assigned.flow
        counts = tally.flows.get(flow.name)
        if counts is None:
            continue
        for step in flow.steps:
            rates = setup.engagement.rates_for(flow, step)
            rows.append(_row(flow.name, step.id, str(step.channel), counts.step(step.id), rates))
    return rows


def _row(flow: str, step: str, channel: str, counts: StepTally, rates: StepRates) -> StepFigures:
    n = Decimal(counts.sent)
    p, q = rates.recovery, rates.opt_out
    return StepFigures(
        flow=flow,
        step=step,
        channel=channel,
        considered=counts.considered,
        sent=counts.sent,
        segments=counts.segments,
        cost=counts.cost,
        unpriced=counts.unpriced,
        skips=dict(counts.skips.most_common()),
        defers=dict(counts.defers.most_common()),
        exits_before=counts.exits_before,
        recoveries=Interval.around(n * p, n * p * (1 - p), TENTHS),
        revenue=Interval.around(counts.value * p, counts.value_squares * p * (1 - p), CENTS),
        opt_outs=Interval.around(n * q, n * q * (1 - q), TENTHS),
        drawn={
            "opened": counts.opened,
            "clicked": counts.clicked,
            "recovered": counts.recovered,
            "revenue": str(counts.recovered_value.quantize(CENTS)),
            "opted_out": counts.opted_out,
            "unconverted": counts.unconverted,
        },
    )


def totals(rows: list[StepFigures]) -> dict[str, Any]:
    """Sums over steps; the intervals of independent steps add by their variances."""

    def summed(pick: str, places: Decimal) -> Interval:
        intervals: list[Interval] = [getattr(row, pick) for row in rows]
        expected = sum((i.exact for i in intervals), Decimal(0))
        variance = sum((i.variance for i in intervals), Decimal(0))
        return Interval.around(expected, variance, places)

    return {
        "sent": sum(row.sent for row in rows),
        "segments": sum(row.segments for row in rows),
        "cost": sum((row.cost for row in rows), Decimal(0)).quantize(CENTS),
        "unpriced": sum(row.unpriced for row in rows),
        "recoveries": summed("recoveries", TENTHS),
        "revenue": summed("revenue", CENTS),
        "opt_outs": summed("opt_outs", TENTHS),
    }
