"""A store's own send policy: cooldowns, caps, and jurisdiction rules made stricter.

Written as YAML, checked with every problem reported as `file:line: field: message`:

    sms_cooldown: 4h                  # no SMS within 4 h of another (default 2h)
    sms_cap: {count: 2, window: 24h}  # at most 2 SMS a day (default 3/24h); `null` for none
    email_cooldown: 16h               # default 0
    email_cap: {count: 3, window: 7d} # default none
    rules:                            # shipped rules made stricter, or store.* rules added
      - name: us.quiet_hours
        window: {mon-sun: "09:00-20:00"}
    exchange_rates:                   # for flows with a base currency: 1 NOK = 0.093 USD
      base: USD
      NOK: "0.093"
      EUR: "1.08"
    discount_exclusions:              # products no flow's discount covers, added to each
      skus: [GIFT-50]                 # flow's own list (by SKU or product id)
      tags: [no-discount]             # a cart with one of these tags is excluded as a whole

Jurisdiction rules can only be tightened: an override that would loosen one is an error.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from cartback.core.conditions import ProductExclusions
from cartback.core.jurisdiction import PolicyConfigError, validate_overrides
from cartback.core.model import parse_duration
from cartback.core.money import CURRENCY_CODE, Rates
from cartback.core.policy import Cap, StorePolicy
from cartback.core.yamlsrc import (
    Lines,
    SourceIssue,
    YamlSourceError,
    format_path,
    load_with_lines,
)

KEYS = (
    "sms_cooldown",
    "email_cooldown",
    "sms_cap",
    "email_cap",
    "rules",
    "exchange_rates",
    "discount_exclusions",
)
_DEFAULTS = StorePolicy()


PolicyIssue = SourceIssue


class StorePolicyError(ValueError):
    def __init__(self, issues: list[PolicyIssue]) -> None:
        super().__init__("\n".join(map(str, issues)))
        self.issues = issues


def parse_store_policy_text(text: str, source: str) -> dict[str, Any]:
    """Check a policy file; return its settings as stored (plain JSON-able values)."""
    try:
        data, lines = load_with_lines(text, source)
    except YamlSourceError as error:
        raise StorePolicyError([PolicyIssue(source, error.line, "yaml", error.message)]) from None
    return check(data if data is not None else {}, source, lines)


def check(data: object, source: str = "<policy>", lines: Lines | None = None) -> dict[str, Any]:
    issues: list[PolicyIssue] = []

    def issue(path: tuple[object, ...], message: str) -> None:
        line = lines.line_of(path) if lines is not None else 1
        issues.append(PolicyIssue(source, line, format_path(path) or "(top)", message))

    if not isinstance(data, Mapping):
        issue((), "expected a mapping of policy settings")
        raise StorePolicyError(issues)
    for key in data:
        if key not in KEYS:
            issue((key,), f"unknown setting; known: {', '.join(KEYS)}")
    for key in ("sms_cooldown", "email_cooldown"):
        if key in data:
            _duration(data[key], (key,), issue)
    for key in ("sms_cap", "email_cap"):
        if data.get(key) is not None:
            _cap(data[key], (key,), issue)
    if "discount_exclusions" in data:
        _exclusions(data["discount_exclusions"], ("discount_exclusions",), issue)
    rules = data.get("rules", [])
    if not isinstance(rules, list):
        issue(("rules",), "expected a list of rules")
    else:
        for index, rule in enumerate(rules):
            try:
                validate_overrides([rule])
            except (PolicyConfigError, ValueError) as error:
                issue(("rules", index), str(error))
    settings = {key: data[key] for key in KEYS if key in data}
    if "exchange_rates" in data:
        settings["exchange_rates"] = _rates(data["exchange_rates"], ("exchange_rates",), issue)
    if issues:
        raise StorePolicyError(sorted(issues, key=lambda found: found.line))
    return settings


def _rates(value: object, path: tuple[object, ...], issue: Any) -> dict[str, str]:
    """Checked rates, stored as exact decimal text: a rate never becomes a float."""
    if not isinstance(value, Mapping):
        issue(path, "expected {base: USD, NOK: 0.093, ...}: one unit of each currency in base")
        return {}
    base = value.get("base")
    if not isinstance(base, str) or not CURRENCY_CODE.fullmatch(base):
        issue((*path, "base"), "is required: an ISO 4217 code in capitals, like USD")
    stored: dict[str, str] = {"base": str(base)}
    for code, raw in value.items():
        if code == "base":
            continue
        if not isinstance(code, str) or not CURRENCY_CODE.fullmatch(code):
            issue((*path, code), f"{code!r} is not a currency: use an ISO 4217 code in capitals")
            continue
        rate = _decimal(raw)
        if rate is None or rate <= 0:
            issue((*path, code), f"expected a rate above 0 (one {code} in the base currency)")
            continue
        stored[code] = str(rate)
    return stored


def _decimal(raw: object) -> Decimal | None:
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return Decimal(raw)
    # A YAML float's repr is the shortest text that reads back as it: the number written.
    text = repr(raw) if isinstance(raw, float) else raw
    if not isinstance(text, str):
        return None
    try:
        number = Decimal(text.strip())
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


def store_rates(settings: Mapping[str, Any] | None) -> Rates | None:
    """The store's exchange rates from checked settings; None when it gives none."""
    table = (settings or {}).get("exchange_rates")
    if not table:
        return None
    return Rates(
        base=str(table["base"]),
        per_unit={code: Decimal(rate) for code, rate in table.items() if code != "base"},
    )


def _duration(value: object, path: tuple[object, ...], issue: Any) -> None:
    try:
        parse_duration(str(value))
    except ValueError as error:
        issue(path, str(error))


def _exclusions(value: object, path: tuple[object, ...], issue: Any) -> None:
    if not isinstance(value, Mapping):
        issue(path, "expected a mapping with skus and tags")
        return
    for key in value:
        if key not in ("skus", "tags"):
            issue((*path, key), "unknown key; discount_exclusions has skus and tags")
    for key in ("skus", "tags"):
        items = value.get(key, [])
        if not isinstance(items, list) or not all(
            isinstance(item, str) and item.strip() for item in items
        ):
            issue((*path, key), "expected a list of text")


def store_exclusions(settings: Mapping[str, Any] | None) -> ProductExclusions:
    """The store's `discount_exclusions` (as `check` returned them); none when unset."""
    table = (settings or {}).get("discount_exclusions") or {}
    return ProductExclusions(
        skus=frozenset(item.strip() for item in table.get("skus", ())),
        tags=frozenset(item.strip() for item in table.get("tags", ())),
    )


def _cap(value: object, path: tuple[object, ...], issue: Any) -> None:
    if not isinstance(value, Mapping):
        issue(path, "expected {count: N, window: DURATION} or null")
        return
    extra = set(value) - {"count", "window"}
    if extra:
        issue((*path, sorted(extra)[0]), "unknown key; a cap has count and window")
    count = value.get("count")
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        issue((*path, "count"), "must be a whole number of at least 1")
    if "window" not in value:
        issue((*path, "window"), "is required, like 24h")
    else:
        _duration(value["window"], (*path, "window"), issue)


def store_policy(settings: Mapping[str, Any] | None, default_zone: str) -> StorePolicy:
    """The StorePolicy from checked settings (as `check` returned them)."""
    settings = settings or {}

    def duration(key: str, default: timedelta) -> timedelta:
        return parse_duration(str(settings[key])) if key in settings else default

    def cap(key: str, default: Cap | None) -> Cap | None:
        if key not in settings:
            return default
        raw = settings[key]
        if raw is None:
            return None
        return Cap(int(raw["count"]), parse_duration(str(raw["window"])))

    return StorePolicy(
        default_zone=default_zone,
        sms_cooldown=duration("sms_cooldown", _DEFAULTS.sms_cooldown),
        email_cooldown=duration("email_cooldown", _DEFAULTS.email_cooldown),
        sms_cap=cap("sms_cap", _DEFAULTS.sms_cap),
        email_cap=cap("email_cap", _DEFAULTS.email_cap),
        rule_overrides=tuple(settings.get("rules", ())),
        rates=store_rates(settings),
    )
