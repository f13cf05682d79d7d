"""Sandboxed templates, message context, guaranteed SMS/email parts and compliance replies."""

from __future__ import annotations

import html
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cartback.core.locales import LOCALE_TEXTS, language_of, texts_for
from cartback.core.model import Cart, CartLine, CartStatus, Contact, Store
from cartback.core.render import (
    MAX_SUBJECT_CHARS,
    Discount,
    MessageContext,
    RenderError,
    TemplateError,
    build_context,
    compile_template,
    help_reply,
    opt_in_confirmation,
    opt_out_confirmation,
    render_email,
    render_sms,
    resolve_locale,
)
from cartback.core.sms import count_segments, detect_encoding

INJECTION = "{{ ''.__class__.__mro__ }}"
LINK = "https://acme.test/l/Xy12"
BODY = "Hi {{ first_name }}, your {{ product }} is still in your cart: {{ link }}"


def make_store(**changes: Any) -> Store:
    store = Store(
        id=1,
        name="Acme Outdoor Ltd",
        brand="Acme",
        currency="USD",
        postal_address="1 Harbour Road, Bergen",
        support_contact="help@acme.test",
    )
    return replace(store, **changes)


def make_cart(*titles: str, currency: str = "USD", value: str = "1234.50") -> Cart:
    lines = tuple(CartLine(title, 1, Decimal("19.90")) for title in titles or ("Trail Mug",))
    return Cart(
        id=7,
        store_id=1,
        token="tok",
        contact_id=3,
        lines=lines,
        value=Decimal(value),
        currency=currency,
        restore_url=None,
        status=CartStatus.OPEN,
        updated_at=datetime(2025, 1, 1, tzinfo=UTC),
    )


CONTACT = Contact(id=3, store_id=1, phone="+4790000000", first_name="Ada", last_name="Lovelace")


def make_ctx(
    *titles: str, locale: str = "en", unsubscribe_url: str | None = None, **store_changes: Any
) -> MessageContext:
    return build_context(
        make_store(**store_changes),
        make_cart(*titles),
        CONTACT,
        link=LINK,
        locale=locale,
        unsubscribe_url=unsubscribe_url,
    )


# --- context and money ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("currency", "locale", "expected"),
    [
        ("USD", "en", "$1,234.50"),
        ("NOK", "nb", "1\u00a0234,50\u00a0kr"),
        ("EUR", "de", "1.234,50\u00a0€"),
        ("EUR", "de-AT", "€\u00a01.234,50"),
    ],
)
def test_cart_value_is_formatted_for_currency_and_locale(
    currency: str, locale: str, expected: str
) -> None:
    ctx = build_context(
        make_store(), make_cart(currency=currency), CONTACT, link=LINK, locale=locale
    )
    assert ctx.cart_value == expected
    assert ctx.cart_value_raw == Decimal("1234.50")
    assert ctx.currency == currency


@pytest.mark.parametrize("bad", ["xx", "??-!!", "zz_ZZ", "  ", "en_", "1234"])
def test_bad_locale_falls_back_to_english_without_raising(bad: str) -> None:
    ctx = build_context(make_store(), make_cart(), None, link=LINK, locale=bad)
    assert ctx.cart_value == "$1,234.50"
    assert language_of(ctx.locale) == "en"


def test_locale_falls_back_to_contact_then_store() -> None:
    contact = replace(CONTACT, locale="de-DE")
    assert (
        build_context(make_store(), make_cart(), contact, link=LINK, locale=None).locale == "de_DE"
    )
    store = make_store(default_locale="nb")
    assert build_context(store, make_cart(), None, link=LINK, locale=None).locale == "nb"


def test_unknown_region_keeps_the_language() -> None:
    assert resolve_locale("nb-XX").language == "nb"


def test_context_fields_come_from_store_cart_and_contact() -> None:
    ctx = make_ctx("  Trail\n Mug  ", "Wool Socks", unsubscribe_url=" https://acme.test/u/1 ")
    assert (ctx.brand, ctx.store_name, ctx.first_name, ctx.last_name) == (
        "Acme",
        "Acme Outdoor Ltd",
        "Ada",
        "Lovelace",
    )
    assert ctx.product == "Trail Mug"
    assert [(item.title, item.quantity, item.price) for item in ctx.items] == [
        ("Trail Mug", 1, "$19.90"),
        ("Wool Socks", 1, "$19.90"),
    ]
    assert ctx.unsubscribe_url == "https://acme.test/u/1"
    assert ctx.postal_address == "1 Harbour Road, Bergen"
    assert ctx.discount_code is None and ctx.discount_text is None


def test_context_without_contact_or_lines() -> None:
    cart = replace(make_cart(), lines=())
    ctx = build_context(make_store(), cart, None, link=LINK, locale="en")
    assert (ctx.first_name, ctx.last_name, ctx.product, ctx.items) == ("", "", "", ())


def test_brand_falls_back_to_store_name_and_must_exist() -> None:
    assert make_ctx(brand="").brand == "Acme Outdoor Ltd"
    with pytest.raises(ValueError, match="neither a brand nor a name"):
        make_ctx(brand=" ", name="")


def test_invalid_currency_falls_back_to_store_then_raises() -> None:
    cart = make_cart(currency="dollars")
    assert build_context(make_store(), cart, None, link=LINK, locale="en").currency == "USD"
    with pytest.raises(ValueError, match="no valid currency"):
        build_context(make_store(currency=""), cart, None, link=LINK, locale="en")


@pytest.mark.parametrize(
    ("discount", "currency", "locale", "expected"),
    [
        (Discount("SAVE10", percent=Decimal(10)), "USD", "en", "10% off"),
        (Discount("SAVE10", percent=Decimal("12.5")), "EUR", "de", "12,5\u00a0% Rabatt"),
        (Discount("FEM", amount=Decimal(5)), "EUR", "en", "€5.00 off"),
        (Discount("FEM", amount=Decimal(50)), "NOK", "nb", "50,00\u00a0kr rabatt"),
    ],
)
def test_discount_text_is_localised(
    discount: Discount, currency: str, locale: str, expected: str
) -> None:
    cart = make_cart(currency=currency)
    ctx = build_context(make_store(), cart, None, link=LINK, locale=locale, discount=discount)
    assert ctx.discount_text == expected
    assert ctx.discount_code == discount.code


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"code": " ", "percent": Decimal(10)}, "needs a code"),
        ({"code": "X"}, "either a percent or an amount"),
        ({"code": "X", "percent": Decimal(1), "amount": Decimal(1)}, "either a percent"),
        ({"code": "X", "percent": Decimal(0)}, r"\(0, 100\]"),
        ({"code": "X", "percent": Decimal(101)}, r"\(0, 100\]"),
        ({"code": "X", "amount": Decimal(-5)}, "positive"),
        ({"code": "X", "amount": Decimal("NaN")}, "positive"),
    ],
)
def test_invalid_discounts_are_rejected(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Discount(**kwargs)  # type: ignore[arg-type]


# --- templates and the sandbox ---------------------------------------------------------------


def test_compile_template_is_cached_per_source_and_mode() -> None:
    assert compile_template("Hi {{ x }}") is compile_template("Hi {{ x }}")
    assert compile_template("Hi {{ x }}") is not compile_template("Hi {{ x }}", html=True)


def test_syntax_errors_name_the_line() -> None:
    with pytest.raises(TemplateError, match="line 3"):
        compile_template("Hi\nthere\n{% if %}")
    with pytest.raises(TemplateError, match=r"line 2.*nofilter"):
        compile_template("Hi\n{{ product | nofilter }}")


def test_missing_optional_variable_renders_empty() -> None:
    sms = render_sms("Hi {{ nickname }}{{ coupon.code }}! {{ link }}", make_ctx(), max_segments=1)
    assert sms.text.startswith("Acme: Hi ! https://")


def test_autoescaping_is_only_for_html() -> None:
    assert compile_template("{{ x }}").render(x="<b>") == "<b>"
    assert compile_template("{{ x }}", html=True).render(x="<b>") == "&lt;b&gt;"


def test_product_title_with_template_syntax_renders_literally() -> None:
    ctx = make_ctx(INJECTION)
    sms = render_sms(BODY, ctx, max_segments=3)
    assert INJECTION in sms.text
    email = render_email("{{ product }}", "Still want {{ product }}?", None, ctx)
    assert email.subject == INJECTION
    assert INJECTION in email.text
    assert INJECTION in html.unescape(email.html)
    templated = render_email("s", "t", "<p>{{ product }}</p>", ctx)
    assert "&lt;" not in templated.html and INJECTION in html.unescape(templated.html)


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__ }}",
        "{{ product.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ lipsum.__globals__['os'] }}",
        "{{ namespace.mro() }}",
        "{{ self.__init__.__globals__ }}",
        "{{ '{0.__class__}'.format(product) }}",
        "{{ [].append(1) }}",
        "{{ 'x' * 10000000 }}",
        "{{ 9 ** 999999 }}",
    ],
)
def test_template_escapes_raise_render_error(source: str) -> None:
    with pytest.raises(RenderError, match="sandbox"):
        render_sms(source, make_ctx(), max_segments=1)
    with pytest.raises(RenderError, match="sandbox"):
        render_email("s", "text", source, make_ctx())


@pytest.mark.parametrize(
    "source", ["{{ 1 / 0 }}", "{{ undefined_function() }}", "{% include 'other' %}"]
)
def test_runtime_failures_become_render_errors(source: str) -> None:
    with pytest.raises(RenderError, match="failed to render"):
        render_sms(source, make_ctx(), max_segments=1)


def test_items_are_usable_in_templates() -> None:
    ctx = make_ctx("Trail Mug", "Wool Socks")
    source = (
        "{% for item in items %}{{ item.quantity }}x {{ item.title }} {{ item.price }}; "
        "{% endfor %}"
    )
    assert (
        "1x Trail Mug $19.90; 1x Wool Socks $19.90;" in render_sms(source, ctx, max_segments=2).text
    )


# --- SMS guarantees --------------------------------------------------------------------------


def test_brand_prefix_and_opt_out_are_added() -> None:
    sms = render_sms(BODY, make_ctx(), max_segments=1)
    assert sms.text == (
        f"Acme: Hi Ada, your Trail Mug is still in your cart: {LINK}\nReply STOP to opt out"
    )
    assert sms.fits and sms.info.segments == 1 and sms.reason is None


def test_brand_and_opt_out_are_not_duplicated_when_present() -> None:
    source = "ACME here: your {{ product }} waits {{ link }}. Text STOP to end."
    sms = render_sms(source, make_ctx(), max_segments=1)
    assert sms.text == f"ACME here: your Trail Mug waits {LINK}. Text STOP to end."


def test_brand_must_open_the_message_as_a_whole_word() -> None:
    sms = render_sms("Acmeville called: {{ link }} STOP=end", make_ctx(), max_segments=1)
    assert sms.text == f"Acme: Acmeville called: {LINK} STOP=end"


def test_lowercase_stop_in_prose_does_not_count_as_opt_out() -> None:
    sms = render_sms("Don't stop now: {{ link }}", make_ctx(), max_segments=1)
    assert sms.text.endswith("\nReply STOP to opt out")


@pytest.mark.parametrize(
    ("locale", "footer"),
    [
        ("en-US", "Reply STOP to opt out"),
        ("nb-NO", "Svar STOPP for å melde deg av"),
        ("no", "Svar STOPP for å melde deg av"),
        ("da", "Svar STOP for at afmelde"),
        ("sv-SE", "Svara STOPP för att avregistrera dig"),
        ("de-DE", "Zum Abmelden STOP antworten"),
        ("fr-FR", "Répondez STOP pour vous désabonner"),
        ("es", "Responde STOP para darte de baja"),
        ("it", "Rispondi STOP per annullare l'iscrizione"),
        ("nl", "Antwoord STOP om je af te melden"),
        ("fi", "Vastaa STOP peruaksesi tilauksen"),
        ("pl", "Rezygnacja: odpowiedz STOP"),
        ("ja", "Reply STOP to opt out"),
    ],
)
def test_opt_out_text_is_localised(locale: str, footer: str) -> None:
    sms = render_sms("{{ link }}", make_ctx(locale=locale), max_segments=1)
    assert sms.text == f"Acme: {LINK}\n{footer}"
    assert sms.info.encoding == "GSM-7"


def test_norwegian_message_with_stopp_gets_no_second_footer() -> None:
    sms = render_sms("{{ link }} Svar STOPP for å stoppe", make_ctx(locale="nb"), max_segments=1)
    assert sms.text == f"Acme: {LINK} Svar STOPP for å stoppe"


def test_whitespace_is_collapsed() -> None:
    source = "  Hi   {{ first_name }}\t ,  \n\n\n\n  see   {{ link }}   \n\n"
    sms = render_sms(source, make_ctx(), max_segments=1)
    assert sms.text == f"Acme: Hi Ada ,\n\nsee {LINK}\nReply STOP to opt out"


def test_empty_body_is_an_error() -> None:
    with pytest.raises(RenderError, match="empty"):
        render_sms("{{ nothing }}  \n ", make_ctx(), max_segments=1)


def test_long_product_is_shortened_to_fit_one_segment() -> None:
    title = "Ultralight Waterproof Hiking Jacket With Detachable Hood And Reflective Trim " * 2
    sms = render_sms(BODY, make_ctx(title), max_segments=1)
    assert sms.fits and sms.product_shortened
    assert sms.info.segments == 1 and sms.info.encoding == "GSM-7"
    assert sms.text.startswith("Acme: Hi Ada, your Ultralight")
    assert "..." in sms.text and sms.text.endswith("Reply STOP to opt out")
    assert LINK in sms.text


def test_emoji_product_is_ucs2_with_segments_or_shortened_to_fit() -> None:
    ctx = make_ctx("Birthday Party Kit 🎉 with balloons, streamers and candles for 20 guests")
    two = render_sms(BODY, ctx, max_segments=3)
    assert two.fits and not two.product_shortened
    assert two.info.encoding == "UCS-2" and two.info.segments == count_segments(two.text).segments
    assert two.info.segments > 1
    one = render_sms(BODY, ctx, max_segments=1)
    if one.fits:
        assert one.product_shortened and one.info.segments == 1
    else:
        assert one.reason is not None and "UCS-2 because of '🎉'" in one.reason


def test_smart_quotes_in_a_product_are_normalised_when_needed() -> None:
    ctx = make_ctx("The “Original” Camp Chair – Olive")
    sms = render_sms(BODY + " Free returns.", ctx, max_segments=1)
    assert sms.fits and sms.normalized and sms.info.encoding == "GSM-7"
    assert 'The "Original" Camp Chair - Olive' in sms.text


def test_message_that_cannot_fit_explains_why() -> None:
    sms = render_sms("{{ link }} " + "ł" * 150, make_ctx(), max_segments=1)
    assert not sms.fits
    assert sms.reason is not None and sms.reason.startswith("needs 4 segments, max 1 (UCS-2")


@settings(max_examples=40, deadline=None)
@given(st.text(max_size=120))
def test_any_product_title_renders_as_data(title: str) -> None:
    ctx = replace(make_ctx(), product=title)
    sms = render_sms(BODY, ctx, max_segments=2)
    assert sms.text.startswith("Acme: ")
    assert sms.fits == (sms.info.segments <= 2)
    if sms.fits and not sms.product_shortened and not sms.normalized:
        assert " ".join(title.split()) in " ".join(sms.text.split())


# --- email -----------------------------------------------------------------------------------


def test_email_subject_is_one_line_and_capped() -> None:
    ctx = make_ctx()
    email = render_email("Your\n {{ product }}\n\nis waiting  ", "Body", None, ctx)
    assert email.subject == "Your Trail Mug is waiting"
    long_email = render_email("word " * 100, "Body", None, ctx)
    assert len(long_email.subject) <= MAX_SUBJECT_CHARS
    assert long_email.subject.endswith("word…")


def test_email_subject_must_not_be_empty() -> None:
    with pytest.raises(RenderError, match="subject"):
        render_email("{{ nothing }}", "Body", None, make_ctx())


def test_email_text_gets_postal_address_and_unsubscribe_footer() -> None:
    ctx = make_ctx(unsubscribe_url="https://acme.test/u/9")
    email = render_email("Hi", "Hi {{ first_name }},   \n\n\n\nCome back: {{ link }}", None, ctx)
    assert email.text == (
        f"Hi {{first_name}},\n\nCome back: {LINK}\n\n".replace("{first_name}", "Ada")
        + "1 Harbour Road, Bergen\nUnsubscribe: https://acme.test/u/9"
    )


def test_email_footer_is_localised_and_not_duplicated() -> None:
    ctx = make_ctx(locale="de", unsubscribe_url="https://acme.test/u/9")
    email = render_email("Hallo", "Abbestellen: {{ unsubscribe_url }}", None, ctx)
    assert email.text == ("Abbestellen: https://acme.test/u/9\n\n1 Harbour Road, Bergen")
    german = render_email("Hallo", "Hallo", None, ctx)
    assert german.text.endswith("Abmelden: https://acme.test/u/9")


def test_email_without_address_or_unsubscribe_has_no_footer() -> None:
    ctx = make_ctx(postal_address=None)
    assert render_email("Hi", "Just this.", None, ctx).text == "Just this."


def test_generated_html_escapes_text_and_links_urls() -> None:
    ctx = make_ctx("<script>alert(1)</script> Mug", unsubscribe_url="https://acme.test/u/9?a=1&b=2")
    email = render_email("Cart", "Your {{ product }}.\nGo: {{ link }}.\n\nThanks", None, ctx)
    assert "<script>" not in email.html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; Mug" in email.html
    assert f'<a href="{LINK}"' in email.html and f"{LINK}</a>." in email.html
    assert email.html.count("<p") == 3  # two paragraphs and the footer
    assert 'href="https://acme.test/u/9?a=1&amp;b=2"' in email.html
    assert "1 Harbour Road, Bergen" in email.html
    assert '<html lang="en">' in email.html and "<title>Cart</title>" in email.html
    assert 'name="viewport"' in email.html


def test_html_template_is_autoescaped_and_gets_the_footer_before_body_end() -> None:
    ctx = make_ctx("Mug & <b>Bowl</b>", unsubscribe_url="https://acme.test/u/9")
    source = "<html><body><h1>{{ product }}</h1></body></html>"
    email = render_email("Cart", "Text", source, ctx)
    assert "<h1>Mug &amp; &lt;b&gt;Bowl&lt;/b&gt;</h1>" in email.html
    assert email.html.endswith("</body></html>")
    footer_at = email.html.index("Unsubscribe: ")
    assert email.html.index("<h1>") < footer_at < email.html.index("</body>")


def test_html_template_with_its_own_footer_gets_no_second_one() -> None:
    ctx = make_ctx(unsubscribe_url="https://acme.test/u/9?a=1&b=2")
    source = '<p>{{ postal_address }}</p><a href="{{ unsubscribe_url }}">Leave</a>'
    email = render_email("Cart", "Text", source, ctx)
    assert email.html == (
        '<p>1 Harbour Road, Bergen</p><a href="https://acme.test/u/9?a=1&amp;b=2">Leave</a>'
    )


# --- compliance replies ----------------------------------------------------------------------

BRAND_20 = "Nordic Trail Outfitt"


def test_english_replies_fit_one_segment_with_a_20_character_brand() -> None:
    assert len(BRAND_20) == 20
    help_text = help_reply(BRAND_20, "en", "support@nordictrail.example")
    for text in (
        help_text,
        opt_out_confirmation(BRAND_20, "en"),
        opt_in_confirmation(BRAND_20, "en"),
    ):
        assert len(text) <= 160, text
        assert count_segments(text).segments == 1 and detect_encoding(text) == "GSM-7"
    assert help_text == (
        "Nordic Trail Outfitt: Help at support@nordictrail.example. Msg freq varies. "
        "Msg & data rates may apply. Reply STOP to opt out."
    )
    assert opt_out_confirmation("Acme", "en") == (
        "You're unsubscribed from Acme texts. No more messages will be sent. "
        "Reply START to resubscribe."
    )


@pytest.mark.parametrize("language", sorted(LOCALE_TEXTS))
def test_every_locale_is_gsm7_and_names_brand_and_keywords(language: str) -> None:
    texts = texts_for(language)
    help_text = help_reply("Acme", language, "+47 555 01 234")
    assert help_text.startswith("Acme: ") and "+47 555 01 234" in help_text
    assert any(word in help_text for word in texts.stop_words)
    out = opt_out_confirmation("Acme", language)
    assert "Acme" in out and "START" in out
    into = opt_in_confirmation("Acme", language)
    assert into.startswith("Acme: ") and "HELP" in into
    for text in (help_text, out, into, texts.opt_out_footer):
        assert detect_encoding(text) == "GSM-7", text


def test_help_reply_without_support_contact_still_has_the_essentials() -> None:
    assert help_reply("Acme", "en", None) == (
        "Acme: Msg freq varies. Msg & data rates may apply. Reply STOP to opt out."
    )


def test_replies_normalise_a_typographic_brand_and_require_one() -> None:
    assert opt_out_confirmation("Ann’s  Shop", "en").startswith(
        "You're unsubscribed from Ann's Shop"
    )
    with pytest.raises(ValueError, match="brand"):
        help_reply("  ", "en", "x")
    with pytest.raises(ValueError, match="brand"):
        opt_in_confirmation("", "en")
