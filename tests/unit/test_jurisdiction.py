"""Rule packs: parsing and validation, merging jurisdictions, store overrides that only tighten."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cartback.core.jurisdiction import (
    CapRule,
    CapScope,
    DayWindow,
    PolicyConfigError,
    RuleSet,
    all_rule_names,
    load_packs,
    parse_pack,
    resolve_rules,
    validate_overrides,
)
from cartback.core.model import Channel


def resolve(
    phone: tuple[str | None, str | None] = (None, None),
    ship: tuple[str | None, str | None] = (None, None),
    channel: Channel = Channel.SMS,
    overrides: tuple[dict[str, Any], ...] = (),
) -> RuleSet:
    return resolve_rules(
        phone_country=phone[0],
        phone_region=phone[1],
        ship_country=ship[0],
        ship_region=ship[1],
        channel=channel,
        store_overrides=overrides,
    )


def test_packs_load_and_names_are_stable_ids() -> None:
    names = all_rule_names()
    assert {"us.fl.quiet_hours", "us.cart_sms_once", "fr.no_sundays"} <= names
    packs = {pack.name for pack in load_packs()}
    assert packs == {"default", "us", "ca", "eu", "uk", "no", "dk", "se", "fr"}
    for name in names:
        assert name == name.lower() and " " not in name
        assert name.split(".")[0] in packs


def test_every_rule_cites_a_listed_source() -> None:
    for pack in load_packs():
        for raw in [*pack.rules, *(r for items in pack.regions.values() for r in items)]:
            assert raw["source"] in pack.sources
            assert pack.sources[raw["source"]].startswith("https://")


def test_phone_and_address_jurisdictions_both_apply() -> None:
    rules = resolve(phone=("US", "FL"), ship=("US", "NY"))
    assert rules.jurisdictions == ("US-FL", "US-NY")
    assert {"us.quiet_hours", "us.fl.quiet_hours", "us.fl.cap"} <= rules.names
    assert rules.day_window(0) == DayWindow(8 * 60, 20 * 60)


def test_strictest_wins_across_jurisdictions() -> None:
    # Texas (Sunday from noon) and Connecticut (09:00-20:00): Sunday is 12:00-20:00.
    rules = resolve(phone=("US", "TX"), ship=("US", "CT"))
    assert rules.day_window(6) == DayWindow(12 * 60, 20 * 60)
    assert rules.day_window(2) == DayWindow(9 * 60, 20 * 60)
    # Alabama's Sundays join France's: the no-send days add up.
    mixed = resolve(phone=("US", "AL"), ship=("FR", None))
    assert {"us.al.no_sundays", "fr.no_sundays", "fr.no_public_holidays"} <= mixed.names
    # Requirements OR together: the US double opt-in holds for a US number shipping to Norway.
    assert resolve(phone=("US", "NY"), ship=("NO", None)).double_opt_in is not None


def test_soft_opt_in_needs_a_rule_allowing_it_and_none_forbidding_it() -> None:
    assert resolve(ship=("DE", None), channel=Channel.EMAIL).soft_opt_in_allowed
    assert resolve(ship=("GB", None), channel=Channel.EMAIL).soft_opt_in_allowed
    assert not resolve(ship=("US", "NY"), channel=Channel.EMAIL).soft_opt_in_allowed
    # The default pack forbids it, so an unknown place beats an EU address.
    assert not resolve(
        phone=("JP", None), ship=("DE", None), channel=Channel.EMAIL
    ).soft_opt_in_allowed


def test_unknown_places_fall_back_to_the_default_pack() -> None:
    nothing = resolve()
    assert nothing.jurisdictions == ("default",)
    assert {"default.quiet_hours", "default.cap"} <= nothing.names
    assert resolve(ship=("JP", None)).jurisdictions == ("default",)
    # A US number whose state is unknown or invalid gets federal rules plus the default pack.
    for region in (None, "ZZ"):
        rules = resolve(phone=("US", region))
        assert rules.jurisdictions == ("US-?",)
        assert {"us.quiet_hours", "default.quiet_hours", "default.cap"} <= rules.names


def test_default_window_fills_in_where_a_known_place_sets_none() -> None:
    germany = resolve(ship=("DE", None))
    assert "default.quiet_hours" in germany.names
    assert "default.cap" not in germany.names
    # Norway has its own window, so the default does not narrow it.
    assert "default.quiet_hours" not in resolve(ship=("NO", None)).names
    # No pack sets email quiet hours; the default's are SMS only.
    assert resolve(ship=("DE", None), channel=Channel.EMAIL).windows == ()


def test_rules_are_filtered_by_channel() -> None:
    sms = resolve(ship=("US", "FL"))
    email = resolve(ship=("US", "FL"), channel=Channel.EMAIL)
    assert "us.fl.quiet_hours" in sms.names and "us.fl.quiet_hours" not in email.names
    assert email.cart_sms_once is None
    assert all(Channel.EMAIL in rule.channels for rule in email.rules)


def test_region_and_country_spelling_is_normalised() -> None:
    assert resolve(ship=("us", "us-fl")).jurisdictions == ("US-FL",)
    assert resolve(ship=("UK", None)).jurisdictions == ("GB",)


# --- store overrides ---------------------------------------------------------------------------


def test_override_may_tighten_a_window() -> None:
    tighter = {"name": "us.fl.quiet_hours", "window": {"mon-sun": "10:00-18:00"}}
    rules = resolve(ship=("US", "FL"), overrides=(tighter,))
    assert rules.day_window(0) == DayWindow(10 * 60, 18 * 60)
    fl = next(rule for rule in rules.windows if rule.name == "us.fl.quiet_hours")
    assert fl.title == "Florida" and fl.source == "FL"


@pytest.mark.parametrize(
    "override",
    [
        {"name": "us.fl.quiet_hours", "window": {"mon-sun": "07:00-20:00"}},
        {"name": "us.fl.quiet_hours", "window": {"mon-sat": "08:00-20:00", "sun": "08:00-21:00"}},
        {"name": "us.ri.quiet_hours", "window": {"mon-sun": "09:00-18:00"}},
        {"name": "us.fl.cap", "max_per_window": {"count": 5, "window": "24h", "scope": "subject"}},
        {"name": "us.fl.cap", "max_per_window": {"count": 3, "window": "12h", "scope": "subject"}},
        {"name": "us.ok.cap", "max_per_window": {"count": 3, "window": "24h", "scope": "subject"}},
        {"name": "us.cart_sms_once", "cart_sms_once": {"within": "72h"}},
        {"name": "us.cart_sms_double_opt_in", "requires_double_opt_in": False},
        {"name": "us.cart_sms_purpose", "requires_purpose": "marketing"},
        {"name": "ca.implied_consent_expires", "implied_consent_expires": {"purchase": "800d"}},
        {"name": "default.no_soft_opt_in", "soft_opt_in_allowed": True},
        {"name": "us.va.opt_out_retention", "opt_out_retention": "5y"},
        {"name": "no.stop_keywords", "stop_keywords_extra": ["STOPP"]},
        {"name": "us.email_opt_out", "opt_out_in_every_message": False},
        {"name": "fr.quiet_hours", "channel": "email", "window": {"mon-sun": "09:00-20:00"}},
    ],
)
def test_override_that_loosens_raises_naming_the_rule(override: dict[str, Any]) -> None:
    with pytest.raises(PolicyConfigError, match=override["name"].replace(".", r"\.")):
        resolve(ship=("US", "NY"), overrides=(override,))


@pytest.mark.parametrize(
    "override",
    [
        {
            "name": "us.fl.cap",
            "max_per_window": {"count": 2, "window": "48h", "scope": "all_marketing"},
        },
        {"name": "us.cart_sms_once", "cart_sms_once": {"within": "24h"}},
        {
            "name": "ca.implied_consent_expires",
            "implied_consent_expires": {"purchase": "365d", "inquiry": "90d"},
        },
        {"name": "eu.soft_opt_in_allowed", "soft_opt_in_allowed": False},
        {"name": "us.va.opt_out_retention", "opt_out_retention": "20y"},
        {"name": "no.stop_keywords", "stop_keywords_extra": ["STOPP", "AVMELD", "SLUTT"]},
        {"name": "fr.no_sundays", "channel": "both", "no_sundays": True},
    ],
)
def test_tightening_overrides_are_accepted(override: dict[str, Any]) -> None:
    (rule,) = validate_overrides((override,))
    assert rule.name == override["name"]


def test_cap_override_applies() -> None:
    override = {
        "name": "us.fl.cap",
        "max_per_window": {"count": 1, "window": "24h", "scope": "subject"},
    }
    (cap,) = resolve(ship=("US", "FL"), overrides=(override,)).caps
    assert isinstance(cap, CapRule) and cap.count == 1 and cap.scope is CapScope.SUBJECT


def test_store_may_add_its_own_rules_but_not_invent_pack_names() -> None:
    own = {"name": "store.quiet_hours", "channel": "both", "window": {"mon-sun": "10:00-19:00"}}
    rules = resolve(ship=("US", "NY"), channel=Channel.EMAIL, overrides=(own,))
    assert rules.day_window(3) == DayWindow(10 * 60, 19 * 60)
    assert next(r for r in rules.rules if r.name == "store.quiet_hours").source == "store"
    with pytest.raises(PolicyConfigError, match=r"us\.fl\.quiet_hour\b"):
        validate_overrides(({"name": "us.fl.quiet_hour", "window": {"mon-sun": "10:00-18:00"}},))
    with pytest.raises(PolicyConfigError, match="more than once"):
        validate_overrides((own, own))


def test_override_of_a_rule_elsewhere_is_checked_but_not_applied() -> None:
    tighter = {"name": "us.fl.quiet_hours", "window": {"mon-sun": "10:00-18:00"}}
    assert "us.fl.quiet_hours" not in resolve(ship=("US", "NY"), overrides=(tighter,)).names


def test_override_cannot_change_kind() -> None:
    with pytest.raises(PolicyConfigError, match="cannot become"):
        validate_overrides(({"name": "us.fl.quiet_hours", "no_sundays": True},))


@given(
    start=st.integers(0, 23 * 60),
    length=st.integers(1, 24 * 60),
)
def test_any_window_override_is_accepted_iff_inside_florida(start: int, length: int) -> None:
    end = min(24 * 60, start + length)
    text = f"{start // 60:02d}:{start % 60:02d}-{end // 60:02d}:{end % 60:02d}"
    override = {"name": "us.fl.quiet_hours", "window": {"mon-sun": text}}
    inside = start >= 8 * 60 and end <= 20 * 60
    if inside:
        assert validate_overrides((override,))[0].name == "us.fl.quiet_hours"
    else:
        with pytest.raises(PolicyConfigError, match="loosen"):
            validate_overrides((override,))


# --- malformed packs ---------------------------------------------------------------------------

GOOD_RULE = """
  - name: xx.quiet_hours
    title: Testland
    source: SRC
    channel: sms
    window: {mon-sun: "08:00-20:00"}
"""


def pack(rules: str = GOOD_RULE, header: str = "pack: xx\ncountries: [DE]\n") -> str:
    return header + "sources:\n  SRC: https://example.org\nrules:" + rules


def test_a_good_pack_parses() -> None:
    parsed = parse_pack("xx", pack())
    assert parsed.countries == frozenset({"DE"})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (pack(GOOD_RULE.replace("mon-sun", "mon-sat")), "says nothing of sun"),
        (pack(GOOD_RULE.replace('"08:00-20:00"', '"20:00-08:00"')), "must end after"),
        (pack(GOOD_RULE.replace('"08:00-20:00"', '"8am-8pm"')), "not a time of day"),
        (pack(GOOD_RULE.replace("mon-sun", '"mon-fri,fri-sun"')), "fri is given twice"),
        (pack(GOOD_RULE.replace("mon-sun", "sun-mon")), "runs backwards"),
        (pack(GOOD_RULE.replace("channel: sms", "channel: fax")), "channel must be"),
        (pack(GOOD_RULE.replace("source: SRC", "source: NOPE")), "not listed"),
        (pack(GOOD_RULE + "    no_sundays: true\n"), "exactly one of"),
        (pack(GOOD_RULE.replace("window:", "windoe:")), "exactly one of"),
        (pack(GOOD_RULE.replace("    title: Testland\n", "")), "needs a `title`"),
        (pack(header="pack: yy\ncountries: [DE]\n"), "must be 'xx'"),
        (pack(header="pack: xx\ncountries: [Germany]\n"), "not an ISO country code"),
        (pack(header="pack: xx\ncountries: [DE]\nextra: 1\n"), "unknown keys"),
        ("pack: xx\nrules: [", "invalid YAML"),
        (
            pack(
                """
  - name: xx.cap
    title: Testland
    source: SRC
    channel: sms
    max_per_window: {count: 0, window: 24h, scope: subject}
"""
            ),
            "at least 1",
        ),
        (
            pack(
                """
  - name: xx.cap
    title: Testland
    source: SRC
    channel: sms
    max_per_window: {count: 3, window: 24h, scope: everyone}
"""
            ),
            "scope must be",
        ),
        (
            pack(
                """
  - name: xx.once
    title: Testland
    source: SRC
    channel: sms
    cart_sms_once: {within: forever}
"""
            ),
            "invalid duration",
        ),
        (
            pack(
                """
  - name: xx.holidays
    title: Testland
    source: SRC
    channel: sms
    no_public_holidays: false
"""
            ),
            "is no rule",
        ),
        (
            pack(
                """
  - name: xx.expiry
    title: Testland
    source: SRC
    channel: both
    implied_consent_expires: {handshake: 30d}
"""
            ),
            "implied_consent_expires maps",
        ),
    ],
)
def test_malformed_packs_are_rejected(text: str, message: str) -> None:
    with pytest.raises(PolicyConfigError, match=message):
        parse_pack("xx", text)


def test_holiday_rule_needs_a_known_calendar() -> None:
    text = """
pack: xx
countries: [US]
sources: {SRC: https://example.org}
regions:
  QQ:
    - name: xx.qq.holidays
      title: Nowhere
      source: SRC
      channel: sms
      no_public_holidays: true
"""
    with pytest.raises(PolicyConfigError, match="no holiday calendar"):
        parse_pack("xx", text)


def test_years_in_retention_periods() -> None:
    text = pack(
        """
  - name: xx.retention
    title: Testland
    source: SRC
    channel: sms
    opt_out_retention: 3y
"""
    )
    parsed = parse_pack("xx", text)
    assert parsed.rules[0]["opt_out_retention"] == "3y"
    rules = resolve(ship=("US", "VA"))
    assert rules.opt_out_retention is not None
    assert rules.opt_out_retention.period == timedelta(days=3650)
