"""The time zones a shipping address's postal code settles, derived once at ingest.

A US ZIP code names one zone (the `zipcodes` package ships the USPS ZIP list with a zone per ZIP,
offline), which decides between Eastern and Central in Florida, Kentucky or Tennessee, Central
and Mountain in Texas or the Dakotas. No maintained offline package maps Canadian postal codes to
zones, so `CA_PREFIX_ZONES` below is a small table of forward sortation area prefixes whose zone
is not in doubt; a code outside it settles nothing, and the province's zones all stay candidates.

The answer is data the core reads (`Contact.postal_zones`); the core never looks codes up.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

import zipcodes

from cartback.core.timezones import normalize_country, normalize_region, valid_zone

# Canadian postal code prefixes (the forward sortation area, or its first letter or two) whose
# zone is settled. The longest matching prefix wins. A code outside the table (P, northern Ontario:
# Eastern or Central; Nunavut, whose regions mix zones) settles nothing, and a prefix with two
# zones here keeps both: every zone they name is checked.
CA_PREFIX_ZONES: dict[str, tuple[str, ...]] = {
    "A": ("America/St_Johns",),  # Newfoundland
    "A0K": ("America/St_Johns", "America/Goose_Bay"),  # northern Newfoundland, southern Labrador
    "A0P": ("America/Goose_Bay",),  # Labrador
    "A0R": ("America/Goose_Bay",),  # western Labrador
    "A2V": ("America/Goose_Bay",),  # Labrador City
    "B": ("America/Halifax",),  # Nova Scotia
    "C": ("America/Halifax",),  # Prince Edward Island
    "E": ("America/Moncton",),  # New Brunswick
    "G": ("America/Toronto",),  # eastern Quebec
    "G0G": ("America/Toronto", "America/Blanc-Sablon"),  # Côte-Nord, Lower North Shore
    "G4T": ("America/Halifax",),  # Magdalen Islands
    "H": ("America/Toronto",),  # Montreal
    "J": ("America/Toronto",),  # western Quebec
    "K": ("America/Toronto",),  # eastern Ontario
    "L": ("America/Toronto",),  # central Ontario
    "M": ("America/Toronto",),  # Toronto
    "N": ("America/Toronto",),  # southwestern Ontario
    "R": ("America/Winnipeg",),  # Manitoba
    "S4": ("America/Regina",),  # Regina and southern Saskatchewan
    "S7": ("America/Regina",),  # Saskatoon
    "S9V": ("America/Edmonton",),  # Lloydminster (Saskatchewan side keeps Alberta time)
    "T": ("America/Edmonton",),  # Alberta
    "V2": ("America/Vancouver",),  # Lower Mainland, Fraser Valley, Okanagan south
    "V3": ("America/Vancouver",),
    "V4": ("America/Vancouver",),
    "V5": ("America/Vancouver",),  # Vancouver
    "V6": ("America/Vancouver",),
    "V7": ("America/Vancouver",),
    "V8": ("America/Vancouver",),  # Victoria
    "V9": ("America/Vancouver",),  # Vancouver Island
    "X0E": ("America/Edmonton",),  # Northwest Territories
    "X0G": ("America/Edmonton",),
    "X1A": ("America/Edmonton",),  # Yellowknife
    "Y": ("America/Whitehorse",),  # Yukon
}

# The province or territory of each first letter, to refuse a code that contradicts the address.
CA_LETTER_PROVINCES: dict[str, frozenset[str]] = {
    "A": frozenset({"NL"}),
    "B": frozenset({"NS"}),
    "C": frozenset({"PE"}),
    "E": frozenset({"NB"}),
    "G": frozenset({"QC"}),
    "H": frozenset({"QC"}),
    "J": frozenset({"QC"}),
    "K": frozenset({"ON"}),
    "L": frozenset({"ON"}),
    "M": frozenset({"ON"}),
    "N": frozenset({"ON"}),
    "P": frozenset({"ON"}),
    "R": frozenset({"MB"}),
    "S": frozenset({"SK"}),
    "T": frozenset({"AB"}),
    "V": frozenset({"BC"}),
    "X": frozenset({"NT", "NU"}),
    "Y": frozenset({"YT"}),
}

_US_ZIP = re.compile(r"^(\d{5})(?:-?\d{4})?$")
_CA_CODE = re.compile(r"^([ABCEGHJ-NPRSTVXY]\d[A-Z])(?:\d[A-Z]\d)?$")

POSTAL_CODE_LENGTH = 16


def normalize_postal_code(code: str | None) -> str | None:
    """Upper case, inner spaces kept to one, cut to the column's length; None when blank."""
    if code is None:
        return None
    cleaned = " ".join(code.split()).upper()
    return cleaned[:POSTAL_CODE_LENGTH] or None


def postal_zones(country: str | None, region: str | None, code: str | None) -> tuple[str, ...]:
    """The zones (IANA names) the postal code settles, one unless the area spans two; () when
    the code is absent, malformed, unknown, or belongs to another state or province than
    `region` says (the address contradicts itself: trust neither part of it alone)."""
    country_code = normalize_country(country)
    if not code or country_code is None:
        return ()
    compact = "".join(code.split()).upper()
    region_code = normalize_region(country_code, region)
    if country_code == "US":
        return _us_zip_zones(compact, region_code)
    if country_code == "CA":
        return _ca_zones(compact, region_code)
    return ()


def _us_zip_zones(compact: str, state: str | None) -> tuple[str, ...]:
    match = _US_ZIP.match(compact)
    if match is None:
        return ()
    found = _zip_record(match.group(1))
    if found is None:
        return ()
    zip_state, zone = found
    if state is not None and state != zip_state:
        return ()
    return (zone,)


@lru_cache(maxsize=8192)
def _zip_record(zip5: str) -> tuple[str, str] | None:
    """(state, zone) of a five-digit ZIP, or None when it is unknown or has no valid zone."""
    # The package's Python wrapper carries no annotations; it returns a list of dicts.
    records: list[dict[str, Any]] = zipcodes.matching(zip5)  # type: ignore[no-untyped-call]
    if not records:
        return None
    record = records[0]
    zone = valid_zone(str(record.get("timezone") or ""))
    state = str(record.get("state") or "")
    if zone is None or not state:
        return None
    return (state, zone.key)


def _ca_zones(compact: str, province: str | None) -> tuple[str, ...]:
    match = _CA_CODE.match(compact)
    if match is None:
        return ()
    fsa = match.group(1)
    if province is not None and province not in CA_LETTER_PROVINCES[fsa[0]]:
        return ()
    for length in (3, 2, 1):
        zones = CA_PREFIX_ZONES.get(fsa[:length])
        if zones is not None:
            return zones
    return ()
