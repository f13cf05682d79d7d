"""The shopper's zone: explicit → address → phone → store, and every candidate zone."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import phonenumbers
import pytest
from hypothesis import given
from hypothesis import strategies as st
from phonenumbers import geocoder

from cartback.core.timezones import (
    COUNTRY_ZONES,
    REGION_ZONES,
    US_AREA_CODES,
    address_zones,
    candidate_zones,
    region_for_phone,
    resolve_zone,
    us_state_for_phone,
)

# fmt: off
US_STATES_AND_DC = {
    "AL", "AK", "AZ", "AR", "CA", "CO", "CT", "DE", "DC", "FL", "GA", "HI", "ID", "IL", "IN",
    "IA", "KS", "KY", "LA", "ME", "MD", "MA", "MI", "MN", "MS", "MO", "MT", "NE", "NV", "NH",
    "NJ", "NM", "NY", "NC", "ND", "OH", "OK", "OR", "PA", "RI", "SC", "SD", "TN", "TX", "UT",
    "VT", "VA", "WA", "WV", "WI", "WY",
}
# fmt: on
STATE_NAMES = {
    "Alabama": "AL",
    "Alaska": "AK",
    "Arizona": "AZ",
    "Arkansas": "AR",
    "California": "CA",
    "Colorado": "CO",
    "Connecticut": "CT",
    "Florida": "FL",
    "Georgia": "GA",
    "Idaho": "ID",
    "Illinois": "IL",
    "Indiana": "IN",
    "Iowa": "IA",
    "Kansas": "KS",
    "Kentucky": "KY",
    "Louisiana": "LA",
    "Maine": "ME",
    "Maryland": "MD",
    "Massachusetts": "MA",
    "Michigan": "MI",
    "Minnesota": "MN",
    "Mississippi": "MS",
    "Missouri": "MO",
    "Nebraska": "NE",
    "Nevada": "NV",
    "New Hampshire": "NH",
    "New Jersey": "NJ",
    "New Mexico": "NM",
    "New York": "NY",
    "North Carolina": "NC",
    "Ohio": "OH",
    "Oklahoma": "OK",
    "Oregon": "OR",
    "Pennsylvania": "PA",
    "Rhode Island": "RI",
    "South Carolina": "SC",
    "Tennessee": "TN",
    "Texas": "TX",
    "Utah": "UT",
    "Virginia": "VA",
    "Washington D.C.": "DC",
    "Washington State": "WA",
    "West Virginia": "WV",
    "Wisconsin": "WI",
}  # fmt: skip


def resolve(**fields: str | None) -> tuple[str, str, bool]:
    args: dict[str, str | None] = {"explicit": None, "country": None, "region": None, "phone": None}
    args.update(fields)
    found = resolve_zone(store_default="Europe/Oslo", **args)
    return (found.zone.key, found.source, found.ambiguous)


def candidates(**fields: str | None) -> list[str]:
    args: dict[str, str | None] = {"explicit": None, "country": None, "region": None, "phone": None}
    args.update(fields)
    return [zone.key for zone in candidate_zones(store_default="Europe/Oslo", **args)]


def test_explicit_zone_wins() -> None:
    found = resolve(explicit="America/Denver", country="US", region="FL", phone="+13055550143")
    assert found == ("America/Denver", "explicit", False)
    assert candidates(explicit="America/Denver", phone="+13055550143") == ["America/Denver"]


@pytest.mark.parametrize("bad", ["Mars/Olympus", "", "   ", "../etc/passwd", "America/"])
def test_invalid_explicit_zone_falls_through(bad: str) -> None:
    assert resolve(explicit=bad, country="US", region="NY") == (
        "America/New_York",
        "address",
        False,
    )


def test_address_single_and_multi_zone_regions() -> None:
    assert resolve(country="FR") == ("Europe/Paris", "address", False)
    assert resolve(country="us", region="US-ca") == ("America/Los_Angeles", "address", False)
    # Most Floridians are on Eastern time; the panhandle is Central, so it is ambiguous.
    assert resolve(country="US", region="FL") == ("America/New_York", "address", True)
    assert resolve(country="US", region="TX") == ("America/Chicago", "address", True)
    assert resolve(country="CA", region="QC") == ("America/Toronto", "address", True)
    assert resolve(country="AU", region="WA") == ("Australia/Perth", "address", True)
    assert resolve(country="BR", region="SP") == ("America/Sao_Paulo", "address", False)
    assert candidates(country="US", region="FL") == ["America/New_York", "America/Chicago"]


def test_country_without_region_in_a_multi_zone_country_is_ambiguous() -> None:
    assert resolve(country="US") == ("America/New_York", "address", True)
    zones = candidates(country="US")
    assert {"America/New_York", "America/Los_Angeles", "Pacific/Honolulu"} <= set(zones)
    # An unknown region code is treated as no region.
    assert candidates(country="US", region="XX") == zones


def test_phone_when_the_address_is_unknown() -> None:
    assert resolve(phone="+13055550143") == ("America/New_York", "phone", False)
    assert resolve(country="ZZ", phone="+4791234567")[1] == "phone"
    zone, source, ambiguous = resolve(phone="+61412345678")  # an Australian mobile: any zone
    assert source == "phone" and ambiguous
    assert zone == min(candidates(phone="+61412345678"))  # chosen deterministically


def test_store_default_when_nothing_else_is_known() -> None:
    assert resolve() == ("Europe/Oslo", "store", False)
    assert resolve(phone="not a number", country="Atlantis") == ("Europe/Oslo", "store", False)
    assert resolve(phone="+15555550143") == ("Europe/Oslo", "store", False)
    assert candidates() == ["Europe/Oslo"]
    with pytest.raises(ValueError, match="store default zone"):
        resolve_zone(explicit=None, country=None, region=None, phone=None, store_default="Nowhere")


def test_candidates_cover_both_address_and_phone() -> None:
    # A Miami number shipping to Los Angeles may be in either place.
    zones = candidates(country="US", region="CA", phone="+13055550143")
    assert zones == ["America/Los_Angeles", "America/New_York"]


def test_every_table_zone_exists() -> None:
    for regions in REGION_ZONES.values():
        for zones in regions.values():
            assert zones
            for name in zones:
                ZoneInfo(name)
    for zones in COUNTRY_ZONES.values():
        for name in zones:
            ZoneInfo(name)


def test_region_tables_are_complete() -> None:
    assert set(REGION_ZONES["US"]) == US_STATES_AND_DC
    assert set(REGION_ZONES["CA"]) == {
        "AB",
        "BC",
        "MB",
        "NB",
        "NL",
        "NS",
        "NT",
        "NU",
        "ON",
        "PE",
        "QC",
        "SK",
        "YT",
    }
    assert set(REGION_ZONES["AU"]) == {"ACT", "NSW", "NT", "QLD", "SA", "TAS", "VIC", "WA"}
    assert len(REGION_ZONES["BR"]) == 27


def test_area_code_table_covers_every_state() -> None:
    assert set(US_AREA_CODES.values()) == US_STATES_AND_DC
    assert len(US_AREA_CODES) > 330
    assert all(
        len(code) == 3 and code.isdigit() and code[0] in "23456789" for code in US_AREA_CODES
    )


def test_area_code_table_agrees_with_the_numbering_plan() -> None:
    for code, state in US_AREA_CODES.items():
        number = phonenumbers.parse(f"+1{code}2345678")
        assert phonenumbers.region_code_for_number(number) == "US", code
        description = geocoder.description_for_number(number, "en")
        expected = STATE_NAMES.get(description) or description.rsplit(", ", 1)[-1]
        assert expected == state, (code, description, state)


@pytest.mark.parametrize(
    ("phone", "state"),
    [
        ("+13055550143", "FL"),
        ("+1 (850) 555-0143", "FL"),
        ("+12125550143", "NY"),
        ("+12025550143", "DC"),
        ("+14055550143", "OK"),
        ("+18095550143", None),  # Dominican Republic, also +1
        ("+14165550143", None),  # Toronto
        ("+18005550143", None),  # toll free: no state
        ("+4791234567", None),
        ("", None),
        (None, None),
        ("call me", None),
    ],
)
def test_us_state_for_phone(phone: str | None, state: str | None) -> None:
    assert us_state_for_phone(phone) == state


def test_region_for_phone() -> None:
    assert region_for_phone("+13055550143") == ("US", "FL")
    assert region_for_phone("+4791234567") == ("NO", None)
    assert region_for_phone("+14165550143") == ("CA", None)
    assert region_for_phone("nonsense") == (None, None)
    assert region_for_phone("+80012345678") == (None, None)  # international freephone


def test_address_zones_for_unknown_country_is_empty() -> None:
    assert address_zones("XX", None) == ()
    assert address_zones(None, "FL") == ()


@given(st.text(max_size=20), st.text(max_size=5), st.text(max_size=20))
def test_resolution_never_fails_on_junk(explicit: str, country: str, phone: str) -> None:
    found = resolve_zone(
        explicit=explicit, country=country, region=country, phone=phone, store_default="UTC"
    )
    assert found.zone in candidate_zones(
        explicit=explicit, country=country, region=country, phone=phone, store_default="UTC"
    )


def test_postal_zones_replace_the_regions_zones() -> None:
    # Florida is Eastern and Central; a Miami ZIP settled at ingest leaves Eastern alone.
    assert [zone.key for zone in address_zones("US", "FL")] == [
        "America/New_York",
        "America/Chicago",
    ]
    settled = address_zones("US", "FL", ("America/New_York",))
    assert [zone.key for zone in settled] == ["America/New_York"]
    resolution = resolve_zone(
        explicit=None,
        country="US",
        region="FL",
        phone=None,
        store_default="UTC",
        postal_zones=("America/Chicago",),
    )
    assert (resolution.zone.key, resolution.source, resolution.ambiguous) == (
        "America/Chicago",
        "address",
        False,
    )


def test_postal_zones_keep_the_phone_as_a_candidate() -> None:
    def zones(postal: tuple[str, ...], phone: str) -> list[str]:
        found = candidate_zones(
            explicit=None,
            country="US",
            region="FL",
            phone=phone,
            store_default="UTC",
            postal_zones=postal,
        )
        return [zone.key for zone in found]

    assert zones(("America/New_York",), "+13055550143") == ["America/New_York"]
    # A Memphis number on a Miami address: the shopper may be at either.
    assert zones(("America/New_York",), "+19015550143") == ["America/New_York", "America/Chicago"]


def test_unknown_postal_zone_names_fall_back_to_the_region() -> None:
    found = address_zones("US", "FL", ("Not/AZone",))
    assert [zone.key for zone in found] == ["America/New_York", "America/Chicago"]
