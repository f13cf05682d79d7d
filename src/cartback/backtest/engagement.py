"""What shoppers do with a message, as a seeded model: the published rates by default, a YAML
file or `--rate key=value` options on top.

Draws are hashes of the seed, the cart and the step, not a random stream: a cart gets the same
draws whichever process replays it and in whatever order, so a run is reproducible at any
number of workers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from cartback.core.flows import Flow, Step
from cartback.core.model import Channel, parse_duration
from cartback.core.yamlsrc import Lines, SourceIssue, YamlSourceError, format_path, load_with_lines

_ONE = Decimal(1)


@dataclass(frozen=True, slots=True)
class StepRates:
    """Per message sent: `open` (email only) and `click` are shares of recipients; `recover` is
    the share of clickers who order; `opt_out` the share of recipients who opt out."""

    click: Decimal
    recover: Decimal
    opt_out: Decimal
    open: Decimal | None = None

    @property
    def recovery(self) -> Decimal:
        """The chance that this message brings the order: a click, then an order."""
        return self.click * self.recover


@dataclass(frozen=True, slots=True)
class ChannelRates:
    """Rates by the step's rank among the flow's steps on the channel (1st, 2nd, 3rd and later:
    the last value repeats)."""

    click: tuple[Decimal, ...]
    recover: tuple[Decimal, ...]
    opt_out: tuple[Decimal, ...]
    open: tuple[Decimal, ...] = ()

    def at(self, rank: int) -> StepRates:
        def pick(values: tuple[Decimal, ...]) -> Decimal:
            return values[min(rank, len(values) - 1)]

        return StepRates(
            click=pick(self.click),
            recover=pick(self.recover),
            opt_out=pick(self.opt_out),
            open=pick(self.open) if self.open else None,
        )


def _d(*values: str) -> tuple[Decimal, ...]:
    return tuple(Decimal(value) for value in values)


# Sources (docs/flows.md, "Simulating a flow"): email opens and clicks from Klaviyo's abandoned
# cart benchmark (9.3 million deliveries; first email 63.03 % open, 13.61 % click; later emails
# 41.18 % and 9.50 % on average, falling to 8.05 %); the share of email clickers who order from
# Omnisend (over 35 %); SMS click-through (36 %) and orders per click (28.7 %) from SaleCycle,
# falling for later texts as emails do; opt-outs per message from OneSignal's ranges (SMS 0.5 to
# 2 %, email 0.2 to 0.5 %).
DEFAULT_SMS = ChannelRates(
    click=_d("0.36", "0.29", "0.27"),
    recover=_d("0.287"),
    opt_out=_d("0.01"),
)
DEFAULT_EMAIL = ChannelRates(
    open=_d("0.6303", "0.4118", "0.35"),
    click=_d("0.1361", "0.095", "0.0805"),
    recover=_d("0.35"),
    opt_out=_d("0.003"),
)


@dataclass(frozen=True, slots=True)
class Delays:
    """How long after the send the shopper acts: conditions on opens and clicks see them only
    from then on, and an order ends the flow from then on."""

    open: timedelta = timedelta(minutes=30)
    click: timedelta = timedelta(hours=1)
    order: timedelta = timedelta(minutes=30)
    opt_out: timedelta = timedelta(minutes=10)


@dataclass(frozen=True, slots=True)
class Engagement:
    sms: ChannelRates = DEFAULT_SMS
    email: ChannelRates = DEFAULT_EMAIL
    # By step id, replacing the rank's rates field by field.
    steps: Mapping[str, Mapping[str, Decimal]] = field(default_factory=dict)
    delays: Delays = Delays()

    def rates_for(self, flow: Flow, step: Step) -> StepRates:
        same_channel = [s.id for s in flow.steps if s.channel is step.channel]
        rank = same_channel.index(step.id)
        base = (self.sms if step.channel is Channel.SMS else self.email).at(rank)
        override = self.steps.get(step.id, {})
        rates = replace(base, **dict(override))
        if step.channel is Channel.EMAIL and rates.open is not None and rates.click > rates.open:
            raise EngagementError(
                [f"steps.{step.id}.click: {rates.click} is more than its open rate {rates.open}"]
            )
        return rates


class EngagementError(ValueError):
    def __init__(self, issues: Sequence[str]) -> None:
        super().__init__("; ".join(issues))
        self.issues = tuple(issues)


def draw(seed: int, *parts: str) -> float:
    """A number in [0, 1) fixed by the seed and the parts (cart token, step, what is drawn)."""
    digest = hashlib.blake2b("\x1f".join((str(seed), *parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


# --- reading rates ---------------------------------------------------------------------------

_RATE_KEYS = ("click", "recover", "opt_out", "open")
_DELAY_KEYS = ("open", "click", "order", "opt_out")


def load_engagement(text: str | None, source: str, options: Sequence[str] = ()) -> Engagement:
    """The defaults, then the YAML document (if any), then `key=value` options such as
    `sms.click=0.3`, `email.open=0.5,0.4` or `steps.sms3.recover=0.4`. Raises EngagementError
    with `file:line: field: message` lines (`--rate: ...` for an option)."""
    document: dict[str, Any] = {}
    lines = Lines({(): 1})
    issues: list[str] = []
    if text is not None:
        try:
            loaded, lines = load_with_lines(text, source)
        except YamlSourceError as error:
            raise EngagementError([str(error)]) from None
        if loaded is not None and not isinstance(loaded, dict):
            raise EngagementError([str(SourceIssue(source, 1, "file", "expected a mapping"))])
        document = loaded or {}
    engagement = _parse(
        document,
        lambda path, message: issues.append(
            str(SourceIssue(source, lines.line_of(path), format_path(path), message))
        ),
    )
    for option in options:
        key, sep, value = option.partition("=")
        if not sep:
            issues.append(f"--rate: {option!r}: expected key=value, like sms.click=0.3")
            continue
        overlay = _nest(key.strip().split("."), value.strip())
        engagement = _parse(
            overlay,
            lambda path, message: issues.append(f"--rate: {format_path(path)}: {message}"),
            engagement,
        )
    if issues:
        raise EngagementError(issues)
    return engagement


def _nest(keys: list[str], value: str) -> dict[str, Any]:
    document: Any = value.split(",") if "," in value else value
    for key in reversed(keys):
        document = {key: document}
    return dict(document)


Report = Any  # Callable[[tuple[object, ...], str], None]


def _parse(
    document: Mapping[str, Any], report: Report, base: Engagement | None = None
) -> Engagement:
    base = base or Engagement()
    for key in set(document) - {"sms", "email", "steps", "delays"}:
        report((key,), "unknown key; expected sms, email, steps or delays")
    sms = _channel(document.get("sms"), ("sms",), base.sms, report, with_open=False)
    email = _channel(document.get("email"), ("email",), base.email, report, with_open=True)
    steps = {step: dict(rates) for step, rates in base.steps.items()}
    raw_steps = document.get("steps") or {}
    if not isinstance(raw_steps, Mapping):
        report(("steps",), "expected step id: rates")
        raw_steps = {}
    for step_id, raw in raw_steps.items():
        if not isinstance(raw, Mapping):
            report(("steps", step_id), "expected a mapping of rates")
            continue
        for name, value in raw.items():
            path = ("steps", step_id, name)
            if name not in _RATE_KEYS:
                report(path, f"unknown rate; expected one of {', '.join(_RATE_KEYS)}")
                continue
            rate = _rate(value, path, report)
            if rate is not None:
                steps.setdefault(str(step_id), {})[name] = rate
    return Engagement(sms=sms, email=email, steps=steps, delays=_delays(document, base, report))


def _channel(
    raw: Any, path: tuple[str, ...], base: ChannelRates, report: Report, *, with_open: bool
) -> ChannelRates:
    if raw is None:
        return base
    if not isinstance(raw, Mapping):
        report(path, "expected a mapping of rates")
        return base
    known = _RATE_KEYS if with_open else _RATE_KEYS[:3]
    values: dict[str, tuple[Decimal, ...]] = {}
    for name, value in raw.items():
        if name not in known:
            report((*path, name), f"unknown rate; expected one of {', '.join(known)}")
            continue
        items = value if isinstance(value, list) else [value]
        parsed = [_rate(item, (*path, name), report) for item in items]
        if not parsed:
            report((*path, name), "expected a rate or a list of rates")
        elif all(rate is not None for rate in parsed):
            values[name] = tuple(rate for rate in parsed if rate is not None)
    return replace(base, **values)


def _rate(value: Any, path: tuple[object, ...], report: Report) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        report(path, "expected a rate between 0 and 1, like '0.25'")
        return None
    try:
        # Through str: 0.1 from YAML is the decimal 0.1, not the float's binary expansion.
        rate = Decimal(str(value).strip().rstrip("%")) / (100 if str(value).endswith("%") else 1)
    except InvalidOperation:
        report(path, f"{value!r} is not a number")
        return None
    if not (0 <= rate <= _ONE):
        report(path, f"{value} is not between 0 and 1")
        return None
    return rate


def _delays(document: Mapping[str, Any], base: Engagement, report: Report) -> Delays:
    raw = document.get("delays")
    if raw is None:
        return base.delays
    if not isinstance(raw, Mapping):
        report(("delays",), "expected a mapping of durations")
        return base.delays
    found: dict[str, timedelta] = {}
    for name, value in raw.items():
        if name not in _DELAY_KEYS:
            report(("delays", name), f"unknown delay; expected one of {', '.join(_DELAY_KEYS)}")
            continue
        try:
            found[name] = parse_duration(str(value))
        except ValueError as error:
            report(("delays", name), str(error))
    return replace(base.delays, **found)
