"""What a phone number says: the timer's shortcut agrees with a full parse, and facts stored at
ingest stand in for parsing."""

from __future__ import annotations

import phonenumbers
from hypothesis import given, settings
from hypothesis import strategies as st

from cartback.core.model import Channel, Contact, PhoneFacts
from cartback.core.policy import contact_zones, rules_for_contact
from cartback.core.storepolicy import store_policy
from cartback.core.timezones import _single_country, phone_facts, region_for_phone

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


def test_phone_facts_hold_country_state_and_zones() -> None:
    assert phone_facts("+13055550143") == PhoneFacts("US", "FL", ("America/New_York",))
    oslo = phone_facts("+4791234567")
    assert (oslo.country, oslo.region) == ("NO", None) and "Europe/Oslo" in oslo.zones
    assert phone_facts("+999") == PhoneFacts(None, None, ())


def test_policy_reads_stored_facts_instead_of_parsing() -> None:
    policy = store_policy({}, "Europe/Oslo")
    stored = PhoneFacts("US", "FL", ("America/New_York",))
    contact = Contact(id=1, store_id=1, phone="+4791234567", phone_facts=stored)
    assert "US-FL" in rules_for_contact(contact, Channel.SMS, policy).jurisdictions
    assert [zone.key for zone in contact_zones(contact, policy)] == ["America/New_York"]
    parsed = Contact(id=1, store_id=1, phone="+4791234567")
    assert "US-FL" not in rules_for_contact(parsed, Channel.SMS, policy).jurisdictions
