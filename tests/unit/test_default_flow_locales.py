"""The shipped default flow speaks every language it promises: each SMS of each language fits one
GSM-7 segment with a typical name and product, through the real compose path (brand prefix,
tracked link, localised opt-out line), and every email is in the shopper's language."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from cartback.core.flows import Flow, Step, default_flow_path, load_flow
from cartback.core.locales import texts_for
from cartback.core.model import (
    Cart,
    CartLine,
    CartStatus,
    Channel,
    Contact,
    Enrollment,
    EnrollmentState,
    Store,
)
from cartback.core.sms import count_segments, detect_encoding
from cartback.services.compose import compose

LANGUAGES = ("en", "nb", "da", "sv", "de", "fr", "es", "nl", "fi")
# A first name and a product title as a shop in that country would send them.
TYPICAL = {
    "en": ("Jessica", "Merino Wool Sweater"),
    "nb": ("Kristin", "Ullgenser i merino"),
    "da": ("Mathias", "Strikket uldtrøje"),
    "sv": ("Johanna", "Stickad ulltröja"),
    "de": ("Annette", "Merino-Wollpullover"),
    "fr": ("Camille", "Pull en laine mérinos"),
    "es": ("Alberto", "Jersey de lana merino"),
    "nl": ("Marieke", "Merino wollen trui"),
    "fi": ("Johanna", "Merinovillaneule"),
}
# A tracked link as long as a real deployment's: https://cb.demoshop.no/l/<17 characters>.
BASE_URL = "https://cb.demoshop.no"
NOW = datetime(2026, 6, 10, 8, 25, tzinfo=UTC)
FLOW = load_flow(default_flow_path())
STORE = Store(
    id=1,
    name="DemoShop",
    brand="DemoShop",
    domains=("demoshop.example",),
    postal_address="1 Demo Street, 0150 Oslo",
    currency="EUR",
)


def _sms_steps(flow: Flow) -> list[Step]:
    return [step for step in flow.steps if step.channel is Channel.SMS]


def _cart(title: str, value: str = "240.00") -> Cart:
    return Cart(
        id=1,
        store_id=1,
        token="t1",
        contact_id=1,
        lines=(CartLine(title=title, quantity=1, price=Decimal(value)),),
        value=Decimal(value),
        currency="EUR",
        restore_url="https://demoshop.example/cart/t1",
        status=CartStatus.OPEN,
        updated_at=NOW,
    )


def _contact(language: str, first_name: str | None, country: str | None = None) -> Contact:
    return Contact(
        id=1,
        store_id=1,
        phone="+4791234567",
        email="shopper@example.com",
        first_name=first_name,
        locale=language,
        country=country,
        sms_marketing=True,
        email_marketing=True,
    )


ENROLLMENT = Enrollment(
    id=1,
    store_id=1,
    cart_id=1,
    flow_name="default",
    flow_version=FLOW.version,
    step_index=0,
    state=EnrollmentState.ACTIVE,
    abandoned_at=NOW,
    wake_at=NOW,
)


def _sample(pool: str, _cart: Cart) -> str:
    return "SAMPLE"


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("step", _sms_steps(FLOW), ids=lambda step: step.id)
@pytest.mark.parametrize("cart_value", ["240.00", "40.00"], ids=["discount", "no-discount"])
def test_every_sms_fits_one_gsm7_segment_with_a_typical_name_and_product(
    language: str, step: Step, cart_value: str
) -> None:
    first_name, product = TYPICAL[language]
    cart = _cart(product, cart_value)
    row = compose(
        STORE, cart, _contact(language, first_name), ENROLLMENT, step, NOW, BASE_URL, _sample
    ).outbox
    text = row["body"]
    assert (row["encoding"], row["segments"]) == ("GSM-7", 1), text
    assert detect_encoding(text) == "GSM-7" and count_segments(text).segments == 1
    assert text.startswith("DemoShop: ")
    assert text.endswith(texts_for(language).opt_out_footer)
    assert f"{BASE_URL}/l/" in text
    if "product" in step.content_for(None, language).body:
        assert product in text, "the product name had to be shortened"


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_step_has_its_own_text_in_every_language(language: str) -> None:
    english = {step.id: step.content_for(None, "en") for step in FLOW.steps}
    for step in FLOW.steps:
        content = step.content_for(None, language)
        if language == "en":
            assert content == step.content
            continue
        mine = english[step.id]
        assert content.body != mine.body, f"{step.id} body is not translated to {language}"
        assert content.subject != mine.subject or step.channel is Channel.SMS
        assert (content.html is None) == (mine.html is None)
        if content.html is not None:
            assert content.html != mine.html


def test_the_default_flow_has_no_partial_locale_warnings() -> None:
    assert FLOW.language == "en"
    assert not [str(warning) for warning in FLOW.warnings if "locale" in warning.message]


# Words of which every message in that language has at least one (and English has none).
MARKERS = {
    "nb": ("handlekurv", "koden"),
    "da": ("kurv", "koden", "gemt"),
    "sv": ("varukorg", "koden", "sparat"),
    "de": ("warenkorb", "gültig"),
    "fr": ("panier", "valable", "sauvegardé"),
    "es": ("carrito", "durante"),
    "nl": ("winkelwagen", "geldig", "bewaard"),
    "fi": ("ostoskori", "voimassa"),
}
ENGLISH = ("your cart", "you left", "valid 48 hours", "reply stop", "the demoshop team", "thanks")


@pytest.mark.parametrize("language", sorted(MARKERS))
def test_every_message_is_in_the_shoppers_language(language: str) -> None:
    first_name, product = TYPICAL[language]
    contact = _contact(f"{language}-XX", first_name)
    for step in FLOW.steps:
        row = compose(
            STORE, _cart(product), contact, ENROLLMENT, step, NOW, BASE_URL, _sample
        ).outbox
        text = f"{row['subject'] or ''}\n{row['body']}\n{row['html'] or ''}".lower()
        assert any(word in text for word in MARKERS[language]), f"{step.id}: {row['body']}"
        for english in ENGLISH:
            assert english not in text, f"{step.id} in {language} has English: {english!r}"
        if step.channel is Channel.SMS:
            assert row["body"].endswith(texts_for(language).opt_out_footer)
        else:
            assert texts_for(language).unsubscribe_line.split(":")[0] in row["body"]


def test_the_shipping_country_picks_the_language_when_the_checkout_has_none() -> None:
    contact = _contact("", "Aino", country="FI")
    row = compose(
        STORE, _cart("Neule"), contact, ENROLLMENT, FLOW.step("sms1"), NOW, BASE_URL, _sample
    ).outbox
    assert "ostoskoriisi" in row["body"] and row["body"].endswith(
        "Vastaa STOP peruaksesi tilauksen"
    )


def test_a_language_the_flow_lacks_falls_back_to_the_store_default() -> None:
    store = Store(
        id=1,
        name="DemoShop",
        brand="DemoShop",
        domains=("demoshop.example",),
        postal_address="x",
        default_locale="sv",
    )
    contact = _contact("pl-PL", "Ola", country="PL")
    row = compose(
        store, _cart("Sweter"), contact, ENROLLMENT, FLOW.step("sms1"), NOW, BASE_URL, _sample
    ).outbox
    assert "varukorgen" in row["body"] and "Svara STOPP" in row["body"]


def test_an_english_shopper_in_a_norwegian_store_gets_english() -> None:
    store = Store(
        id=1,
        name="DemoShop",
        brand="DemoShop",
        domains=("demoshop.example",),
        postal_address="x",
        default_locale="nb",
        currency="NOK",
    )
    contact = _contact("en-GB", "Emily", country="NO")
    row = compose(
        store, _cart("Sweater"), contact, ENROLLMENT, FLOW.step("sms1"), NOW, BASE_URL, _sample
    ).outbox
    assert "you left Sweater in your cart" in row["body"]
    assert row["body"].endswith("Reply STOP to opt out")


@pytest.mark.parametrize("language", LANGUAGES)
def test_a_product_name_that_begins_with_an_emoji_still_gets_its_text(language: str) -> None:
    first_name, product = TYPICAL[language]
    row = compose(
        STORE,
        _cart(f"🎁 {product}"),
        _contact(language, first_name),
        ENROLLMENT,
        FLOW.step("sms1"),
        NOW,
        BASE_URL,
        _sample,
    ).outbox
    assert (row["encoding"], row["segments"]) == ("GSM-7", 1)
    assert product in row["body"] and "🎁" not in row["body"]


@pytest.mark.parametrize("language", LANGUAGES)
def test_a_name_too_long_for_a_segment_gives_way_to_the_fallback_word(language: str) -> None:
    first_name, _product = TYPICAL[language]
    title = "🎁🎁 " + "Extraordinarily-Long-Unbreakable-Product-Name-" * 4
    row = compose(
        STORE,
        _cart(title),
        _contact(language, first_name),
        ENROLLMENT,
        FLOW.step("sms2"),
        NOW,
        BASE_URL,
        _sample,
    ).outbox
    assert row["segments"] == 1 and row["encoding"] == "GSM-7"
    assert "Extraordinarily" in row["body"] or texts_for(language).product_fallback in row["body"]
