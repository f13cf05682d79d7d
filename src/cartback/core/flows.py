"""Flow files: the YAML that says which messages a cart gets, when, and with what content.

`parse_flow` validates a whole file and reports every problem it finds at once, each with the
file, line, dotted field path and a plain message, so `cartback flows check` can be fixed in one
pass. Templates are kept as source text; `render.check_template` checks each one here (syntax,
and the loop and range limits of the sandbox), so a flow whose template could hang a worker is
refused by `flows check` and by every process that loads it.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path

from cartback.core.conditions import (
    ENGAGEMENT_FIELDS,
    NO_EXCLUSIONS,
    Condition,
    ConditionError,
    MoneyTerms,
    ProductExclusions,
    is_reserved_name,
    parse_condition,
)
from cartback.core.locales import matches
from cartback.core.model import Cart, Channel, format_duration, parse_duration
from cartback.core.money import (
    CURRENCY_CODE,
    Amount,
    Rates,
    round_to_minor_unit,
)
from cartback.core.render import check_template
from cartback.core.yamlsrc import (
    Lines,
    SourceIssue,
    YamlSourceError,
    format_path,
    load_with_lines,
)

EXIT_EVENTS: frozenset[str] = frozenset({"order_placed", "cart_emptied", "opted_out"})
MAX_HOLDOUT_PERCENT = Decimal(50)
MAX_SMS_SEGMENTS = 10
# The shortest grace a step gets, and the one a flow may set: a tick's own delay is not lateness.
MIN_GRACE = timedelta(minutes=1)
# A condition on an earlier step's opens, clicks or deliveries planned less than this before
# its own step is warned about: the shopper has had little time to act.
DEFAULT_MIN_CONDITION_GAP = timedelta(hours=1)
# Two messages to one shopper that a hold brings together are kept this far apart (`spacing`);
# a flow may not go below a minute: two messages never go out in the same minute.
DEFAULT_SPACING = timedelta(minutes=30)
MIN_SPACING = timedelta(minutes=1)

_FLOW_KEYS = (
    "name",
    "description",
    "abandon_after",
    "enroll_when",
    "exit_on",
    "holdout",
    "channel_holdout",
    "grace",
    "spacing",
    "variants",
    "discount_exclusions",
    "language",
    "currency",
    "amounts",
    "steps",
)
_STEP_KEYS = (
    "id",
    "at",
    "channel",
    "when",
    "max_segments",
    "body",
    "subject",
    "html",
    "locales",
    "variant_overrides",
    "discount",
)
_CONTENT_KEYS = ("body", "subject", "html")
_VARIANT_KEYS = ("name", "weight")
_DISCOUNT_KEYS = ("code", "pool", "unique", "percent", "amount", "min_value", "expires_after")

_FLOW_NAME = re.compile(r"[a-z0-9_-]+")
_STEP_ID = re.compile(r"[a-z][a-z0-9_]*")
_VARIANT_NAME = re.compile(r"[A-Za-z0-9_-]+")
_LOCALE = re.compile(r"[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})*")
_CODE = re.compile(r"\S{1,64}")
_POOL = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_AMOUNT_NAME = re.compile(r"[a-z][a-z0-9_]*")
_BLOCK_SCALAR = re.compile(r":\s*[|>][-+0-9]*\s*(?:#.*)?$")


# ---- the result -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Content:
    body: str
    subject: str | None = None
    html: str | None = None


@dataclass(frozen=True, slots=True)
class ContentOverride:
    """Replaces only the fields it sets; the rest come from the next layer (see content_for)."""

    body: str | None = None
    subject: str | None = None
    html: str | None = None


@dataclass(frozen=True, slots=True)
class VariantContent:
    override: ContentOverride
    locales: Mapping[str, ContentOverride] = field(default_factory=dict, hash=False)


@dataclass(frozen=True, slots=True)
class Discount:
    code: str | None
    pool: str | None
    unique: bool
    percent: Decimal | None
    # Money, in the cart's currency when it is used (see core.money).
    amount: Amount | None
    min_value: Amount | None
    expires_after: timedelta | None

    # The flow's `discount_exclusions`: a cart made only of these gets no discount.
    exclusions: ProductExclusions = field(default=NO_EXCLUSIONS, compare=False)

    @property
    def amounts(self) -> tuple[Amount, ...]:
        """The money this discount needs in the cart's currency."""
        return tuple(found for found in (self.min_value, self.amount) if found is not None)

    def applies_to(self, cart: Cart, rates: Rates | None = None) -> bool:
        """The cart reaches `min_value` in its own currency; a cart whose currency the amount
        cannot be given in does not (the engine skips such a step first, as flow.currency)."""
        if self.min_value is None:
            return True
        threshold = self.min_value.in_currency(cart.currency, rates)
        return threshold is not None and cart.value >= threshold

    def offered_for(self, cart: Cart, rates: Rates | None = None) -> bool:
        return self.applies_to(cart, rates) and not self.exclusions.all_of(cart)

    def amount_for(self, currency: str, rates: Rates | None = None) -> Decimal | None:
        """The amount off in `currency`, a converted one rounded to the currency's minor unit;
        None for a percent discount or a currency it cannot be given in."""
        if self.amount is None:
            return None
        value = self.amount.in_currency(currency, rates)
        if value is None:
            return None
        if any(code == currency.upper() for code in self.amount.currencies):
            return value
        return round_to_minor_unit(value, currency) if self.amount.bare is None else value


@dataclass(frozen=True, slots=True)
class Step:
    id: str
    at: timedelta
    channel: Channel
    content: Content
    locales: Mapping[str, ContentOverride] = field(hash=False)
    variant_overrides: Mapping[str, VariantContent] = field(hash=False)
    when: Condition | None
    max_segments: int
    discount: Discount | None
    line: int
    # The language of the step's own text (the flow's `language`); None: the store's default.
    language: str | None = None

    def offered_locales(self, store_default: str) -> tuple[str, ...]:
        """The locales this step has text for, its own text's language first."""
        keys = [self.language or store_default, *self.locales]
        for override in self.variant_overrides.values():
            keys.extend(override.locales)
        return tuple(dict.fromkeys(keys))

    @property
    def amounts(self) -> tuple[Amount, ...]:
        """The money the step compares or offers, each needed in the cart's currency."""
        found = self.when.amounts if self.when is not None else ()
        if self.discount is not None:
            found = (*found, *self.discount.amounts)
        return tuple(dict.fromkeys(found))

    def content_for(self, variant: str | None, locale: str | None) -> Content:
        """The variant's override (its own locale first), then the step's locale, then the
        default; each field comes from the first layer that sets it. A locale matches exactly
        ("nb-NO"), then by language ("nb")."""
        layers: list[ContentOverride] = []
        chosen = self.variant_overrides.get(variant) if variant is not None else None
        if chosen is not None:
            layers.extend(_match_locale(chosen.locales, locale))
            layers.append(chosen.override)
        layers.extend(_match_locale(self.locales, locale))
        body, subject, html = self.content.body, self.content.subject, self.content.html
        for layer in reversed(layers):
            body = layer.body if layer.body is not None else body
            subject = layer.subject if layer.subject is not None else subject
            html = layer.html if layer.html is not None else html
        return Content(body=body, subject=subject, html=html)


@dataclass(frozen=True, slots=True)
class Variant:
    name: str
    weight: int


@dataclass(frozen=True, slots=True)
class ChannelHoldout:
    """A share of the flow's carts that get every step but those of one channel."""

    channel: Channel
    percent: Decimal


@dataclass(frozen=True, slots=True)
class Flow:
    name: str
    description: str | None
    version: str
    abandon_after: timedelta
    enroll_when: Condition | None
    exit_on: frozenset[str]
    holdout_percent: Decimal
    variants: tuple[Variant, ...]
    steps: tuple[Step, ...]
    source: str
    # How late a step may still run (see core.timing.grace_for); None: the gap to the next step.
    grace: timedelta | None = None
    channel_holdout: ChannelHoldout | None = None
    exclusions: ProductExclusions = field(default=NO_EXCLUSIONS, compare=False)
    # The base currency plain amounts are in (`currency: USD`), and the named amounts.
    currency: str | None = None
    amounts: Mapping[str, Amount] = field(default_factory=dict, compare=False)
    # The least time between two messages of one enrollment (see core.timing.spacing_between).
    spacing: timedelta = DEFAULT_SPACING
    # Problems that do not stop the flow from running (printed by `flows check`).
    warnings: tuple[FlowIssue, ...] = field(default=(), compare=False)
    # The language of the steps' own text; None: the store's default language.
    language: str | None = None

    def step(self, step_id: str) -> Step:
        return self.steps[self.index_of(step_id)]

    def index_of(self, step_id: str) -> int:
        for index, step in enumerate(self.steps):
            if step.id == step_id:
                return index
        raise KeyError(f"flow {self.name!r} has no step {step_id!r}")


FlowIssue = SourceIssue


class FlowError(ValueError):
    def __init__(self, issues: Sequence[FlowIssue]) -> None:
        self.issues = list(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues))

    def __str__(self) -> str:
        return "\n".join(str(issue) for issue in self.issues)


def parse_flow(
    text: str,
    source: str = "<flow>",
    *,
    check_templates: bool = True,
    min_condition_gap: timedelta = DEFAULT_MIN_CONDITION_GAP,
) -> Flow:
    """Validate and build a flow from YAML text; FlowError lists every problem found.
    `check_templates=False` skips the template and condition-timing checks, for versions stored
    before they existed (their renders still run under the sandbox's runtime limits); there a
    plain amount without the flow's `currency` keeps its old meaning, a number in the cart's
    own currency, so carts already on such a version go on as they were.
    `min_condition_gap`: a condition reading a step planned less than this earlier is warned
    about (see `Flow.warnings`)."""
    try:
        data, lines = load_with_lines(text, source)
    except YamlSourceError as error:
        raise FlowError([FlowIssue(source, error.line, "yaml", error.message)]) from None
    parser = _Parser(source, lines, text.splitlines() if check_templates else None)
    for duplicate in lines.duplicates:
        message = f"duplicate key (first set on line {duplicate.first_line})"
        parser.issue(duplicate.path, message, line=duplicate.line)
    flow = parser.flow(data, version=hashlib.sha256(text.encode()).hexdigest()[:12])
    warnings: list[FlowIssue] = []
    if flow is not None and check_templates:
        errors, warnings = condition_timing(flow, lines, min_condition_gap)
        parser.issues.extend(errors)
        warnings.extend(locale_coverage(flow, lines))
    if parser.issues or flow is None:
        raise FlowError(sorted(parser.issues, key=lambda issue: issue.line))
    return replace(flow, warnings=tuple(warnings)) if warnings else flow


def condition_timing(
    flow: Flow, lines: Lines, min_gap: timedelta
) -> tuple[list[FlowIssue], list[FlowIssue]]:
    """(errors, warnings) for `when` conditions that read a step's delivery, opens or clicks.
    A step planned at the same time or later has had no chance of being opened: the condition
    could only ever take one branch. One planned less than `min_gap` earlier barely has."""
    errors: list[FlowIssue] = []
    warnings: list[FlowIssue] = []
    for index, step in enumerate(flow.steps):
        if step.when is None:
            continue
        path = ("steps", index, "when")
        where, name = lines.line_of(path), format_path(path)
        for read_id, outcome in sorted(step.when.step_reads):
            if outcome not in ENGAGEMENT_FIELDS:
                continue  # sent and skipped are known as soon as that step is decided
            read = flow.step(read_id)
            gap = step.at - read.at
            if gap <= timedelta(0):
                errors.append(
                    FlowIssue(
                        flow.source,
                        where,
                        name,
                        f"{read_id}.{outcome} cannot be true yet: {read_id} is planned at "
                        f"{format_duration(read.at)}, not before this step "
                        f"({format_duration(step.at)}); plan this step later",
                    )
                )
            elif gap < min_gap:
                warnings.append(
                    FlowIssue(
                        flow.source,
                        where,
                        name,
                        f"{read_id}.{outcome} is read only {format_duration(gap)} after "
                        f"{read_id} is planned (less than {format_duration(min_gap)}): "
                        "it will rarely be true",
                    )
                )
    return errors, warnings


def locale_coverage(flow: Flow, lines: Lines) -> list[FlowIssue]:
    """Warnings for a locale that only some steps speak, and for an email locale that leaves
    the subject or the body to the step: a shopper would get a message half in another
    language. Each names the step (file:line) and the language the gap falls back to."""
    base = flow.language or "the store's default language"
    spoken = [_step_locales(step) for step in flow.steps]
    everywhere = {key: name for table in spoken for key, name in table.items()}
    warnings: list[FlowIssue] = []
    for index, (step, table) in enumerate(zip(flow.steps, spoken, strict=True)):
        missing = [name for key, name in everywhere.items() if key not in table]
        if missing:
            path: tuple[str | int, ...] = ("steps", index)
            path = (*path, "locales") if step.locales else path
            others = "another step has it" if len(missing) == 1 else "other steps have them"
            warnings.append(
                FlowIssue(
                    flow.source,
                    lines.line_of(path),
                    format_path(path),
                    f"{step.id} has no wording for {', '.join(sorted(missing))} ({others}): "
                    f"those shoppers get this step in {base}",
                )
            )
        if step.channel is not Channel.EMAIL:
            continue
        for key, override in step.locales.items():
            unset = [name for name in ("subject", "body") if getattr(override, name) is None]
            if unset:
                entry = ("steps", index, "locales", key)
                warnings.append(
                    FlowIssue(
                        flow.source,
                        lines.line_of(entry),
                        format_path(entry),
                        f"sets no {' and no '.join(unset)}: {key} shoppers get the "
                        f"{' and the '.join(unset)} in {base}",
                    )
                )
    return warnings


def _step_locales(step: Step) -> dict[str, str]:
    """The locales a step has wording for, by normalised key (to the key as written)."""
    keys = list(step.locales)
    for override in step.variant_overrides.values():
        keys.extend(override.locales)
    return {_locale_key(key): key for key in keys}


def with_exclusions(flow: Flow, extra: ProductExclusions) -> Flow:
    """The flow with a store's `discount_exclusions` added to its own, in its conditions' facts
    and in every discount."""
    if extra == NO_EXCLUSIONS:
        return flow
    merged = flow.exclusions.union(extra)
    steps = tuple(
        replace(step, discount=replace(step.discount, exclusions=merged))
        if step.discount is not None
        else step
        for step in flow.steps
    )
    return replace(flow, exclusions=merged, steps=steps)


def load_flow(
    path: str | Path, *, min_condition_gap: timedelta = DEFAULT_MIN_CONDITION_GAP
) -> Flow:
    """Read a flow file (the only I/O in this module) and parse it."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise FlowError([FlowIssue(source, 1, "(file)", f"cannot read: {reason}")]) from error
    return parse_flow(text, source, min_condition_gap=min_condition_gap)


def default_flow_path() -> Path:
    """The flow shipped with cartback, used when a store configures none."""
    return Path(__file__).resolve().parent.parent / "flows" / "default.yaml"


def _locale_key(locale: str) -> str:
    return locale.strip().replace("_", "-").lower()


def _match_locale(
    table: Mapping[str, ContentOverride], locale: str | None
) -> list[ContentOverride]:
    if not locale or not table:
        return []
    wanted = _locale_key(locale)
    for key, value in table.items():
        if _locale_key(key) == wanted:
            return [value]
    for key, value in table.items():
        if matches(locale, key):
            return [value]
    return []


# ---- validation -------------------------------------------------------------------------------

FieldPath = tuple[str | int, ...]


def _describe(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _to_decimal(value: object) -> Decimal | None:
    """Exact decimals from YAML numbers or numeric text; None when it is not a finite number."""
    number: Decimal | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = Decimal(value)
    elif isinstance(value, float):
        number = Decimal(repr(value))
    elif isinstance(value, str):
        try:
            number = Decimal(value.strip())
        except InvalidOperation:
            return None
    return number if number is not None and number.is_finite() else None


def _suggest(word: str, choices: Collection[str]) -> str:
    matches = difflib.get_close_matches(word, list(choices), n=1)
    return f"; did you mean {matches[0]}?" if matches else ""


class _Parser:
    def __init__(self, source: str, lines: Lines, text_lines: list[str] | None = None) -> None:
        self.source = source
        self.lines = lines
        # The file's lines, to place a template's own line numbers; None: templates unchecked.
        self.text_lines = text_lines
        self.issues: list[FlowIssue] = []
        self.misspelled: set[FieldPath] = set()
        # Every variant name the file declares, valid or not, so overrides are not misreported.
        self.variant_names: list[str] = []
        # Set from `currency` and `amounts` before any step or condition is read.
        self.money = MoneyTerms(plain_allowed=text_lines is None)
        self.declared_amounts: list[str] = []

    def issue(self, path: Sequence[object], message: str, *, line: int | None = None) -> None:
        # Paths keep raw YAML keys (even non-text ones) so that their line can be found.
        where = self.lines.line_of(path) if line is None else line
        name = format_path(path) or "(top level)"
        self.issues.append(FlowIssue(self.source, where, name, message))

    def missing(self, path: FieldPath, message: str = "is required") -> None:
        # A misspelled key was already reported with this key as the suggestion: say it once.
        if path not in self.misspelled:
            self.issue(path, message)

    # ---- generic field readers: record an issue and return None when the value is unusable ----

    def mapping(self, value: object, path: FieldPath, what: str) -> dict[str, object] | None:
        if not isinstance(value, dict):
            self.issue(path, f"expected {what}, got {_describe(value)}")
            return None
        result: dict[str, object] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                self.issue((*path, key), f"keys must be text, got {_describe(key)}")
                continue
            result[key] = item
        return result

    def known_keys(
        self, data: Mapping[str, object], path: FieldPath, allowed: Sequence[str]
    ) -> None:
        for key in data:
            if key not in allowed:
                close = difflib.get_close_matches(key, list(allowed), n=1)
                if close and close[0] not in data:
                    self.misspelled.add((*path, close[0]))
                self.issue((*path, key), f"unknown key{_suggest(key, allowed)}")

    def text(
        self,
        data: Mapping[str, object],
        path: FieldPath,
        key: str,
        *,
        required: bool = False,
        pattern: re.Pattern[str] | None = None,
        hint: str = "",
    ) -> str | None:
        if key not in data:
            if required:
                self.missing((*path, key))
            return None
        value = data[key]
        if not isinstance(value, str):
            self.issue((*path, key), f"expected text, got {_describe(value)}")
            return None
        if not value.strip():
            self.issue((*path, key), "must not be empty")
            return None
        if pattern is not None and not pattern.fullmatch(value):
            self.issue((*path, key), f"{value!r} is not valid: {hint}")
            return None
        return value

    def duration(
        self, data: Mapping[str, object], path: FieldPath, key: str, *, required: bool = False
    ) -> timedelta | None:
        if key not in data:
            if required:
                self.missing((*path, key))
            return None
        value = data[key]
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            self.issue((*path, key), f"expected a duration like 15m, got {_describe(value)}")
            return None
        try:
            return parse_duration(value)
        except ValueError as error:
            self.issue((*path, key), str(error))
            return None

    def number(self, data: Mapping[str, object], path: FieldPath, key: str) -> Decimal | None:
        number = _to_decimal(data.get(key))
        if number is None:
            self.issue((*path, key), f"expected a number, got {_describe(data.get(key))}")
        return number

    def condition(
        self,
        data: Mapping[str, object],
        path: FieldPath,
        key: str,
        earlier: Collection[str],
        all_steps: Collection[str],
    ) -> Condition | None:
        if key not in data:
            return None
        value = data[key]
        if not isinstance(value, str):
            self.issue((*path, key), f"expected a condition as text, got {_describe(value)}")
            return None
        try:
            return parse_condition(
                value,
                earlier,
                all_steps=all_steps,
                steps_allowed=key != "enroll_when",
                money=self.money,
            )
        except ConditionError as error:
            self.issue((*path, key), str(error))
            return None

    # ---- the flow ----------------------------------------------------------------------------

    def flow(self, value: object, *, version: str) -> Flow | None:
        if value is None:
            self.issue((), "the file is empty; a flow needs name, abandon_after and steps")
            return None
        data = self.mapping(value, (), "a mapping of flow settings (name, abandon_after, steps)")
        if data is None:
            return None
        self.known_keys(data, (), _FLOW_KEYS)
        name = self.text(
            data, (), "name", required=True, pattern=_FLOW_NAME, hint="use a-z, 0-9, _ and -"
        )
        description = self.text(data, (), "description")
        abandon_after = self.duration(data, (), "abandon_after", required=True)
        exit_on = self.exit_on(data)
        holdout = self.holdout(data)
        channel_holdout = self.channel_holdout(data)
        grace = self.grace(data)
        spacing = self.spacing(data)
        variants = self.variants(data)
        currency = self.base_currency(data)
        amounts = self.named_amounts(data, currency)
        broken = frozenset(self.declared_amounts) - set(amounts)
        self.money = MoneyTerms(
            currency, amounts, plain_allowed=self.text_lines is None, broken=broken
        )
        raw_steps = self.step_list(data)
        step_ids = [
            item["id"]
            for item in raw_steps
            if isinstance(item, dict) and isinstance(item.get("id"), str)
        ]
        enroll_when = self.condition(data, (), "enroll_when", (), step_ids)
        exclusions = self.exclusions(data)
        language = self.text(
            data, (), "language", pattern=_LOCALE, hint="use a language like en or nb"
        )
        steps = self.steps(raw_steps, step_ids)
        if name is None or abandon_after is None or holdout is None or steps is None:
            return None
        if language is not None:
            steps = tuple(replace(step, language=language) for step in steps)
        if exclusions != NO_EXCLUSIONS:
            steps = tuple(
                replace(step, discount=replace(step.discount, exclusions=exclusions))
                if step.discount is not None
                else step
                for step in steps
            )
        return Flow(
            name=name,
            description=description,
            version=version,
            abandon_after=abandon_after,
            enroll_when=enroll_when,
            exit_on=exit_on,
            holdout_percent=holdout,
            variants=variants,
            steps=steps,
            source=self.source,
            grace=grace,
            channel_holdout=channel_holdout,
            exclusions=exclusions,
            language=language,
            currency=currency,
            amounts=amounts,
            spacing=spacing,
        )

    # ---- money -------------------------------------------------------------------------------

    def base_currency(self, data: Mapping[str, object]) -> str | None:
        return self.text(
            data,
            (),
            "currency",
            pattern=CURRENCY_CODE,
            hint="an ISO 4217 code in capitals, like USD or NOK",
        )

    def named_amounts(self, data: Mapping[str, object], currency: str | None) -> dict[str, Amount]:
        if "amounts" not in data:
            return {}
        path: FieldPath = ("amounts",)
        table = self.mapping(data["amounts"], path, "a mapping of names to amounts")
        if table is None:
            return {}
        found: dict[str, Amount] = {}
        self.declared_amounts = list(table)
        for name, value in table.items():
            if not _AMOUNT_NAME.fullmatch(name):
                self.issue((*path, name), f"{name!r} is not valid: use a-z, 0-9 and _")
                continue
            amount = self.money_value(value, (*path, name), f"amounts.{name}", currency)
            if amount is not None:
                found[name] = amount
        return found

    def money_value(
        self,
        value: object,
        path: FieldPath,
        label: str,
        currency: str | None,
        *,
        positive: bool = False,
    ) -> Amount | None:
        """An amount: `{USD: 100, NOK: 1000}`, or a plain number in the flow's `currency`."""
        floor = "more than 0" if positive else "0 or more"

        def usable(number: Decimal | None, where: FieldPath, raw: object) -> bool:
            if number is None:
                self.issue(where, f"expected an amount, got {_describe(raw)}")
                return False
            if number < 0 or (positive and number == 0):
                self.issue(where, f"must be {floor}, got {number}")
                return False
            return True

        if isinstance(value, dict):
            table = self.mapping(value, path, "a mapping of currency codes to amounts")
            if table is None:
                return None
            if not table:
                self.issue(path, "give at least one currency, like {USD: 100}")
                return None
            figures: dict[str, Decimal] = {}
            for code, raw in table.items():
                if not CURRENCY_CODE.fullmatch(code):
                    self.issue(
                        (*path, code),
                        f"{code!r} is not a currency: use an ISO 4217 code in capitals, like NOK",
                    )
                    continue
                number = _to_decimal(raw)
                if usable(number, (*path, code), raw):
                    assert number is not None
                    figures[code] = number
            if len(figures) != len(table):
                return None
            return Amount.of(figures, label=label)
        number = _to_decimal(value)
        if number is None:
            self.issue(
                path,
                f"expected an amount per currency like {{USD: 100, EUR: 90}}, "
                f"got {_describe(value)}",
            )
            return None
        if not usable(number, path, value):
            return None
        if currency is not None:
            return Amount.of({currency: number}, label=label)
        if self.text_lines is None:
            return Amount(bare=number, label=label)
        self.issue(
            path,
            f"{number} names no currency: give one per currency, like {{USD: {number}, "
            f"EUR: ...}}, or set the flow's base currency (currency: USD) at the top",
        )
        return None

    def exclusions(self, data: Mapping[str, object]) -> ProductExclusions:
        if "discount_exclusions" not in data:
            return NO_EXCLUSIONS
        path: FieldPath = ("discount_exclusions",)
        table = self.mapping(data["discount_exclusions"], path, "a mapping with skus and tags")
        if table is None:
            return NO_EXCLUSIONS
        self.known_keys(table, path, ("skus", "tags"))
        found: dict[str, frozenset[str]] = {}
        for key in ("skus", "tags"):
            value = table.get(key, [])
            if not isinstance(value, list) or not all(
                isinstance(item, str) and item.strip() for item in value
            ):
                self.issue((*path, key), f"expected a list of text, got {_describe(value)}")
                value = []
            found[key] = frozenset(item.strip() for item in value)
        return ProductExclusions(skus=found["skus"], tags=found["tags"])

    def exit_on(self, data: Mapping[str, object]) -> frozenset[str]:
        if "exit_on" not in data:
            return EXIT_EVENTS
        value = data["exit_on"]
        if not isinstance(value, list):
            self.issue(("exit_on",), f"expected a list like [order_placed], got {_describe(value)}")
            return EXIT_EVENTS
        events: set[str] = set()
        for index, item in enumerate(value):
            path = ("exit_on", index)
            if not isinstance(item, str) or item not in EXIT_EVENTS:
                allowed = ", ".join(sorted(EXIT_EVENTS))
                hint = _suggest(item, EXIT_EVENTS) if isinstance(item, str) else ""
                self.issue(path, f"{item!r} is not one of {allowed}{hint}")
            elif item in events:
                self.issue(path, f"{item} is listed twice")
            else:
                events.add(item)
        return frozenset(events)

    def grace(self, data: Mapping[str, object]) -> timedelta | None:
        grace = self.duration(data, (), "grace")
        if grace is not None and grace < MIN_GRACE:
            self.issue(
                ("grace",),
                f"{format_duration(grace)} is too short: a step must be allowed at least "
                f"{format_duration(MIN_GRACE)} for the timer's own delay",
            )
            return None
        return grace

    def spacing(self, data: Mapping[str, object]) -> timedelta:
        spacing = self.duration(data, (), "spacing")
        if spacing is None:
            return DEFAULT_SPACING
        if spacing < MIN_SPACING:
            self.issue(
                ("spacing",),
                f"{format_duration(spacing)} is too short: two messages to one shopper are "
                f"kept at least {format_duration(MIN_SPACING)} apart",
            )
            return DEFAULT_SPACING
        return spacing

    def channel_holdout(self, data: Mapping[str, object]) -> ChannelHoldout | None:
        if "channel_holdout" not in data:
            return None
        path: FieldPath = ("channel_holdout",)
        entry = self.mapping(data["channel_holdout"], path, "a mapping with channel and percent")
        if entry is None:
            return None
        self.known_keys(entry, path, ("channel", "percent"))
        channel = entry.get("channel")
        if channel not in ("sms", "email"):
            self.issue((*path, "channel"), f"expected sms or email, got {channel!r}")
            return None
        percent = self.holdout(entry, key="percent", path=path)
        if percent is None:
            return None
        return ChannelHoldout(Channel(channel), percent)

    def holdout(
        self, data: Mapping[str, object], key: str = "holdout", path: FieldPath = ()
    ) -> Decimal | None:
        if key not in data:
            return Decimal(0)
        value = data[key]
        if isinstance(value, str):
            value = value.strip().removesuffix("%")
        percent = _to_decimal(value)
        if percent is None:
            self.issue((*path, key), f"expected a percentage like 10%, got {data[key]!r}")
            return None
        if not Decimal(0) <= percent <= MAX_HOLDOUT_PERCENT:
            self.issue(
                (*path, key), f"{percent}% is out of range: use 0% to {MAX_HOLDOUT_PERCENT}%"
            )
            return None
        return percent

    def variants(self, data: Mapping[str, object]) -> tuple[Variant, ...]:
        value = data.get("variants")
        if value is None and "variants" not in data:
            return ()
        if not isinstance(value, list):
            self.issue(
                ("variants",), f"expected a list of {{name, weight}}, got {_describe(value)}"
            )
            return ()
        variants: list[Variant] = []
        seen: set[str] = set()
        for index, item in enumerate(value):
            path: FieldPath = ("variants", index)
            entry = self.mapping(item, path, "a mapping with name and weight")
            if entry is None:
                continue
            self.known_keys(entry, path, _VARIANT_KEYS)
            name = self.text(
                entry,
                path,
                "name",
                required=True,
                pattern=_VARIANT_NAME,
                hint="use letters, 0-9, _ and -",
            )
            weight = self.weight(entry, path)
            if name is not None and name in seen:
                self.issue((*path, "name"), f"variant {name} is declared twice")
            elif name is not None:
                seen.add(name)
                self.variant_names.append(name)
                if weight is not None:
                    variants.append(Variant(name, weight))
        return tuple(variants)

    def weight(self, entry: Mapping[str, object], path: FieldPath) -> int | None:
        if "weight" not in entry:
            self.missing((*path, "weight"))
            return None
        weight = entry["weight"]
        if isinstance(weight, bool) or not isinstance(weight, int) or weight <= 0:
            self.issue((*path, "weight"), f"must be a positive whole number, got {weight!r}")
            return None
        return weight

    def step_list(self, data: Mapping[str, object]) -> list[object]:
        if "steps" not in data:
            self.missing(("steps",))
            return []
        value = data["steps"]
        if not isinstance(value, list):
            self.issue(("steps",), f"expected a list of steps, got {_describe(value)}")
            return []
        if not value:
            self.issue(("steps",), "a flow needs at least one step")
        return value

    def steps(self, raw_steps: list[object], all_ids: Sequence[str]) -> tuple[Step, ...] | None:
        steps: list[Step] = []
        first_index: dict[str, int] = {}
        previous: tuple[str, timedelta] | None = None
        failed = not raw_steps
        for index, item in enumerate(raw_steps):
            path: FieldPath = ("steps", index)
            step_id = self.step_id(item, path, first_index, index)
            step = self.step(item, path, step_id, list(first_index), all_ids)
            if step_id is not None:
                first_index.setdefault(step_id, index)
            if step is None:
                failed = True
                continue
            if previous is not None and step.at < previous[1]:
                self.issue(
                    (*path, "at"),
                    f"{format_duration(step.at)} is earlier than the previous step "
                    f"({previous[0]} at {format_duration(previous[1])}); "
                    "steps must be in time order",
                )
                failed = True
            previous = (step.id, step.at)
            steps.append(step)
        return None if failed else tuple(steps)

    def step_id(
        self, item: object, path: FieldPath, seen: Mapping[str, int], index: int
    ) -> str | None:
        if not isinstance(item, dict):
            return None
        step_id = self.text(
            item,
            path,
            "id",
            required=True,
            pattern=_STEP_ID,
            hint="start with a-z, then a-z, 0-9 and _",
        )
        if step_id is None:
            return None
        if is_reserved_name(step_id):
            self.issue(
                (*path, "id"), f"{step_id} is a reserved word in conditions; pick another id"
            )
            return None
        if step_id in seen:
            first = seen[step_id]
            first_line = self.lines.line_of(("steps", first, "id"))
            self.issue(
                (*path, "id"), f"duplicate step id {step_id} (steps[{first}], line {first_line})"
            )
            return None
        return step_id

    def step(
        self,
        item: object,
        path: FieldPath,
        step_id: str | None,
        earlier: Sequence[str],
        all_ids: Sequence[str],
    ) -> Step | None:
        data = self.mapping(item, path, "a step (a mapping with id, at, channel, body)")
        if data is None:
            return None
        before = len(self.issues)
        self.known_keys(data, path, _STEP_KEYS)
        at = self.duration(data, path, "at", required=True)
        channel = self.channel(data, path)
        when = self.condition(data, path, "when", earlier, all_ids)
        content = self.content(data, path, channel)
        max_segments = self.max_segments(data, path, channel)
        locales = self.locales(data, path, channel, content)
        overrides = self.variant_overrides(data, path, channel, content)
        discount = self.discount(data, path) if "discount" in data else None
        if (
            len(self.issues) > before
            or step_id is None
            or at is None
            or channel is None
            or content is None
            or max_segments is None
        ):
            return None
        return Step(
            id=step_id,
            at=at,
            channel=channel,
            content=content,
            locales=locales,
            variant_overrides=overrides,
            when=when,
            max_segments=max_segments,
            discount=discount,
            line=self.lines.line_of(path),
        )

    def channel(self, data: Mapping[str, object], path: FieldPath) -> Channel | None:
        value = self.text(data, path, "channel", required=True)
        if value is None:
            return None
        try:
            return Channel(value)
        except ValueError:
            choices = [channel.value for channel in Channel]
            self.issue(
                (*path, "channel"),
                f"{value!r} is not a channel: use {' or '.join(choices)}{_suggest(value, choices)}",
            )
            return None

    def max_segments(
        self, data: Mapping[str, object], path: FieldPath, channel: Channel | None
    ) -> int | None:
        if "max_segments" not in data:
            return 1
        value = data["max_segments"]
        field_path = (*path, "max_segments")
        if channel is Channel.EMAIL:
            self.issue(field_path, "only sms steps have segments")
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            self.issue(field_path, f"expected a whole number, got {_describe(value)}")
            return None
        if not 1 <= value <= MAX_SMS_SEGMENTS:
            self.issue(field_path, f"must be 1 to {MAX_SMS_SEGMENTS}, got {value}")
            return None
        return value

    # ---- content -------------------------------------------------------------------------------

    def content(
        self, data: Mapping[str, object], path: FieldPath, channel: Channel | None
    ) -> Content | None:
        fields = self.override_fields(data, path, channel)
        if "body" not in data:
            self.missing((*path, "body"))
        if channel is Channel.EMAIL and "subject" not in data:
            self.missing((*path, "subject"), "is required for email steps")
        if fields.body is None:
            return None
        return Content(body=fields.body, subject=fields.subject, html=fields.html)

    def override_fields(
        self, data: Mapping[str, object], path: FieldPath, channel: Channel | None
    ) -> ContentOverride:
        """body/subject/html of a step or override; sms has no subject and no html."""
        values: dict[str, str | None] = {}
        for key in _CONTENT_KEYS:
            if key != "body" and key in data and channel is Channel.SMS:
                self.issue((*path, key), f"sms steps have no {key}")
                values[key] = None
            else:
                values[key] = self.text(data, path, key)
                self.template(values[key], (*path, key), html=key == "html")
        return ContentOverride(values["body"], values["subject"], values["html"])

    def template(self, source: str | None, path: FieldPath, *, html: bool) -> None:
        if source is None or self.text_lines is None:
            return
        key_line = self.lines.line_of(path)
        # A block scalar (`body: |`) starts on the line after its key; other styles on it.
        opening = self.text_lines[key_line - 1] if key_line <= len(self.text_lines) else ""
        first_line = key_line + 1 if _BLOCK_SCALAR.search(opening) else key_line
        for issue in check_template(source, html=html):
            self.issue(path, issue.message, line=first_line + issue.line - 1)

    def override(
        self,
        value: object,
        path: FieldPath,
        channel: Channel | None,
        default: Content | None,
        allowed: Sequence[str],
    ) -> tuple[ContentOverride, dict[str, object]] | None:
        data = self.mapping(value, path, f"a mapping of {', '.join(allowed)}")
        if data is None:
            return None
        self.known_keys(data, path, allowed)
        if not any(key in data for key in allowed):
            self.issue(path, f"empty override: set {' or '.join(allowed)}")
        fields = self.override_fields(data, path, channel)
        # Text and HTML parts must change together, or one email would mix two versions.
        html_involved = fields.html is not None or (
            default is not None and default.html is not None
        )
        if html_involved and (fields.body is None) != (fields.html is None):
            missing = "html" if fields.html is None else "body"
            self.issue(path, f"overrides one of body/html but not {missing}; set both")
        return fields, data

    def locales(
        self,
        data: Mapping[str, object],
        path: FieldPath,
        channel: Channel | None,
        default: Content | None,
    ) -> dict[str, ContentOverride]:
        if "locales" not in data:
            return {}
        table_path = (*path, "locales")
        table = self.locale_table(data["locales"], table_path)
        result: dict[str, ContentOverride] = {}
        for key, value in table.items():
            parsed = self.override(value, (*table_path, key), channel, default, _CONTENT_KEYS)
            if parsed is not None:
                result[key] = parsed[0]
        return result

    def locale_table(self, value: object, path: FieldPath) -> dict[str, object]:
        if not isinstance(value, dict):
            self.issue(path, f"expected a mapping of locale -> overrides, got {_describe(value)}")
            return {}
        table: dict[str, object] = {}
        normalised: dict[str, str] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                self.issue(
                    (*path, key),
                    f"locale keys must be text, got {_describe(key)}; quote it "
                    '(YAML reads no, yes, on and off as true/false: write "no")',
                )
            elif not _LOCALE.fullmatch(key):
                self.issue((*path, key), f"{key!r} is not a locale like nb or en-US")
            elif _locale_key(key) in normalised:
                self.issue((*path, key), f"same locale as {normalised[_locale_key(key)]}")
            else:
                normalised[_locale_key(key)] = key
                table[key] = item
        return table

    def variant_overrides(
        self,
        data: Mapping[str, object],
        path: FieldPath,
        channel: Channel | None,
        default: Content | None,
    ) -> dict[str, VariantContent]:
        if "variant_overrides" not in data:
            return {}
        table_path = (*path, "variant_overrides")
        table = self.mapping(
            data["variant_overrides"], table_path, "a mapping of variant -> overrides"
        )
        if table is None:
            return {}
        declared = self.variant_names
        result: dict[str, VariantContent] = {}
        for name, value in table.items():
            entry_path = (*table_path, name)
            if name not in declared:
                if declared:
                    detail = f"declared: {', '.join(declared)}{_suggest(name, declared)}"
                else:
                    detail = "the flow has no variants section"
                self.issue(entry_path, f"variant {name} is not declared ({detail})")
                continue
            parsed = self.override(value, entry_path, channel, default, (*_CONTENT_KEYS, "locales"))
            if parsed is None:
                continue
            fields, entry = parsed
            locales = self.locales(entry, entry_path, channel, default)
            result[name] = VariantContent(fields, locales)
        return result

    # ---- discount ------------------------------------------------------------------------------

    def discount(self, data: Mapping[str, object], path: FieldPath) -> Discount | None:
        discount_path = (*path, "discount")
        entry = self.mapping(data["discount"], discount_path, "a mapping (code, percent, ...)")
        if entry is None:
            return None
        before = len(self.issues)
        self.known_keys(entry, discount_path, _DISCOUNT_KEYS)
        code = self.text(entry, discount_path, "code", pattern=_CODE, hint="no spaces, at most 64")
        pool = self.text(
            entry, discount_path, "pool", pattern=_POOL, hint="use letters, 0-9, _, . and -"
        )
        unique = entry.get("unique", False)
        if not isinstance(unique, bool):
            self.issue((*discount_path, "unique"), f"expected true/false, got {_describe(unique)}")
            unique = False
        sources = [key for key in ("code", "pool") if key in entry] + (["unique"] if unique else [])
        if len(sources) != 1:
            found = f" (found {' and '.join(sources)})" if sources else ""
            self.issue(discount_path, f"set exactly one of code, pool or unique: true{found}")
        percent = self.bounded(entry, discount_path, "percent", Decimal(0), Decimal(100))
        amount = self.discount_money(entry, discount_path, "amount", positive=True)
        kinds = [key for key in ("percent", "amount") if key in entry]
        if len(kinds) != 1:
            found = " (found both)" if kinds else ""
            self.issue(discount_path, f"set exactly one of percent or amount{found}")
        min_value = self.discount_money(entry, discount_path, "min_value")
        expires_after = self.duration(entry, discount_path, "expires_after")
        if expires_after is not None and expires_after <= timedelta(0):
            self.issue((*discount_path, "expires_after"), "must be longer than 0s")
        if len(self.issues) > before:
            return None
        return Discount(code, pool, unique, percent, amount, min_value, expires_after)

    def discount_money(
        self, entry: Mapping[str, object], path: FieldPath, key: str, *, positive: bool = False
    ) -> Amount | None:
        """`min_value` or `amount`: an amount, or for min_value the name of one in `amounts`."""
        if key not in entry:
            return None
        value = entry[key]
        named = self.money.amounts
        if isinstance(value, str) and _to_decimal(value) is None and key == "min_value":
            if value in named:
                return named[value]
            if value in self.money.broken:
                self.issue((*path, key), f"{value!r} cannot be used until its amount is fixed")
                return None
            known = f"; the flow's amounts: {', '.join(sorted(named))}" if named else ""
            self.issue((*path, key), f"{value!r} is not one of the flow's amounts{known}")
            return None
        return self.money_value(value, (*path, key), key, self.money.base, positive=positive)

    def bounded(
        self,
        entry: Mapping[str, object],
        path: FieldPath,
        key: str,
        above: Decimal,
        at_most: Decimal | None,
    ) -> Decimal | None:
        """A number in (above, at_most]."""
        if key not in entry:
            return None
        number = self.number(entry, path, key)
        if number is None:
            return None
        if number <= above or (at_most is not None and number > at_most):
            upper = f" and at most {at_most}" if at_most is not None else ""
            self.issue((*path, key), f"must be more than {above}{upper}, got {number}")
            return None
        return number
