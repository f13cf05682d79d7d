"""Each message the backtest sends, rendered by the worker's own compose (services/compose.py)
and counted by core/sms.py, then priced from the store's price table.

Rendering every message of a million carts would cost more than the rest of the backtest
together, and most texts repeat: the same step, language, first name and product give the same
text up to its link, whose length is fixed. So a step's result is kept under a key made of the
inputs its templates read, and composed again only for a new key.

A kept result stands in for every later cart with its key, so it must be a function of the key
alone: a render the sandbox's wall clock stopped (a long garbage collection, a busy machine) is
rendered again rather than kept, or one pause would skip that text for every cart after it and
the figures would depend on which carts a process replayed first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from jinja2 import meta

from cartback.core.flows import Content, ContentOverride, Step
from cartback.core.links import LinkRejected, checked_destination
from cartback.core.model import Cart, Channel, Contact, Enrollment, Store
from cartback.core.sandbox import parse_template, timed_out
from cartback.core.storepolicy import store_rates
from cartback.core.timezones import region_for_phone
from cartback.services.compose import ComposeError, compose
from cartback.services.reports import Money
from cartback.simulate import sample_code

# Template variables that are the same for every cart of a store (or, for links, the same
# length): they need no place in the key.
_CONSTANT = frozenset(
    {"brand", "store_name", "postal_address", "locale", "link", "unsubscribe_url", "currency"}
)


def _product(cart: Cart, _contact: Contact) -> object:
    return cart.lines[0].title if cart.lines else None


_FROM_CART_AND_CONTACT: dict[str, Callable[[Cart, Contact], object]] = {
    "first_name": lambda _cart, contact: contact.first_name,
    "last_name": lambda _cart, contact: contact.last_name,
    "product": _product,
    "items": lambda cart, _contact: cart.lines,
    "cart_value": lambda cart, _contact: cart.value,
    "cart_value_raw": lambda cart, _contact: cart.value,
}
# Read through the discount, which is in every key.
_DISCOUNT = frozenset({"discount_code", "discount_text"})


# Rendered results kept at most; a store with more distinct texts than this renders again.
MAX_KEPT = 200_000
# Renders of one message the clock may stop before the book takes it for a slow template.
RENDER_TRIES = 3


@dataclass(frozen=True, slots=True)
class Rendered:
    """A message as the dispatcher would get it: its encoding and segments (SMS), or the rule
    that stopped it."""

    channel: Channel
    segments: int | None = None
    encoding: str | None = None
    error_rule: str | None = None
    error: str | None = None


class MessageBook:
    def __init__(self, store: Store, base_url: str, money: Money) -> None:
        self.store = store
        self.base_url = base_url
        self.money = money
        # The store's exchange rates, as compose reads them: whether a discount is offered
        # can depend on them (a threshold in another currency).
        self.rates = store_rates(store.policy)
        self._rendered: dict[tuple[Any, ...], Rendered] = {}
        self._reads: dict[tuple[str, str], tuple[str, ...] | None] = {}
        self._last_link: tuple[str | None, str | None] | None = None
        self.composed = 0

    def render(
        self,
        flow_name: str,
        cart: Cart,
        contact: Contact,
        enrollment: Enrollment,
        step: Step,
        now: datetime,
    ) -> Rendered:
        reads = self._reads_of(flow_name, step)
        offered = step.discount is not None and step.discount.offered_for(cart, self.rates)
        if step.channel is Channel.EMAIL:
            # An email costs the same whatever its text: one render per step, language and
            # currency shows that the templates work and the store can send it.
            inputs: tuple[Any, ...] = ()
        elif reads is None:
            # A template reads a name the key does not follow: render this one as it comes.
            return self._compose(cart, contact, enrollment, step, now)
        else:
            inputs = tuple(_FROM_CART_AND_CONTACT[name](cart, contact) for name in reads)
        # The message's language follows from the shopper's locale and country and the
        # store's default (services.compose): both are in the key.
        key = (
            flow_name,
            step.id,
            enrollment.variant,
            contact.locale,
            contact.country,
            cart.currency,
            offered,
            self._link_problem(cart),
            inputs,
        )
        found = self._rendered.get(key)
        if found is None:
            found = self._compose(cart, contact, enrollment, step, now)
            if len(self._rendered) >= MAX_KEPT:
                self._rendered.clear()
            self._rendered[key] = found
        return found

    def cost(self, rendered: Rendered, contact: Contact) -> Decimal | None:
        """What the message costs in the report currency; None without a price for it."""
        if rendered.channel is Channel.EMAIL:
            return self.money.email_price
        facts = contact.phone_facts
        country = facts.country if facts is not None else region_for_phone(contact.phone)[0]
        price = self.money.sms_price(country)
        return None if price is None or rendered.segments is None else price * rendered.segments

    def _compose(
        self, cart: Cart, contact: Contact, enrollment: Enrollment, step: Step, now: datetime
    ) -> Rendered:
        tries = 1
        while True:
            self.composed += 1
            try:
                row = compose(
                    self.store, cart, contact, enrollment, step, now, self.base_url, sample_code
                ).outbox
            except ComposeError as error:
                if timed_out(error) and tries < RENDER_TRIES:
                    tries += 1  # the machine's pause, not the message's: render it again
                    continue
                return Rendered(step.channel, error_rule=error.rule, error=str(error))
            return Rendered(step.channel, segments=row["segments"], encoding=row["encoding"])

    def _reads_of(self, flow_name: str, step: Step) -> tuple[str, ...] | None:
        """The cart and contact inputs the step's templates read, in any language or variant,
        or None when they read a variable this key does not know how to follow."""
        cache_key = (flow_name, step.id)
        if cache_key not in self._reads:
            names = _variables(step) - _CONSTANT - _DISCOUNT
            unknown = names - set(_FROM_CART_AND_CONTACT)
            self._reads[cache_key] = None if unknown else tuple(sorted(names))
        return self._reads[cache_key]

    def _link_problem(self, cart: Cart) -> str | None:
        """Why the cart's restore URL cannot be a tracked link's destination, if it cannot;
        compose refuses the message then (rule `link`). Remembered for the cart in hand: its
        messages follow one another."""
        url = cart.restore_url
        if self._last_link is None or self._last_link[0] != url:
            fallback = f"https://{self.store.domains[0]}/cart" if self.store.domains else ""
            try:
                checked_destination(url or fallback, self.store.domains)
                problem = None
            except LinkRejected as error:
                problem = str(error)
            self._last_link = (url, problem)
        return self._last_link[1]


def _variables(step: Step) -> frozenset[str]:
    """Every variable any of the step's texts reads: its own, each language's, each variant's."""
    layers: list[Content | ContentOverride] = [step.content, *step.locales.values()]
    for variant in step.variant_overrides.values():
        layers.extend((variant.override, *variant.locales.values()))
    found: set[str] = set()
    for layer in layers:
        for source in (layer.body, layer.subject, layer.html):
            if source:
                found |= meta.find_undeclared_variables(parse_template(source))
    return frozenset(found)
