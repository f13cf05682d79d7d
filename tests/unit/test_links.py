"""Tracked links: token format, destination allow-list, UTM tagging, click classification."""

from __future__ import annotations

import math
import os
from urllib.parse import parse_qsl, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cartback.core.links import (
    BASE62,
    TOKEN_MAX_LENGTH,
    TOKEN_MIN_LENGTH,
    ClickKind,
    LinkRejected,
    checked_destination,
    classify_click,
    is_valid_token,
    new_token,
    with_utm,
)

# ---------------------------------------------------------------------------------------------
# tokens


def test_alphabet_is_base62_in_digit_upper_lower_order() -> None:
    assert BASE62 == "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def test_twelve_bytes_make_seventeen_characters() -> None:
    assert new_token(bytes(12)) == "0" * 17
    assert len(new_token(b"\xff" * 12)) == 17
    assert new_token(b"\x00" * 11 + b"\x3d") == "0" * 16 + "z"  # 61
    assert new_token(b"\x00" * 11 + b"\x3e") == "0" * 15 + "10"  # 62


@pytest.mark.parametrize("count", [8, 9, 12, 16, 32])
def test_token_length_is_fixed_by_byte_count_and_carries_the_entropy(count: int) -> None:
    lengths = {len(new_token(os.urandom(count))) for _ in range(50)}
    assert len(lengths) == 1
    (length,) = lengths
    assert length == math.ceil(count * 8 / math.log2(62))
    assert length * math.log2(62) >= count * 8


@pytest.mark.parametrize("count", [0, 1, 7, 33])
def test_token_needs_eight_to_thirty_two_bytes(count: int) -> None:
    with pytest.raises(ValueError, match="random bytes"):
        new_token(os.urandom(count))


def test_token_rejects_non_bytes() -> None:
    with pytest.raises(ValueError, match="bytes"):
        new_token("abcdefghijkl")  # type: ignore[arg-type]


@given(st.binary(min_size=8, max_size=32))
def test_tokens_are_valid_distinct_per_input_and_decodable(data: bytes) -> None:
    token = new_token(data)
    assert is_valid_token(token)
    assert set(token) <= set(BASE62)
    value = 0
    for char in token:
        value = value * 62 + BASE62.index(char)
    assert value.to_bytes(len(data), "big") == data


def test_different_random_bytes_give_different_tokens() -> None:
    tokens = {new_token(os.urandom(12)) for _ in range(2000)}
    assert len(tokens) == 2000


@pytest.mark.parametrize(
    "token",
    [
        "",
        "0" * (TOKEN_MIN_LENGTH - 1),
        "0" * (TOKEN_MAX_LENGTH + 1),
        "0" * 16 + "-",
        "abc/def/ghi/jklmn",
        "0" * 16 + "é",
        "z" * 17,  # larger than any 12-byte value
        "0" * 12,  # a length no byte count produces
        "../../etc/passwd",
        "%00" * 6,
    ],
)
def test_invalid_token_syntax(token: str) -> None:
    assert not is_valid_token(token)


def test_non_string_token_is_invalid() -> None:
    assert not is_valid_token(None)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# destinations

ALLOWED = ["shop.com", "bücher.de"]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://shop.com/cart?a=1#x", "https://shop.com/cart?a=1#x"),
        ("http://SHOP.com./c", "http://shop.com/c"),
        ("HTTPS://Shop.COM", "https://shop.com/"),
        ("https://www.shop.com/products/x", "https://www.shop.com/products/x"),
        ("https://eu.checkout.shop.com/r?key=a%2Bb", "https://eu.checkout.shop.com/r?key=a%2Bb"),
        ("https://shop.com:443/x", "https://shop.com/x"),
        ("http://shop.com:80/x", "http://shop.com/x"),
        ("https://shop.com:8443/x", "https://shop.com:8443/x"),
        ("https://bücher.de/ü?q=ö", "https://xn--bcher-kva.de/%C3%BC?q=%C3%B6"),
        ("https://xn--bcher-kva.de/", "https://xn--bcher-kva.de/"),
    ],
)
def test_accepted_destinations_are_normalised(url: str, expected: str) -> None:
    assert checked_destination(url, ALLOWED) == expected


@pytest.mark.parametrize(
    "url",
    [
        "javascript:alert(1)",
        "JaVaScRiPt:alert(1)",
        "javascript://shop.com/%0Aalert(1)",
        "data:text/html,<script>alert(1)</script>",
        "vbscript:msgbox",
        "ftp://shop.com/file",
        "//evil.com",
        "//shop.com/cart",
        "/cart",
        "shop.com/cart",
        "https:shop.com",
        "https:///shop.com",
        "https://shop.com@evil.com",
        "https://user:pass@shop.com/",
        "https://evil.com/shop.com",
        "https://shop.com.evil.com",
        "https://evilshop.com",
        "https://evil.com?shop.com",
        "https://evil.com#@shop.com",
        "https://evil.com\\@shop.com",
        "https:\\\\evil.com",
        "https://shop.com\\.evil.com",
        "https://xn--shp-7ka.com/",
        "https://ѕhop.com/",  # Cyrillic dze
        "https://sh%6Fp.com/",
        "https://shop.com%2F@evil.com",
        "https://shop.com:99999/",
        "https://shop.com:port/",
        "https://[::1]/",
        "https://-shop.com/",
        "https://shop..com/",
        " https://shop.com/",
        "https://shop.com/\n",
        "https://shop.com/a b",
        "https://shop.com/\u200bx",
        "https://shop.com/\x00",
        "",
    ],
)
def test_rejected_destinations(url: str) -> None:
    with pytest.raises(LinkRejected):
        checked_destination(url, ALLOWED)


def test_rejection_is_a_value_error_with_a_reason() -> None:
    with pytest.raises(ValueError, match="not one of the store's domains"):
        checked_destination("https://evil.com/", ALLOWED)


def test_allowed_domains_are_normalised_and_validated() -> None:
    assert checked_destination("https://shop.com/", ["SHOP.COM."]) == "https://shop.com/"
    with pytest.raises(LinkRejected):
        checked_destination("https://shop.com/", [])
    with pytest.raises(ValueError, match="allowed domain"):
        checked_destination("https://shop.com/", ["shop..com"])
    with pytest.raises(ValueError, match="collection"):
        checked_destination("https://shop.com/", "shop.com")


@given(st.text(max_size=80))
def test_arbitrary_input_is_accepted_only_on_allowed_hosts(url: str) -> None:
    try:
        result = checked_destination(url, ALLOWED)
    except LinkRejected:
        return
    host = urlsplit(result).hostname or ""
    assert host in {"shop.com", "xn--bcher-kva.de"} or host.endswith(
        (".shop.com", ".xn--bcher-kva.de")
    )
    assert urlsplit(result).scheme in {"http", "https"}


# ---------------------------------------------------------------------------------------------
# UTM


def test_utm_added_after_existing_params_keeping_fragment_and_encoding() -> None:
    url = "https://shop.com/r?key=a%2Bb&x=1#frag"
    tagged = with_utm(url, medium="sms", campaign="cart recovery")
    assert tagged == (
        "https://shop.com/r?key=a%2Bb&x=1&utm_source=cartback&utm_medium=sms"
        "&utm_campaign=cart%20recovery#frag"
    )


def test_utm_overrides_existing_utm_params_in_any_case() -> None:
    url = "https://shop.com/?UTM_SOURCE=old&utm_medium=email&a=1&utm_campaign=x"
    tagged = with_utm(url, source="cb", medium="sms", campaign="c1", content="step-2")
    assert parse_qsl(urlsplit(tagged).query) == [
        ("a", "1"),
        ("utm_source", "cb"),
        ("utm_medium", "sms"),
        ("utm_campaign", "c1"),
        ("utm_content", "step-2"),
    ]


def test_utm_keeps_an_existing_content_when_none_is_given() -> None:
    tagged = with_utm("https://shop.com/?utm_content=hero", medium="sms", campaign="c")
    assert "utm_content=hero" in tagged


def test_utm_is_idempotent() -> None:
    once = with_utm("https://shop.com/p?x=1", medium="sms", campaign="c", content="a&b")
    assert with_utm(once, medium="sms", campaign="c", content="a&b") == once
    assert "utm_content=a%26b" in once


@pytest.mark.parametrize(
    ("url", "kwargs"),
    [
        ("https://shop.com/", {"medium": "", "campaign": "c"}),
        ("https://shop.com/", {"medium": "sms", "campaign": "  "}),
        ("https://shop.com/", {"medium": "sms", "campaign": "c", "content": ""}),
        ("/relative", {"medium": "sms", "campaign": "c"}),
        ("javascript:alert(1)", {"medium": "sms", "campaign": "c"}),
    ],
)
def test_utm_rejects_bad_input(url: str, kwargs: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        with_utm(url, **kwargs)


# ---------------------------------------------------------------------------------------------
# clicks

IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1"
)
ANDROID = (
    "Mozilla/5.0 (Linux; Android 13; CUBOT X30) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Mobile Safari/537.36"
)


@pytest.mark.parametrize(
    ("method", "agent", "headers", "kind"),
    [
        ("GET", IPHONE, {}, ClickKind.HUMAN),
        ("get", ANDROID, {"Accept": "text/html"}, ClickKind.HUMAN),
        ("HEAD", IPHONE, {}, ClickKind.HEAD),
        ("head", "curl/8.0", {}, ClickKind.HEAD),
        ("GET", IPHONE, {"Purpose": "prefetch"}, ClickKind.PREFETCH),
        ("GET", IPHONE, {"sec-purpose": "prefetch;prerender"}, ClickKind.PREFETCH),
        ("GET", IPHONE, {"SEC-PURPOSE": "prefetch"}, ClickKind.PREFETCH),
        ("GET", IPHONE, {"X-Moz": "prefetch"}, ClickKind.PREFETCH),
        ("GET", IPHONE, {"X-Purpose": "preview"}, ClickKind.PREFETCH),
        ("GET", "facebookexternalhit/1.1", {}, ClickKind.BOT),
        ("GET", "facebookexternalhit/1.1 Facebot Twitterbot/1.1", {}, ClickKind.BOT),
        ("GET", "Twitterbot/1.0", {}, ClickKind.BOT),
        ("GET", "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)", {}, ClickKind.BOT),
        ("GET", "WhatsApp/2.23.20.0 A", {}, ClickKind.BOT),
        ("GET", "TelegramBot (like TwitterBot)", {}, ClickKind.BOT),
        (
            "GET",
            "Mozilla/5.0 (compatible; Discordbot/2.0; +https://discordapp.com)",
            {},
            ClickKind.BOT,
        ),
        ("GET", "LinkedInBot/1.0 (compatible; Mozilla/5.0)", {}, ClickKind.BOT),
        (
            "GET",
            "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
            {},
            ClickKind.BOT,
        ),
        (
            "GET",
            "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
            {},
            ClickKind.BOT,
        ),
        (
            "GET",
            "Mozilla/5.0 (Macintosh) AppleWebKit/605.1.15 (KHTML, like Gecko) Applebot/0.1",
            {},
            ClickKind.BOT,
        ),
        (
            "GET",
            "Mozilla/5.0 (Windows NT 6.1; WOW64) SkypeUriPreview Preview/0.5",
            {},
            ClickKind.BOT,
        ),
        (
            "GET",
            "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)",
            {},
            ClickKind.BOT,
        ),
        (
            "GET",
            "Mozilla/5.0 (X11; Linux x86_64) HeadlessChrome/120.0.0.0 Safari/537.36",
            {},
            ClickKind.BOT,
        ),
        ("GET", "curl/8.4.0", {}, ClickKind.BOT),
        ("GET", "Wget/1.21", {}, ClickKind.BOT),
        ("GET", "python-requests/2.31.0", {}, ClickKind.BOT),
        ("GET", "Go-http-client/1.1", {}, ClickKind.BOT),
        ("GET", "okhttp/4.12.0", {}, ClickKind.BOT),
        ("GET", None, {}, ClickKind.BOT),
        ("GET", "   ", {}, ClickKind.BOT),
        ("POST", IPHONE, {}, ClickKind.BOT),
        ("OPTIONS", IPHONE, {}, ClickKind.BOT),
    ],
)
def test_click_classification(
    method: str, agent: str | None, headers: dict[str, str], kind: ClickKind
) -> None:
    assert classify_click(method, agent, headers) is kind


def test_head_wins_over_prefetch_and_prefetch_over_bot() -> None:
    assert classify_click("HEAD", "Twitterbot/1.0", {"Purpose": "prefetch"}) is ClickKind.HEAD
    assert classify_click("GET", "Twitterbot/1.0", {"Purpose": "prefetch"}) is ClickKind.PREFETCH


@given(
    method=st.text(max_size=10),
    agent=st.none() | st.text(max_size=200),
    headers=st.dictionaries(st.text(max_size=20), st.text(max_size=40), max_size=5),
)
def test_click_classification_never_fails(
    method: str, agent: str | None, headers: dict[str, str]
) -> None:
    assert classify_click(method, agent, headers) in ClickKind
