"""Money a flow states: thresholds and discount amounts, each in a currency.

A flow gives an amount per currency (`{USD: 100, EUR: 90, NOK: 1000}`), or a plain number in
the flow's base `currency`. A cart is compared only with the figure for its own currency, or
with one converted by the store's exchange rates; a cart in a currency neither covers cannot
be compared, and the step that needed the comparison is skipped (rule `flow.currency`). Every
figure and rate is a Decimal: money never passes through a float.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal

CURRENCY_RULE = "flow.currency"
CURRENCY_CODE = re.compile(r"[A-Z]{3}")

# Minor units of the currencies that do not have two (ISO 4217), for converted discounts.
_MINOR_UNITS = {
    "BHD": 3,
    "CLP": 0,
    "IQD": 3,
    "ISK": 0,
    "JOD": 3,
    "JPY": 0,
    "KRW": 0,
    "KWD": 3,
    "LYD": 3,
    "OMR": 3,
    "PYG": 0,
    "TND": 3,
    "UGX": 0,
    "VND": 0,
    "XAF": 0,
    "XOF": 0,
}


@dataclass(frozen=True, slots=True)
class Rates:
    """A store's exchange rates: how much of `base` one unit of each other currency is worth
    (`base: USD, NOK: "0.093"` reads 1 NOK = 0.093 USD)."""

    base: str
    per_unit: Mapping[str, Decimal] = field(default_factory=dict, hash=False)

    def unit_value(self, currency: str) -> Decimal | None:
        """One unit of `currency` in the base currency; None when the store gives no rate."""
        if currency == self.base:
            return Decimal(1)
        return self.per_unit.get(currency)


@dataclass(frozen=True, slots=True)
class Amount:
    """One amount of money a flow states, as a figure per currency it names.

    `bare` is the form of flow versions stored before amounts had currencies: one number read
    in whatever currency the cart is in. New flow files cannot produce it."""

    figures: tuple[tuple[str, Decimal], ...] = ()
    bare: Decimal | None = None
    # How the flow file names it, for reasons: "amounts.large_cart", "min_value".
    label: str = field(default="amount", compare=False)

    @classmethod
    def of(cls, figures: Mapping[str, Decimal], label: str = "amount") -> Amount:
        return cls(tuple(sorted(figures.items())), label=label)

    @property
    def currencies(self) -> tuple[str, ...]:
        return tuple(code for code, _ in self.figures)

    def in_currency(self, currency: str, rates: Rates | None = None) -> Decimal | None:
        """The amount in `currency`: its own figure, else one converted through the store's
        rates from the first currency the rates know; None when neither exists."""
        if self.bare is not None:
            return self.bare
        code = currency.strip().upper()
        for named, figure in self.figures:
            if named == code:
                return figure
        if rates is None:
            return None
        target = rates.unit_value(code)
        if target is None or target <= 0:
            return None
        for named, figure in self.figures:
            unit = rates.unit_value(named)
            if unit is not None:
                return figure * unit / target
        return None

    def describe(self) -> str:
        """`USD 100, EUR 90`, for reasons and `flows check`."""
        if self.bare is not None:
            return f"{self.bare} (in the cart's currency)"
        return ", ".join(f"{code} {figure}" for code, figure in self.figures)


def round_to_minor_unit(value: Decimal, currency: str) -> Decimal:
    """A converted amount as the currency writes it (2 decimals, JPY none, KWD three)."""
    places = _MINOR_UNITS.get(currency.upper(), 2)
    return value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_EVEN)


def uncovered(
    amounts: tuple[Amount, ...], currency: str, rates: Rates | None
) -> tuple[Amount, ...]:
    """The amounts that cannot be given in `currency`."""
    return tuple(amount for amount in amounts if amount.in_currency(currency, rates) is None)


def currency_reason(missing: tuple[Amount, ...], currency: str, rates: Rates | None) -> str:
    """Why a cart in `currency` cannot be compared, naming each amount and what it covers."""
    parts = [f"{amount.label} is stated in {amount.describe()}" for amount in missing]
    if rates is None:
        how = "the store gives no exchange rates"
    elif rates.unit_value(currency) is None:
        how = f"the store's exchange rates (base {rates.base}) have no rate for {currency}"
    else:
        how = f"the store's exchange rates (base {rates.base}) cover none of those currencies"
    return f"a {currency} cart cannot be compared: {'; '.join(parts)}, and {how}"
