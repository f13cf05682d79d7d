"""Jurisdiction rule packs: parse them from data, merge the ones that apply, apply store overrides.

A shopper can be subject to several jurisdictions (the phone number's and the shipping
address's). All their rules are kept side by side and policy enforces every one, so the strictest
wins: windows intersect, no-send days add up, every cap counts, requirements OR together.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from enum import StrEnum
from functools import lru_cache
from typing import Any

import holidays
import yaml

from cartback.core.model import Channel, Purpose, parse_duration
from cartback.core.rules import pack_texts
from cartback.core.timezones import REGION_ZONES, normalize_country, normalize_region


class PolicyConfigError(ValueError):
    """A rule pack or a store override is malformed, or an override would loosen a rule."""


WEEKDAYS: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
DAY_NAMES: tuple[str, ...] = (
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
)


class CapScope(StrEnum):
    # Every message about the same subject (a cart) on the channel.
    SUBJECT = "subject"
    # Every marketing message on the channel.
    ALL_MARKETING = "all_marketing"


# Consent bases whose validity runs out, keyed as `implied_consent_expires` names them.
EXPIRING_BASES: dict[str, str] = {
    "implied_purchase": "purchase",
    "implied_inquiry": "inquiry",
    "soft_opt_in": "soft_opt_in",
}


@dataclass(frozen=True, slots=True)
class DayWindow:
    """Allowed local wall-clock span of one day, in minutes after midnight: [start, end)."""

    start: int
    end: int

    def __str__(self) -> str:
        return f"{_clock(self.start)}–{_clock(self.end)}"

    def contains(self, minute: int) -> bool:
        return self.start <= minute < self.end


def _clock(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    # Who sets the rule, as a reason sentence starts: "Florida", "US federal law (…)".
    title: str
    source: str
    channels: frozenset[Channel]


@dataclass(frozen=True, slots=True)
class WindowRule(Rule):
    # Monday first; None means no sends that weekday.
    week: tuple[DayWindow | None, ...]


@dataclass(frozen=True, slots=True)
class NoSundaysRule(Rule):
    pass


@dataclass(frozen=True, slots=True)
class NoHolidaysRule(Rule):
    country: str
    subdivision: str | None

    def holiday_name(self, day: date) -> str | None:
        return _holiday_calendar(self.country, self.subdivision, day.year).get(day)


@dataclass(frozen=True, slots=True)
class CapRule(Rule):
    count: int
    window: timedelta
    scope: CapScope


@dataclass(frozen=True, slots=True)
class CartOnceRule(Rule):
    within: timedelta


@dataclass(frozen=True, slots=True)
class DoubleOptInRule(Rule):
    required: bool


@dataclass(frozen=True, slots=True)
class PurposeRule(Rule):
    purpose: Purpose


@dataclass(frozen=True, slots=True)
class ImpliedExpiryRule(Rule):
    # ("purchase", 730 days), …
    expiries: tuple[tuple[str, timedelta], ...]

    def expiry_for(self, basis: str) -> timedelta | None:
        return dict(self.expiries).get(basis)


@dataclass(frozen=True, slots=True)
class SoftOptInRule(Rule):
    allowed: bool


@dataclass(frozen=True, slots=True)
class OptOutInMessageRule(Rule):
    required: bool


@dataclass(frozen=True, slots=True)
class OptOutRetentionRule(Rule):
    period: timedelta


@dataclass(frozen=True, slots=True)
class StopKeywordsRule(Rule):
    words: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RuleSet:
    """Every rule that applies to one send channel for one shopper."""

    channel: Channel
    # The jurisdictions merged, e.g. ("US-FL", "US-NY") or ("default",).
    jurisdictions: tuple[str, ...]
    rules: tuple[Rule, ...]
    # Rules by kind, filled on first use: rule sets are cached and asked for every message.
    _by_kind: dict[type[Any], tuple[Any, ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )
    _day_windows: dict[int, DayWindow | None] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )
    # The hash, taken once: rule sets key the policy's caches for every message, and hashing
    # every rule each time cost more than the cached work.
    _hash: list[int] = field(
        default_factory=list, init=False, repr=False, compare=False, hash=False
    )

    def __hash__(self) -> int:
        if not self._hash:
            self._hash.append(hash((self.channel, self.jurisdictions, self.rules)))
        return self._hash[0]

    @property
    def names(self) -> frozenset[str]:
        return frozenset(rule.name for rule in self.rules)

    def _of(self, kind: type[Any]) -> tuple[Any, ...]:
        found = self._by_kind.get(kind)
        if found is None:
            found = tuple(rule for rule in self.rules if isinstance(rule, kind))
            self._by_kind[kind] = found
        return found

    @property
    def windows(self) -> tuple[WindowRule, ...]:
        return self._of(WindowRule)

    @property
    def no_sundays(self) -> tuple[NoSundaysRule, ...]:
        return self._of(NoSundaysRule)

    @property
    def no_holidays(self) -> tuple[NoHolidaysRule, ...]:
        return self._of(NoHolidaysRule)

    @property
    def caps(self) -> tuple[CapRule, ...]:
        return self._of(CapRule)

    @property
    def cart_sms_once(self) -> CartOnceRule | None:
        rules: tuple[CartOnceRule, ...] = self._of(CartOnceRule)
        return min(rules, key=lambda rule: rule.within, default=None)

    @property
    def double_opt_in(self) -> DoubleOptInRule | None:
        return next((rule for rule in self._of(DoubleOptInRule) if rule.required), None)

    @property
    def required_purposes(self) -> tuple[PurposeRule, ...]:
        return self._of(PurposeRule)

    @property
    def implied_expiries(self) -> tuple[ImpliedExpiryRule, ...]:
        return self._of(ImpliedExpiryRule)

    @property
    def soft_opt_in_allowed(self) -> bool:
        """Allowed only if some rule allows it and none forbids it."""
        rules: tuple[SoftOptInRule, ...] = self._of(SoftOptInRule)
        return bool(rules) and all(rule.allowed for rule in rules)

    @property
    def opt_out_in_every_message(self) -> OptOutInMessageRule | None:
        return next((rule for rule in self._of(OptOutInMessageRule) if rule.required), None)

    @property
    def opt_out_retention(self) -> OptOutRetentionRule | None:
        rules: tuple[OptOutRetentionRule, ...] = self._of(OptOutRetentionRule)
        return max(rules, key=lambda rule: rule.period, default=None)

    @property
    def stop_keywords_extra(self) -> tuple[str, ...]:
        rules: tuple[StopKeywordsRule, ...] = self._of(StopKeywordsRule)
        return tuple(dict.fromkeys(word for rule in rules for word in rule.words))

    def day_window(self, weekday: int) -> DayWindow | None:
        """The intersection of every window rule on a weekday (Monday = 0); None if closed."""
        if weekday not in self._day_windows:
            self._day_windows[weekday] = self._intersect_windows(weekday)
        return self._day_windows[weekday]

    def _intersect_windows(self, weekday: int) -> DayWindow | None:
        start, end = 0, 24 * 60
        for rule in self.windows:
            day = rule.week[weekday]
            if day is None:
                return None
            start, end = max(start, day.start), min(end, day.end)
        return DayWindow(start, end) if start < end else None


# --- parsing -----------------------------------------------------------------------------------

_COMMON_KEYS = frozenset({"name", "title", "source", "channel"})
_KINDS = (
    "window",
    "no_sundays",
    "no_public_holidays",
    "max_per_window",
    "cart_sms_once",
    "requires_double_opt_in",
    "requires_purpose",
    "implied_consent_expires",
    "soft_opt_in_allowed",
    "opt_out_in_every_message",
    "opt_out_retention",
    "stop_keywords_extra",
)


@dataclass(frozen=True, slots=True)
class Pack:
    name: str
    countries: frozenset[str]
    # True when rules vary by region, so an unknown region must fall back to the default pack.
    regional: bool
    sources: Mapping[str, str]
    # Rules for every country of the pack, and rules by region code (for single-country packs).
    rules: tuple[Mapping[str, Any], ...]
    regions: Mapping[str, tuple[Mapping[str, Any], ...]]


def parse_pack(name: str, text: str) -> Pack:
    """Parse and validate one pack's YAML; every rule is checked by building it once."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise PolicyConfigError(f"rule pack {name}: invalid YAML: {error}") from error
    if not isinstance(data, dict):
        raise PolicyConfigError(f"rule pack {name}: expected a mapping at the top level")
    unknown = set(data) - {"pack", "countries", "regional", "sources", "rules", "regions"}
    if unknown:
        raise PolicyConfigError(f"rule pack {name}: unknown keys {sorted(unknown)}")
    if data.get("pack") != name:
        raise PolicyConfigError(f"rule pack {name}: `pack:` must be {name!r}")
    countries = _country_list(name, data.get("countries", []))
    sources = data.get("sources", {})
    if not isinstance(sources, dict) or not all(isinstance(v, str) for v in sources.values()):
        raise PolicyConfigError(f"rule pack {name}: `sources` must map citation keys to URLs")
    rules = _rule_list(name, data.get("rules", []))
    raw_regions = data.get("regions", {})
    if not isinstance(raw_regions, dict):
        raise PolicyConfigError(f"rule pack {name}: `regions` must be a mapping")
    if raw_regions and len(countries) != 1:
        raise PolicyConfigError(f"rule pack {name}: `regions` needs exactly one country")
    regions = {str(code).upper(): _rule_list(name, items) for code, items in raw_regions.items()}
    pack = Pack(
        name=name,
        countries=frozenset(countries),
        regional=bool(data.get("regional", False)),
        sources=dict(sources),
        rules=rules,
        regions=regions,
    )
    for country in sorted(countries) or ["ZZ"]:
        for region, raw in [(None, rule) for rule in rules] + [
            (code, rule) for code, items in regions.items() for rule in items
        ]:
            if raw.get("source") not in pack.sources:
                raise PolicyConfigError(
                    f"rule {raw.get('name')}: source {raw.get('source')!r} is not listed "
                    f"in the `sources` of pack {name}"
                )
            if "no_public_holidays" in raw and len(countries) != 1:
                raise PolicyConfigError(
                    f"rule {raw.get('name')}: public holidays need a single-country pack"
                )
            build_rule(raw, country=country, region=region)
    return pack


def _country_list(pack: str, value: object) -> list[str]:
    if not isinstance(value, list):
        raise PolicyConfigError(f"rule pack {pack}: `countries` must be a list")
    codes = []
    for item in value:
        code = normalize_country(str(item))
        if code is None:
            raise PolicyConfigError(f"rule pack {pack}: {item!r} is not an ISO country code")
        codes.append(code)
    return codes


def _rule_list(pack: str, value: object) -> tuple[Mapping[str, Any], ...]:
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise PolicyConfigError(f"rule pack {pack}: rules must be a list of mappings")
    return tuple(value)


def build_rule(
    raw: Mapping[str, Any], *, country: str, region: str | None, base: Rule | None = None
) -> Rule:
    """One rule from its mapping; `base` supplies title, source and channel an override omits."""
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise PolicyConfigError(f"rule {raw!r}: needs a `name`")
    kinds = [key for key in raw if key not in _COMMON_KEYS]
    if len(kinds) != 1 or kinds[0] not in _KINDS:
        raise PolicyConfigError(
            f"rule {name}: needs exactly one of {', '.join(_KINDS)}; found {kinds or 'none'}"
        )
    kind = kinds[0]
    title = _text(raw, "title", name, base.title if base else None)
    source = _text(raw, "source", name, base.source if base else None)
    channel = raw.get("channel")
    channels = _channels(name, channel) if channel is not None else None
    if channels is None:
        if base is None:
            raise PolicyConfigError(f"rule {name}: needs a `channel` (sms, email or both)")
        channels = base.channels
    meta = {"name": name, "title": title, "source": source, "channels": channels}
    return _build_kind(kind, raw[kind], meta, country=country, region=region)


def _text(raw: Mapping[str, Any], key: str, name: str, fallback: str | None) -> str:
    value = raw.get(key, fallback)
    if not isinstance(value, str) or not value.strip():
        raise PolicyConfigError(f"rule {name}: needs a `{key}`")
    return value


def _channels(name: str, value: object) -> frozenset[Channel]:
    if value == "both":
        return frozenset(Channel)
    try:
        return frozenset({Channel(str(value))})
    except ValueError as error:
        raise PolicyConfigError(f"rule {name}: channel must be sms, email or both") from error


def _build_kind(
    kind: str, value: Any, meta: dict[str, Any], *, country: str, region: str | None
) -> Rule:
    name = meta["name"]
    if kind == "window":
        return WindowRule(**meta, week=parse_week(name, value))
    if kind in ("no_sundays", "no_public_holidays", "requires_double_opt_in"):
        flag = _flag(name, kind, value)
        if kind == "requires_double_opt_in":
            return DoubleOptInRule(**meta, required=flag)
        if not flag:
            raise PolicyConfigError(f"rule {name}: `{kind}: false` is no rule; remove it")
        if kind == "no_sundays":
            return NoSundaysRule(**meta)
        _check_calendar(name, country, region)
        return NoHolidaysRule(**meta, country=country, subdivision=region)
    if kind == "max_per_window":
        return _cap(name, value, meta)
    if kind == "cart_sms_once":
        if not isinstance(value, dict) or set(value) != {"within"}:
            raise PolicyConfigError(f"rule {name}: cart_sms_once takes {{within: <duration>}}")
        return CartOnceRule(**meta, within=_duration(name, value["within"]))
    if kind == "requires_purpose":
        try:
            return PurposeRule(**meta, purpose=Purpose(str(value)))
        except ValueError as error:
            raise PolicyConfigError(f"rule {name}: unknown purpose {value!r}") from error
    if kind == "implied_consent_expires":
        return _implied(name, value, meta)
    if kind == "soft_opt_in_allowed":
        return SoftOptInRule(**meta, allowed=_flag(name, kind, value))
    if kind == "opt_out_in_every_message":
        return OptOutInMessageRule(**meta, required=_flag(name, kind, value))
    if kind == "opt_out_retention":
        return OptOutRetentionRule(**meta, period=_duration(name, value))
    if not isinstance(value, list) or not value or not all(isinstance(w, str) for w in value):
        raise PolicyConfigError(f"rule {name}: stop_keywords_extra must be a list of words")
    return StopKeywordsRule(**meta, words=tuple(word.strip().upper() for word in value))


def _flag(name: str, kind: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise PolicyConfigError(f"rule {name}: `{kind}` must be true or false")
    return value


def _cap(name: str, value: object, meta: dict[str, Any]) -> CapRule:
    if not isinstance(value, dict) or set(value) != {"count", "window", "scope"}:
        raise PolicyConfigError(f"rule {name}: max_per_window takes count, window and scope")
    count = value["count"]
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise PolicyConfigError(f"rule {name}: count must be a whole number of at least 1")
    try:
        scope = CapScope(str(value["scope"]))
    except ValueError as error:
        raise PolicyConfigError(f"rule {name}: scope must be subject or all_marketing") from error
    window = _duration(name, value["window"])
    if window <= timedelta(0):
        raise PolicyConfigError(f"rule {name}: the cap window must be positive")
    return CapRule(**meta, count=count, window=window, scope=scope)


def _implied(name: str, value: object, meta: dict[str, Any]) -> ImpliedExpiryRule:
    allowed = set(EXPIRING_BASES.values())
    if not isinstance(value, dict) or not value or not set(value) <= allowed:
        raise PolicyConfigError(
            f"rule {name}: implied_consent_expires maps {sorted(allowed)} to durations"
        )
    expiries = tuple(sorted((str(basis), _duration(name, text)) for basis, text in value.items()))
    return ImpliedExpiryRule(**meta, expiries=expiries)


def _duration(name: str, value: object) -> timedelta:
    """parse_duration's syntax plus whole years (`10y` = 3650 days) for retention periods."""
    text = str(value).strip().lower()
    try:
        if text.endswith("y") and text[:-1].isdigit():
            return timedelta(days=365 * int(text[:-1]))
        return parse_duration(text)
    except ValueError as error:
        raise PolicyConfigError(f"rule {name}: {error}") from error


def parse_week(name: str, value: object) -> tuple[DayWindow | None, ...]:
    """`{mon-sat: "09:00-21:00", sun: closed}` → seven day windows; every day must be given."""
    if not isinstance(value, dict) or not value:
        raise PolicyConfigError(f"rule {name}: window maps days to HH:MM-HH:MM or closed")
    week: list[DayWindow | str | None] = ["unset"] * 7
    for key, span in value.items():
        window = _day_window(name, span)
        for day in _days(name, str(key)):
            if week[day] != "unset":
                raise PolicyConfigError(f"rule {name}: {WEEKDAYS[day]} is given twice")
            week[day] = window
    missing = [WEEKDAYS[day] for day, window in enumerate(week) if window == "unset"]
    if missing:
        raise PolicyConfigError(f"rule {name}: window says nothing of {', '.join(missing)}")
    return tuple(day if isinstance(day, DayWindow) else None for day in week)


def _days(name: str, key: str) -> list[int]:
    days: list[int] = []
    for part in key.lower().replace(" ", "").split(","):
        first, _, last = part.partition("-")
        if first not in WEEKDAYS or (last and last not in WEEKDAYS):
            raise PolicyConfigError(f"rule {name}: {key!r} is not a day or day range (mon-fri)")
        start, stop = WEEKDAYS.index(first), WEEKDAYS.index(last or first)
        if stop < start:
            raise PolicyConfigError(f"rule {name}: day range {part!r} runs backwards")
        days.extend(range(start, stop + 1))
    return days


def _day_window(name: str, span: object) -> DayWindow | None:
    if span == "closed":
        return None
    text = str(span).replace(" ", "")
    start_text, dash, end_text = text.partition("-")
    if not dash:
        raise PolicyConfigError(f"rule {name}: {span!r} is not HH:MM-HH:MM or closed")
    start, end = _minutes(name, start_text), _minutes(name, end_text)
    if start >= end:
        raise PolicyConfigError(f"rule {name}: window {span!r} must end after it starts")
    return DayWindow(start, end)


def _minutes(name: str, text: str) -> int:
    hours, colon, minutes = text.partition(":")
    if not (colon and hours.isdigit() and minutes.isdigit() and len(minutes) == 2):
        raise PolicyConfigError(f"rule {name}: {text!r} is not a time of day (HH:MM)")
    total = int(hours) * 60 + int(minutes)
    if int(minutes) > 59 or total > 24 * 60:
        raise PolicyConfigError(f"rule {name}: {text!r} is not a time of day (HH:MM)")
    return total


def _check_calendar(name: str, country: str, region: str | None) -> None:
    try:
        _holiday_calendar(country, region, 2026)
    except (NotImplementedError, KeyError) as error:
        raise PolicyConfigError(
            f"rule {name}: no holiday calendar for {country} {region}"
        ) from error


@lru_cache(maxsize=256)
def _holiday_calendar(country: str, subdivision: str | None, year: int) -> dict[date, str]:
    calendar = holidays.country_holidays(country, subdiv=subdivision, years=year)
    return {day: str(label) for day, label in calendar.items()}


# --- packs, merging ----------------------------------------------------------------------------


@lru_cache(maxsize=1)
def load_packs() -> tuple[Pack, ...]:
    """Every rule pack shipped with cartback, parsed and validated once per process."""
    packs = tuple(parse_pack(name, text) for name, text in pack_texts().items())
    seen: dict[str, str] = {}
    for pack in packs:
        for raw in _raw_rules(pack):
            name = str(raw["name"])
            if name in seen and seen[name] != pack.name:
                raise PolicyConfigError(
                    f"rule {name}: defined in packs {seen[name]} and {pack.name}"
                )
            if name in seen:
                raise PolicyConfigError(f"rule {name}: defined twice in pack {pack.name}")
            seen[name] = pack.name
    return packs


def _raw_rules(pack: Pack) -> Iterable[Mapping[str, Any]]:
    yield from pack.rules
    for items in pack.regions.values():
        yield from items


def all_rule_names() -> frozenset[str]:
    """The name of every rule in every shipped pack."""
    return frozenset(str(raw["name"]) for pack in load_packs() for raw in _raw_rules(pack))


def _pack(name: str) -> Pack:
    return next(pack for pack in load_packs() if pack.name == name)


def _pack_rule(name: str) -> Rule | None:
    """A shipped rule by name, built for its own pack's (first) country."""
    for pack in load_packs():
        country = min(pack.countries, default="ZZ")
        for raw in pack.rules:
            if raw["name"] == name:
                return build_rule(raw, country=country, region=None)
        for region, items in pack.regions.items():
            for raw in items:
                if raw["name"] == name:
                    return build_rule(raw, country=country, region=region)
    return None


@lru_cache(maxsize=1024)
def jurisdiction_rules(country: str | None, region: str | None) -> tuple[str, tuple[Rule, ...]]:
    """(label, rules on every channel) for one place; the default pack where nothing is known."""
    code = normalize_country(country)
    default = _pack("default")
    packs = [pack for pack in load_packs() if code is not None and code in pack.countries]
    if code is None or not packs:
        return ("default", _built(default.rules, "ZZ", None))
    region_code = normalize_region(code, region)
    known_regions = REGION_ZONES.get(code, {})
    rules: list[Rule] = []
    label = code
    fallback = False
    for pack in packs:
        rules.extend(_built(pack.rules, code, None))
        if pack.regional:
            if region_code is None or region_code not in known_regions:
                fallback = True
            else:
                label = f"{code}-{region_code}"
                rules.extend(_built(pack.regions.get(region_code, ()), code, region_code))
    if fallback:
        rules.extend(_built(default.rules, code, None))
        label = f"{code}-?"
    return (label, tuple(rules))


def _built(raws: Iterable[Mapping[str, Any]], country: str, region: str | None) -> tuple[Rule, ...]:
    return tuple(build_rule(raw, country=country, region=region) for raw in raws)


def resolve_rules(
    *,
    phone_country: str | None,
    phone_region: str | None,
    ship_country: str | None,
    ship_region: str | None,
    channel: Channel,
    store_overrides: Sequence[Mapping[str, Any]] = (),
) -> RuleSet:
    """The rules for one shopper on one channel: both the phone's and the address's jurisdiction.

    A jurisdiction whose packs set no quiet hours for the channel gets the default pack's; a
    shopper with neither jurisdiction known gets the whole default pack.
    """
    # The timer asks this for every message; the answer depends only on these few values.
    overrides_key = _overrides_key(store_overrides)
    return _resolve_cached(
        phone_country, phone_region, ship_country, ship_region, Channel(channel), overrides_key
    )


_last_overrides: tuple[Sequence[Mapping[str, Any]], str] = ((), "[]")


def _overrides_key(store_overrides: Sequence[Mapping[str, Any]]) -> str:
    """The overrides as canonical JSON. A store's policy hands the same overrides object to
    every call, so the last one's text is kept (with the object, so its id is not reused)."""
    global _last_overrides
    if not store_overrides:
        return "[]"
    if store_overrides is _last_overrides[0]:
        return _last_overrides[1]
    key = json.dumps(list(store_overrides), sort_keys=True, default=str)
    _last_overrides = (store_overrides, key)
    return key


@lru_cache(maxsize=4096)
def _resolve_cached(
    phone_country: str | None,
    phone_region: str | None,
    ship_country: str | None,
    ship_region: str | None,
    channel: Channel,
    overrides_key: str,
) -> RuleSet:
    store_overrides: list[Mapping[str, Any]] = json.loads(overrides_key)
    places = [(phone_country, phone_region), (ship_country, ship_region)]
    known = [place for place in places if normalize_country(place[0]) is not None] or [(None, None)]
    labels: list[str] = []
    rules: dict[str, Rule] = {}
    default_windows = tuple(
        rule
        for rule in _built(_pack("default").rules, "ZZ", None)
        if isinstance(rule, WindowRule) and channel in rule.channels
    )
    for country, region in known:
        label, found = jurisdiction_rules(country, region)
        on_channel = [rule for rule in found if channel in rule.channels]
        if not any(isinstance(rule, WindowRule) for rule in on_channel):
            on_channel.extend(default_windows)
        labels.append(label)
        for rule in on_channel:
            rules.setdefault(rule.name, rule)
    merged = apply_overrides(tuple(rules.values()), store_overrides)
    return RuleSet(
        channel=channel,
        jurisdictions=tuple(dict.fromkeys(labels)),
        rules=tuple(rule for rule in merged if channel in rule.channels),
    )


# --- store overrides ---------------------------------------------------------------------------


def validate_overrides(overrides: Sequence[Mapping[str, Any]]) -> tuple[Rule, ...]:
    """Check store overrides at configuration time: each must name a shipped rule and tighten
    it, or add a new rule named `store.…`. Returns the overriding rules as built."""
    built: list[Rule] = []
    for raw in overrides:
        if not isinstance(raw, Mapping):
            raise PolicyConfigError(f"store override {raw!r}: expected a mapping")
        name = raw.get("name")
        if not isinstance(name, str):
            raise PolicyConfigError(f"store override {raw!r}: needs a `name`")
        base = _pack_rule(name)
        if base is None:
            if not name.startswith("store."):
                raise PolicyConfigError(
                    f"store override {name}: no shipped rule has this name; name a new rule "
                    "store.<something>"
                )
            built.append(
                build_rule(
                    {"source": "store", "title": "The store", **raw}, country="ZZ", region=None
                )
            )
            continue
        country = base.country if isinstance(base, NoHolidaysRule) else "ZZ"
        region = base.subdivision if isinstance(base, NoHolidaysRule) else None
        rule = build_rule(raw, country=country, region=region, base=base)
        _require_tighter(base, rule)
        built.append(rule)
    names = [rule.name for rule in built]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise PolicyConfigError(f"store overrides name {', '.join(duplicates)} more than once")
    return tuple(built)


def apply_overrides(rules: tuple[Rule, ...], overrides: Sequence[Mapping[str, Any]]) -> list[Rule]:
    """Replace the applicable rules an override names and add the store's own rules."""
    replacements = {rule.name: rule for rule in validate_overrides(overrides)}
    merged = []
    for rule in rules:
        replacement = replacements.pop(rule.name, None)
        if replacement is None:
            merged.append(rule)
        elif isinstance(rule, NoHolidaysRule) and isinstance(replacement, NoHolidaysRule):
            # The calendar is the shopper's, not the pack's first country's.
            merged.append(replace(replacement, country=rule.country, subdivision=rule.subdivision))
        else:
            merged.append(replacement)
    # Overrides of rules that do not apply here are dropped; store rules always apply.
    merged.extend(rule for name, rule in replacements.items() if name.startswith("store."))
    return merged


def _require_tighter(base: Rule, new: Rule) -> None:
    def loosens(why: str) -> PolicyConfigError:
        return PolicyConfigError(f"store override of {base.name} would loosen it: {why}")

    if type(base) is not type(new):
        raise PolicyConfigError(
            f"store override of {base.name}: a {_kind(base)} rule cannot become {_kind(new)}"
        )
    if not base.channels <= new.channels:
        raise loosens("it would stop applying to a channel")
    if isinstance(base, WindowRule) and isinstance(new, WindowRule):
        for day, (old, tight) in enumerate(zip(base.week, new.week, strict=True)):
            if tight is not None and (
                old is None or tight.start < old.start or tight.end > old.end
            ):
                raise loosens(f"{DAY_NAMES[day]} {tight} is wider than {old or 'closed'}")
    elif isinstance(base, CapRule) and isinstance(new, CapRule):
        if new.count > base.count:
            raise loosens(f"cap {new.count} is higher than {base.count}")
        if new.window < base.window:
            raise loosens("a shorter window lets more messages through")
        if base.scope is CapScope.ALL_MARKETING and new.scope is CapScope.SUBJECT:
            raise loosens("a per-subject cap counts fewer messages than an all-marketing one")
    elif isinstance(base, CartOnceRule) and isinstance(new, CartOnceRule):
        if new.within > base.within:
            raise loosens(f"{new.within} is longer than {base.within}")
    elif isinstance(base, DoubleOptInRule | OptOutInMessageRule) and isinstance(
        new, DoubleOptInRule | OptOutInMessageRule
    ):
        if base.required and not new.required:
            raise loosens("the requirement cannot be switched off")
    elif isinstance(base, PurposeRule) and isinstance(new, PurposeRule):
        if base.purpose != new.purpose:
            raise loosens(f"the required purpose must stay {base.purpose}")
    elif isinstance(base, ImpliedExpiryRule) and isinstance(new, ImpliedExpiryRule):
        for basis, period in base.expiries:
            shorter = new.expiry_for(basis)
            if shorter is None or shorter > period:
                raise loosens(f"{basis} consent must expire within {period}")
    elif isinstance(base, SoftOptInRule) and isinstance(new, SoftOptInRule):
        if new.allowed and not base.allowed:
            raise loosens("soft opt-in cannot be allowed where the rule forbids it")
    elif isinstance(base, OptOutRetentionRule) and isinstance(new, OptOutRetentionRule):
        if new.period < base.period:
            raise loosens(f"opt-outs must be kept at least {base.period}")
    elif isinstance(base, StopKeywordsRule) and isinstance(new, StopKeywordsRule):
        missing = set(base.words) - set(new.words)
        if missing:
            raise loosens(f"keywords {sorted(missing)} cannot be dropped")


def _kind(rule: Rule) -> str:
    return type(rule).__name__
