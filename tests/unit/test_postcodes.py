"""Postal code → zone: US ZIPs from the zipcodes package's data, Canadian prefixes from a table."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import pytest

from cartback.core.timezones import REGION_ZONES
from cartback.postcodes import (
    CA_LETTER_PROVINCES,
    CA_PREFIX_ZONES,
    normalize_postal_code,
    postal_zones,
)


@pytest.mark.parametrize(
    ("region", "code", "zone"),
    [
        ("FL", "33130", "America/New_York"),  # Miami
        ("FL", "32501", "America/Chicago"),  # Pensacola
        ("TX", "77002", "America/Chicago"),  # Houston
        ("TX", "79901", "America/Denver"),  # El Paso
        ("KY", "40202", "America/Kentucky/Louisville"),  # Louisville
        ("KY", "42101", "America/Chicago"),  # Bowling Green
        ("TN", "37902", "America/New_York"),  # Knoxville
        ("TN", "37201", "America/Chicago"),  # Nashville
        ("OR", "97914", "America/Boise"),  # Ontario, Oregon
        ("ID", "83814", "America/Los_Angeles"),  # Coeur d'Alene
        (None, "33130", "America/New_York"),  # no state: the ZIP alone decides
    ],
)
def test_a_us_zip_settles_the_zone(region: str | None, code: str, zone: str) -> None:
    assert postal_zones("US", region, code) == (zone,)


@pytest.mark.parametrize("code", ["33130-1234", "331301234", " 33130 ", "33130 1234"])
def test_zip_plus_four_forms(code: str) -> None:
    assert postal_zones("us", "US-FL", code) == ("America/New_York",)


@pytest.mark.parametrize(
    ("country", "region", "code"),
    [
        ("US", "FL", None),
        ("US", "FL", ""),
        ("US", "FL", "3313"),  # too short
        ("US", "FL", "ABCDE"),
        ("US", "FL", "00000"),  # not a ZIP
        ("US", "TX", "33130"),  # a Florida ZIP on a Texas address
        (None, "FL", "33130"),  # no country
        ("NO", None, "0150"),  # no postal table for Norway: one zone anyway
        ("CA", "ON", "T5J 0N3"),  # an Alberta code on an Ontario address
        ("CA", None, "D1A 1A1"),  # D starts no Canadian code
    ],
)
def test_a_code_that_settles_nothing(country: str | None, region: str | None, code: str) -> None:
    assert postal_zones(country, region, code) == ()


@pytest.mark.parametrize(
    ("region", "code", "zones"),
    [
        ("ON", "M5V 3L9", ("America/Toronto",)),
        ("ON", "m5v3l9", ("America/Toronto",)),
        ("AB", "T5J", ("America/Edmonton",)),  # a forward sortation area alone
        ("SK", "S9V 1A1", ("America/Edmonton",)),  # Lloydminster keeps Alberta time
        ("SK", "S4P 3Y2", ("America/Regina",)),
        ("QC", "G4T 1A1", ("America/Halifax",)),  # Magdalen Islands
        ("QC", "G0G 1A0", ("America/Toronto", "America/Blanc-Sablon")),
        ("NL", "A1C 5M2", ("America/St_Johns",)),
        ("NL", "A0P 1E0", ("America/Goose_Bay",)),
        ("NT", "X1A 2L9", ("America/Edmonton",)),  # Yellowknife
    ],
)
def test_a_canadian_prefix_settles_the_zone(region: str, code: str, zones: tuple[str, ...]) -> None:
    assert postal_zones("CA", region, code) == zones


@pytest.mark.parametrize(
    ("region", "code"), [("ON", "P7B 6V4"), ("BC", "V1C 2A1"), ("NU", "X0C 0C0")]
)
def test_a_canadian_prefix_outside_the_table_settles_nothing(region: str, code: str) -> None:
    # Northern Ontario and the BC interior are split between zones: the province's all count.
    assert postal_zones("CA", region, code) == ()


def test_the_canadian_table_stays_inside_each_province() -> None:
    for prefix, zones in CA_PREFIX_ZONES.items():
        provinces = CA_LETTER_PROVINCES[prefix[0]]
        allowed = {name for province in provinces for name in REGION_ZONES["CA"][province]}
        assert zones, prefix
        for name in zones:
            ZoneInfo(name)
            assert name in allowed, (prefix, name)


def test_normalize_postal_code() -> None:
    assert normalize_postal_code("  k1a   0b1 ") == "K1A 0B1"
    assert normalize_postal_code("   ") is None
    assert normalize_postal_code(None) is None
    assert normalize_postal_code("9" * 40) == "9" * 16
