"""WooCommerce REST API (`/wp-json/wc/v3`): per-cart coupons, created and removed.

Authenticated with a REST API key pair (consumer key and secret) as HTTP basic auth, which
WooCommerce accepts only over https; a plain-http address is refused here too, except on the
loopback interface (a local test double). The connection's `--api-token` reference holds the
pair as `ck_…:cs_…`.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from urllib.parse import urlsplit

import httpx

from cartback.ports import IssuedCode

TIMEOUT_SECONDS = 15.0
COUPONS = "/wp-json/wc/v3/coupons"
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
EMAIL = re.compile(r"[^\s\"'<>@]+@[^\s\"'<>@]*[^\s\"'<>@.,;:)]")


class WooError(RuntimeError):
    """The REST API refused or failed, or the credentials are unusable; the message says which
    request and why."""


def credentials(token: bytes) -> tuple[str, str]:
    """`ck_…:cs_…` → (consumer key, consumer secret)."""
    key, _, secret = token.decode().strip().partition(":")
    if not key or not secret:
        raise WooError("the API token must be CONSUMER_KEY:CONSUMER_SECRET")
    return key, secret


def client(base_url: str, token: bytes) -> httpx.Client:
    """`base_url` is the WordPress site, e.g. https://shop.example."""
    parts = urlsplit(base_url)
    if parts.scheme != "https" and (parts.scheme != "http" or parts.hostname not in LOOPBACK):
        raise WooError(f"{base_url}: the REST API keys are only sent over https")
    return httpx.Client(
        base_url=base_url.rstrip("/"),
        auth=credentials(token),
        headers={"Accept": "application/json"},
        timeout=TIMEOUT_SECONDS,
    )


@dataclass
class WooCouponIssuer:
    """`ports.DiscountIssuer` for WooCommerce: one coupon per cart, for one use, by the cart's
    shopper only (when the cart has an email), not combined with other coupons. Called only
    outside any database transaction."""

    http: httpx.Client

    def issue(
        self,
        *,
        cart_token: str,
        percent: Decimal | None,
        amount: Decimal | None,
        currency: str,
        expires_at: datetime | None,
        email: str | None = None,
    ) -> IssuedCode:
        if (percent is None) == (amount is None):
            raise WooError("a unique code needs exactly one of percent or amount")
        coupon: dict[str, object] = {
            "code": coupon_code(),
            "discount_type": "percent" if percent is not None else "fixed_cart",
            "amount": f"{percent if percent is not None else amount}",
            "individual_use": True,
            "usage_limit": 1,
            "usage_limit_per_user": 1,
            # A fixed amount is in the shop's currency; the note names the cart's so a
            # mismatch is visible in the WooCommerce admin.
            "description": f"cartback: one cart's recovery code ({currency})",
        }
        if email:
            coupon["email_restrictions"] = [email]
        if expires_at is not None:
            # With its offset, WooCommerce reads the time as given, not in the site's zone.
            coupon["date_expires"] = expires_at.astimezone(UTC).isoformat(timespec="seconds")
        answer = _call(self.http, "POST", COUPONS, json=coupon)
        made = _object(answer, f"POST {COUPONS}")
        coupon_id, code = made.get("id"), made.get("code")
        if not isinstance(coupon_id, int) or not isinstance(code, str) or not code:
            raise WooError(f"POST {COUPONS}: the answer has no coupon id and code")
        # WooCommerce may lower-case the code; the message shows it as the shop keeps it.
        return IssuedCode(code, str(coupon_id))

    def remove(self, ref: str) -> bool:
        if not ref.isdigit():
            raise WooError(f"{ref[:40]!r} is not a coupon id")
        path = f"{COUPONS}/{ref}"
        # Without force a coupon goes to the trash, where its code still blocks a new one.
        answer = _call(self.http, "DELETE", path, params={"force": "true"}, accept=(404, 410))
        return answer.status_code not in (404, 410)

    def close(self) -> None:
        self.http.close()


def coupon_code() -> str:
    """Random, short enough to type, and telling nothing about the cart or the shopper."""
    return "CB-" + secrets.token_hex(5).upper()


def _call(
    http: httpx.Client, method: str, path: str, *, accept: tuple[int, ...] = (), **options: object
) -> httpx.Response:
    try:
        response = http.request(method, path, **options)  # type: ignore[arg-type]
    except httpx.HTTPError as error:
        raise WooError(f"{method} {path}: {type(error).__name__}: {error}") from None
    if response.is_success or response.status_code in accept:
        return response
    raise WooError(f"{method} {path}: {response.status_code} {_reason(response)}")


def _object(response: httpx.Response, where: str) -> dict[str, object]:
    try:
        data = response.json()
    except ValueError:
        raise WooError(f"{where}: the answer is not JSON") from None
    if not isinstance(data, dict):
        raise WooError(f"{where}: the answer is not a JSON object")
    return data


def _reason(response: httpx.Response) -> str:
    """WooCommerce's own error code and message, else the start of the body; an address the
    answer repeats (the coupon's email restriction) is left out, since this ends up in logs."""
    try:
        data = response.json()
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("code"), str):
        reason = f"{data['code']}: {str(data.get('message') or '')[:160]}"
    else:
        reason = response.text[:200].replace("\n", " ")
    return EMAIL.sub("[email]", reason)
