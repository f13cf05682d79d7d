"""The shopper's time zone: explicit zone, then shipping address, then phone number, then store.

Quiet hours follow where the recipient is, so when a region or a phone prefix spans several
zones, `candidate_zones` returns all of them and policy keeps the send inside the window in
every one. An address whose postal code settles its zone (a Miami ZIP: Eastern, not Florida's
Eastern and Central) counts with that zone alone; the code is looked up at ingest and reaches
the core as zone names (`Contact.postal_zones`). The tables below are data; phonenumbers
supplies the zones of a phone prefix.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from phonenumbers import timezone as phone_timezone

from cartback.core.model import PhoneFacts

ZoneSource = Literal["explicit", "address", "phone", "store"]

# NANP area codes in service or assigned, per state (50 states + DC), from the NANPA assignments
# as phonenumbers' geocoder records them (cross-checked by tests/unit/test_timezones.py).
_US_AREA_CODES_BY_STATE: dict[str, str] = {
    "AK": "907",
    "AL": "205 251 256 334 659 938",
    "AR": "327 479 501 870",
    "AZ": "480 520 602 623 928",
    "CA": (
        "209 213 279 310 323 341 350 369 408 415 424 442 510 530 559 562 619 626 "
        "628 650 657 661 669 707 714 738 747 760 805 818 820 831 840 858 909 916 "
        "925 949 951"
    ),
    "CO": "303 719 720 748 970 983",
    "CT": "203 475 860 959",
    "DC": "202 771",
    "DE": "302",
    "FL": (
        "239 305 321 324 352 386 407 448 561 645 656 689 727 728 754 772 786 813 "
        "850 863 904 941 954"
    ),
    "GA": "229 404 470 478 678 706 762 770 912 943",
    "HI": "808",
    "IA": "319 515 563 641 712",
    "ID": "208 986",
    "IL": "217 224 309 312 331 447 464 618 630 708 730 773 779 815 847 872",
    "IN": "219 260 317 463 574 765 812 930",
    "KS": "316 620 785 913",
    "KY": "270 364 502 606 859",
    "LA": "225 318 337 504 985",
    "MA": "339 351 413 508 617 774 781 857 978",
    "MD": "227 240 301 410 443 667",
    "ME": "207",
    "MI": "231 248 269 313 517 586 616 734 810 906 947 989",
    "MN": "218 320 507 612 651 763 952",
    "MO": "235 314 417 557 573 636 660 816 975",
    "MS": "228 601 662 769",
    "MT": "406",
    "NC": "252 336 472 704 743 828 910 919 980 984",
    "ND": "701",
    "NE": "308 402 531",
    "NH": "603",
    "NJ": "201 551 609 640 732 848 856 862 908 973",
    "NM": "505 575",
    "NV": "702 725 775",
    "NY": "212 315 329 332 347 363 516 518 585 607 631 646 680 716 718 838 845 914 917 929 934",
    "OH": "216 220 234 283 326 330 380 419 440 513 567 614 740 937",
    "OK": "405 539 572 580 918",
    "OR": "458 503 541 971",
    "PA": "215 223 267 272 412 445 484 570 582 610 717 724 814 835 878",
    "RI": "401",
    "SC": "803 821 839 843 854 864",
    "SD": "605",
    "TN": "423 615 629 731 865 901 931",
    "TX": (
        "210 214 254 281 325 346 361 409 430 432 469 512 682 713 726 737 806 817 "
        "830 832 903 915 936 940 945 956 972 979"
    ),
    "UT": "385 435 801",
    "VA": "276 434 540 571 686 703 757 804 826 948",
    "VT": "802",
    "WA": "206 253 360 425 509 564",
    "WI": "262 274 353 414 534 608 715 920",
    "WV": "304 681",
    "WY": "307",
}

US_AREA_CODES: dict[str, str] = {
    code: state for state, codes in _US_AREA_CODES_BY_STATE.items() for code in codes.split()
}

# Zones per first-level region, the zone most of its population uses first. A region with more
# than one entry is ambiguous: the others are still candidates for quiet hours.
REGION_ZONES: dict[str, dict[str, tuple[str, ...]]] = {
    "US": {
        "AL": ("America/Chicago",),
        "AK": ("America/Anchorage", "America/Adak"),
        "AZ": ("America/Phoenix", "America/Denver"),  # the Navajo Nation keeps DST
        "AR": ("America/Chicago",),
        "CA": ("America/Los_Angeles",),
        "CO": ("America/Denver",),
        "CT": ("America/New_York",),
        "DE": ("America/New_York",),
        "DC": ("America/New_York",),
        "FL": ("America/New_York", "America/Chicago"),
        "GA": ("America/New_York",),
        "HI": ("Pacific/Honolulu",),
        "ID": ("America/Boise", "America/Los_Angeles"),
        "IL": ("America/Chicago",),
        "IN": ("America/Indiana/Indianapolis", "America/Chicago"),
        "IA": ("America/Chicago",),
        "KS": ("America/Chicago", "America/Denver"),
        "KY": ("America/New_York", "America/Chicago"),
        "LA": ("America/Chicago",),
        "ME": ("America/New_York",),
        "MD": ("America/New_York",),
        "MA": ("America/New_York",),
        "MI": ("America/Detroit", "America/Menominee"),
        "MN": ("America/Chicago",),
        "MS": ("America/Chicago",),
        "MO": ("America/Chicago",),
        "MT": ("America/Denver",),
        "NE": ("America/Chicago", "America/Denver"),
        "NV": ("America/Los_Angeles",),
        "NH": ("America/New_York",),
        "NJ": ("America/New_York",),
        "NM": ("America/Denver",),
        "NY": ("America/New_York",),
        "NC": ("America/New_York",),
        "ND": ("America/Chicago", "America/Denver"),
        "OH": ("America/New_York",),
        "OK": ("America/Chicago",),
        "OR": ("America/Los_Angeles", "America/Boise"),
        "PA": ("America/New_York",),
        "RI": ("America/New_York",),
        "SC": ("America/New_York",),
        "SD": ("America/Chicago", "America/Denver"),
        "TN": ("America/Chicago", "America/New_York"),
        "TX": ("America/Chicago", "America/Denver"),
        "UT": ("America/Denver",),
        "VT": ("America/New_York",),
        "VA": ("America/New_York",),
        "WA": ("America/Los_Angeles",),
        "WV": ("America/New_York",),
        "WI": ("America/Chicago",),
        "WY": ("America/Denver",),
    },
    "CA": {
        "AB": ("America/Edmonton",),
        "BC": ("America/Vancouver", "America/Dawson_Creek", "America/Edmonton"),
        "MB": ("America/Winnipeg",),
        "NB": ("America/Moncton",),
        "NL": ("America/St_Johns", "America/Goose_Bay"),
        "NS": ("America/Halifax",),
        "NT": ("America/Edmonton",),
        "NU": ("America/Iqaluit", "America/Rankin_Inlet", "America/Cambridge_Bay"),
        "ON": ("America/Toronto", "America/Winnipeg"),
        "PE": ("America/Halifax",),
        "QC": ("America/Toronto", "America/Halifax", "America/Blanc-Sablon"),
        "SK": ("America/Regina", "America/Edmonton"),
        "YT": ("America/Whitehorse",),
    },
    "AU": {
        "ACT": ("Australia/Sydney",),
        "NSW": ("Australia/Sydney", "Australia/Broken_Hill", "Australia/Lord_Howe"),
        "NT": ("Australia/Darwin",),
        "QLD": ("Australia/Brisbane",),
        "SA": ("Australia/Adelaide",),
        "TAS": ("Australia/Hobart",),
        "VIC": ("Australia/Melbourne",),
        "WA": ("Australia/Perth", "Australia/Eucla"),
    },
    "BR": {
        "AC": ("America/Rio_Branco",),
        "AL": ("America/Maceio",),
        "AM": ("America/Manaus", "America/Eirunepe"),
        "AP": ("America/Belem",),
        "BA": ("America/Bahia",),
        "CE": ("America/Fortaleza",),
        "DF": ("America/Sao_Paulo",),
        "ES": ("America/Sao_Paulo",),
        "GO": ("America/Sao_Paulo",),
        "MA": ("America/Fortaleza",),
        "MG": ("America/Sao_Paulo",),
        "MS": ("America/Campo_Grande",),
        "MT": ("America/Cuiaba",),
        "PA": ("America/Belem", "America/Santarem"),
        "PB": ("America/Fortaleza",),
        "PE": ("America/Recife", "America/Noronha"),
        "PI": ("America/Fortaleza",),
        "PR": ("America/Sao_Paulo",),
        "RJ": ("America/Sao_Paulo",),
        "RN": ("America/Fortaleza",),
        "RO": ("America/Porto_Velho",),
        "RR": ("America/Boa_Vista",),
        "RS": ("America/Sao_Paulo",),
        "SC": ("America/Sao_Paulo",),
        "SE": ("America/Maceio",),
        "SP": ("America/Sao_Paulo",),
        "TO": ("America/Araguaina",),
    },
}

# Countries by zone, the most populous zone first. Countries with a region table above use the
# union of their regions' zones when the region is unknown.
COUNTRY_ZONES: dict[str, tuple[str, ...]] = {
    "AD": ("Europe/Andorra",),
    "AE": ("Asia/Dubai",),
    "AL": ("Europe/Tirane",),
    "AR": ("America/Argentina/Buenos_Aires",),
    "AT": ("Europe/Vienna",),
    "BA": ("Europe/Sarajevo",),
    "BD": ("Asia/Dhaka",),
    "BE": ("Europe/Brussels",),
    "BG": ("Europe/Sofia",),
    "BY": ("Europe/Minsk",),
    "CH": ("Europe/Zurich",),
    "CL": ("America/Santiago", "America/Punta_Arenas", "Pacific/Easter"),
    "CN": ("Asia/Shanghai",),
    "CO": ("America/Bogota",),
    "CR": ("America/Costa_Rica",),
    "CY": ("Asia/Nicosia",),
    "CZ": ("Europe/Prague",),
    "DE": ("Europe/Berlin",),
    "DK": ("Europe/Copenhagen",),
    "DO": ("America/Santo_Domingo",),
    "EC": ("America/Guayaquil", "Pacific/Galapagos"),
    "EE": ("Europe/Tallinn",),
    "EG": ("Africa/Cairo",),
    "ES": ("Europe/Madrid", "Atlantic/Canary"),
    "FI": ("Europe/Helsinki",),
    "FR": ("Europe/Paris",),
    "GB": ("Europe/London",),
    "GH": ("Africa/Accra",),
    "GR": ("Europe/Athens",),
    "HK": ("Asia/Hong_Kong",),
    "HR": ("Europe/Zagreb",),
    "HU": ("Europe/Budapest",),
    "ID": ("Asia/Jakarta", "Asia/Makassar", "Asia/Jayapura", "Asia/Pontianak"),
    "IE": ("Europe/Dublin",),
    "IL": ("Asia/Jerusalem",),
    "IN": ("Asia/Kolkata",),
    "IS": ("Atlantic/Reykjavik",),
    "IT": ("Europe/Rome",),
    "JM": ("America/Jamaica",),
    "JP": ("Asia/Tokyo",),
    "KE": ("Africa/Nairobi",),
    "KR": ("Asia/Seoul",),
    "LI": ("Europe/Vaduz",),
    "LK": ("Asia/Colombo",),
    "LT": ("Europe/Vilnius",),
    "LU": ("Europe/Luxembourg",),
    "LV": ("Europe/Riga",),
    "MA": ("Africa/Casablanca",),
    "MC": ("Europe/Monaco",),
    "MD": ("Europe/Chisinau",),
    "ME": ("Europe/Podgorica",),
    "MK": ("Europe/Skopje",),
    "MT": ("Europe/Malta",),
    "MX": (
        "America/Mexico_City",
        "America/Monterrey",
        "America/Tijuana",
        "America/Hermosillo",
        "America/Mazatlan",
        "America/Cancun",
        "America/Chihuahua",
        "America/Ciudad_Juarez",
    ),
    "MY": ("Asia/Kuala_Lumpur",),
    "NG": ("Africa/Lagos",),
    "NL": ("Europe/Amsterdam",),
    "NO": ("Europe/Oslo",),
    "NP": ("Asia/Kathmandu",),
    "NZ": ("Pacific/Auckland", "Pacific/Chatham"),
    "PA": ("America/Panama",),
    "PE": ("America/Lima",),
    "PH": ("Asia/Manila",),
    "PK": ("Asia/Karachi",),
    "PL": ("Europe/Warsaw",),
    "PR": ("America/Puerto_Rico",),
    "PT": ("Europe/Lisbon", "Atlantic/Madeira", "Atlantic/Azores"),
    "QA": ("Asia/Qatar",),
    "RO": ("Europe/Bucharest",),
    "RS": ("Europe/Belgrade",),
    "SA": ("Asia/Riyadh",),
    "SE": ("Europe/Stockholm",),
    "SG": ("Asia/Singapore",),
    "SI": ("Europe/Ljubljana",),
    "SK": ("Europe/Bratislava",),
    "SM": ("Europe/San_Marino",),
    "TH": ("Asia/Bangkok",),
    "TR": ("Europe/Istanbul",),
    "TW": ("Asia/Taipei",),
    "UA": ("Europe/Kyiv",),
    "UY": ("America/Montevideo",),
    "VA": ("Europe/Vatican",),
    "VE": ("America/Caracas",),
    "VN": ("Asia/Ho_Chi_Minh",),
    "ZA": ("Africa/Johannesburg",),
}

_COUNTRY_ALIASES = {"UK": "GB"}


@dataclass(frozen=True, slots=True)
class ZoneResolution:
    zone: ZoneInfo
    source: ZoneSource
    # True when the evidence fits several zones and `zone` is only the likeliest one.
    ambiguous: bool


def valid_zone(name: str | None) -> ZoneInfo | None:
    """The IANA zone called `name`, or None for a missing, malformed or unknown name."""
    if not name or not name.strip():
        return None
    try:
        return _zone(name.strip())
    except (ZoneInfoNotFoundError, ValueError):
        return None


@lru_cache(maxsize=512)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def normalize_country(country: str | None) -> str | None:
    """ISO 3166-1 alpha-2, upper case (`uk` → `GB`), or None when it is not two letters."""
    if country is None:
        return None
    code = country.strip().upper()
    code = _COUNTRY_ALIASES.get(code, code)
    return code if len(code) == 2 and code.isalpha() else None


def normalize_region(country: str | None, region: str | None) -> str | None:
    """A region code without its country prefix (`US-FL`, `fl` → `FL`), or None if blank."""
    if region is None or not region.strip():
        return None
    code = region.strip().upper()
    if country and code.startswith(f"{country}-"):
        code = code[len(country) + 1 :]
    return code or None


def address_zones(
    country: str | None, region: str | None, postal_zones: tuple[str, ...] = ()
) -> tuple[ZoneInfo, ...]:
    """Every zone a shipping address can be in, likeliest first; () if the country is unknown.
    `postal_zones`, what the address's postal code settled at ingest, replaces the region's."""
    settled = tuple(zone for name in postal_zones if (zone := valid_zone(name)) is not None)
    if settled:
        return settled
    code = normalize_country(country)
    if code is None:
        return ()
    regions = REGION_ZONES.get(code)
    region_code = normalize_region(code, region)
    if regions is not None:
        if region_code in regions:
            names = regions[region_code]
        else:
            # Unknown region of a multi-zone country: any of its zones, primary region first.
            names = tuple(dict.fromkeys(name for zones in regions.values() for name in zones))
            names = _primary_first(code, names)
    else:
        names = COUNTRY_ZONES.get(code, ())
    return tuple(_zone(name) for name in names)


_COUNTRY_PRIMARY = {
    "US": "America/New_York",
    "CA": "America/Toronto",
    "AU": "Australia/Sydney",
    "BR": "America/Sao_Paulo",
}


def _primary_first(country: str, names: tuple[str, ...]) -> tuple[str, ...]:
    primary = _COUNTRY_PRIMARY.get(country)
    if primary is None or primary not in names:
        return names
    return (primary, *(name for name in names if name != primary))


@lru_cache(maxsize=65536)
def phone_zones(phone: str | None) -> tuple[ZoneInfo, ...]:
    """The zones phonenumbers assigns to the number's prefix, sorted by name; () if unknown."""
    number = _parse_phone(phone)
    if number is None:
        return ()
    names = phone_timezone.time_zones_for_number(number)
    zones = (valid_zone(name) for name in sorted(names) if name != phone_timezone.UNKNOWN_TIMEZONE)
    return tuple(zone for zone in zones if zone is not None)


@lru_cache(maxsize=65536)
def _parse_phone(phone: str | None) -> phonenumbers.PhoneNumber | None:
    # Cached: several rules ask about the same number; callers only read the result.
    if not phone or not phone.strip():
        return None
    try:
        number = phonenumbers.parse(phone.strip(), None)
    except phonenumbers.NumberParseException:
        return None
    return number if phonenumbers.is_possible_number(number) else None


def resolve_zone(
    *,
    explicit: str | None,
    country: str | None,
    region: str | None,
    phone: str | None,
    store_default: str,
    postal_zones: tuple[str, ...] = (),
) -> ZoneResolution:
    """The shopper's zone: explicit → shipping address → phone number → store default."""
    zone = valid_zone(explicit)
    if zone is not None:
        return ZoneResolution(zone, "explicit", ambiguous=False)
    zones = address_zones(country, region, postal_zones)
    if zones:
        return ZoneResolution(zones[0], "address", ambiguous=len(zones) > 1)
    zones = phone_zones(phone)
    if zones:
        return ZoneResolution(zones[0], "phone", ambiguous=len(zones) > 1)
    return ZoneResolution(_store_zone(store_default), "store", ambiguous=False)


def candidate_zones(
    *,
    explicit: str | None,
    country: str | None,
    region: str | None,
    phone: str | None,
    store_default: str,
    facts: PhoneFacts | None = None,
    postal_zones: tuple[str, ...] = (),
) -> tuple[ZoneInfo, ...]:
    """Every zone the shopper may be in, the resolved zone first.

    An explicit zone is trusted alone. Otherwise both the address and the phone number count:
    the shopper may be at either, and a send must be inside quiet hours wherever they are. The
    address counts with the zones its postal code settled (`postal_zones`) when there are any,
    and only otherwise with every zone of its state or province.
    `facts`, when the phone was already examined at ingest, stands in for parsing `phone`.
    """
    zone = valid_zone(explicit)
    if zone is not None:
        return (zone,)
    if facts is None:
        by_phone = phone_zones(phone)
    else:
        by_phone = tuple(zone for name in facts.zones if (zone := valid_zone(name)) is not None)
    by_address = address_zones(country, region, postal_zones)
    zones = tuple(dict.fromkeys((*by_address, *by_phone)))
    return zones or (_store_zone(store_default),)


def phone_facts(phone: str | None) -> PhoneFacts:
    """The country, US state and zones of a phone number, for storing beside it."""
    country, region = region_for_phone(phone)
    return PhoneFacts(country, region, tuple(zone.key for zone in phone_zones(phone)))


def _store_zone(name: str) -> ZoneInfo:
    zone = valid_zone(name)
    if zone is None:
        raise ValueError(f"store default zone {name!r} is not an IANA time zone")
    return zone


@lru_cache(maxsize=65536)
def us_state_for_phone(e164: str | None) -> str | None:
    """The US state (or DC) of a US number's area code, or None for other or unmapped numbers."""
    number = _parse_phone(e164)
    if number is None or phonenumbers.region_code_for_number(number) != "US":
        return None
    national = str(number.national_number)
    return US_AREA_CODES.get(national[:3]) if len(national) == 10 else None


@lru_cache(maxsize=65536)
def region_for_phone(e164: str | None) -> tuple[str | None, str | None]:
    """(country, region) of a phone number: the state for US numbers, otherwise region None."""
    fast = _single_country(e164)
    if fast is not None:
        return fast
    number = _parse_phone(e164)
    if number is None:
        return (None, None)
    country = phonenumbers.region_code_for_number(number)
    if not country or country == "ZZ" or country == "001":
        return (None, None)
    return (country, us_state_for_phone(e164) if country == "US" else None)


def _single_country(e164: str | None) -> tuple[str | None, str | None] | None:
    """The country of an E.164 number whose calling code belongs to one country alone, without a
    full parse (the timer asks for every message). Shared codes (+1, +7, +44...) return None."""
    if not e164 or not e164.startswith("+") or not e164[1:].isdigit():
        return None
    if e164.startswith("+1") and len(e164) == 12 and e164[2:5] in US_AREA_CODES:
        # An area code belongs to one NANP country; the US ones map straight to a state.
        return ("US", US_AREA_CODES[e164[2:5]])
    for length in (1, 2, 3):
        regions = phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(int(e164[1 : 1 + length]))
        if regions:
            return (regions[0], None) if len(regions) == 1 and regions[0] != "001" else None
    return None
