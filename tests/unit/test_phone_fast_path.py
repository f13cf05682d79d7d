"""The timer's shortcut for a phone number's country must agree with a full parse."""

from __future__ import annotations

import phonenumbers
from hypothesis import given, settings
from hypothesis import strategies as st

from cartback.core.timezones import _single_country, region_for_phone

CODES = sorted(phonenumbers.COUNTRY_CODE_TO_REGION_CODE)


def _full_parse(e164: str) -> tuple[str | None, str | None]:
    region_for_phone.cache_clear()
    # A number the shortcut does not know goes the slow way: compare against that way only.
    return region_for_phone.__wrapped__(e164)  # type: ignore[attr-defined]


@settings(max_examples=400)
@given(st.sampled_from(CODES), st.text(alphabet="0123456789", min_size=6, max_size=11))
def test_the_shortcut_agrees_with_phonenumbers(code: int, rest: str) -> None:
    e164 = f"+{code}{rest}"
    fast = _single_country(e164)
    if fast is None:
        return
    try:
        number = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return
    if not phonenumbers.is_valid_number(number):
        return
    assert fast[0] == phonenumbers.region_code_for_number(number)


def test_us_numbers_keep_their_state_and_shared_codes_take_the_slow_way() -> None:
    assert _single_country("+13055550123") == ("US", "FL")
    assert _single_country("+4791234567") is None  # +47 is Norway and Svalbard
    assert region_for_phone("+4791234567") == ("NO", None)
    assert _full_parse("+33612345678") == ("FR", None)
