"""The backtest's counts, kept per flow and step as plain sums so that the tallies of several
processes add up to the tally of one."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal


@dataclass
class StepTally:
    sent: int = 0
    segments: int = 0
    cost: Decimal = Decimal(0)
    # Messages without a price in the table: their cost is not in `cost`.
    unpriced: int = 0
    skips: Counter[str] = field(default_factory=Counter)
    defers: Counter[str] = field(default_factory=Counter)
    # Carts whose flow ended (order, emptied cart, opt-out) before this step was decided on:
    # still to come, or held (a text waiting for the morning). Not cumulative.
    exits_before: int = 0
    # Of the sends: the cart values in the report currency, their squares (for the interval),
    # and the sends whose currency the rate table cannot convert.
    value: Decimal = Decimal(0)
    value_squares: Decimal = Decimal(0)
    unconverted: int = 0
    # What the seeded draws made happen after this step's messages.
    opened: int = 0
    clicked: int = 0
    recovered: int = 0
    recovered_value: Decimal = Decimal(0)
    opted_out: int = 0

    @property
    def skipped(self) -> int:
        return sum(self.skips.values())

    @property
    def considered(self) -> int:
        """Carts whose flow settled this step: sent, or skipped for a named rule."""
        return self.sent + self.skipped

    def add(self, other: StepTally) -> None:
        for name in (
            "sent",
            "segments",
            "cost",
            "unpriced",
            "exits_before",
            "value",
            "value_squares",
            "unconverted",
            "opened",
            "clicked",
            "recovered",
            "recovered_value",
            "opted_out",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.skips.update(other.skips)
        self.defers.update(other.defers)


@dataclass
class FlowTally:
    enrolled: int = 0
    completed: int = 0
    holdout: int = 0
    exits: Counter[str] = field(default_factory=Counter)
    # Carts that matched this flow but were not enrolled, by rule.
    not_enrolled: Counter[str] = field(default_factory=Counter)
    steps: dict[str, StepTally] = field(default_factory=dict)

    def step(self, step_id: str) -> StepTally:
        found = self.steps.get(step_id)
        if found is None:
            found = self.steps[step_id] = StepTally()
        return found

    def add(self, other: FlowTally) -> None:
        self.enrolled += other.enrolled
        self.completed += other.completed
        self.holdout += other.holdout
        self.exits.update(other.exits)
        self.not_enrolled.update(other.not_enrolled)
        for step_id, tally in other.steps.items():
            self.step(step_id).add(tally)


@dataclass
class Tally:
    carts: int = 0
    shoppers: int = 0
    # Carts no flow would take (no lines, no address, or every flow's entry rules said no).
    not_enrolled: int = 0
    # Histories without a checkout (an order or an emptied cart alone) and unreadable ones.
    ignored: int = 0
    flows: dict[str, FlowTally] = field(default_factory=dict)
    # Sends by the hour of day in the shopper's own zone, per channel.
    by_hour: dict[str, list[int]] = field(default_factory=dict)
    # Sends to carts in a currency the rate table cannot convert, per currency.
    unconverted: Counter[str] = field(default_factory=Counter)

    def flow(self, name: str) -> FlowTally:
        found = self.flows.get(name)
        if found is None:
            found = self.flows[name] = FlowTally()
        return found

    def sent_at_hour(self, channel: str, hour: int) -> None:
        hours = self.by_hour.get(channel)
        if hours is None:
            hours = self.by_hour[channel] = [0] * 24
        hours[hour] += 1

    def skips_by_rule(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for flow in self.flows.values():
            total.update(flow.not_enrolled)
            for step in flow.steps.values():
                total.update(step.skips)
        return total

    def add(self, other: Tally) -> None:
        self.carts += other.carts
        self.shoppers += other.shoppers
        self.not_enrolled += other.not_enrolled
        self.ignored += other.ignored
        self.unconverted.update(other.unconverted)
        for name, flow in other.flows.items():
            self.flow(name).add(flow)
        for channel, hours in other.by_hour.items():
            mine = self.by_hour.setdefault(channel, [0] * 24)
            for hour, count in enumerate(hours):
                mine[hour] += count
