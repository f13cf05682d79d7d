"""GSM-7 / UCS-2 detection, segment counting, look-alike normalisation and fit_to_segments."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cartback.core.sms import (
    GSM7_BASIC,
    GSM7_EXTENSION,
    MIN_PRODUCT_CHARS,
    SegmentInfo,
    count_segments,
    detect_encoding,
    first_non_gsm7,
    fit_to_segments,
    gsm7_spelling,
    normalize_lookalikes,
    shorten_product,
    without_symbols,
)

EMOJI = "😀"
ESCAPE = -1  # stands for the 0x1B septet; no character maps to it


def _pack(stream: list[int], single: int, part: int, is_lead: Callable[[int], bool]) -> int:
    if len(stream) <= single:
        return 1
    parts = 0
    while stream:
        chunk = stream[:part]
        if len(stream) > part and is_lead(chunk[-1]):
            chunk = chunk[:-1]  # never end a part on an escape septet or a high surrogate
        stream = stream[len(chunk) :]
        parts += 1
    return parts


def brute_force_segments(text: str) -> int:
    """An independent packer: encode to real septets / UTF-16 code units, cut the stream into
    parts, and move a split escape septet or high surrogate to the next part."""
    if all(char in GSM7_BASIC or char in GSM7_EXTENSION for char in text):
        septets: list[int] = []
        for char in text:
            if char in GSM7_EXTENSION:
                septets.append(ESCAPE)
            septets.append(ord(char))
        return _pack(septets, 160, 153, lambda unit: unit == ESCAPE)
    raw = text.encode("utf-16-be")
    units = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
    return _pack(units, 70, 67, lambda unit: 0xD800 <= unit <= 0xDBFF)


# Pieces rather than characters, so that multi-code-point emoji (flags) are drawn whole.
mixed_text = st.lists(
    st.sampled_from(
        [*"abcXYZ 0123.,!é€[]{}~^|\\\nÇ", "ł", "ç", "’", "“", "…", "–", "\u00a0", EMOJI, "🇳🇴"]
    ),
    max_size=420,
).map("".join)


@pytest.mark.parametrize(
    ("text", "encoding", "units", "segments"),
    [
        ("", "GSM-7", 0, 1),
        ("a" * 160, "GSM-7", 160, 1),
        ("a" * 161, "GSM-7", 161, 2),
        ("a" * 306, "GSM-7", 306, 2),
        ("a" * 307, "GSM-7", 307, 3),
        ("é" * 160, "GSM-7", 160, 1),
        ("ł" * 70, "UCS-2", 70, 1),
        ("ł" * 71, "UCS-2", 71, 2),
        ("ł" * 134, "UCS-2", 134, 2),
        ("ł" * 135, "UCS-2", 135, 3),
        (EMOJI * 35, "UCS-2", 70, 1),
        (EMOJI * 36, "UCS-2", 72, 2),
        ("€" * 80, "GSM-7", 160, 1),
        ("€" * 81, "GSM-7", 162, 2),
        ("[" + "a" * 158, "GSM-7", 160, 1),
    ],
)
def test_known_segment_counts(text: str, encoding: str, units: int, segments: int) -> None:
    info = count_segments(text)
    assert (info.encoding, info.units, info.segments) == (encoding, units, segments)


def test_per_segment_reports_the_capacity_in_use() -> None:
    assert count_segments("a" * 160).per_segment == 160
    assert count_segments("a" * 161).per_segment == 153
    assert count_segments("ł").per_segment == 70
    assert count_segments("ł" * 71).per_segment == 67


def test_extension_character_is_not_split_across_parts() -> None:
    # 306 septets divide into 2 parts, but the € after 152 'a' cannot straddle the boundary.
    info = count_segments("a" * 152 + "€" * 77)
    assert info == SegmentInfo("GSM-7", 306, 3, 153)


def test_surrogate_pair_is_not_split_across_parts() -> None:
    info = count_segments("ł" * 66 + EMOJI + "ł" * 66)
    assert (info.units, info.segments) == (134, 3)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello @ £5 ¥ § ¿¡ ÄÖÑÜ äöñüà ß Δ", "GSM-7"),
        ("Ç", "GSM-7"),
        ("ç", "UCS-2"),
        ("`", "UCS-2"),
        ("\x1b", "UCS-2"),
        ("€^{}[]~|\\\x0c", "GSM-7"),
        ("Zażółć", "UCS-2"),
        ("It’s", "UCS-2"),
    ],
)
def test_detect_encoding(text: str, expected: str) -> None:
    assert detect_encoding(text) == expected


def test_first_non_gsm7_names_the_offender() -> None:
    assert first_non_gsm7("abc ł😀") == "ł"
    assert first_non_gsm7("abc") is None


@given(mixed_text)
def test_segments_match_a_brute_force_packer(text: str) -> None:
    assert count_segments(text).segments == brute_force_segments(text)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("It’s ‘here’ ‚now‛", "It's 'here' 'now'"),
        ("“Quote” „low‟ «fr» ″", '"Quote" "low" "fr" "'),
        ("a–b—c−d‒e", "a-b-c-d-e"),
        ("Wait…", "Wait..."),
        ("10\u00a0kr\u2009now\u202fok\u3000x", "10 kr now ok x"),
        ("• one\n‣ two", "- one\n- two"),
        ("caf´e 5′", "caf'e 5'"),
        ("in\u200bvisible\u00ad", "invisible"),
    ],
)
def test_normalize_lookalikes(raw: str, expected: str) -> None:
    assert normalize_lookalikes(raw) == expected
    assert detect_encoding(normalize_lookalikes(raw)) == "GSM-7"


def test_normalize_keeps_characters_without_a_clear_equivalent() -> None:
    assert normalize_lookalikes("Zażółć ’") == "Zażółć '"
    assert normalize_lookalikes(f"{EMOJI} “hi”") == f'{EMOJI} "hi"'


def test_ellipsis_stays_single_in_a_ucs2_text() -> None:
    # "..." would cost 3 units instead of 1 and still not make the text GSM-7.
    assert normalize_lookalikes(f"{EMOJI} wait…") == f"{EMOJI} wait…"


@given(mixed_text)
def test_normalize_never_costs_more_segments(text: str) -> None:
    assert count_segments(normalize_lookalikes(text)).segments <= count_segments(text).segments


@given(mixed_text)
def test_normalize_is_idempotent(text: str) -> None:
    once = normalize_lookalikes(text)
    assert normalize_lookalikes(once) == once


def test_shorten_product_cuts_on_a_word_boundary() -> None:
    product = "Organic Cotton Hoodie, Forest Green"
    assert shorten_product(product, 20) == "Organic Cotton…"
    assert shorten_product(product, 22, "...") == "Organic Cotton Hoodie..."
    assert shorten_product(product, 100) == product


def test_shorten_product_cuts_inside_a_long_word_when_it_must() -> None:
    assert shorten_product("Supercalifragilistic", 10) == "Supercalif…"


def test_shorten_product_does_not_split_a_combining_sequence() -> None:
    product = "Cafe\u0301 Creme Noisette"  # decomposed é
    assert shorten_product(product, 4).startswith("Caf…")


def message_for(product: str) -> str:
    return f"Acme: you left {product} in your cart. Finish here: https://acme.test/c/abc123"


def test_fit_returns_the_message_unchanged_when_it_fits() -> None:
    result = fit_to_segments(message_for, "Mug", 1)
    assert (result.text, result.fits, result.product_shortened, result.normalized) == (
        message_for("Mug"),
        True,
        False,
        False,
    )
    assert result.reason is None


def test_fit_normalizes_lookalikes_before_shortening() -> None:
    product = "“Classic” Tee – Navy"
    result = fit_to_segments(lambda p: message_for(p) + " " + "x" * 60, product, 1)
    assert result.fits and result.normalized and not result.product_shortened
    assert '"Classic" Tee - Navy' in result.text
    assert result.info.encoding == "GSM-7"


def test_fit_shortens_the_product_to_the_longest_prefix_that_fits() -> None:
    product = "Handmade Ceramic Coffee Mug With Extra Large Handle In Speckled Oatmeal Glaze " * 2
    result = fit_to_segments(message_for, product, 1)
    assert result.fits and result.product_shortened
    assert result.info.segments == 1 and result.info.encoding == "GSM-7"
    assert "..." in result.text and "…" not in result.text
    # Longest: no longer prefix fits.
    fitting = [
        k
        for k in range(MIN_PRODUCT_CHARS, len(product))
        if count_segments(message_for(shorten_product(product, k, "..."))).segments == 1
    ]
    assert result.text == message_for(shorten_product(product, max(fitting), "..."))


def test_fit_uses_the_unicode_ellipsis_when_the_message_is_ucs2_anyway() -> None:
    # The brand is UCS-2, so spelling the product in GSM-7 cannot help: only the emoji goes.
    product = f"{EMOJI} Party Balloon Set With Confetti and Streamers and Candles and Plates"
    result = fit_to_segments(lambda p: f"Łódź: {p} waits", product, 1)
    assert result.fits and result.product_shortened
    assert result.info.encoding == "UCS-2"
    assert result.text.startswith("Łódź: Party Balloon") and result.text.endswith("… waits")
    assert EMOJI not in result.text


def test_fit_drops_the_product_for_the_fallback_when_no_prefix_fits() -> None:
    product = "Wonderful Widget " * 12
    result = fit_to_segments(lambda p: f"Acme: {p} " + "z" * 145, product, 1, "it")
    assert result.fits and result.product_shortened
    assert result.text == "Acme: it " + "z" * 145


def test_fit_without_a_fallback_word_drops_the_product() -> None:
    result = fit_to_segments(lambda p: f"Acme: {p} " + "z" * 145, "Wonderful Widget", 1)
    assert result.fits and result.product_shortened
    assert result.text == "Acme:  " + "z" * 145


def test_fit_keeps_the_full_product_when_nothing_saves_a_segment() -> None:
    result = fit_to_segments(lambda p: p + " " + "z" * 200, "Wonderful Widget", 1, "it")
    assert not result.fits and not result.product_shortened
    assert result.text == "Wonderful Widget " + "z" * 200
    assert result.reason == "needs 2 segments, max 1 (GSM-7, 217 septets)"


def test_fit_reports_the_attempt_with_the_fewest_segments() -> None:
    product = "Wonderful Widget " * 20
    result = fit_to_segments(lambda p: p + " " + "z" * 200, product, 1, "it")
    assert not result.fits and result.product_shortened
    assert result.info.segments == 2
    assert result.reason == f"needs 2 segments, max 1 (GSM-7, {len(result.text)} septets)"


@pytest.mark.parametrize(
    ("product", "sent"),
    [
        (f"{EMOJI} Gift box", "Gift box"),
        ("🎁 Gift box", "Gift box"),
        ("Gift 🎁 box", "Gift box"),
        ("Gift box 👨\u200d👩\u200d👧", "Gift box"),
        ("Crème brûlée torch 🔥 set", "Crème brulée torch set"),
        ("Bœuf bourguignon pot", "Boeuf bourguignon pot"),
    ],
)
def test_fit_drops_emoji_and_spells_the_product_in_gsm7(product: str, sent: str) -> None:
    result = fit_to_segments(message_for, product, 1, "your items")
    assert result.fits and result.product_shortened
    assert result.info.encoding == "GSM-7" and result.info.segments == 1
    assert result.text == message_for(sent)


def test_fit_uses_the_fallback_word_for_a_product_of_emoji_only() -> None:
    result = fit_to_segments(message_for, "🎁🎉", 1, "your items")
    assert result.fits and result.text == message_for("your items")


def test_fit_keeps_letters_of_other_scripts_in_a_message_that_is_ucs2_anyway() -> None:
    def render(product: str) -> str:
        return f"Acme: Привет Ольга, {product} ждёт вас здесь!: https://acme.test/c/abc123"

    result = fit_to_segments(render, "🎁 Кофе", 1, "товары")
    assert result.fits and result.text == render("Кофе")


@pytest.mark.parametrize(
    ("text", "spelled", "plain"),
    [
        ("🎁 Gift box", "Gift box", "Gift box"),
        ("Crème brûlée ½ kg", "Crème brulée 1/2 kg", "Crème brûlée ½ kg"),
        ("Nike™ Air 👟🏽", "Nike Air", "Nike Air"),
        ("1️⃣ Set", "1 Set", "1 Set"),
        ("Кофе", "", "Кофе"),
        ("Wait… “yes”", 'Wait... "yes"', "Wait… “yes”"),
        ("Façade Ça", "Facade Ça", "Façade Ça"),
    ],
)
def test_gsm7_spelling_and_without_symbols(text: str, spelled: str, plain: str) -> None:
    assert gsm7_spelling(text) == spelled
    assert detect_encoding(spelled) == "GSM-7"
    assert without_symbols(text) == plain


@settings(max_examples=80, deadline=None)
@given(
    product=st.text(
        alphabet=st.sampled_from([*"abc XYZ-’…éêç€", "ł", "Ж", "中", EMOJI, "🎁", "\u200d"]),
        max_size=200,
    )
)
def test_a_product_name_never_stops_a_message_that_fits_with_the_fallback(product: str) -> None:
    result = fit_to_segments(message_for, product, 1, "your items")
    assert result.fits and result.info.segments == 1


def test_fit_failure_names_the_first_non_gsm_character() -> None:
    result = fit_to_segments(lambda p: f"{EMOJI} {p} " + "ł" * 200, "Short", 1)
    assert not result.fits
    assert (
        result.reason
        == f"needs {result.info.segments} segments, max 1 (UCS-2 because of '{EMOJI}')"
    )
    assert not result.product_shortened  # 5 characters cannot be shortened


def test_fit_rejects_a_nonpositive_segment_limit() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        fit_to_segments(message_for, "Mug", 0)


@settings(max_examples=60, deadline=None)
@given(
    product=st.text(
        alphabet=st.sampled_from([*"abc XYZ-’…é€", "ł", EMOJI]), min_size=0, max_size=200
    ),
    padding=st.integers(min_value=0, max_value=300),
    max_segments=st.integers(min_value=1, max_value=3),
)
def test_fit_never_claims_a_fit_it_does_not_have(
    product: str, padding: int, max_segments: int
) -> None:
    result = fit_to_segments(lambda p: f"Acme: {p} " + "q" * padding, product, max_segments)
    assert result.info == count_segments(result.text)
    assert result.fits == (result.info.segments <= max_segments)
    assert (result.reason is None) == result.fits
