"""SMS content arithmetic: GSM-7 / UCS-2 detection, segment counting and fitting a message.

Segments are computed by packing characters into parts the way a sending SMSC does, never by
dividing a length: a GSM-7 extension character (escape + code, 2 septets) and a UTF-16
surrogate pair are never split across two parts of a concatenated message.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

Encoding = Literal["GSM-7", "UCS-2"]

# GSM 03.38 default alphabet, in code order 0x00-0x7F. 0x1B is the escape to the extension
# table, not a character, so it is left out of the set below.
GSM7_BASIC_TABLE = (
    "@£$¥èéùìòÇ\nØø\rÅå"
    "Δ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ"
    " !\"#¤%&'()*+,-./"
    "0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNO"
    "PQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmno"
    "pqrstuvwxyzäöñüà"
)
GSM7_BASIC: frozenset[str] = frozenset(GSM7_BASIC_TABLE) - {"\x1b"}

# The extension table: each costs the escape septet plus its own code, so 2 septets.
GSM7_EXTENSION: frozenset[str] = frozenset("\x0c^{}\\[~]|€")

GSM7_SINGLE = 160
GSM7_PART = 153  # 160 septets minus the 7-septet concatenation header
UCS2_SINGLE = 70
UCS2_PART = 67  # 70 UTF-16 code units minus the header

ELLIPSIS = "…"
GSM_ELLIPSIS = "..."
MIN_PRODUCT_CHARS = 8

# Look-alikes with one obvious GSM-7 replacement. Each maps one character to one character (or to
# nothing, for invisible characters), so replacing it can never cost extra units.
_ONE_TO_ONE: dict[str, str] = {
    **dict.fromkeys("‘’‚‛′´`‹›ʹʼˈ", "'"),
    **dict.fromkeys("“”„‟″«»ʺ", '"'),
    **dict.fromkeys("‐‑‒–—―−⁃•‣", "-"),
    **dict.fromkeys("\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006", " "),
    **dict.fromkeys("\u2007\u2008\u2009\u200a\u202f\u205f\u3000\t", " "),
    **dict.fromkeys("\u2028\u2029", "\n"),
    **dict.fromkeys("\u00ad\u200b\ufeff", ""),  # soft hyphen, zero-width space, BOM
    "\u2024": ".",
    "\u2044": "/",  # fraction slash
    "\u2215": "/",  # division slash
}
# Replacements that grow the text: applied only when they make the whole message GSM-7.
_EXPANDING: dict[str, str] = {ELLIPSIS: GSM_ELLIPSIS, "\u2025": ".."}

_ONE_TO_ONE_TABLE = str.maketrans(_ONE_TO_ONE)
_EXPANDING_TABLE = str.maketrans(_EXPANDING)


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    """How a text travels: `units` are septets (GSM-7) or UTF-16 code units (UCS-2).

    `per_segment` is the capacity of one segment as used: 160/70 when the text fits in a
    single SMS, 153/67 per part when it is concatenated.
    """

    encoding: Encoding
    units: int
    segments: int
    per_segment: int


@dataclass(frozen=True, slots=True)
class FitResult:
    text: str
    fits: bool
    info: SegmentInfo
    # The product name was changed to fit: spelled in GSM-7, shortened, or replaced.
    product_shortened: bool
    normalized: bool
    reason: str | None


_NON_GSM7 = re.compile(
    "[^" + re.escape("".join(sorted(set(GSM7_BASIC) | set(GSM7_EXTENSION)))) + "]"
)


def is_gsm7_char(char: str) -> bool:
    return char in GSM7_BASIC or char in GSM7_EXTENSION


def first_non_gsm7(text: str) -> str | None:
    """The first character that forces UCS-2, or None when the text is GSM-7."""
    found = _NON_GSM7.search(text)
    return found.group() if found else None


def detect_encoding(text: str) -> Encoding:
    return "GSM-7" if first_non_gsm7(text) is None else "UCS-2"


_HAS_EXTENSION = re.compile("[" + re.escape("".join(sorted(GSM7_EXTENSION))) + "]")


def _unit_weights(text: str, encoding: Encoding) -> Iterator[int]:
    """The indivisible cost of each character: 1 or 2 septets, or 1 or 2 UTF-16 code units."""
    for char in text:
        if encoding == "GSM-7":
            yield 2 if char in GSM7_EXTENSION else 1
        else:
            yield 2 if ord(char) > 0xFFFF else 1


def count_segments(text: str) -> SegmentInfo:
    """Encoding, size and number of SMS segments of `text`.

    Empty text counts as 1 segment of 0 units: providers still send (and bill) one message.
    """
    encoding = detect_encoding(text)
    single, part = (GSM7_SINGLE, GSM7_PART) if encoding == "GSM-7" else (UCS2_SINGLE, UCS2_PART)
    if encoding == "GSM-7" and not _HAS_EXTENSION.search(text):
        # Every character weighs one septet: no character can straddle parts, so divide.
        units = len(text)
        if units <= single:
            return SegmentInfo(encoding, units, 1, single)
        return SegmentInfo(encoding, units, -(-units // part), part)
    weights = list(_unit_weights(text, encoding))
    units = sum(weights)
    if units <= single:
        return SegmentInfo(encoding, units, 1, single)
    segments, used = 1, 0
    for weight in weights:
        if used + weight > part:  # this character would straddle two parts: start a new one
            segments += 1
            used = 0
        used += weight
    return SegmentInfo(encoding, units, segments, part)


def normalize_lookalikes(text: str) -> str:
    """Replace typographic look-alikes (smart quotes, dashes, odd spaces...) with GSM-7 ones.

    One-for-one replacements are always made. The ellipsis becomes "..." only when that makes
    the whole text GSM-7 without costing more segments; inside a UCS-2 text "…" stays, because
    it is 1 unit there and "..." would be 3. So normalising never adds segments.
    """
    simple = text.translate(_ONE_TO_ONE_TABLE)
    if not any(char in _EXPANDING for char in simple):
        return simple
    expanded = simple.translate(_EXPANDING_TABLE)
    if detect_encoding(expanded) != "GSM-7":
        return simple
    if count_segments(expanded).segments > count_segments(simple).segments:
        return simple
    return expanded


def _safe_cut(product: str, length: int) -> int:
    """Move a cut point back so it splits no combining mark, variation selector or ZWJ sequence."""
    cut = length
    while 0 < cut < len(product) and (
        unicodedata.combining(product[cut])
        or product[cut] in "\u200d\ufe0e\ufe0f"
        or product[cut - 1] == "\u200d"
    ):
        cut -= 1
    return cut


def shorten_product(product: str, length: int, ellipsis: str = ELLIPSIS) -> str:
    """The first `length` characters of `product`, cut back to a word boundary when that keeps
    at least MIN_PRODUCT_CHARS, with trailing punctuation dropped and `ellipsis` appended."""
    if length >= len(product):
        return product
    cut = _safe_cut(product, length)
    head = product[:cut]
    space = head.rfind(" ")
    if space >= MIN_PRODUCT_CHARS and not product[cut].isspace():
        head = head[:space]
    head = head.rstrip(" ,;:-–—/&+(")
    if not head:
        head = product[:cut]
    return head + ellipsis


@dataclass(frozen=True, slots=True)
class _Attempt:
    text: str
    info: SegmentInfo
    normalized: bool


def _attempt_shortened(render: Callable[[str], str], product: str, length: int) -> _Attempt:
    # "..." keeps a GSM-7 message GSM-7; inside a UCS-2 message "…" is the cheaper ellipsis.
    plain = render(shorten_product(product, length, GSM_ELLIPSIS))
    text = normalize_lookalikes(plain)
    if detect_encoding(text) != "GSM-7":
        plain = render(shorten_product(product, length, ELLIPSIS))
        text = normalize_lookalikes(plain)
    return _Attempt(text, count_segments(text), text != plain)


def _failure_reason(info: SegmentInfo, text: str, max_segments: int) -> str:
    limit = f"needs {info.segments} segments, max {max_segments}"
    offender = first_non_gsm7(text)
    if offender is None:
        return f"{limit} (GSM-7, {info.units} septets)"
    return f"{limit} (UCS-2 because of {offender!r})"


def fit_to_segments(
    render: Callable[[str], str], product: str, max_segments: int, fallback: str = ""
) -> FitResult:
    """Render a message so that it fits in `max_segments`, degrading it step by step:
    as is → look-alikes normalised → the product name without what forces UCS-2 (emoji and
    other characters outside GSM-7 dropped, accented letters spelled plainly) → that name
    shortened (longest prefix that fits) → `fallback` in place of the name ("your items", or
    nothing). Only a message that fits none of these fails: a product name alone never stops it.
    """
    if max_segments < 1:
        raise ValueError(f"max_segments must be at least 1, got {max_segments}")
    original = render(product)
    info = count_segments(original)
    if info.segments <= max_segments:
        return FitResult(original, True, info, False, False, None)
    normalized = normalize_lookalikes(original)
    best = _Attempt(normalized, count_segments(normalized), normalized != original)
    if best.info.segments <= max_segments:
        return FitResult(best.text, True, best.info, False, best.normalized, None)

    changed = False

    def fitted(attempt: _Attempt) -> FitResult:
        return FitResult(attempt.text, True, attempt.info, True, attempt.normalized, None)

    def keep_if_better(attempt: _Attempt) -> None:
        nonlocal best, changed
        if attempt.info.segments < best.info.segments:
            best, changed = attempt, True

    name = _cheaper_product(render, product)
    if name and name != product:  # nothing left of the name: the fallback word stands in
        cleaned = _attempt(render, name)
        if cleaned.info.segments <= max_segments:
            return fitted(cleaned)
        keep_if_better(cleaned)
    if len(name) > MIN_PRODUCT_CHARS:
        shortest = _attempt_shortened(render, name, MIN_PRODUCT_CHARS)
        if shortest.info.segments <= max_segments:
            # Binary search for the longest prefix that fits; `low` always fits.
            found, low, high = shortest, MIN_PRODUCT_CHARS, len(name) - 1
            while low < high:
                middle = (low + high + 1) // 2
                attempt = _attempt_shortened(render, name, middle)
                if attempt.info.segments <= max_segments:
                    low, found = middle, attempt
                else:
                    high = middle - 1
            return fitted(found)
        keep_if_better(shortest)
    if product.strip() and fallback != name:
        replaced = _attempt(render, fallback)
        if replaced.info.segments <= max_segments:
            return fitted(replaced)
        keep_if_better(replaced)

    reason = _failure_reason(best.info, best.text, max_segments)
    return FitResult(best.text, False, best.info, changed, best.normalized, reason)


def _attempt(render: Callable[[str], str], product: str) -> _Attempt:
    plain = render(product)
    text = normalize_lookalikes(plain)
    return _Attempt(text, count_segments(text), text != plain)


def _cheaper_product(render: Callable[[str], str], product: str) -> str:
    """The product name spelled in GSM-7 when that makes the whole message GSM-7; otherwise
    (the message is UCS-2 for other reasons, such as the shopper's name) only its emoji and
    symbols go, which cost units without saying anything."""
    spelled = gsm7_spelling(product)
    if spelled != product and detect_encoding(normalize_lookalikes(render(spelled))) == "GSM-7":
        return spelled
    return without_symbols(product)


# Letters that Unicode does not decompose into a GSM-7 letter and an accent.
_SPELLED_OUT: dict[str, str] = {
    "œ": "oe",
    "Œ": "OE",
    "ĳ": "ij",
    "Ĳ": "IJ",
    "ł": "l",
    "Ł": "L",
    "đ": "d",
    "Đ": "D",
    "ð": "d",
    "þ": "th",
    "Þ": "Th",
    "ı": "i",
}


def gsm7_spelling(text: str) -> str:
    """`text` in the GSM-7 alphabet: look-alikes replaced, letters and digits outside it spelled
    with their base letters (ê → e, ç → c, ½ → 1/2), everything else (emoji, symbols, letters of
    other scripts) dropped, and the spaces tidied."""
    kept: list[str] = []
    for char in text.translate(_ONE_TO_ONE_TABLE).translate(_EXPANDING_TABLE):
        if is_gsm7_char(char):
            kept.append(char)
        elif char in _SPELLED_OUT:
            kept.append(_SPELLED_OUT[char])
        elif unicodedata.category(char)[0] in "LN":
            decomposed = unicodedata.normalize("NFKD", char).translate(_ONE_TO_ONE_TABLE)
            kept.extend(part for part in decomposed if is_gsm7_char(part))
        elif unicodedata.category(char)[0] == "Z":
            kept.append(" ")
    return " ".join("".join(kept).split())


def without_symbols(text: str) -> str:
    """`text` without emoji, other pictographic symbols and the invisible characters that join
    or style them (ZWJ, variation selectors, skin tones, keycaps, tags); the spaces tidied."""
    kept = (
        char
        for char in text
        if unicodedata.category(char) not in _SYMBOL_CATEGORIES
        and not ("\ufe00" <= char <= "\ufe0f" or "\U000e0000" <= char <= "\U000e007f")
        and char != "\u20e3"
    )
    return " ".join("".join(kept).split())


# Other symbols (emoji, ™), modifier symbols (skin tones) and format characters (ZWJ).
_SYMBOL_CATEGORIES = frozenset({"So", "Sk", "Cf", "Cs", "Co"})
