"""Tracked short links: opaque tokens, destination checks, UTM tagging and click classification.

A link's destination is stored server-side under a random token and never read from the request
(an open redirect otherwise). Destinations must be http(s) on one of the merchant's domains.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Collection, Mapping
from enum import StrEnum
from functools import lru_cache
from urllib.parse import quote, unquote, urlsplit, urlunsplit

BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase
_BASE62_INDEX = {char: index for index, char in enumerate(BASE62)}

MIN_TOKEN_BYTES = 8  # 64 bits: unguessable for a link that lives a few weeks
MAX_TOKEN_BYTES = 32  # more entropy buys nothing and only lengthens the SMS


def _encoded_length(byte_count: int) -> int:
    """Base62 digits needed for any value of `byte_count` bytes (12 bytes → 17)."""
    length = 0
    while 62**length < 1 << (8 * byte_count):
        length += 1
    return length


# Each byte count maps to its own length, so a token's length says how many bytes it encodes.
_BYTES_FOR_LENGTH = {
    _encoded_length(count): count for count in range(MIN_TOKEN_BYTES, MAX_TOKEN_BYTES + 1)
}
TOKEN_MIN_LENGTH = min(_BYTES_FOR_LENGTH)
TOKEN_MAX_LENGTH = max(_BYTES_FOR_LENGTH)


def new_token(random_bytes: bytes) -> str:
    """Base62 token of the given random bytes, left-padded to a length fixed by the byte count."""
    if not isinstance(random_bytes, bytes | bytearray):
        raise ValueError(f"random_bytes must be bytes, got {type(random_bytes).__name__}")
    count = len(random_bytes)
    if not MIN_TOKEN_BYTES <= count <= MAX_TOKEN_BYTES:
        raise ValueError(
            f"a link token needs {MIN_TOKEN_BYTES} to {MAX_TOKEN_BYTES} random bytes, got {count}"
        )
    value = int.from_bytes(random_bytes, "big")
    digits: list[str] = []
    while value:
        value, remainder = divmod(value, 62)
        digits.append(BASE62[remainder])
    return "".join(reversed(digits)).rjust(_encoded_length(count), BASE62[0])


def is_valid_token(token: str) -> bool:
    """Could `token` have come from new_token? A cheap check before any database lookup."""
    if not isinstance(token, str) or len(token) not in _BYTES_FOR_LENGTH:
        return False
    value = 0
    for char in token:
        digit = _BASE62_INDEX.get(char)
        if digit is None:
            return False
        value = value * 62 + digit
    return value < 1 << (8 * _BYTES_FOR_LENGTH[len(token)])


class LinkRejected(ValueError):
    """A destination that a tracked link must not redirect to."""


_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_DEFAULT_PORTS = {"http": 80, "https": 443}


@lru_cache(maxsize=4096)
def _normalised_host(host: str, *, what: str) -> str:
    """Lower-case ASCII (IDNA) host without a trailing dot; LinkRejected when not a DNS name.
    Cached: a store's few hosts come back with every message."""
    try:
        ascii_host = host.lower().encode("idna").decode("ascii")
    except UnicodeError:
        raise LinkRejected(f"{what} {host!r} is not a valid domain name") from None
    ascii_host = ascii_host.removesuffix(".")
    labels = ascii_host.split(".")
    if not ascii_host or len(ascii_host) > 253 or not all(_LABEL.fullmatch(x) for x in labels):
        raise LinkRejected(f"{what} {host!r} is not a valid domain name")
    return ascii_host


_ASCII_CONTROL_OR_SPACE = re.compile(r"[\x00-\x20\x7f]")


def _has_control_or_space(text: str) -> bool:
    if text.isascii():  # the common case, checked without a per-character category lookup
        return _ASCII_CONTROL_OR_SPACE.search(text) is not None
    return any(char.isspace() or unicodedata.category(char) in {"Cc", "Cf"} for char in text)


_PRINTABLE_ASCII = "".join(chr(code) for code in range(0x21, 0x7F))


def _percent_encode_non_ascii(part: str) -> str:
    # Location headers are ASCII; keep existing escapes and all ASCII as they are.
    return quote(part, safe=_PRINTABLE_ASCII)


def checked_destination(url: str, allowed_domains: Collection[str]) -> str:
    """The normalised `url` if a tracked link may redirect there, else LinkRejected.

    Only http(s); the host must be an allowed domain or a subdomain of one, compared after
    lower-casing, IDNA encoding and dropping a trailing dot. Userinfo, backslashes, control
    characters, whitespace and protocol-relative or scheme-less URLs are refused.
    """
    if not isinstance(url, str) or not url:
        raise LinkRejected("destination must be a non-empty string")
    if isinstance(allowed_domains, str):
        raise ValueError("allowed_domains must be a collection of domains, not a single string")
    if _has_control_or_space(url):
        raise LinkRejected("destination contains whitespace or control characters")
    if "\\" in url:
        raise LinkRejected("destination contains a backslash")
    scheme, separator, _ = url.partition("://")
    if not separator or scheme.lower() not in _DEFAULT_PORTS:
        raise LinkRejected("destination must be an absolute http:// or https:// URL")
    parts = urlsplit(url)
    if "@" in parts.netloc:
        raise LinkRejected("destination must not contain user info (user@host)")
    raw_host = parts.netloc.split(":", 1)[0]
    if not raw_host or "%" in raw_host or "[" in parts.netloc or parts.netloc.count(":") > 1:
        raise LinkRejected("destination must name a host by its domain name")
    try:
        port = parts.port
    except ValueError:
        raise LinkRejected("destination has an invalid port") from None
    host = _normalised_host(raw_host, what="destination host")
    allowed = _allowed_domains(tuple(allowed_domains))
    if not any(host == domain or host.endswith("." + domain) for domain in allowed):
        raise LinkRejected(f"destination host {host!r} is not one of the store's domains")
    scheme = parts.scheme.lower()
    netloc = host if port in (None, _DEFAULT_PORTS[scheme]) else f"{host}:{port}"
    path, query, fragment = (
        _percent_encode_non_ascii(part) for part in (parts.path or "/", parts.query, parts.fragment)
    )
    return urlunsplit((scheme, netloc, path, query, fragment))


@lru_cache(maxsize=1024)
def _allowed_domains(domains: tuple[str, ...]) -> frozenset[str]:
    return frozenset(_allowed_domain(domain) for domain in domains)


def _allowed_domain(domain: str) -> str:
    if not isinstance(domain, str) or not domain.strip():
        raise ValueError(f"allowed domain must be a non-empty string, got {domain!r}")
    try:
        return _normalised_host(domain.strip(), what="allowed domain")
    except LinkRejected as error:
        raise ValueError(str(error)) from None


_UTM_ORDER = ("utm_source", "utm_medium", "utm_campaign", "utm_content")


def with_utm(
    url: str, *, source: str = "cartback", medium: str, campaign: str, content: str | None = None
) -> str:
    """`url` with utm_source/medium/campaign (and content when given) set, in that order, after
    the other query parameters, which keep their order and exact encoding; the fragment stays."""
    values = {"utm_source": source, "utm_medium": medium, "utm_campaign": campaign}
    if content is not None:
        values["utm_content"] = content
    for name, value in values.items():
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    parts = urlsplit(url)
    if parts.scheme.lower() not in _DEFAULT_PORTS or not parts.netloc:
        raise ValueError(f"can only tag absolute http(s) URLs, got {url!r}")
    # Kept byte for byte: a shop's signed restore link (Shopify's `key=`) must not be re-encoded.
    kept = [
        pair
        for pair in parts.query.split("&")
        if pair and unquote(pair.split("=", 1)[0]).lower() not in values
    ]
    tags = [f"{name}={quote(values[name], safe='')}" for name in _UTM_ORDER if name in values]
    return urlunsplit(parts._replace(query="&".join(kept + tags)))


class ClickKind(StrEnum):
    HUMAN = "human"
    # Link previews, crawlers, scanners and HTTP libraries: not a shopper.
    BOT = "bot"
    # The browser fetching ahead of a possible navigation.
    PREFETCH = "prefetch"
    HEAD = "head"


# Lower-case substrings of user agents that fetch links without a person behind them.
_BOT_AGENTS = (
    "facebookexternalhit",
    "facebot",
    "twitterbot",
    "slackbot",
    "whatsapp",
    "telegrambot",
    "discordbot",
    "linkedinbot",
    "googlebot",
    "bingbot",
    "applebot",
    "skypeuripreview",
    "preview",
    "spider",
    "crawler",
    "headlesschrome",
    "phantomjs",
    "existence discovery",
    # HTTP libraries and command-line clients: shoppers tap links in browsers and apps.
    "curl/",
    "wget/",
    "python-requests",
    "python-urllib",
    "python-httpx",
    "aiohttp",
    "go-http-client",
    "okhttp",
    "java/",
    "apache-httpclient",
    "libwww-perl",
    "node-fetch",
    "axios/",
    "httpie",
)
# Generic "SomethingBot/1.2"; a bare "bot" would match phone models such as "CUBOT X30".
_BOT_TOKEN = re.compile(r"[a-z0-9]bot(?:-[a-z]+)*/\d")
_PREFETCH_HEADERS = {
    "purpose": ("prefetch", "preview"),
    "sec-purpose": ("prefetch", "prerender"),
    "x-moz": ("prefetch",),
    "x-purpose": ("preview", "prefetch"),
}


def _is_prefetch(headers: Mapping[str, str]) -> bool:
    lowered = {str(name).lower(): str(value).lower() for name, value in headers.items()}
    return any(
        word in lowered.get(name, "") for name, words in _PREFETCH_HEADERS.items() for word in words
    )


def classify_click(method: str, user_agent: str | None, headers: Mapping[str, str]) -> ClickKind:
    """Whether a request to a tracked link is a person's click. Header names are matched
    case-insensitively. HEAD first, then prefetch headers, then bot user agents."""
    if str(method).strip().upper() == "HEAD":
        return ClickKind.HEAD
    if _is_prefetch(headers):
        return ClickKind.PREFETCH
    agent = (user_agent or "").strip().lower()
    # No agent at all is a script; anything but GET is not a navigation from a message.
    if not agent or str(method).strip().upper() != "GET":
        return ClickKind.BOT
    if any(marker in agent for marker in _BOT_AGENTS) or _BOT_TOKEN.search(agent):
        return ClickKind.BOT
    return ClickKind.HUMAN
