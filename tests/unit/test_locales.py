"""Which language a shopper is written to in: the checkout's locale, then the shipping country's
language, then the store's default, among the locales a step has wording for."""

from __future__ import annotations

import pytest

from cartback.core.locales import (
    LOCALE_TEXTS,
    country_languages,
    matches,
    pick_locale,
    texts_for,
)
from cartback.core.sms import detect_encoding

DEFAULT_FLOW = ("en", "nb", "da", "sv", "de", "fr", "es", "nl", "fi")


@pytest.mark.parametrize(
    ("checkout", "country", "store", "expected"),
    [
        ("nb-NO", "SE", "en", "nb-NO"),  # the checkout's locale first, with its region
        ("nb", None, "en", "nb"),
        ("no", None, "en", "no"),  # "no" is Bokmål's alias
        ("nn-NO", None, "en", "nn-NO"),
        ("en-GB", "NO", "nb", "en-GB"),  # the flow's own language counts as offered
        ("pl-PL", "NO", "en", "nb-NO"),  # not offered: the shipping country's language
        (None, "FI", "en", "fi-FI"),  # Finland: Finnish before Swedish
        ("", "AT", "en", "de-AT"),
        (None, "BE", "en", "nl-BE"),  # the most spoken language first
        ("pl", "PL", "sv", "sv"),  # neither offered: the store's default
        ("pl", "PL", "sv-SE", "sv-SE"),
        ("pl", "PL", "it", "en"),  # the store's default is not offered either: the flow's own
        ("xx-invalid!", "??", "da", "da"),  # malformed input never raises
        (None, None, "en", "en"),
    ],
)
def test_pick_locale(checkout: str | None, country: str | None, store: str, expected: str) -> None:
    picked = pick_locale(
        DEFAULT_FLOW, checkout_locale=checkout, country=country, store_default=store
    )
    assert picked == expected


def test_pick_locale_prefers_an_offered_region_to_the_bare_language() -> None:
    offered = ("en", "pt-BR")
    assert pick_locale(offered, checkout_locale="pt-BR", country=None, store_default="en") == (
        "pt-BR"
    )
    # pt-BR wording does not serve a Portuguese shopper: region-specific text is not guessed at.
    assert pick_locale(offered, checkout_locale="pt-PT", country="PT", store_default="en") == "en"


def test_pick_locale_needs_something_to_offer() -> None:
    with pytest.raises(ValueError, match="at least one"):
        pick_locale((), checkout_locale="en", country=None, store_default="en")


@pytest.mark.parametrize(
    ("locale", "offered", "expected"),
    [
        ("nb-NO", "nb", True),
        ("nb-NO", "NB_no", True),
        ("no", "nb", True),
        ("nb", "no", True),
        ("nb", "nb-NO", False),
        ("en-US", "en-GB", False),
        ("de", "", False),
    ],
)
def test_matches(locale: str, offered: str, expected: bool) -> None:
    assert matches(locale, offered) is expected


def test_country_languages() -> None:
    assert country_languages("no") == ("nb",)  # Nynorsk reads the Bokmål wording
    assert country_languages("FI") == ("fi", "sv")
    assert country_languages("US") == ("en",)
    assert country_languages("ZZ") == ()
    assert country_languages("Norway") == ()
    assert country_languages(None) == ()


@pytest.mark.parametrize("language", sorted(LOCALE_TEXTS))
def test_every_language_has_a_gsm7_fallback_word_for_a_product(language: str) -> None:
    word = texts_for(language).product_fallback
    assert word.strip() == word and word
    assert detect_encoding(word) == "GSM-7"
