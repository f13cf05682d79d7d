"""A store's flows: which flow a cart enters when several could take it.

Each flow a store runs is assigned a trigger (the event type that enrolls a cart) and a priority
(1 is first). A checkout is a cart with the shopper's details, so a cart-abandonment flow also
matches a checkout event; the flow with the best priority whose trigger and `enroll_when` match
takes the cart, and every other that matched records why it did not start.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from cartback.core.flows import Flow

CHECKOUT_UPDATED = "checkout.updated"
CART_UPDATED = "cart.updated"
TRIGGERS: tuple[str, ...] = (CHECKOUT_UPDATED, CART_UPDATED)
# The flow triggers each event type sets off.
_SETS_OFF: dict[str, frozenset[str]] = {
    CHECKOUT_UPDATED: frozenset({CHECKOUT_UPDATED, CART_UPDATED}),
    CART_UPDATED: frozenset({CART_UPDATED}),
}
# A shopper in one flow is not enrolled by another flow's trigger for this long after it started.
DEFAULT_SUPPRESSION = timedelta(days=3)

PRIORITY_RULE = "flow_priority"
SUPPRESSION_RULE = "flow_suppressed"


@dataclass(frozen=True, slots=True)
class AssignedFlow:
    flow: Flow
    priority: int
    trigger: str

    def describe(self) -> str:
        return f"flow {self.flow.name} (priority {self.priority})"


@dataclass(frozen=True, slots=True)
class Lineup:
    """A store's flows, best priority first (ties by name, so the order is always the same)."""

    flows: tuple[AssignedFlow, ...]
    suppression: timedelta = DEFAULT_SUPPRESSION

    @classmethod
    def single(cls, flow: Flow) -> Lineup:
        """One flow on checkouts: a store that never assigned flows runs its `flow_name`."""
        return cls((AssignedFlow(flow, 1, CHECKOUT_UPDATED),))

    @classmethod
    def of(cls, flows: list[AssignedFlow], suppression: timedelta = DEFAULT_SUPPRESSION) -> Lineup:
        ordered = sorted(flows, key=lambda assigned: (assigned.priority, assigned.flow.name))
        return cls(tuple(ordered), suppression)

    def triggered_by(self, event_type: str) -> tuple[AssignedFlow, ...]:
        wanted = _SETS_OFF.get(event_type, frozenset())
        return tuple(assigned for assigned in self.flows if assigned.trigger in wanted)

    def get(self, flow_name: str) -> AssignedFlow | None:
        return next((a for a in self.flows if a.flow.name == flow_name), None)


def priority_skip_reason(skipped: AssignedFlow, chosen: AssignedFlow) -> str:
    return (
        f"not enrolled in {skipped.describe()}: the cart is in {chosen.describe()}, and a cart "
        "is in one recovery flow at a time"
    )


def suppression_reason(chosen: AssignedFlow, other_flow: str, window: timedelta) -> str:
    hours = int(window.total_seconds() // 3600)
    return (
        f"not enrolled in {chosen.describe()}: the shopper is in flow {other_flow}, which "
        f"started less than {hours} h ago (the store's suppression window)"
    )
